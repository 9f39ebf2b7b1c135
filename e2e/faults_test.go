//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/metrics"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// ftLossRounds is how many overflow rounds TestFaultEventLoss runs.
const ftLossRounds = 50

// ftBurstAddrs is how many addresses each round puts on a throw-away ifb
// and then drops at once by deleting it: one syscall, and the kernel queues
// a RTM_DELADDR and RTM_DELROUTE per address on the monitor's sockets,
// orders of magnitude more than their tiny receive buffer holds.
const ftBurstAddrs = 1000

// TestFaultEventLoss: the monitor's sockets overflow (ReceiveBufferSize 1,
// bursts of thousands of address and route events) in every round, while
// Docker endpoints are added, configured, removed and the default route
// moves between them; many of those events are lost. In every round the
// monitor must have resynced, and afterwards the attached set and the last
// routes pushed must be exactly what a fresh list of the netns implies.
func TestFaultEventLoss(t *testing.T) {
	e := ftNewEnv(t)
	sb := &hotplugtest.FakeSandbox{}
	const id = "ft-loss"
	d := e.startDirect(t, sb, id, func(c *netmon.Config) { c.ReceiveBufferSize = 1 })

	// Two endpoints stay for the whole test; the default route moves
	// between them. Extras come and go, named like Docker does (the lowest
	// free ethN), so names are reused by new links.
	fixed := []*ftEP{e.endpoint(t, "eth0", true), e.endpoint(t, "eth1", false)}
	gwOn := 0
	var extras []*ftEP
	freeName := func() string {
		for i := 2; ; i++ {
			n := fmt.Sprintf("eth%d", i)
			if !slices.ContainsFunc(extras, func(ep *ftEP) bool { return ep.Name == n }) {
				return n
			}
		}
	}
	var slowest time.Duration
	begin := time.Now()
	for round := range ftLossRounds {
		start := time.Now()
		resyncs := d.Snapshot().Resyncs
		metResyncs := ftMetric(t, e.reg, "kata_netmon_resyncs_total", id)

		// Docker's first step for a new endpoint (untied veth)...
		ep := e.newEP(t)
		// ...a burst of address (and local route) events...
		churn := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
		if err := e.Sandbox.LinkAdd(churn); err != nil {
			t.Fatalf("add ifb: %v", err)
		}
		if err := e.Sandbox.LinkSetUp(churn); err != nil {
			t.Fatalf("ifb up: %v", err)
		}
		for i := range ftBurstAddrs {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, byte(i/250), byte(i%250+1)), Mask: net.CIDRMask(32, 32)}}
			if err := e.Sandbox.AddrAdd(churn, a); err != nil {
				t.Fatalf("add %s: %v", a, err)
			}
			if i == ftBurstAddrs/2 {
				// ...in the middle of which Docker finishes the new
				// endpoint and removes the oldest extra...
				ep.configure(freeName(), false)
				if len(extras) >= 3 {
					old := extras[0]
					extras = extras[1:]
					if err := old.Host.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: old.HostIndex}}); err != nil {
						t.Fatalf("delete %s: %v", old.Name, err)
					}
					old.Close()
				}
				extras = append(extras, ep)
				// ...a route through the new one, and now and then the
				// default route moves to the other fixed endpoint.
				if err := e.Sandbox.RouteAdd(ftRoute(fmt.Sprintf("10.200.%d.0/24", round), ep.Index)); err != nil {
					t.Fatalf("route via %s: %v", ep.Name, err)
				}
				if round%5 == 4 {
					gwOn = 1 - gwOn
					r := ftRoute("0.0.0.0/0", fixed[gwOn].Index)
					if err := e.Sandbox.RouteReplace(r); err != nil {
						t.Fatalf("move the default route to %s: %v", fixed[gwOn].Name, err)
					}
				}
			}
		}
		// ...and the big one: every address and its routes go at once.
		if err := e.Sandbox.LinkDel(churn); err != nil {
			t.Fatalf("delete ifb: %v", err)
		}

		// The netns is quiet now. What it implies, read from scratch, is
		// what this test configured (so the comparison below is not
		// vacuous)...
		ftWaitRunning(t, e.Sandbox, ep.Index)
		wantMACs, wantRoutes := hotplugtest.Implied(t, e.SandboxPath, e.DockerdPath)
		var model []string
		for _, p := range append(slices.Clone(fixed), extras...) {
			model = append(model, p.MAC.String())
		}
		slices.Sort(model)
		if !slices.Equal(wantMACs, model) {
			t.Fatalf("round %d: a fresh list implies endpoints %v; configured %v", round, wantMACs, model)
		}
		if len(wantRoutes) != 1+len(extras) || wantRoutes[len(wantRoutes)-1].Device != fixed[gwOn].Name {
			t.Fatalf("round %d: a fresh list implies routes %s", round, ftRoutesString(wantRoutes))
		}
		// ...and the monitor, having resynced, got there.
		ftWaitUntil(t, ftWait, fmt.Sprintf("round %d: a resync, then the implied state", round), func() (bool, string) {
			snap := d.Snapshot()
			got, _ := ftLastRoutes(sb)
			macs := sb.GuestMACs()
			ok := snap.Resyncs > resyncs && slices.Equal(macs, wantMACs) && ftSameRoutes(got, wantRoutes)
			return ok, fmt.Sprintf("resyncs %d -> %d; guest %v, want %v; last routes %s, want %s",
				resyncs, snap.Resyncs, macs, wantMACs, ftRoutesString(got), ftRoutesString(wantRoutes))
		})
		ftInvariants(t, sb)
		if got := ftMetric(t, e.reg, "kata_netmon_resyncs_total", id); got <= metResyncs {
			t.Fatalf("round %d: resyncs_total %v -> %v", round, metResyncs, got)
		}
		select {
		case <-d.Done():
			t.Fatalf("round %d: monitor ended: %v", round, d.Err())
		default:
		}
		slowest = max(slowest, time.Since(start))
	}
	snap := d.Snapshot()
	t.Logf("%d rounds in %v (slowest %v): %d resyncs, %d netlink events read, %d sandbox calls, %d reconcile passes",
		ftLossRounds, time.Since(begin).Round(time.Millisecond), slowest.Round(time.Millisecond), snap.Resyncs,
		int(ftEvents(t, e.reg, id)), len(sb.Calls()), d.passes.Load())
	if got := ftMetric(t, e.reg, "kata_netmon_resyncs_total", id); got != float64(snap.Resyncs) {
		t.Errorf("resyncs_total = %v, Snapshot.Resyncs = %d", got, snap.Resyncs)
	}
	if got, want := ftMetric(t, e.reg, "kata_netmon_interfaces_attached", id), float64(2+len(extras)); got != want {
		t.Errorf("interfaces_attached = %v, want %v", got, want)
	}
}

