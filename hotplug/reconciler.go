package hotplug

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// Source is what the reconciler needs of netmon: the view, a signal that it
// changed, a fresh by-name lookup (Kata looks links up by name, and names are
// reused), and the end of the watch. *netmon.Monitor satisfies it. Once Done
// is closed, LinkByName may fail: the watch no longer answers.
type Source interface {
	Snapshot() *view.Snapshot
	Changed() <-chan struct{}
	// LinkByName reads the link now carrying name from the kernel, not
	// from the view: Index, Name, Kind, MAC, MTU and RawFlags are set.
	LinkByName(name string) (*view.Link, error)
	Done() <-chan struct{}
}

// LinkUpper is a Source that can also set a link of the watched netns up.
// The reconciler uses it for one repair only: a sandbox with DetachByName
// (Kata 4.1 as shipped) sets the link down when it undoes a failed
// AddInterface, and nothing would set it up again (Kata's tcfilter attach
// does not), so the endpoint Docker still has would stay dead.
type LinkUpper interface {
	SetLinkUp(index int) error
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

// Observer receives one report per sandbox call, the number of guest NICs
// whenever it changes, and every recovered panic. Its methods must not
// block.
type Observer interface {
	SandboxCall(op string, d time.Duration, err error)
	GuestNICs(n int)
	// Panicked reports a panic recovered in the goroutine named where.
	Panicked(where string)
}

// Status summarises one reconcile pass.
type Status struct {
	NICs    []matcher.GuestNIC // what the guest has now, by ifindex order
	Pending []string           // candidates not ready yet, or ready and waiting (names)
	Failed  []string           // ready endpoints whose last attach failed (names)
	// Refused: ready endpoints the sandbox refused to attach (ErrRefused);
	// nothing more happens for them until the guest's NICs change.
	Refused []string
	// RoutesFailed: the last UpdateRoutes failed and is due again (after
	// maxRouteAttempts failures of one set it is not, until the set changes).
	RoutesFailed bool
	// NextRetry is when a failed call is due again; zero when none is.
	NextRetry time.Time
}

// Settled reports that nothing is pending or failed, routes included. A
// refused endpoint is settled: waiting would not change the answer.
func (s Status) Settled() bool { return len(s.Pending) == 0 && len(s.Failed) == 0 && !s.RoutesFailed }

// ErrNotSettled is returned by Sync when its deadline passed with endpoints
// still pending or failed.
var ErrNotSettled = errors.New("endpoints not attached by the deadline")

// errSourceDone: the netns watch ended.
var errSourceDone = errors.New("the netns watch ended")

// Reconciler makes the guest's NICs and routes follow the Docker endpoints of
// the sandbox netns.
//
// Reconcile, Sync and Run must be called from one goroutine at a time: that
// is what serialises the sandbox calls, and it owns every field but nics.
// NICs may be called concurrently (nics has its own lock).
type Reconciler struct {
	cfg   Config
	log   *logrus.Entry
	caps  Capabilities
	calls *caller    // serialised, deadline-bound sandbox calls
	retry *scheduler // backoff of failed operations
	nics  *nicSet    // what the guest has

	attachFail map[int]*retry    // by ifindex
	refused    map[int]bool      // by ifindex: the last attach was refused (ErrRefused)
	detachFail map[string]*retry // by guest MAC
	routeFail  *retry            // the last UpdateRoutes failed
	lastRoutes []*Route          // the last route set the guest accepted
	// failedRoutes is the route set of the failing UpdateRoutes; after
	// maxRouteAttempts failures it is not pushed again until the set changes.
	failedRoutes []*Route
	stranded     map[string]bool // MACs left in the guest: no unplug capability
	// unsure maps the MACs of NICs a failed, abandoned or not undone
	// AddInterface may have plugged to the name it was called with; an
	// entry goes when the NIC is accounted for (attached, adopted, found
	// absent or unplugged).
	unsure map[string]string
	// listDue: the guest may hold NICs the reconciler does not know of (at
	// start: a runtime's own scan, an earlier monitor; after a list
	// failed): list it before the next attach and adopt what it has.
	listDue bool
	warned  map[string]bool // one-time warnings already logged
	dead    error           // set once the sandbox is dead
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
		cfg.MaxBackoff = max(10*time.Second, cfg.MinBackoff)
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
		calls:      &caller{timeout: cfg.CallTimeout, log: log, obs: cfg.Observer, now: time.Now},
		retry:      &scheduler{min: cfg.MinBackoff, max: cfg.MaxBackoff, now: time.Now},
		nics:       &nicSet{m: map[int]matcher.GuestNIC{}, obs: cfg.Observer},
		attachFail: map[int]*retry{},
		refused:    map[int]bool{},
		detachFail: map[string]*retry{},
		stranded:   map[string]bool{},
		unsure:     map[string]string{},
		listDue:    true,
		warned:     map[string]bool{},
	}
	if !caps.HotUnplugNIC {
		log.Warn("hypervisor cannot hot-unplug NICs: disconnected networks will stay in the guest without a backend")
	}
	return r, nil
}

