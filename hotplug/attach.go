package hotplug

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// attachReady hot-plugs ready endpoints, each once. When the guest may hold
// one of their NICs already (at start, or after an AddInterface for that MAC
// failed, was abandoned or was not undone), it lists the guest first and
// adopts what is there, so an interface attached before the monitor
// started, or by a call that failed half-way, is not attached twice.
// Otherwise it does not ask the guest: the reconciler knows what it plugged.
func (r *Reconciler) attachReady(ctx context.Context, ready []*view.Link) {
	var due []*view.Link
	for _, l := range ready {
		mac := l.MAC.String()
		if r.stranded[mac] {
			if r.once("stranded:" + mac) {
				r.linkLog(l).Warn("not attaching: a NIC with this MAC is still in the guest (no hot-unplug), a second one would clash")
			}
			continue
		}
		// A refused link is asked about again only once a NIC has left
		// the guest (Reconcile clears refused then): nothing else can
		// change the sandbox's answer.
		if !r.refused[l.Index] && r.retry.due(r.attachFail[l.Index]) {
			due = append(due, l)
		}
	}
	if len(due) == 0 {
		return
	}
	needList := r.listDue
	for _, l := range due {
		_, maybe := r.unsure[l.MAC.String()]
		needList = needList || maybe
	}
	if needList && !r.adopt(ctx, ready) {
		return
	}
	for _, l := range due {
		if _, ok := r.nics.at(l.Index); ok {
			continue
		}
		r.attachOne(ctx, l)
		if r.dead != nil {
			return
		}
	}
}

// adopt lists the guest and takes as attached every ready link whose MAC the
// guest has (also those waiting on a backoff: a failed call may have
// half-succeeded). It reports whether the list succeeded.
func (r *Reconciler) adopt(ctx context.Context, ready []*view.Link) bool {
	infs, err := r.list(ctx)
	if err != nil {
		if !errors.Is(err, errBusy) {
			r.log.WithError(err).Error("list the sandbox's interfaces failed; attaches postponed")
			for _, l := range ready {
				r.attachFail[l.Index] = r.failed(r.attachFail[l.Index], err)
			}
		}
		return false
	}
	r.listDue = false
	for mac := range r.unsure {
		if nicWithMAC(infs, mac) == nil {
			delete(r.unsure, mac) // the failed call plugged nothing
		}
	}
	for _, l := range ready {
		mac := l.MAC.String()
		if _, ok := r.nics.at(l.Index); ok || nicWithMAC(infs, mac) == nil || r.stranded[mac] || r.nics.macTaken(l) != nil {
			continue
		}
		// Kata names the guest's NIC after the host link, so the host
		// name is the one Gone and routes must use.
		r.plugged(matcher.GuestNIC{Index: l.Index, Incarnation: l.Incarnation, Name: l.Name, MAC: mac, Addrs: matcher.RoutableAddrs(l)})
		delete(r.attachFail, l.Index)
		r.linkLog(l).Info("sandbox already has this endpoint; adopted")
	}
	return true
}

// attachOne hot-plugs one ready endpoint: guards first, then the call, then
// a check that the name Kata looked up still meant this link.
func (r *Reconciler) attachOne(ctx context.Context, l *view.Link) {
	log := r.linkLog(l)
	if !r.mayAttach(l, log) {
		return
	}
	inf := InterfaceFromLink(l)
	var got *Interface
	err := r.calls.do(ctx, "AddInterface", func(ctx context.Context) error {
		var err error
		got, err = r.cfg.Sandbox.AddInterface(ctx, inf)
		return err
	})
	switch {
	case errors.Is(err, errBusy):
		return
	case errors.Is(err, ErrRefused):
		delete(r.attachFail, l.Index)
		r.refused[l.Index] = true
		if r.once("refused:" + l.MAC.String()) {
			log.WithError(err).Error("attach refused by the sandbox; asked again once a NIC leaves the guest")
		}
		return
	}
	if err != nil {
		// A failed or abandoned AddInterface may still have plugged the
		// NIC: the next list adopts it, or dropOrphans unplugs it if the
		// link leaves first.
		r.unsure[l.MAC.String()] = l.Name
		f := r.failed(r.attachFail[l.Index], err)
		r.attachFail[l.Index] = f
		log.WithError(err).WithField("attempt", f.attempts).Error("attach failed; will check the sandbox and retry")
		r.upAgain(l, log)
		return
	}
	// Only now may got be read: an abandoned call may still write it.
	linkMAC, changed := r.checkAfterAttach(l, got, log)
	if changed != nil {
		r.undoAttach(ctx, l, got, changed, log)
		return
	}
	delete(r.attachFail, l.Index)
	delete(r.refused, l.Index)
	r.plugged(matcher.GuestNIC{Index: l.Index, Incarnation: l.Incarnation, Name: l.Name, MAC: l.MAC.String(), LinkMAC: linkMAC,
		Addrs: matcher.RoutableAddrs(l)})
	log.WithField("addresses", len(inf.IPAddresses)).Info("attached endpoint")
}