// TestFaultSandboxFailsThenRecovers: AddInterface fails N times. The
// monitor stays up with a bounded goroutine count, retries with doubling
// backoff (250 ms, 500 ms, 1 s: shimhook's defaults), and attaches once the
// sandbox recovers; each outcome is counted.
func TestFaultSandboxFailsThenRecovers(t *testing.T) {
	e := ftNewEnv(t)
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
	ep := e.endpoint(t, "eth0", true)
	cfg := e.shimConfig(id, fs)
	cfg.Settings.ReadyTimeout = 100 * time.Millisecond
	base := runtime.NumGoroutine()
	stop := make(chan struct{})
	peak := ftGoroutineMax(stop)
	m := ftStart(t, cfg)
	ftWaitUntil(t, ftWait, "the attach after the failures", func() (bool, string) {
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
		if got := ftMetric(t, e.reg, "kata_netmon_sandbox_calls_total", id, "op", "AddInterface", "outcome", c.outcome); got != c.want {
			t.Errorf("AddInterface %s = %v, want %v", c.outcome, got, c.want)
		}
	}
	if got := ftMetric(t, e.reg, "kata_netmon_sandbox_call_duration_seconds", id, "op", "AddInterface"); got != failures+1 {
		t.Errorf("AddInterface latency observations = %v, want %d", got, failures+1)
	}
	if got := ftMetric(t, e.reg, "kata_netmon_interfaces_attached", id); got != 1 {
		t.Errorf("interfaces_attached = %v, want 1", got)
	}
	if errs := ftEntries(e.hook, logrus.ErrorLevel, "attach failed"); len(errs) != failures {
		t.Errorf("%d attach error logs, want %d:%s", len(errs), failures, ftDumpLog(e.hook, logrus.WarnLevel))
	}
	ftCheckLogFields(t, e.hook)
}

// TestFaultSandboxDead: the sandbox answers with Kata's errors for a dead
// agent, at Start or later. The monitor gives up at once: no retry, no
// further call even for a new endpoint, its goroutines and sockets gone
// before Stop, which then returns at once.
func TestFaultSandboxDead(t *testing.T) {
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
			e := ftNewEnv(t)
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
			e.endpoint(t, "eth0", true)
			cfg := e.shimConfig(id, fs)
			base := runtime.NumGoroutine()
			m := ftStart(t, cfg)
			if !tc.atStart {
				if got := m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
					t.Fatalf("Attached = %v before the agent died", got)
				}
				dead.Store(true)
				e.endpoint(t, "eth1", false)
			}
			ftWaitUntil(t, ftWait, "the monitor to give up", func() (bool, string) {
				return len(ftEntries(e.hook, logrus.ErrorLevel, "monitoring stops")) == 1, ftDumpLog(e.hook, logrus.WarnLevel)
			})
			// Everything Start started is gone (netmon too) without Stop.
			ftWaitUntil(t, ftWait, "goroutines back to the count before Start", func() (bool, string) {
				n := runtime.NumGoroutine()
				return n <= base, fmt.Sprintf("%d goroutines, %d before Start", n, base)
			})
			calls := len(fs.Calls())
			if n := len(fs.CallsOf(hotplugtest.OpAddInterface)) - map[bool]int{true: 0, false: 1}[tc.atStart]; n != 1 {
				t.Errorf("%d AddInterface calls after the agent died, want 1: %v", n, fs.Ops())
			}
			// Given up: a new endpoint is not even looked at.
			e.endpoint(t, "eth2", false)
			time.Sleep(300 * time.Millisecond)
			if n := len(fs.Calls()); n != calls {
				t.Errorf("%d sandbox calls after giving up: %v", n-calls, fs.Ops())
			}
			if got := ftMetric(t, e.reg, "kata_netmon_sandbox_calls_total", id, "op", "AddInterface", "outcome", "dead"); got != 1 {
				t.Errorf("AddInterface dead = %v, want 1", got)
			}
			begin := time.Now()
			if err := ftStop(t, m, time.Second); err != nil {
				t.Errorf("Stop: %v", err)
			}
			if took := time.Since(begin); took > 100*time.Millisecond {
				t.Errorf("Stop of a monitor that gave up took %v", took)
			}
			if n := ftSeries(t, e.reg, id); n != 0 {
				t.Errorf("%d series left after Stop", n)
			}
			ftCheckLogFields(t, e.hook)
		})
	}
}

