//go:build linux

// Package direct runs a monitor assembled by hand for e2e tests: netmon on a
// sandbox netns and a hotplug.Reconciler driving a sandbox from it, as
// shimhook does after its first reconcile, but without shimhook, so a test
// can change what shimhook does not expose (netmon's receive buffer, the
// retry backoff) and see what it hides: the monitor's view (WaitView), how
// many reconcile passes it made (Passes) and how its Run ended (WaitRun).
//
// The reconciler reads the view through a tee: netmon's change signal is
// meant for one reader, the reconciler, so the tee forwards it and also
// wakes the test's WaitView.
package direct

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/metrics"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// stopWait bounds how long the cleanup waits for Run to return after cancel.
const stopWait = 10 * time.Second

// Config says what to watch and what to drive.
type Config struct {
	Sandbox      hotplug.Sandbox
	SandboxNetNS string // the netns netmon watches
	DockerdNetNS string // where endpoint peers live
	// Log receives netmon's and the reconciler's logs (the reconciler's
	// with a netns field); nil: netmontest.Log(t).
	Log *logrus.Entry
	// Metrics, if set, is told about netlink events and sandbox calls.
	Metrics *metrics.Sandbox
	// Netmon, if set, changes netmon's config before it is made.
	Netmon func(*netmon.Config)
	// CallTimeout bounds each sandbox call (0: the reconciler's default).
	CallTimeout time.Duration
}

// Monitor is a running netmon and reconciler.
type Monitor struct {
	// Netmon is the view of the sandbox netns. Do not read its Changed:
	// the tee does.
	Netmon     *netmon.Monitor
	Reconciler *hotplug.Reconciler

	passes atomic.Int64
	mu     sync.Mutex    // guards bc and pc
	bc     chan struct{} // closed and replaced on every change of the view
	pc     chan struct{} // closed and replaced on every pass
	seen   uint64        // the newest view generation a pass has read
	ran    chan struct{} // closed when Run returned
	runErr error         // Run's result, valid once ran is closed
}

// Start starts netmon and then the reconciler's Run, with a 20-200 ms retry
// backoff (quick, for tests). Cleanup cancels Run, fails t if it does not
// return within 10 s or returns an error, then closes netmon and waits for
// the tee.
func Start(t testing.TB, cfg Config) *Monitor {
	t.Helper()
	log := cfg.Log
	if log == nil {
		log = netmontest.Log(t)
	}
	ncfg := netmon.Config{NetNSPath: cfg.SandboxNetNS, DockerdNetNS: cfg.DockerdNetNS, Log: log}
	if cfg.Metrics != nil {
		ncfg.Observer = cfg.Metrics
	}
	if cfg.Netmon != nil {
		cfg.Netmon(&ncfg)
	}
	nm, err := netmon.New(ncfg)
	if err != nil {
		t.Fatalf("netmon.New: %v", err)
	}
	t.Cleanup(func() { nm.Close() })
	m := &Monitor{Netmon: nm, bc: make(chan struct{}), pc: make(chan struct{}), ran: make(chan struct{})}
	src := &tee{Monitor: nm, m: m, rc: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	hcfg := hotplug.Config{Sandbox: cfg.Sandbox, Source: src, Log: log.WithField("netns", cfg.SandboxNetNS),
		CallTimeout: cfg.CallTimeout, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	if cfg.Metrics != nil {
		hcfg.Observer = cfg.Metrics
	}
	if m.Reconciler, err = hotplug.New(hcfg); err != nil {
		t.Fatalf("hotplug.New: %v", err)
	}
	if err := nm.Start(context.Background()); err != nil {
		t.Fatalf("netmon Start: %v", err)
	}
	go src.run()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		m.runErr = m.Reconciler.Run(ctx)
		close(m.ran)
	}()
	t.Cleanup(func() {
		cancel()
		if ended, err := m.WaitRun(stopWait); !ended {
			t.Errorf("reconciler still running %v after cancel", stopWait)
		} else if err != nil {
			t.Errorf("reconciler: %v", err)
		}
		close(src.stop)
		<-src.done
	})
	return m
}

// View returns netmon's current view (not counted as a pass).
func (m *Monitor) View() *view.Snapshot { return m.Netmon.Snapshot() }

// Passes returns how many reconcile passes have read the view.
func (m *Monitor) Passes() int64 { return m.passes.Load() }

// WaitPasses waits until the reconciler has begun more than n passes (read
// the view more than n times) and returns the count; it fails t at the
// deadline. A pass counted after the test read Passes begins after every
// pass counted before has ended (passes run one at a time).
func (m *Monitor) WaitPasses(t testing.TB, timeout time.Duration, n int64) int64 {
	t.Helper()
	m.waitPass(t, timeout, fmt.Sprintf("a reconcile pass after pass %d", n), func(int64, uint64) bool { return m.Passes() > n })
	return m.Passes()
}

// WaitPassOver waits until a reconcile pass has read a view of generation
// gen or newer (a snapshot WaitView returned, say): that pass has seen what
// the test saw. It fails t at the deadline. The pass may still be running:
// WaitPasses tells when it has ended.
func (m *Monitor) WaitPassOver(t testing.TB, timeout time.Duration, gen uint64) {
	t.Helper()
	m.waitPass(t, timeout, fmt.Sprintf("a reconcile pass reading view generation %d", gen), func(_ int64, seen uint64) bool { return seen >= gen })
}

// waitPass re-checks cond after every pass until it holds, or fails t.
func (m *Monitor) waitPass(t testing.TB, timeout time.Duration, what string, cond func(passes int64, seen uint64) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		ch, seen := m.pc, m.seen
		m.mu.Unlock()
		if cond(m.Passes(), seen) {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("no %s within %v (passes %d, newest generation read %d)", what, timeout, m.Passes(), seen)
		}
	}
}