// mayAttach checks, right before the call, what would make AddInterface
// plug the wrong thing or a second NIC.
func (r *Reconciler) mayAttach(l *view.Link, log *logrus.Entry) bool {
	if n := r.nics.nameTaken(l); n != nil {
		// The guest still has a NIC by this name (its detach has not
		// succeeded yet): Kata's agent names NICs after the link, so a
		// second one would clash. Pending until the detach goes through.
		log.WithField("detaching_mac", n.MAC).Debug("waiting: the guest still has a NIC by this name")
		return false
	}
	if n := r.nics.macTaken(l); n != nil {
		if r.once("dupmac:" + l.MAC.String()) {
			log.WithField("attached_as", n.Name).Warn("not attaching: another attached endpoint has this MAC, and Kata tells NICs apart by MAC")
		}
		return false
	}
	// Kata looks the link up by name: make sure the name still means this
	// link, and that it is still up (a sandbox that sets links down by name
	// may just have switched it off), right before the call.
	now, err := r.cfg.Source.LinkByName(l.Name)
	switch {
	case err != nil:
		log.WithError(err).Debug("cannot read the link; waiting for the next event")
		return false
	case now == nil || now.Index != l.Index || now.MAC.String() != l.MAC.String():
		log.WithField("now", describe(now)).Debug("view is stale: the name means another link now; waiting for the next event")
		return false
	case !now.Up():
		log.Debug("view is stale: the link is down now; waiting for the next event")
		return false
	}
	return true
}

// checkAfterAttach reads the link by name again after AddInterface: if the
// name moved to another link during the call, Kata may have plugged that
// one. It returns the link's MAC when the sandbox changed it as it does by
// design (ReMACsLink), and why the link does not match otherwise.
func (r *Reconciler) checkAfterAttach(l *view.Link, got *Interface, log *logrus.Entry) (linkMAC string, changed error) {
	mac := l.MAC.String()
	if got != nil && got.HwAddr != "" && !strings.EqualFold(got.HwAddr, mac) {
		return "", fmt.Errorf("the sandbox plugged MAC %s", strings.ToLower(got.HwAddr))
	}
	now, err := r.cfg.Source.LinkByName(l.Name)
	switch {
	case err != nil && closed(r.cfg.Source.Done()):
		// The netns watch was closed during the call (the monitor is
		// stopping): the link can no longer be checked. Undoing would
		// unplug a NIC that is most likely the right one from a running
		// VM; keep it.
		log.WithError(err).Warn("the netns watch closed during AddInterface; keeping the NIC unverified")
		return "", nil
	case err != nil:
		return "", fmt.Errorf("read %q again: %w", l.Name, err)
	case now == nil || now.Index != l.Index:
		return "", fmt.Errorf("%q is now %s", l.Name, describe(now))
	case now.MAC.String() == mac:
		return "", nil
	case r.caps.ReMACsLink:
		return now.MAC.String(), nil
	}
	return "", fmt.Errorf("%q now has MAC %s", l.Name, now.MAC)
}

// undoAttach unplugs what an AddInterface plugged for a link that changed
// during the call, and schedules the retry.
func (r *Reconciler) undoAttach(ctx context.Context, l *view.Link, got *Interface, why error, log *logrus.Entry) {
	gotMAC := l.MAC.String()
	if got != nil && got.HwAddr != "" {
		gotMAC = strings.ToLower(got.HwAddr)
	}
	log.WithField("attached_mac", gotMAC).WithError(why).Warn("link changed during AddInterface; undoing and retrying")
	undone := false
	if r.caps.HotUnplugNIC && !r.nameHeld(l.Name, gotMAC, log) {
		undone = r.remove(ctx, l.Name, gotMAC) == nil
	}
	if !undone {
		r.unsure[gotMAC] = l.Name
	}
	r.attachFail[l.Index] = r.failed(r.attachFail[l.Index], fmt.Errorf("link %q changed during attach: %w", l.Name, why))
}

// upAgain sets l up again when a sandbox that tears links down by name
// (DetachByName) has set it down while undoing the failed AddInterface of
// it: the link was up (ready) before the call, and is still the same link.
func (r *Reconciler) upAgain(l *view.Link, log *logrus.Entry) {
	lu, ok := r.cfg.Source.(LinkUpper)
	if !r.caps.DetachByName || !ok {
		return
	}
	now, err := r.cfg.Source.LinkByName(l.Name)
	if err != nil || now == nil || now.Index != l.Index || now.MAC.String() != l.MAC.String() || now.Up() {
		return
	}
	if err := lu.SetLinkUp(l.Index); err != nil {
		log.WithError(err).Error("the sandbox set the link down while undoing the failed attach, and setting it up again failed")
		return
	}
	log.Warn("the sandbox set the link down while undoing the failed attach (Kata looks the link up by name); set it up again")
}

// plugged records a NIC the guest has now.
func (r *Reconciler) plugged(n matcher.GuestNIC) {
	delete(r.unsure, n.MAC) // the guest's NIC with this MAC is accounted for now
	r.nics.set(n)
	r.lastRoutes = nil
}

func (r *Reconciler) linkLog(l *view.Link) *logrus.Entry {
	return r.log.WithFields(logrus.Fields{"ifindex": l.Index, "ifname": l.Name, "mac": l.MAC.String()})
}

// describe names a link read from the kernel for a log line.
func describe(l *view.Link) string {
	if l == nil {
		return "no link"
	}
	return fmt.Sprintf("ifindex %d MAC %s", l.Index, l.MAC)
}

func (r *Reconciler) list(ctx context.Context) ([]*Interface, error) {
	var infs []*Interface
	err := r.calls.do(ctx, "ListInterfaces", func(ctx context.Context) error {
		var err error
		infs, err = r.cfg.Sandbox.ListInterfaces(ctx)
		return err
	})
	if err != nil {
		// Do not read infs: an abandoned call may still write it.
		r.listDue = r.listDue || !errors.Is(err, errBusy)
		return nil, err
	}
	return infs, nil
}
