//go:build linux

package faults

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/direct"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/netmon/view"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// A sandbox that fails, dies or hangs.

// TestSandboxFailsThenRecovers: AddInterface fails N times. The
// monitor stays up with a bounded goroutine count, retries with doubling
// backoff (250 ms, 500 ms, 1 s: shimhook's defaults), and attaches once the
// sandbox recovers; each outcome is counted.
func TestSandboxFailsThenRecovers(t *testing.T) {
	e := newEnv(t)
	const id, failures = "ft-fails", 3
	var mu sync.Mutex
	var at []time.Time
	fs := &hotplugtest.FakeSandbox{}
	fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		mu.Lock()
		at = append(at, time.Now())
		n := len(at)
		mu.Unlock()
		if n <= failures {
			return nil, fmt.Errorf("QMP device_add: injected failure %d", n)
		}
		return fs.GuestAddInterface(inf)
	}
	ep := e.addEndpoint(t, "eth0", true)
	cfg := e.shimConfig(id, fs)
	cfg.Settings.ReadyTimeout = 100 * time.Millisecond
	base := runtime.NumGoroutine()
	stop := make(chan struct{})
	peak := peakGoroutines(stop)
	m := startShim(t, cfg)
	waitUntil(t, waitTimeout, "the attach after the failures", func() (bool, string) {
		return slices.Equal(m.NICNames(), []string{"eth0"}) && slices.Contains(fs.GuestMACs(), ep.MAC.String()),
			fmt.Sprintf("attached %v, guest %v", m.NICNames(), fs.GuestMACs())
	})
	close(stop)
	mu.Lock()
	defer mu.Unlock()
	if len(at) != failures+1 {
		t.Fatalf("%d AddInterface calls, want %d", len(at), failures+1)
	}
	for i := 1; i < len(at); i++ {
		gap, want := at[i].Sub(at[i-1]), 250*time.Millisecond<<(i-1)
		t.Logf("attempt %d after %v (backoff %v)", i+1, gap.Round(time.Millisecond), want)
		if gap < want*9/10 || gap > want+time.Second {
			t.Errorf("attempt %d came %v after the previous one; backoff %v", i+1, gap, want)
		}
	}
	if p := peak(); p > base+12 {
		t.Errorf("goroutines peaked at %d while failing (%d before Start)", p, base)
	}
	for _, c := range []struct {
		outcome string
		want    float64
	}{{"error", failures}, {"ok", 1}} {
		if got := metric(t, e.reg, "kata_netmon_sandbox_calls_total", id, "op", "AddInterface", "outcome", c.outcome); got != c.want {
			t.Errorf("AddInterface %s = %v, want %v", c.outcome, got, c.want)
		}
	}
	if got := metric(t, e.reg, "kata_netmon_sandbox_call_duration_seconds", id, "op", "AddInterface"); got != failures+1 {
		t.Errorf("AddInterface latency observations = %v, want %d", got, failures+1)
	}
	if got := metric(t, e.reg, "kata_netmon_interfaces_attached", id); got != 1 {
		t.Errorf("interfaces_attached = %v, want 1", got)
	}
	if errs := e.log.Entries(logrus.ErrorLevel, "attach failed"); len(errs) != failures {
		t.Errorf("%d attach error logs, want %d:%s", len(errs), failures, e.log.Dump(logrus.WarnLevel))
	}
	checkLogFields(t, e.log)
}