// WaitRun waits up to timeout for the reconciler's Run to return (the test
// cancelled it, netmon was closed, or the sandbox died): ended says whether
// it did, err is what it returned.
func (m *Monitor) WaitRun(timeout time.Duration) (ended bool, err error) {
	select {
	case <-m.ran:
		return true, m.runErr
	case <-time.After(timeout):
		return false, nil
	}
}

// WaitView waits until cond holds for the view, re-checking on every
// change. It fails t at the deadline or if netmon ends first.
func (m *Monitor) WaitView(t testing.TB, timeout time.Duration, what string, cond func(*view.Snapshot) bool) *view.Snapshot {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		ch := m.bc
		m.mu.Unlock()
		snap := m.View()
		if cond(snap) {
			return snap
		}
		select {
		case <-ch:
		case <-m.Netmon.Done():
			t.Fatalf("monitor ended while waiting for %s: %v", what, m.Netmon.Err())
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; generation %d, resyncs %d", timeout, what, snap.Generation, snap.Resyncs)
		}
	}
}

// LinkState is a WaitView condition on the link named name.
func LinkState(name string, cond func(*view.Link) bool) func(*view.Snapshot) bool {
	return func(s *view.Snapshot) bool {
		l := s.LinkByName(name)
		return l != nil && cond(l)
	}
}

// tee is the reconciler's hotplug.Source: netmon, with Snapshot counted as
// a pass and the change signal forwarded to the reconciler (rc, capacity 1,
// coalescing like netmon's) and broadcast to WaitView.
type tee struct {
	*netmon.Monitor
	m    *Monitor
	rc   chan struct{}
	stop chan struct{}
	done chan struct{}
}

var _ hotplug.Source = (*tee)(nil)

// Snapshot counts the pass before it reads the view: a pass counted after a
// test read Passes reads a view at least as new as what the test saw then.
func (s *tee) Snapshot() *view.Snapshot {
	s.m.passes.Add(1)
	snap := s.Monitor.Snapshot()
	s.m.mu.Lock()
	s.m.seen = max(s.m.seen, snap.Generation)
	close(s.m.pc)
	s.m.pc = make(chan struct{})
	s.m.mu.Unlock()
	return snap
}

func (s *tee) Changed() <-chan struct{} { return s.rc }

func (s *tee) run() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case <-s.Monitor.Changed():
			select {
			case s.rc <- struct{}{}:
			default:
			}
			s.m.mu.Lock()
			close(s.m.bc)
			s.m.bc = make(chan struct{})
			s.m.mu.Unlock()
		}
	}
}