// TestFaultSandboxHangs: a sandbox call that ignores its context.
func TestFaultSandboxHangs(t *testing.T) {
	// Abandoned at its deadline and logged; no further call while it
	// hangs (the sandbox never sees two calls at once, and nothing spins);
	// once it returns, calls resume and the attach is retried.
	t.Run("abandoned then recovers", func(t *testing.T) {
		e := ftNewEnv(t)
		const id = "ft-hang"
		release, hung := make(chan struct{}), make(chan struct{})
		var once sync.Once
		t.Cleanup(func() { once.Do(func() { close(release) }) })
		var first atomic.Bool
		first.Store(true)
		fs := &hotplugtest.FakeSandbox{}
		fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
			if first.CompareAndSwap(true, false) {
				close(hung)
				<-release
				return nil, errors.New("QMP: device_add timed out")
			}
			return fs.GuestAddInterface(inf)
		}
		ep := e.endpoint(t, "eth0", true)
		cfg := e.shimConfig(id, fs)
		cfg.Settings.CallTimeout = 200 * time.Millisecond
		cfg.Settings.ReadyTimeout = 400 * time.Millisecond
		ftStart(t, cfg)
		<-hung
		if got := ftMetric(t, e.reg, "kata_netmon_sandbox_calls_total", id, "op", "AddInterface", "outcome", "abandoned"); got != 1 {
			t.Errorf("AddInterface abandoned = %v, want 1", got)
		}
		if n := len(ftEntries(e.hook, logrus.ErrorLevel, "sandbox call did not return in time")); n != 1 {
			t.Errorf("%d logs of the abandoned call, want 1:%s", n, ftDumpLog(e.hook, logrus.WarnLevel))
		}
		calls := len(fs.Calls())
		time.Sleep(500 * time.Millisecond)
		if n := len(fs.Calls()); n != calls {
			t.Errorf("%d sandbox calls while one hung: %v", n-calls, fs.Ops())
		}
		if n := fs.MaxInFlight(); n != 1 {
			t.Errorf("%d sandbox calls at once", n)
		}
		once.Do(func() { close(release) })
		if _, err := fs.WaitFor(ftWait, func([]hotplugtest.Call) bool {
			return slices.Contains(fs.GuestMACs(), ep.MAC.String())
		}, "the retried attach"); err != nil {
			t.Fatal(err)
		}
		ftCheckLogFields(t, e.hook)
	})

	// Stop during a call that never returns: Stop abandons it and returns
	// by its deadline; the hung call's goroutine is the one thing left
	// behind, until the call returns.
	t.Run("stop while hung", func(t *testing.T) {
		e := ftNewEnv(t)
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
		e.endpoint(t, "eth0", false)
		select {
		case <-hung:
		case <-time.After(ftWait):
			t.Fatalf("no AddInterface: %v", fs.Ops())
		}
		begin := time.Now()
		err = ftStop(t, m, time.Second)
		t.Logf("Stop took %v: %v", time.Since(begin).Round(time.Millisecond), err)
		// Abandoned by Stop, an hour before its deadline: the log says so
		// and does not blame the deadline.
		if n := len(ftEntries(e.hook, logrus.WarnLevel, "sandbox call still running when the monitor stopped")); n != 1 {
			t.Errorf("%d logs of the call abandoned by Stop, want 1:%s", n, ftDumpLog(e.hook, logrus.WarnLevel))
		}
		if n := len(ftEntries(e.hook, logrus.ErrorLevel, "sandbox call did not return in time")); n != 0 {
			t.Errorf("%d logs blame a deadline that never passed:%s", n, ftDumpLog(e.hook, logrus.WarnLevel))
		}
		ftWaitUntil(t, ftWait, "only the hung call left", func() (bool, string) {
			n := runtime.NumGoroutine()
			return n == base+1, fmt.Sprintf("%d goroutines, %d before Start", n, base)
		})
		if g := ftGoroutines("hotplug.(*caller).do", "FakeSandbox).AddInterface"); len(g) != 1 {
			t.Errorf("%d hung call goroutines, want 1:\n%s", len(g), strings.Join(g, "\n\n"))
		}
		if err2 := m.Stop(context.Background()); err2 != err {
			t.Errorf("second Stop = %v, first %v", err2, err)
		}
		if n := ftSeries(t, e.reg, id); n != 0 {
			t.Errorf("%d series left after Stop", n)
		}
	})
}

