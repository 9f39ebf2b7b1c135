//go:build linux

package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/e2e/internal/watchbin"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	kmonitor "github.com/kata-netmon/kata-netmon/internal/monitor"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// waitTimeout bounds every wait for the monitor to reach a state. Generous:
// CI runs under -race on two cores.
const waitTimeout = 30 * time.Second

// The monitors under test: in process (netmon + hotplug, or shimhook) with a
// hotplugtest.FakeSandbox, or the watch command as a process of its own.
// Each feeds the events of its sandbox into a monitor, which the checks
// replay into a guestModel.

// monitor collects the events of one monitor and lets a test wait for states.
type monitor struct {
	name string

	mu     sync.Mutex
	events []hotplugtest.Event
	notify chan struct{}   // capacity 1: "events changed"
	ended  <-chan struct{} // closed when the monitor ended on its own; nil if it cannot

	sb   *hotplugtest.FakeSandbox // nil for the watch command
	stop func() error             // idempotent
	logs *netmontest.SyncBuffer
}

func newMonitor(name string) *monitor {
	return &monitor{name: name, notify: make(chan struct{}, 1), logs: &netmontest.SyncBuffer{}}
}

func (m *monitor) add(e hotplugtest.Event) {
	m.mu.Lock()
	m.events = append(m.events, e)
	m.mu.Unlock()
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// Events returns a copy of the events so far.
func (m *monitor) Events() []hotplugtest.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.events)
}

// mark returns the number of events so far, for checks on what follows.
func (m *monitor) mark() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.events)
}

// waitFor re-checks after every event until check passes, and fails the test
// with check's last error at the deadline. It returns the guest that passed.
func (m *monitor) waitFor(t *testing.T, what string, check func(g *guestModel) error) *guestModel {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	start := time.Now()
	ended := m.ended
	for {
		g := modelOf(m.Events())
		err := check(g)
		if err == nil {
			t.Logf("%s: %s after %v (%d events)", m.name, what, time.Since(start).Round(time.Millisecond), len(g.events))
			return g
		}
		select {
		case <-m.notify:
		case <-ended:
			ended = nil // one more look at the final events, then wait for the deadline
			select {
			case m.notify <- struct{}{}:
			default:
			}
			t.Logf("%s: the monitor ended on its own", m.name)
		case <-deadline.C:
			t.Fatalf("%s: %s: not within %v: %v\nevents:\n%s", m.name, what, waitTimeout, err, formatEvents(g.events))
		}
	}
}

// checkClean fails the test on any invariant violation in the events, and
// checks the in-memory sandbox's own guest against the replay.
func (m *monitor) checkClean(t *testing.T) *guestModel {
	t.Helper()
	g := modelOf(m.Events())
	if len(g.bad) > 0 {
		t.Errorf("%s: the calls break Kata's rules:\n  %s\nevents:\n%s", m.name, strings.Join(g.bad, "\n  "), formatEvents(g.events))
	}
	if m.sb != nil {
		if got, want := m.sb.GuestMACs(), g.macs(); !slices.Equal(got, want) {
			t.Errorf("%s: the sandbox's guest has MACs %v, replayed events give %v", m.name, got, want)
		}
	}
	return g
}

// dumpOnFailure prints the monitor's logs if the test failed (or always,
// with KNM_TEST_LOG set). Registered before the monitor's stop, so it runs
// after it.
func (m *monitor) dumpOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("KNM_TEST_LOG") != "" {
			t.Logf("%s: monitor log:\n%s", m.name, m.logs.String())
		}
	})
}

func (m *monitor) logger(t *testing.T) *logrus.Entry {
	l := logrus.New()
	l.Out = m.logs
	l.Level = logrus.DebugLevel
	return logrus.NewEntry(l).WithField("test", t.Name())
}

