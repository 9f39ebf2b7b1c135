package monitor_test

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"go.uber.org/goleak"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/internal/monitor"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 10 * time.Second

// env is a sandbox netns with one Docker-like endpoint (peer on a bridge in
// a dockerd netns), configured as Docker 28+ leaves it before Start.
type env struct {
	netmontest.Pair
	ep  *netmontest.Endpoint
	mac string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{Pair: netmontest.NewPair(t)}
	br := netmontest.AddBridge(t, e.Dockerd)
	e.ep = netmontest.VethToNetNS(t, e.DockerdNS, e.SandboxNS, br.Name)
	e.mac = netmontest.RandMAC().String()
	e.ep.Configure("eth0", e.mac, "172.30.0.2/24", "")
	return e
}

func (e *env) config(sb *hotplugtest.FakeSandbox, log *logrus.Entry) monitor.Config {
	return monitor.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath, Sandbox: sb, Log: log}
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	sb := &hotplugtest.FakeSandbox{}
	m, err := monitor.Start(context.Background(), e.config(sb, netmontest.Log(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	st, err := m.Sync(ctx)
	if err != nil || len(st.NICs) != 1 || st.NICs[0].MAC != e.mac {
		t.Fatalf("Sync: %+v, %v", st, err)
	}
	m.Run()
	m.Run() // once
	// A later change is handled by the background loop.
	e.ep.Rename("eth9") // up and renamed: not gone
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := m.Err(); err != nil {
		t.Errorf("Err after Stop = %v, want nil", err)
	}
}

func TestStopBeforeRun(t *testing.T) {
	e := newEnv(t)
	m, err := monitor.Start(context.Background(), e.config(&hotplugtest.FakeSandbox{}, netmontest.Log(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.Run() // after Stop: nothing starts
	<-m.Done()
}

// The watched process exits: the monitor ends by itself, Err says so, and no
// goroutine of ours waited for it (procwatch's own cancels the loop).
func TestProcessExit(t *testing.T) {
	e := newEnv(t)
	cmd := exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cfg := e.config(&hotplugtest.FakeSandbox{}, netmontest.Log(t))
	cfg.ExitPID = cmd.Process.Pid
	m, err := monitor.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(context.Background())
	m.Run()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	select {
	case <-m.Done():
	case <-time.After(wait):
		t.Fatal("monitor still running after the process exited")
	}
	if err := m.Err(); !errors.Is(err, monitor.ErrProcessExited) {
		t.Errorf("Err = %v, want ErrProcessExited", err)
	}
}

// panicHook panics once, the first time the reconciler logs msg: a bug in
// the reconciler's own goroutine. It closes adopted when the reconciler
// logs that it adopted an endpoint (after the line is written, so NICs
// says so too).
type panicHook struct {
	msg     string
	done    atomic.Bool
	once    sync.Once
	adopted chan struct{}
}

func (h *panicHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *panicHook) Fire(e *logrus.Entry) error {
	if e.Message == h.msg && h.done.CompareAndSwap(false, true) {
		panic("knm-test: a bug in the reconciler")
	}
	if e.Message == "sandbox already has this endpoint; adopted" {
		h.once.Do(func() { close(h.adopted) })
	}
	return nil
}

// A panic in the reconciler's loop is recovered, logged with its stack and
// reported, and the loop starts over with a new reconciler that adopts what
// the guest has: nothing is plugged twice, and later changes are handled.
func TestReconcilerPanicRestarts(t *testing.T) {
	e := newEnv(t)
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	ph := &panicHook{msg: "attached endpoint", adopted: make(chan struct{})}
	logger.AddHook(ph)
	sb := &hotplugtest.FakeSandbox{}
	obs := &countObserver{}
	cfg := e.config(sb, logrus.NewEntry(logger))
	cfg.Observer = obs
	m, err := monitor.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(context.Background())
	m.Run() // no Sync: the panic happens in the background loop
	select {
	case <-ph.adopted:
	case <-time.After(wait):
		t.Fatalf("eth0 not adopted by a new reconciler within %v; calls %v", wait, sb.Ops())
	}
	if n := obs.panics.Load(); n != 1 || len(m.NICs()) != 1 {
		t.Fatalf("%d panics reported, NICs %v; want 1 and eth0", n, m.NICs())
	}
	if n := len(sb.CallsOf(hotplugtest.OpAddInterface)); n != 1 {
		t.Errorf("AddInterface called %d times, want once (the restart adopts)", n)
	}
	found := false
	for _, le := range hook.AllEntries() {
		found = found || (le.Message == "kata-netmon panicked; recovered (the sandbox carries on)" && le.Data["stack"] != nil)
	}
	if !found {
		t.Error("no error line with the stack")
	}
	if got := sb.GuestMACs(); !slices.Equal(got, []string{e.mac}) {
		t.Errorf("guest MACs %v", got)
	}
}

// countObserver counts panics and ignores the rest.
type countObserver struct{ panics atomic.Int32 }

func (o *countObserver) EventSeen(string)                         {}
func (o *countObserver) Undecodable(string)                       {}
func (o *countObserver) Resynced()                                {}
func (o *countObserver) SandboxCall(string, time.Duration, error) {}
func (o *countObserver) GuestNICs(int)                            {}
func (o *countObserver) Panicked(string)                          { o.panics.Add(1) }