// TestFaultStopDuringAttach: Stop while an AddInterface is in flight (one
// that honours its context, as Kata's do): Stop returns promptly, the call
// is cancelled, nothing is undone, nothing leaks; Stop twice returns the
// same at once.
func TestFaultStopDuringAttach(t *testing.T) {
	e := ftNewEnv(t)
	const id = "ft-stop"
	inFlight := make(chan struct{})
	var once sync.Once
	fs := &hotplugtest.FakeSandbox{}
	fs.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		once.Do(func() { close(inFlight) })
		<-ctx.Done()
		return nil, ctx.Err()
	}
	m, err := shimhook.Start(context.Background(), e.shimConfig(id, fs))
	if err != nil || m == nil {
		t.Fatalf("Start = %v, %v", m, err)
	}
	e.endpoint(t, "eth0", true)
	select {
	case <-inFlight:
	case <-time.After(ftWait):
		t.Fatalf("no AddInterface: %v", fs.Ops())
	}
	begin := time.Now()
	err = ftStop(t, m, 2*time.Second)
	if took := time.Since(begin); err != nil || took > 500*time.Millisecond {
		t.Errorf("Stop = %v after %v", err, took)
	}
	begin = time.Now()
	if err2 := m.Stop(context.Background()); err2 != err || time.Since(begin) > 10*time.Millisecond {
		t.Errorf("second Stop = %v after %v", err2, time.Since(begin))
	}
	if n := len(fs.CallsOf(hotplugtest.OpRemoveInterface)); n != 0 {
		t.Errorf("RemoveInterface called: %v", fs.Ops())
	}
	if n := ftSeries(t, e.reg, id); n != 0 {
		t.Errorf("%d series left after Stop", n)
	}
}