// TestSandboxDead: the sandbox answers with Kata's errors for a dead
// agent, at Start or later. The monitor gives up at once: no retry, no
// further call even for a new endpoint, its goroutines and sockets gone
// before Stop, which then returns at once.
func TestSandboxDead(t *testing.T) {
	tests := []struct {
		name    string
		err     string
		atStart bool
	}{
		{"Dead agent at Start", "rpc error: code = Unavailable desc = Dead agent", true},
		{"ttrpc closed later", "ttrpc: closed", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			id := "ft-dead"
			var dead atomic.Bool
			dead.Store(tc.atStart)
			fs := &hotplugtest.FakeSandbox{}
			fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
				if dead.Load() {
					// What Kata's adapter returns for Kata's error.
					return nil, fmt.Errorf("%w: %s", hotplug.ErrSandboxDead, tc.err)
				}
				return fs.GuestAddInterface(inf)
			}
			e.addEndpoint(t, "eth0", true)
			cfg := e.shimConfig(id, fs)
			base := runtime.NumGoroutine()
			m := startShim(t, cfg)
			if !tc.atStart {
				if got := m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
					t.Fatalf("Attached = %v before the agent died", got)
				}
				dead.Store(true)
				e.addEndpoint(t, "eth1", false)
			}
			if es, err := e.log.Wait(waitTimeout, logrus.ErrorLevel, "monitoring stops", 1); err != nil {
				t.Fatal(err)
			} else if len(es) != 1 {
				t.Errorf("%d logs that monitoring stops, want 1:%s", len(es), e.log.Dump(logrus.WarnLevel))
			}
			// Everything Start started is gone (netmon too) without Stop.
			waitUntil(t, waitTimeout, "goroutines back to the count before Start", func() (bool, string) {
				n := runtime.NumGoroutine()
				return n <= base, fmt.Sprintf("%d goroutines, %d before Start", n, base)
			})
			calls := len(fs.Calls())
			if n := len(fs.CallsOf(hotplugtest.OpAddInterface)) - map[bool]int{true: 0, false: 1}[tc.atStart]; n != 1 {
				t.Errorf("%d AddInterface calls after the agent died, want 1: %v", n, fs.Ops())
			}
			// Given up: a new endpoint is not even looked at. Nothing of the
			// monitor runs any more (the goroutines above), so no call can
			// come; the endpoint is made ready in the kernel, which a live
			// monitor would have attached.
			eth2 := e.addEndpoint(t, "eth2", false)
			waitRunning(t, e.Sandbox, eth2.Index)
			if n := len(fs.Calls()); n != calls {
				t.Errorf("%d sandbox calls after giving up: %v", n-calls, fs.Ops())
			}
			if got := metric(t, e.reg, "kata_netmon_sandbox_calls_total", id, "op", "AddInterface", "outcome", "dead"); got != 1 {
				t.Errorf("AddInterface dead = %v, want 1", got)
			}
			begin := time.Now()
			if err := stopWithin(t, m, time.Second); err != nil {
				t.Errorf("Stop: %v", err)
			}
			if took := time.Since(begin); took > 100*time.Millisecond {
				t.Errorf("Stop of a monitor that gave up took %v", took)
			}
			if n := seriesOf(t, e.reg, id); n != 0 {
				t.Errorf("%d series left after Stop", n)
			}
			checkLogFields(t, e.log)
		})
	}
}

