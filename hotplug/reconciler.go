package hotplug

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/matcher"
)

// Source is what the reconciler needs of netmon: the view, a signal that it
// changed, a fresh by-name lookup (Kata looks links up by name, and names are
// reused), and the end of the watch. *netmon.Monitor satisfies it. Once Done
// is closed, LinkByName may fail: the watch no longer answers.
type Source interface {
	Snapshot() *view.Snapshot
	Changed() <-chan struct{}
	LinkByName(name string) (index int, mac net.HardwareAddr, err error)
	Done() <-chan struct{}
}

// Config configures a Reconciler.
type Config struct {
	Sandbox Sandbox
	Source  Source
	// Log carries the sandbox's fields; nil discards.
	Log *logrus.Entry
	// CallTimeout bounds each sandbox call (default 30 s). A call that does
	// not return by then is abandoned: the reconciler makes no further call
	// until it returns, so calls stay serialised.
	CallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failed call
	// (defaults 250 ms and 10 s; doubling).
	MinBackoff, MaxBackoff time.Duration
	// Observer, if set, is told about every sandbox call (metrics).
	Observer Observer
}

// Observer receives one report per sandbox call. It must not block.
type Observer interface {
	SandboxCall(op string, d time.Duration, err error)
	Attached(n int)
}

// Status summarises one reconcile pass.
type Status struct {
	Attached []matcher.Attached // what the VM has now, by ifindex order
	Pending  []string           // candidates not ready yet (names)
	Failed   []string           // ready endpoints whose last attach failed (names)
	// RoutesFailed: the last UpdateRoutes failed and is due again.
	RoutesFailed bool
	// NextRetry is when a failed call is due again; zero when none is.
	NextRetry time.Time
}

// Settled reports that nothing is pending or failed, routes included.
func (s Status) Settled() bool { return len(s.Pending) == 0 && len(s.Failed) == 0 && !s.RoutesFailed }

// ErrCallAbandoned is returned when a sandbox call did not return by its
// deadline; the call goroutine is left to finish on its own.
var ErrCallAbandoned = errors.New("sandbox call abandoned after its deadline")

// errBusy: an abandoned call is still running, so no new call is made.
var errBusy = errors.New("an abandoned sandbox call is still running")

// ErrNotSettled is returned by Sync when its deadline passed with endpoints
// still pending or failed.
var ErrNotSettled = errors.New("endpoints not attached by the deadline")

// retry tracks one failing operation.
type retry struct {
	attempts int
	next     time.Time
}

// Reconciler makes the VM's interfaces and routes follow the Docker endpoints
// of the sandbox netns.
//
// Reconcile, Sync and Run must be called from one goroutine at a time: that
// is what serialises the sandbox calls. Only Status-reading methods
// (Attached) may be called concurrently; mu guards the fields they read.
type Reconciler struct {
	cfg  Config
	log  *logrus.Entry
	caps Capabilities

	// Owned by the reconciling goroutine.
	attachFail map[int]*retry    // by ifindex
	detachFail map[string]*retry // by MAC
	routeFail  *retry            // last UpdateRoutes failed
	lastRoutes []*Route          // last route set the VM accepted
	stranded   map[string]bool   // MACs left in the VM: no unplug capability
	unsure     map[string]bool   // MACs a failed, abandoned or not-undone AddInterface may have plugged; cleared on attach/adopt/unplug
	wake       time.Time         // earliest retry this pass skipped or scheduled; zero when none (Status.NextRetry)
	warned     map[string]bool   // one-time warnings already logged
	hung       <-chan struct{}   // closed when the abandoned call returns; nil when none
	dead       error             // set once the sandbox is dead
	now        func() time.Time  // for tests of backoff arithmetic

	mu       sync.Mutex
	attached map[int]matcher.Attached // guarded by mu; written only by the reconciling goroutine
}