// startInProcess runs what cmd/kata-netmon's watch does, in process: a
// monitor (internal/monitor, the one assembly the watch command and the shim
// share) on the container's netns with dockerd's netns as the only accepted
// peer netns (no scan, as in the shim) and an in-memory sandbox, Sync, then
// Run until the test ends.
func startInProcess(t *testing.T, d *daemon, pid int) *monitor {
	t.Helper()
	m := newMonitor(fmt.Sprintf("monitor(pid %d)", pid))
	m.dumpOnFailure(t)
	m.sb = &hotplugtest.FakeSandbox{OnEvent: m.add}
	mon, err := kmonitor.Start(t.Context(), kmonitor.Config{
		NetNSPath: fmt.Sprintf("/proc/%d/ns/net", pid), DockerdNetNS: d.NetNSPath(), Sandbox: m.sb, Log: m.logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	m.stop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := mon.Stop(ctx); err != nil {
			return err
		}
		if err := mon.Err(); err != nil {
			return fmt.Errorf("the monitor ended by itself: %w", err)
		}
		return nil
	}
	t.Cleanup(func() {
		if err := m.stop(); err != nil {
			t.Errorf("%s: stop: %v", m.name, err)
		}
	})
	start := time.Now()
	sctx, scancel := context.WithTimeout(t.Context(), waitTimeout)
	st, err := mon.Sync(sctx)
	scancel()
	if err != nil {
		t.Fatalf("%s: Sync: %v", m.name, err)
	}
	t.Logf("%s: Sync attached %d in %v", m.name, len(st.NICs), time.Since(start).Round(time.Millisecond))
	mon.Run()
	return m
}

// startShimhook starts the monitor as the shim would: shimhook.Start with
// the container's real containerd bundle and OCI spec (namespace left empty,
// so the bundle path must show it is Docker's), the sandbox's netns by
// process (as /proc/<hypervisor pid>/ns/net) and that process's exit watched.
// Peers are accepted in dockerd's netns and its netns directory; mods, if
// any, change the settings after that.
func startShimhook(t *testing.T, d *daemon, ctr string, pid int, mods ...func(*shimhook.Settings)) *monitor {
	t.Helper()
	c := d.MustInspectContainer(t, ctr)
	bundles, _ := filepath.Glob(filepath.Join(d.Dir(), "containerd", "state", "io.containerd.runtime.v2.task", "*", c.ID))
	if len(bundles) != 1 {
		t.Fatalf("containerd bundle of %s under %s: found %v", c.ID, d.Dir(), bundles)
	}
	raw, err := os.ReadFile(filepath.Join(bundles[0], "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatalf("%s/config.json: %v", bundles[0], err)
	}
	if ok, why := shimhook.IsDocker(shimhook.Config{BundlePath: bundles[0], Spec: &spec, Settings: shimhook.DefaultSettings()}); !ok {
		t.Fatalf("shimhook.IsDocker on Docker's own bundle %s: false: %s", bundles[0], why)
	}

	m := newMonitor(fmt.Sprintf("shimhook(pid %d)", pid))
	m.dumpOnFailure(t)
	m.sb = &hotplugtest.FakeSandbox{OnEvent: m.add}
	settings := shimhook.DefaultSettings()
	settings.DockerdNetNS = d.NetNSPath()
	settings.ReadyTimeout = waitTimeout
	settings.FailStartOnAttachError = true
	settings.DockerNetNSDir = d.NetNSDir()
	for _, mod := range mods {
		mod(&settings)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout+10*time.Second)
	defer cancel()
	start := time.Now()
	sm, err := shimhook.Start(ctx, shimhook.Config{
		SandboxID: c.ID, BundlePath: bundles[0], Spec: &spec, Sandbox: m.sb,
		HypervisorPID: pid, Settings: settings, Log: m.logger(t),
	})
	if err != nil {
		t.Fatalf("shimhook.Start: %v", err)
	}
	if sm == nil {
		t.Fatalf("shimhook.Start did not monitor container %s; log:\n%s", ctr, m.logs.String())
	}
	t.Logf("%s: shimhook.Start attached %v in %v", m.name, sm.NICNames(), time.Since(start).Round(time.Millisecond))
	m.stop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return sm.Stop(ctx)
	}
	t.Cleanup(func() {
		if err := m.stop(); err != nil {
			t.Errorf("%s: Stop: %v", m.name, err)
		}
	})
	return m
}

// watchProcess is a running `kata-netmon watch` whose JSON lines feed a
// monitor.
type watchProcess struct {
	*monitor
	proc *watchbin.Process
}

// startWatch runs `nsenter --net=<nsPath> kata-netmon watch --json --pid PID
// args...` (watchbin) and feeds its JSON lines into a monitor.
func startWatch(t *testing.T, nsPath string, pid int, args ...string) *watchProcess {
	t.Helper()
	m := newMonitor(fmt.Sprintf("watch(pid %d)", pid))
	m.dumpOnFailure(t)
	p := watchbin.Start(t, watchbin.Options{NetNS: nsPath, Args: append([]string{"--pid", fmt.Sprint(pid)}, args...), OnEvent: m.add})
	m.logs = p.Stderr
	m.ended = p.Done()
	m.stop = func() error { return p.Terminate(10 * time.Second) }
	return &watchProcess{monitor: m, proc: p}
}
