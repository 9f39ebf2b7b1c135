package hotplug

import (
	"context"
	"errors"
	"sort"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// detachGone unplugs, by MAC, the NICs whose links the matcher says are
// gone. It reports whether a NIC left the guest.
func (r *Reconciler) detachGone(ctx context.Context, snap *view.Snapshot) (left bool) {
	for _, n := range r.nics.list() {
		gone, why := matcher.Gone(n, snap)
		if !gone {
			continue
		}
		log := r.log.WithFields(logrus.Fields{"ifindex": n.Index, "ifname": n.Name, "mac": n.MAC, "reason": why})
		if !r.caps.HotUnplugNIC {
			r.stranded[n.MAC] = true
			r.nics.drop(n.Index)
			// Logged once the state says so: a reader acting on the line
			// sees it in NICs too.
			log.Warn("endpoint gone, but the hypervisor cannot hot-unplug NICs: the guest keeps a NIC with no backend")
			continue
		}
		f := r.detachFail[n.MAC]
		if !r.retry.due(f) || r.nameHeld(n.Name, n.MAC, log) {
			continue
		}
		err := r.remove(ctx, n.Name, n.MAC)
		if errors.Is(err, errBusy) {
			continue
		}
		if err != nil {
			r.detachFail[n.MAC] = r.failed(f, err)
			log.WithError(err).WithField("attempt", r.detachFail[n.MAC].attempts).Error("detach failed; will retry")
			continue
		}
		delete(r.detachFail, n.MAC)
		r.nics.drop(n.Index)
		left = true
		log.Info("detached endpoint")
		// Routes through it are gone with the NIC; push the rest again.
		r.lastRoutes = nil
		// Kata's RemoveInterface returns (nil, nil) whether or not it
		// removed anything: check the guest.
		if infs, err := r.list(ctx); err == nil && nicWithMAC(infs, n.MAC) != nil {
			log.Warn("RemoveInterface succeeded but the guest still lists this MAC: the runtime no longer knows the endpoint " +
				"(likely cause: an earlier failed hotplug made Kata forget its endpoint list)")
		}
	}
	return left
}

// nameHeld reports whether the sandbox tears down links by name
// (Capabilities.DetachByName) and a link now holds name: unplugging the NIC
// attached under that name would switch that link off. Warned once per MAC;
// the next change of the view asks again (the name frees with an event).
func (r *Reconciler) nameHeld(name, mac string, log *logrus.Entry) bool {
	if !r.caps.DetachByName || name == "" {
		return false
	}
	l, err := r.cfg.Source.LinkByName(name)
	if err == nil && l == nil {
		return false
	}
	if err != nil {
		// Cannot tell: do not risk someone else's link.
		log.WithError(err).Debug("cannot tell which link holds the name; not detaching yet")
		return true
	}
	if r.once("namehold:" + mac) {
		log.WithFields(logrus.Fields{"holder_ifindex": l.Index, "holder_mac": l.MAC.String()}).Warn("not detaching yet: the sandbox would set down whatever link holds the NIC's attach-time name, and a link holds it now")
	}
	return true
}

// remove unplugs the NIC with mac, attached as name.
func (r *Reconciler) remove(ctx context.Context, name, mac string) error {
	inf := &Interface{Name: name, Device: name, HwAddr: mac}
	return r.calls.do(ctx, "RemoveInterface", func(ctx context.Context) error {
		_, err := r.cfg.Sandbox.RemoveInterface(ctx, inf)
		return err
	})
}

// dropOrphans unplugs NICs that a failed, abandoned or not undone
// AddInterface may have left in the guest, once no link of the view carries
// their MAC any more (while one does, its retry adopts or re-attaches it).
// It checks the guest first: most failed attaches plugged nothing.
func (r *Reconciler) dropOrphans(ctx context.Context, snap *view.Snapshot) {
	var due []string
	for mac := range r.unsure {
		if linkWithMAC(snap, mac) {
			continue
		}
		if !r.caps.HotUnplugNIC {
			r.log.WithField("mac", mac).Warn("a failed attach may have left a NIC in the guest, and the hypervisor cannot hot-unplug it")
			delete(r.unsure, mac)
			continue
		}
		if r.retry.due(r.detachFail[mac]) {
			due = append(due, mac)
		}
	}
	if len(due) == 0 {
		return
	}
	sort.Strings(due)
	infs, err := r.list(ctx)
	if err != nil {
		if !errors.Is(err, errBusy) {
			for _, mac := range due {
				r.detachFail[mac] = r.failed(r.detachFail[mac], err)
			}
			r.log.WithError(err).Error("list the sandbox's interfaces failed; cleanup of failed attaches postponed")
		}
		return
	}
	for _, mac := range due {
		log := r.log.WithField("mac", mac)
		if nicWithMAC(infs, mac) == nil {
			delete(r.unsure, mac)
			delete(r.detachFail, mac)
			continue
		}
		name := r.unsure[mac]
		if r.nameHeld(name, mac, log.WithField("ifname", name)) {
			continue
		}
		err := r.remove(ctx, name, mac)
		if errors.Is(err, errBusy) {
			return
		}
		if err != nil {
			r.detachFail[mac] = r.failed(r.detachFail[mac], err)
			log.WithError(err).Error("unplug of a NIC left by a failed attach failed; will retry")
			if r.dead != nil {
				return
			}
			continue
		}
		delete(r.unsure, mac)
		delete(r.detachFail, mac)
		clear(r.refused) // a NIC left: the sandbox may now take what it refused
		log.Info("unplugged a NIC a failed attach had left in the guest; its link is gone")
	}
}

func linkWithMAC(snap *view.Snapshot, mac string) bool {
	for _, l := range snap.Links {
		if l.MAC.String() == mac {
			return true
		}
	}
	return false
}