// TestSandboxHangs: a sandbox call that ignores its context.
func TestSandboxHangs(t *testing.T) {
	// Abandoned at its deadline during shimhook.Start and logged; the
	// sandbox never sees two calls at once; once the call returns, calls
	// resume and the attach is retried.
	t.Run("abandoned then recovers", func(t *testing.T) {
		e := newEnv(t)
		const id = "ft-hang"
		fs, hung, release := hangFirstAttach(t)
		ep := e.addEndpoint(t, "eth0", true)
		cfg := e.shimConfig(id, fs)
		cfg.Settings.CallTimeout = 200 * time.Millisecond
		cfg.Settings.ReadyTimeout = 400 * time.Millisecond
		startShim(t, cfg)
		<-hung
		if got := metric(t, e.reg, "kata_netmon_sandbox_calls_total", id, "op", "AddInterface", "outcome", "abandoned"); got != 1 {
			t.Errorf("AddInterface abandoned = %v, want 1", got)
		}
		if n := len(e.log.Entries(logrus.ErrorLevel, "sandbox call did not return in time")); n != 1 {
			t.Errorf("%d logs of the abandoned call, want 1:%s", n, e.log.Dump(logrus.WarnLevel))
		}
		release()
		if _, err := fs.WaitFor(waitTimeout, func([]hotplugtest.Call) bool {
			return slices.Contains(fs.GuestMACs(), ep.MAC.String())
		}, "the retried attach"); err != nil {
			t.Fatal(err)
		}
		// Over the whole hang: a call made while the hung one ran would
		// have been in flight with it.
		if n := fs.MaxInFlight(); n != 1 {
			t.Errorf("%d sandbox calls at once: %v", n, fs.Ops())
		}
		checkLogFields(t, e.log)
	})

	// While an abandoned call hangs, the reconciler holds every further
	// call back (nothing spins either): a pass that sees a new ready
	// endpoint, and has ended (a later pass began), made no call. Run
	// directly (no shimhook) to see the passes.
	t.Run("no call while hung", func(t *testing.T) {
		e := newEnv(t)
		fs, hung, release := hangFirstAttach(t)
		d := e.startDirect(t, fs, "ft-hang-held", func(c *direct.Config) { c.CallTimeout = 200 * time.Millisecond })
		eth0 := e.addEndpoint(t, "eth0", true)
		select {
		case <-hung:
		case <-time.After(waitTimeout):
			t.Fatalf("no AddInterface: %v", fs.Ops())
		}
		if _, err := e.log.Wait(waitTimeout, logrus.ErrorLevel, "sandbox call did not return in time", 1); err != nil {
			t.Fatal(err)
		}
		calls := len(fs.Calls())

		// A reason to call: a second endpoint, ready in the view...
		eth1 := e.addEndpoint(t, "eth1", false)
		snap := d.WaitView(t, waitTimeout, "eth1 ready", func(s *view.Snapshot) bool {
			l := s.LinkByName("eth1")
			return l != nil && l.Index == eth1.Index && matcher.Classify(l).State == matcher.Ready
		})
		// ...read by a pass...
		d.WaitPassOver(t, waitTimeout, snap.Generation)
		// ...which has ended: the next pass begins only after it, and a
		// change made now (an ifb the matcher ignores) brings one.
		p := d.Passes()
		poke := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
		if err := e.Sandbox.LinkAdd(poke); err != nil {
			t.Fatalf("add ifb: %v", err)
		}
		t.Cleanup(func() { _ = e.Sandbox.LinkDel(poke) })
		d.WaitPasses(t, waitTimeout, p)
		if n := len(fs.Calls()); n != calls {
			t.Errorf("%d sandbox calls while one hung: %v", n-calls, fs.Ops())
		}

		release()
		want := slices.Sorted(slices.Values([]string{eth0.MAC.String(), eth1.MAC.String()}))
		if _, err := fs.WaitFor(waitTimeout, func([]hotplugtest.Call) bool {
			return slices.Equal(fs.GuestMACs(), want)
		}, "both attached once the call returned"); err != nil {
			t.Fatal(err)
		}
		if n := fs.MaxInFlight(); n != 1 {
			t.Errorf("%d sandbox calls at once: %v", n, fs.Ops())
		}
	})

	// Stop during a call that never returns: Stop abandons it and returns
	// by its deadline; the hung call's goroutine is the one thing left
	// behind, until the call returns.
	t.Run("stop while hung", func(t *testing.T) {
		e := newEnv(t)
		const id = "ft-hang-stop"
		release, hung := make(chan struct{}), make(chan struct{})
		t.Cleanup(func() { close(release) }) // runs before the leak check
		fs := &hotplugtest.FakeSandbox{}
		fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
			close(hung)
			<-release
			return nil, errors.New("released")
		}
		cfg := e.shimConfig(id, fs)
		cfg.Settings.CallTimeout = time.Hour
		base := runtime.NumGoroutine()
		m, err := shimhook.Start(context.Background(), cfg)
		if err != nil || m == nil {
			t.Fatalf("Start = %v, %v", m, err)
		}
		e.addEndpoint(t, "eth0", false)
		select {
		case <-hung:
		case <-time.After(waitTimeout):
			t.Fatalf("no AddInterface: %v", fs.Ops())
		}
		begin := time.Now()
		err = stopWithin(t, m, time.Second)
		t.Logf("Stop took %v: %v", time.Since(begin).Round(time.Millisecond), err)
		// Abandoned by Stop, an hour before its deadline: the log says so
		// and does not blame the deadline.
		if n := len(e.log.Entries(logrus.WarnLevel, "sandbox call still running when the monitor stopped")); n != 1 {
			t.Errorf("%d logs of the call abandoned by Stop, want 1:%s", n, e.log.Dump(logrus.WarnLevel))
		}
		if n := len(e.log.Entries(logrus.ErrorLevel, "sandbox call did not return in time")); n != 0 {
			t.Errorf("%d logs blame a deadline that never passed:%s", n, e.log.Dump(logrus.WarnLevel))
		}
		waitUntil(t, waitTimeout, "only the hung call left", func() (bool, string) {
			n := runtime.NumGoroutine()
			return n == base+1, fmt.Sprintf("%d goroutines, %d before Start", n, base)
		})
		if g := goroutineStacks("hotplug.(*caller).do", "FakeSandbox).AddInterface"); len(g) != 1 {
			t.Errorf("%d hung call goroutines, want 1:\n%s", len(g), strings.Join(g, "\n\n"))
		}
		if err2 := m.Stop(context.Background()); err2 != err {
			t.Errorf("second Stop = %v, first %v", err2, err)
		}
		if n := seriesOf(t, e.reg, id); n != 0 {
			t.Errorf("%d series left after Stop", n)
		}
	})
}

// hangFirstAttach returns a sandbox whose first AddInterface ignores its
// context and blocks until release is called (then fails, as a QMP timeout
// would); later calls attach. hung is closed when the first call blocks.
// release is idempotent and also runs on cleanup.
func hangFirstAttach(t *testing.T) (fs *hotplugtest.FakeSandbox, hung <-chan struct{}, release func()) {
	blocked, released := make(chan struct{}), make(chan struct{})
	release = sync.OnceFunc(func() { close(released) })
	t.Cleanup(release)
	var first atomic.Bool
	first.Store(true)
	fs = &hotplugtest.FakeSandbox{}
	fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		if first.CompareAndSwap(true, false) {
			close(blocked)
			<-released
			return nil, errors.New("QMP: device_add timed out")
		}
		return fs.GuestAddInterface(inf)
	}
	return fs, blocked, release
}