// NICs returns what the guest has now, ordered by ifindex. Safe to call
// concurrently with Reconcile.
func (r *Reconciler) NICs() []matcher.GuestNIC { return r.nics.list() }

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
		t := time.NewTimer(max(st.NextRetry.Sub(r.retry.now()), time.Millisecond))
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
	case <-r.calls.hungDone(): // nil (blocks) unless a call was abandoned
	}
	return nil
}

// Sync reconciles until every candidate endpoint is attached (or refused)
// and nothing is pending, or until ctx ends. A sandbox with no candidates
// returns at once. At the deadline it returns ErrNotSettled, wrapped with
// the names.
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
			return st, fmt.Errorf("%w: pending %v, failed %v: %w", ErrNotSettled, st.Pending, st.Failed, err)
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
	r.calls.reap()
	r.retry.beginPass()
	snap := r.cfg.Source.Snapshot()
	var st Status

	if r.detachGone(ctx, snap) {
		// A NIC went: the sandbox may now take what it refused.
		clear(r.refused)
	}
	r.dropOrphans(ctx, snap)

	var ready []*view.Link
	for _, d := range matcher.Endpoints(snap) {
		switch d.State {
		case matcher.Pending:
			st.Pending = append(st.Pending, d.Name)
		case matcher.Ready:
			if _, ok := r.nics.at(d.Index); !ok {
				ready = append(ready, snap.Links[d.Index])
			}
		}
	}
	if len(ready) > 0 {
		r.attachReady(ctx, ready)
	}
	r.pushRoutes(ctx, snap)

	// Forget what is known of links that left the view.
	for idx := range r.attachFail {
		if _, ok := snap.Links[idx]; !ok {
			delete(r.attachFail, idx)
			delete(r.refused, idx)
		}
	}
	// A ready endpoint still not attached is refused, failed (a call
	// failed) or pending (the view was stale, a call is still hung, or it
	// waits for another NIC to go).
	for _, l := range ready {
		switch _, ok := r.nics.at(l.Index); {
		case ok, r.stranded[l.MAC.String()], r.nics.macTaken(l) != nil:
		case r.refused[l.Index]:
			st.Refused = append(st.Refused, l.Name)
		case r.attachFail[l.Index] != nil:
			st.Failed = append(st.Failed, l.Name)
		default:
			st.Pending = append(st.Pending, l.Name)
		}
	}
	sort.Strings(st.Pending)
	sort.Strings(st.Failed)
	sort.Strings(st.Refused)
	st.NICs = r.nics.list()
	st.RoutesFailed = r.routeFail != nil && r.routeFail.attempts < maxRouteAttempts
	st.NextRetry = r.retry.next()
	if r.dead != nil {
		return st, r.dead
	}
	return st, nil
}

// failed records a failed call of the operation f tracks and schedules its
// retry; a dead sandbox ends the reconciler.
func (r *Reconciler) failed(f *retry, err error) *retry {
	if errors.Is(err, ErrSandboxDead) && r.dead == nil {
		r.dead = err
	}
	return r.retry.fail(f)
}

// once reports whether key is seen for the first time: for lines logged
// once per link or MAC.
func (r *Reconciler) once(key string) bool {
	if r.warned[key] {
		return false
	}
	r.warned[key] = true
	return true
}

// nicSet is what the guest has, by link ifindex. mu guards m: the
// reconciling goroutine writes it, NICs reads it from anywhere.
type nicSet struct {
	obs Observer
	mu  sync.Mutex
	m   map[int]matcher.GuestNIC
}

func (s *nicSet) set(n matcher.GuestNIC) {
	s.mu.Lock()
	s.m[n.Index] = n
	count := len(s.m)
	s.mu.Unlock()
	if s.obs != nil {
		s.obs.GuestNICs(count)
	}
}

func (s *nicSet) drop(index int) {
	s.mu.Lock()
	delete(s.m, index)
	count := len(s.m)
	s.mu.Unlock()
	if s.obs != nil {
		s.obs.GuestNICs(count)
	}
}

func (s *nicSet) at(index int) (matcher.GuestNIC, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.m[index]
	return n, ok
}

func (s *nicSet) list() []matcher.GuestNIC {
	s.mu.Lock()
	out := make([]matcher.GuestNIC, 0, len(s.m))
	for _, n := range s.m {
		out = append(out, n)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// macTaken returns the guest NIC, of another link, that carries l's MAC, or
// nil. Kata and its agent tell NICs apart by MAC only, so a second link with
// that MAC (two endpoints given the same --mac-address) is neither attached
// (two NICs with one MAC: unplug and configuration would pick either) nor
// adopted (routes would name a device the guest lacks).
func (s *nicSet) macTaken(l *view.Link) *matcher.GuestNIC {
	mac := l.MAC.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.m {
		if n.Index != l.Index && n.MAC == mac {
			return &n
		}
	}
	return nil
}

// nameTaken returns the guest NIC, of another link, that the guest knows by
// l's name, or nil: after docker network disconnect and connect, the new
// endpoint reuses the name (eth1) of one whose detach may still be failing.
func (s *nicSet) nameTaken(l *view.Link) *matcher.GuestNIC {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.m {
		if n.Index != l.Index && n.Name == l.Name {
			return &n
		}
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