// TestFaultCloseDuringAttach: the netns watch is closed while an
// AddInterface is in flight, and the call then succeeds. The NIC it
// plugged is a working one: the reconciler must not unplug it because the
// closed monitor can no longer confirm the link; it ends (the source is
// done). Before the fix it unplugged it ("link changed during AddInterface").
func TestFaultCloseDuringAttach(t *testing.T) {
	e := ftNewEnv(t)
	inFlight, closed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fs := &hotplugtest.FakeSandbox{}
	fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		once.Do(func() { close(inFlight) })
		<-closed
		return fs.GuestAddInterface(inf)
	}
	d := e.startDirect(t, fs, "ft-close", nil)
	ep := e.endpoint(t, "eth0", true)
	select {
	case <-inFlight:
	case <-time.After(ftWait):
		t.Fatalf("no AddInterface: %v", fs.Ops())
	}
	d.Close()
	close(closed)
	select {
	case err := <-d.runErr:
		if err != nil {
			t.Errorf("reconciler: %v", err)
		}
		d.runErr <- err
	case <-time.After(ftWait):
		t.Fatal("reconciler still running after its source closed")
	}
	// The pass in progress may still push the routes through the NIC it
	// plugged (from the view it read); nothing is unplugged.
	if n := len(fs.CallsOf(hotplugtest.OpAddInterface)); n != 1 || len(fs.CallsOf(hotplugtest.OpRemoveInterface)) != 0 {
		t.Errorf("sandbox calls %v, want one attach and no detach", fs.Ops())
	}
	if got := fs.GuestMACs(); !slices.Equal(got, []string{ep.MAC.String()}) {
		t.Errorf("guest NICs %v, want %s", got, ep.MAC)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := d.Start(context.Background()); !errors.Is(err, netmon.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

// TestFaultStartTwice: a second Start for a netns this process already
// watches is refused with one warning (two reconcilers would each attach
// the endpoints, and their metrics would collide); once the first is
// stopped, Start works again, adopts what the VM has, and registers its
// metrics again. netmon itself refuses a second Start.
func TestFaultStartTwice(t *testing.T) {
	e := ftNewEnv(t)
	const id = "ft-twice"
	ep := e.endpoint(t, "eth0", true)
	fs := &hotplugtest.FakeSandbox{}
	m1, err := shimhook.Start(context.Background(), e.shimConfig(id, fs))
	if err != nil || m1 == nil {
		t.Fatalf("first Start = %v, %v", m1, err)
	}
	series := ftSeries(t, e.reg, id)
	m2, err := shimhook.Start(context.Background(), e.shimConfig(id, fs))
	if m2 != nil || !errors.Is(err, shimhook.ErrNotMonitored) || !strings.Contains(err.Error(), "already watches netns") {
		m2.Stop(context.Background())
		t.Fatalf("second Start = %v, %v; want nil and ErrNotMonitored saying the netns is watched already", m2, err)
	}
	if n := ftSeries(t, e.reg, id); n != series {
		t.Errorf("series %d after the refused Start, %d before", n, series)
	}
	if n := len(fs.CallsOf(hotplugtest.OpAddInterface)); n != 1 {
		t.Errorf("%d AddInterface calls, want 1", n)
	}
	if err := ftStop(t, m1, ftWait); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := m1.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if n := ftSeries(t, e.reg, id); n != 0 {
		t.Errorf("%d series after Stop", n)
	}
	m3 := ftStart(t, e.shimConfig(id, fs))
	if got := m3.NICNames(); !slices.Equal(got, []string{"eth0"}) {
		t.Errorf("restarted monitor: Attached = %v", got)
	}
	if n := len(fs.CallsOf(hotplugtest.OpAddInterface)); n != 1 {
		t.Errorf("%d AddInterface calls after the restart, want 1 (adopted)", n)
	}
	if got := ftMetric(t, e.reg, "kata_netmon_interfaces_attached", id); got != 1 {
		t.Errorf("interfaces_attached = %v after the restart", got)
	}
	if got := fs.GuestMACs(); !slices.Equal(got, []string{ep.MAC.String()}) {
		t.Errorf("guest NICs %v, want only %s", got, ep.MAC)
	}

	mon, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := mon.Start(context.Background()); err == nil {
		t.Error("netmon: second Start succeeded")
	}
	mon.Close()
	mon.Close()
}

// TestFaultMetricsRegistration: metrics never stop a monitor. Without a
// sandbox id, or with the id's series already on the registry, Start warns
// once and monitors without metrics; what it did not register it leaves
// alone at Stop.
func TestFaultMetricsRegistration(t *testing.T) {
	e := ftNewEnv(t)
	e.endpoint(t, "eth0", true)
	taken, err := metrics.New(e.reg, "ft-taken")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Unregister()
	for _, id := range []string{"", "ft-taken"} {
		t.Run(fmt.Sprintf("id %q", id), func(t *testing.T) {
			e.hook.Reset()
			fs := &hotplugtest.FakeSandbox{}
			series := ftSeries(t, e.reg, "ft-taken")
			m, err := shimhook.Start(context.Background(), e.shimConfig(id, fs))
			if err != nil || m == nil {
				t.Fatalf("Start = %v, %v", m, err)
			}
			if got := m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
				t.Errorf("Attached = %v", got)
			}
			if w := ftEntries(e.hook, logrus.WarnLevel, "cannot register metrics"); len(w) != 1 {
				t.Errorf("%d metrics warnings:%s", len(w), ftDumpLog(e.hook, logrus.WarnLevel))
			}
			if err := ftStop(t, m, ftWait); err != nil {
				t.Errorf("Stop: %v", err)
			}
			if n := ftSeries(t, e.reg, "ft-taken"); n != series {
				t.Errorf("the other registration's series: %d -> %d", series, n)
			}
		})
	}
}