// New returns a reconciler, or ErrNoHotplug when the sandbox's hypervisor
// cannot hot-plug NICs (the monitor must not start).
func New(cfg Config) (*Reconciler, error) {
	if cfg.Sandbox == nil || cfg.Source == nil {
		return nil, errors.New("hotplug: Sandbox and Source are required")
	}
	caps := cfg.Sandbox.Capabilities()
	if !caps.HotplugNIC {
		return nil, ErrNoHotplug
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = 10 * time.Second
		if cfg.MaxBackoff < cfg.MinBackoff {
			cfg.MaxBackoff = cfg.MinBackoff
		}
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	r := &Reconciler{
		cfg:        cfg,
		log:        log,
		caps:       caps,
		attachFail: map[int]*retry{},
		detachFail: map[string]*retry{},
		stranded:   map[string]bool{},
		unsure:     map[string]bool{},
		warned:     map[string]bool{},
		attached:   map[int]matcher.Attached{},
		now:        time.Now,
	}
	if !caps.HotUnplugNIC {
		log.Warn("hypervisor cannot hot-unplug NICs: disconnected networks will stay in the guest without a backend")
	}
	return r, nil
}

// Attached returns what the VM has now, ordered by ifindex. Safe to call
// concurrently with Reconcile.
func (r *Reconciler) Attached() []matcher.Attached {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sortedAttached(r.attached)
}

func sortedAttached(m map[int]matcher.Attached) []matcher.Attached {
	out := make([]matcher.Attached, 0, len(m))
	for _, a := range m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

func (r *Reconciler) setAttached(a matcher.Attached) {
	delete(r.unsure, a.MAC) // the guest's NIC with this MAC is accounted for now
	r.mu.Lock()
	r.attached[a.Index] = a
	n := len(r.attached)
	r.mu.Unlock()
	if r.cfg.Observer != nil {
		r.cfg.Observer.Attached(n)
	}
}

func (r *Reconciler) dropAttached(index int) {
	r.mu.Lock()
	delete(r.attached, index)
	n := len(r.attached)
	r.mu.Unlock()
	if r.cfg.Observer != nil {
		r.cfg.Observer.Attached(n)
	}
}

// Run reconciles on every change of the view and when a retry is due, until
// ctx ends, the source ends, or the sandbox is dead. Nothing polls: with no
// change and no retry due, it sleeps on channels.
func (r *Reconciler) Run(ctx context.Context) error {
	for {
		st, err := r.Reconcile(ctx)
		if errors.Is(err, ErrSandboxDead) {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := r.wait(ctx, st); err != nil {
			return nil
		}
	}
}

// wait blocks until the view changes, a retry is due, or an abandoned call
// returns. It returns non-nil when ctx or the source ended instead.
func (r *Reconciler) wait(ctx context.Context, st Status) error {
	var timer <-chan time.Time
	if !st.NextRetry.IsZero() {
		t := time.NewTimer(max(st.NextRetry.Sub(r.now()), time.Millisecond))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-r.cfg.Source.Done():
		return errSourceDone
	case <-r.cfg.Source.Changed():
	case <-timer:
	case <-r.hung: // nil (blocks) unless a call was abandoned
	}
	return nil
}

var errSourceDone = errors.New("the netns watch ended")

// Sync reconciles until every candidate endpoint is attached and nothing is
// pending, or until ctx ends. A sandbox with no candidates returns at once.
// At the deadline it returns ErrNotSettled, wrapped with the names.
func (r *Reconciler) Sync(ctx context.Context) (Status, error) {
	for {
		st, err := r.Reconcile(ctx)
		if errors.Is(err, ErrSandboxDead) {
			return st, err
		}
		if st.Settled() {
			return st, nil
		}
		if err := r.wait(ctx, st); err != nil {
			return st, fmt.Errorf("%w: pending %v, failed %v: %v", ErrNotSettled, st.Pending, st.Failed, err)
		}
	}
}

// Reconcile makes one pass: detach what is gone, attach what is ready, push
// routes if they changed. Errors of single calls are logged and scheduled for
// retry; the returned error is non-nil only when the sandbox is dead.
func (r *Reconciler) Reconcile(ctx context.Context) (Status, error) {
	if r.dead != nil {
		return Status{}, r.dead
	}
	r.reapHung()
	snap := r.cfg.Source.Snapshot()
	var st Status
	r.wake = time.Time{}

	r.detachGone(ctx, snap)
	r.dropOrphans(ctx, snap)

	var ready []*view.Link
	for _, d := range matcher.Endpoints(snap) {
		switch d.State {
		case matcher.Pending:
			st.Pending = append(st.Pending, d.Name)
		case matcher.Ready:
			if _, ok := r.attachedAt(d.Index); !ok {
				ready = append(ready, snap.Links[d.Index])
			}
		}
	}
	if len(ready) > 0 {
		r.attachReady(ctx, ready)
	}
	r.pushRoutes(ctx, snap)

	// Forget retry state of links that left the view.
	for idx := range r.attachFail {
		if _, ok := snap.Links[idx]; !ok {
			delete(r.attachFail, idx)
		}
	}
	// A ready endpoint that is still not attached is failed (a call
	// failed) or pending (the view was stale, or a call is still hung).
	for _, l := range ready {
		switch _, ok := r.attachedAt(l.Index); {
		case ok, r.stranded[l.MAC.String()], r.macTaken(l) != nil:
		case r.attachFail[l.Index] != nil:
			st.Failed = append(st.Failed, l.Name)
		default:
			st.Pending = append(st.Pending, l.Name)
		}
	}
	sort.Strings(st.Pending)
	sort.Strings(st.Failed)
	st.Attached = r.Attached()
	st.RoutesFailed = r.routeFail != nil
	st.NextRetry = r.nextRetry()
	if r.dead != nil {
		return st, r.dead
	}
	return st, nil
}

// macTaken returns the attached interface, of another link, that carries
// l's MAC, or nil. Kata and its agent tell NICs apart by MAC only, so a
// second link with that MAC (two endpoints given the same --mac-address) is
// neither attached (two NICs with one MAC: unplug and configuration would
// pick either) nor adopted (routes would name a device the guest lacks).
func (r *Reconciler) macTaken(l *view.Link) *matcher.Attached {
	mac := l.MAC.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.attached {
		if a.Index != l.Index && a.MAC == mac {
			return &a
		}
	}
	return nil
}

// nameTaken returns the attached interface, of another link, that the guest
// knows by l's name, or nil: after docker network disconnect and connect,
// the new endpoint reuses the name (eth1) of one whose detach may still be
// failing.
func (r *Reconciler) nameTaken(l *view.Link) *matcher.Attached {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.attached {
		if a.Index != l.Index && a.Name == l.Name {
			return &a
		}
	}
	return nil
}

func (r *Reconciler) attachedAt(index int) (matcher.Attached, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.attached[index]
	return a, ok
}

// nextRetry is the earliest retry this pass wanted to make but could not
// yet (backoff), or scheduled after a failure. Entries nobody asked about
// this pass (a link no longer ready, an endpoint no longer gone) do not
// count: a past time there would make Run wake every millisecond for
// nothing. Calls skipped because an abandoned call still runs do not count
// either: its return wakes Run.
func (r *Reconciler) nextRetry() time.Time { return r.wake }

func (r *Reconciler) noteRetry(t time.Time) {
	if r.wake.IsZero() || t.Before(r.wake) {
		r.wake = t
	}
}

// due reports whether the operation f tracks may be tried now; when not,
// its time is noted for nextRetry. Call it only for operations wanted now.
func (r *Reconciler) due(f *retry) bool {
	if f == nil || !r.now().Before(f.next) {
		return true
	}
	r.noteRetry(f.next)
	return false
}

// fail records a failed attempt and schedules the next with doubling backoff.
func (r *Reconciler) fail(f *retry, err error) *retry {
	if f == nil {
		f = &retry{}
	}
	f.attempts++
	d := r.cfg.MinBackoff << min(f.attempts-1, 20)
	if d > r.cfg.MaxBackoff || d <= 0 {
		d = r.cfg.MaxBackoff
	}
	f.next = r.now().Add(d)
	r.noteRetry(f.next)
	if IsDead(err) {
		r.dead = fmt.Errorf("%w: %v", ErrSandboxDead, err)
	}
	return f
}

// IsDead reports an error by which the sandbox says its agent is gone
// (ErrSandboxDead, Kata's "Dead agent" and "ttrpc: closed"): the reconciler
// gives up on it.
func IsDead(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrSandboxDead) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "Dead agent") || strings.Contains(s, "ttrpc: closed")
}

// detachGone unplugs what the matcher says is gone, by MAC.
func (r *Reconciler) detachGone(ctx context.Context, snap *view.Snapshot) {
	for _, a := range r.Attached() {
		gone, why := matcher.Gone(a, snap)
		if !gone {
			continue
		}
		log := r.log.WithFields(logrus.Fields{"ifindex": a.Index, "ifname": a.Name, "mac": a.MAC})
		if !r.caps.HotUnplugNIC {
			r.stranded[a.MAC] = true
			r.dropAttached(a.Index)
			// Logged once the state says so: a reader acting on the line
			// sees it in Attached too.
			log.WithField("reason", why).Warn("endpoint gone, but the hypervisor cannot hot-unplug NICs: the guest keeps a NIC with no backend")
			continue
		}
		f := r.detachFail[a.MAC]
		if !r.due(f) {
			continue
		}
		inf := &Interface{Name: a.Name, Device: a.Name, HwAddr: a.MAC}
		err := r.call(ctx, "RemoveInterface", func(ctx context.Context) error {
			_, err := r.cfg.Sandbox.RemoveInterface(ctx, inf)
			return err
		})
		if err != nil {
			if errors.Is(err, errBusy) {
				continue
			}
			r.detachFail[a.MAC] = r.fail(f, err)
			log.WithError(err).WithField("attempt", r.detachFail[a.MAC].attempts).Errorf("detach %q (ifindex %d, MAC %s) failed; will retry", a.Name, a.Index, a.MAC)
			continue
		}
		delete(r.detachFail, a.MAC)
		r.dropAttached(a.Index)
		log.WithField("reason", why).Info("detached endpoint")
		// Routes through it are gone with the NIC; push the rest again.
		r.lastRoutes = nil
		// Kata's RemoveInterface returns (nil, nil) whether or not it
		// removed anything: check the guest.
		if infs, err := r.list(ctx); err == nil && hasMAC(infs, a.MAC) {
			log.Warn("RemoveInterface succeeded but the guest still lists this MAC: the runtime no longer knows the endpoint " +
				"(likely cause: an earlier failed hotplug made Kata forget its endpoint list)")
		}
	}
}

// dropOrphans unplugs NICs that a failed, abandoned or not-undone
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
		if r.due(r.detachFail[mac]) {
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
				r.detachFail[mac] = r.fail(r.detachFail[mac], err)
			}
			r.log.WithError(err).Error("list the sandbox's interfaces failed; cleanup of failed attaches postponed")
		}
		return
	}
	for _, mac := range due {
		log := r.log.WithField("mac", mac)
		if !hasMAC(infs, mac) {
			delete(r.unsure, mac)
			delete(r.detachFail, mac)
			continue
		}
		err := r.call(ctx, "RemoveInterface", func(ctx context.Context) error {
			_, err := r.cfg.Sandbox.RemoveInterface(ctx, &Interface{HwAddr: mac})
			return err
		})
		if errors.Is(err, errBusy) {
			return
		}
		if err != nil {
			r.detachFail[mac] = r.fail(r.detachFail[mac], err)
			log.WithError(err).Errorf("unplug NIC %s left by a failed attach failed; will retry", mac)
			if r.dead != nil {
				return
			}
			continue
		}
		delete(r.unsure, mac)
		delete(r.detachFail, mac)
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

// attachReady hot-plugs ready endpoints, each once. It first reads what the
// sandbox already has, so an interface attached before the monitor started
// (or by Kata's own rescan) is adopted rather than attached twice.
func (r *Reconciler) attachReady(ctx context.Context, ready []*view.Link) {
	var due []*view.Link
	for _, l := range ready {
		if r.stranded[l.MAC.String()] {
			r.attachOne(ctx, l) // warns once; no call, so no ListInterfaces for it either
			continue
		}
		if r.due(r.attachFail[l.Index]) {
			due = append(due, l)
		}
	}
	if len(due) == 0 {
		return
	}
	infs, err := r.list(ctx)
	if err != nil {
		if !errors.Is(err, errBusy) {
			r.log.WithError(err).Error("list the sandbox's interfaces failed; attaches postponed")
			for _, l := range due {
				r.attachFail[l.Index] = r.fail(r.attachFail[l.Index], err)
			}
		}
		return
	}
	// Adopt what the guest has already, for every ready link (also those
	// waiting on a backoff): a failed call may have half-succeeded.
	for _, l := range ready {
		mac := l.MAC.String()
		if hasMAC(infs, mac) && !r.stranded[mac] && r.macTaken(l) == nil {
			// Kata names the guest's NIC after the host link, so the
			// host name is the one Gone and routes must use.
			r.setAttached(matcher.Attached{Index: l.Index, Incarnation: l.Incarnation, Name: l.Name, MAC: mac})
			delete(r.attachFail, l.Index)
			r.lastRoutes = nil
			r.log.WithFields(logrus.Fields{"ifindex": l.Index, "ifname": l.Name, "mac": mac}).Info("sandbox already has this endpoint; adopted")
		}
	}
	for _, l := range due {
		if _, ok := r.attachedAt(l.Index); ok {
			continue
		}
		r.attachOne(ctx, l)
		if r.dead != nil {
			return
		}
	}
}

func (r *Reconciler) attachOne(ctx context.Context, l *view.Link) {
	mac := l.MAC.String()
	log := r.log.WithFields(logrus.Fields{"ifindex": l.Index, "ifname": l.Name, "mac": mac})
	if r.stranded[mac] {
		if !r.warned["stranded:"+mac] {
			log.Warn("not attaching: a NIC with this MAC is still in the guest (no hot-unplug), a second one would clash")
			r.warned["stranded:"+mac] = true
		}
		return
	}
	if a := r.nameTaken(l); a != nil {
		// The guest still has a NIC by this name (its detach has not
		// succeeded yet): Kata's agent names NICs after the link, so a
		// second one would clash. Pending until the detach goes through.
		log.WithField("detaching_mac", a.MAC).Debug("waiting: the guest still has a NIC by this name")
		return
	}
	if a := r.macTaken(l); a != nil {
		if !r.warned["dupmac:"+mac] {
			log.WithField("attached_as", a.Name).Warn("not attaching: another attached endpoint has this MAC, and Kata tells NICs apart by MAC")
			r.warned["dupmac:"+mac] = true
		}
		return
	}
	// Kata looks the link up by name: make sure the name still means
	// this link, right before the call.
	if err := r.sameLink(l); err != nil {
		log.WithError(err).Debug("view is stale; waiting for the next event")
		return
	}
	inf := InterfaceFromLink(l)
	var got *Interface
	err := r.call(ctx, "AddInterface", func(ctx context.Context) error {
		var err error
		got, err = r.cfg.Sandbox.AddInterface(ctx, inf)
		return err
	})
	if errors.Is(err, errBusy) {
		return
	}
	// And right after: if the name moved to another link during the call,
	// Kata may have plugged that one.
	after := r.sameLink(l)
	if after != nil && closed(r.cfg.Source.Done()) {
		// The netns watch was closed during the call (the monitor is
		// stopping): the link can no longer be checked. Undoing would
		// unplug a NIC that is most likely the right one from a running
		// VM; keep it.
		log.WithError(after).Warn("the netns watch closed during AddInterface; keeping the NIC unverified")
		after = nil
	}
	if err != nil {
		// A failed or abandoned AddInterface may still have plugged the
		// NIC: the retry adopts it, or dropOrphans unplugs it if the link
		// leaves first.
		r.unsure[mac] = true
		f := r.fail(r.attachFail[l.Index], err)
		r.attachFail[l.Index] = f
		log.WithError(err).WithField("attempt", f.attempts).
			Errorf("attach %q (ifindex %d, MAC %s) failed; will check the sandbox and retry", l.Name, l.Index, mac)
		return
	}
	if after != nil || (got != nil && got.HwAddr != "" && !strings.EqualFold(got.HwAddr, mac)) {
		gotMAC := mac
		if got != nil && got.HwAddr != "" {
			gotMAC = strings.ToLower(got.HwAddr)
		}
		log.WithField("attached_mac", gotMAC).Warnf("link %q changed during AddInterface (%v); undoing and retrying", l.Name, after)
		undone := false
		if r.caps.HotUnplugNIC {
			undone = r.call(ctx, "RemoveInterface", func(ctx context.Context) error {
				_, err := r.cfg.Sandbox.RemoveInterface(ctx, &Interface{Name: l.Name, Device: l.Name, HwAddr: gotMAC})
				return err
			}) == nil
		}
		if !undone {
			r.unsure[gotMAC] = true
		}
		r.attachFail[l.Index] = r.fail(r.attachFail[l.Index], fmt.Errorf("link %q changed during attach", l.Name))
		return
	}
	delete(r.attachFail, l.Index)
	r.setAttached(matcher.Attached{Index: l.Index, Incarnation: l.Incarnation, Name: l.Name, MAC: mac})
	r.lastRoutes = nil
	log.WithField("addresses", len(inf.IPAddresses)).Info("attached endpoint")
}

// sameLink checks that l.Name still names ifindex l.Index with l.MAC.
func (r *Reconciler) sameLink(l *view.Link) error {
	idx, mac, err := r.cfg.Source.LinkByName(l.Name)
	if err != nil {
		return fmt.Errorf("look up %q: %w", l.Name, err)
	}
	if idx != l.Index || mac.String() != l.MAC.String() {
		return fmt.Errorf("%q is now ifindex %d MAC %s, expected ifindex %d MAC %s", l.Name, idx, mac, l.Index, l.MAC)
	}
	return nil
}

// pushRoutes sends the full route set through attached devices when it
// differs from the last set the VM accepted. Devices are named as the guest
// knows them (their attach names), so no route names a device the VM lacks.
func (r *Reconciler) pushRoutes(ctx context.Context, snap *view.Snapshot) {
	attached := r.Attached()
	devices := make(map[int]bool, len(attached))
	names := make(map[int]string, len(attached))
	for _, a := range attached {
		devices[a.Index] = true
		names[a.Index] = a.Name
	}
	var want []*Route
	for _, rt := range matcher.Routes(snap, devices) {
		want = append(want, RouteFromNetmon(rt, names[rt.LinkIndex]))
	}
	if len(want) == 0 {
		// Nothing to add; the agent never deletes, so an empty call
		// would do nothing.
		r.lastRoutes = want
		r.routeFail = nil
		return
	}
	if r.routeFail == nil && reflect.DeepEqual(want, r.lastRoutes) {
		return
	}
	if !r.due(r.routeFail) {
		return
	}
	err := r.call(ctx, "UpdateRoutes", func(ctx context.Context) error {
		_, err := r.cfg.Sandbox.UpdateRoutes(ctx, want)
		return err
	})
	if errors.Is(err, errBusy) {
		return
	}
	if err != nil {
		r.routeFail = r.fail(r.routeFail, err)
		r.log.WithError(err).WithField("attempt", r.routeFail.attempts).Errorf("update %d routes failed; will retry", len(want))
		return
	}
	r.routeFail = nil
	r.lastRoutes = want
	r.log.WithField("routes", len(want)).Info("routes updated")
}

func (r *Reconciler) list(ctx context.Context) ([]*Interface, error) {
	var infs []*Interface
	err := r.call(ctx, "ListInterfaces", func(ctx context.Context) error {
		var err error
		infs, err = r.cfg.Sandbox.ListInterfaces(ctx)
		return err
	})
	if err != nil {
		// Do not read infs: an abandoned call may still write it.
		return nil, err
	}
	return infs, nil
}

func hasMAC(infs []*Interface, mac string) bool {
	for _, inf := range infs {
		if inf != nil && strings.EqualFold(inf.HwAddr, mac) {
			return true
		}
	}
	return false
}

// reapHung forgets an abandoned call that has returned since.
func (r *Reconciler) reapHung() {
	if r.hung == nil {
		return
	}
	select {
	case <-r.hung:
		r.hung = nil
		r.log.Info("the abandoned sandbox call has returned; calls resume")
	default:
	}
}

// call runs one sandbox call with the call deadline. If the call does not
// return in time (or ctx ends first), it is abandoned: it keeps running in
// its goroutine, and until it returns every further call answers errBusy,
// so the sandbox never sees two of our calls at once.
func (r *Reconciler) call(ctx context.Context, op string, fn func(context.Context) error) error {
	if r.reapHung(); r.hung != nil {
		return errBusy
	}
	if err := ctx.Err(); err != nil {
		// Stopping: start nothing that would only be abandoned.
		return fmt.Errorf("%s: %w", op, err)
	}
	cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
	defer cancel()
	done := make(chan struct{})
	var err error // written by the call goroutine before close(done)
	start := r.now()
	go func() {
		defer close(done)
		err = fn(cctx)
	}()
	select {
	case <-done:
	case <-cctx.Done():
		select {
		case <-done: // returned at the same moment: not abandoned
		default:
			r.hung = done
			// The caller's context ended first (Stop, or the deadline of
			// Start's first reconcile): say which, and count it as
			// canceled or timeout, or the log and the metric blame a
			// CallTimeout that never passed.
			observed := ErrCallAbandoned
			took := r.now().Sub(start).Round(time.Millisecond)
			switch cerr := ctx.Err(); {
			case errors.Is(cerr, context.Canceled):
				observed = cerr
				r.log.WithField("op", op).Warnf("%s still running when the monitor stopped; abandoned after %v", op, took)
			case cerr != nil:
				observed = cerr
				r.log.WithField("op", op).Warnf("%s still running when its caller's deadline passed (the first reconcile's ReadyTimeout); abandoned after %v (no further call until it returns)", op, took)
			default:
				r.log.WithField("op", op).Errorf("%s did not return within %v; abandoned (no further call until it returns)", op, r.cfg.CallTimeout)
			}
			if r.cfg.Observer != nil {
				r.cfg.Observer.SandboxCall(op, r.now().Sub(start), observed)
			}
			return fmt.Errorf("%s: %w", op, ErrCallAbandoned)
		}
	}
	if r.cfg.Observer != nil {
		r.cfg.Observer.SandboxCall(op, r.now().Sub(start), err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// closed reports whether ch is closed (it is never sent on).
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
