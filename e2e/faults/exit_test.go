//go:build linux

package faults

import (
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/e2e/internal/watchbin"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// quietWindow is the window over which an idle monitor must do nothing.
const quietWindow = time.Second

// idleCPU is the CPU time the whole test process may use in quietWindow
// while the monitor is idle: a generous bound (the race detector, the
// runtime, other tests' leftovers), far below what a spinning loop burns.
const idleCPU = 150 * time.Millisecond

// target is a process in a netns of its own, as QEMU sits in the sandbox
// netns Kata made for it.
type target struct {
	cmd    *exec.Cmd
	pid    int
	ns     netns.NsHandle
	h      *netlink.Handle
	waited chan struct{}
}

func startTarget(t *testing.T) *target {
	t.Helper()
	cmd := exec.Command("sleep", "3600")
	// No Pdeathsig: it fires when the forking OS thread exits, and the
	// runtime discards threads (see netmon's inFreshThread).
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the target: %v", err)
	}
	p := &target{cmd: cmd, pid: cmd.Process.Pid, waited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.waited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.waited })
	ns, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	p.ns = ns
	t.Cleanup(func() { ns.Close() })
	p.h = netmontest.HandleAt(t, ns)
	return p
}

func (p *target) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.waited
}

// endpoint replays Docker's sequence for an endpoint in the target's netns.
func (p *target) addEndpoint(t *testing.T, e *env, name string) *endpoint {
	t.Helper()
	ep := &endpoint{Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, p.ns, e.bridge), MAC: netmontest.RandMAC(),
		CIDR: fmt.Sprintf("172.31.9.%d/16", e.hosts.Add(1))}
	ep.configure(name, true)
	return ep
}

// TestTargetExits: the hypervisor process (here: a process in the
// watched netns, found through HypervisorPID as Kata's shim passes it)
// exits. No netlink event says so (our own sockets keep the netns alive);
// the pidfd does: the monitor stops by itself, releases everything, and
// stays at zero sandbox calls, netlink events and ~zero CPU afterwards.
func TestTargetExits(t *testing.T) {
	e := newEnv(t)
	const id = "ft-exit"
	target := startTarget(t)
	target.addEndpoint(t, e, "eth0")
	fs := &hotplugtest.FakeSandbox{}
	cfg := e.shimConfig(id, fs)
	cfg.NetNSPath = "" // /proc/<HypervisorPID>/ns/net, as in Kata
	cfg.HypervisorPID = target.pid
	base := runtime.NumGoroutine()
	m := startShim(t, cfg)
	if got := m.NICNames(); len(got) != 1 {
		t.Fatalf("Attached = %v", got)
	}
	target.kill(t)
	waitUntil(t, waitTimeout, "the monitor to stop by itself", func() (bool, string) {
		return len(e.log.Entries(logrus.InfoLevel, "the watched process exited; stopping")) == 1 && runtime.NumGoroutine() <= base,
			fmt.Sprintf("%d goroutines (%d before Start); log:%s", runtime.NumGoroutine(), base, e.log.Dump(logrus.InfoLevel))
	})
	checkQuiet(t, e, id, nil)
	begin := time.Now()
	if err := stopWithin(t, m, time.Second); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if took := time.Since(begin); took > 100*time.Millisecond {
		t.Errorf("Stop after the exit took %v", took)
	}
	checkLogFields(t, e.log)
}

// checkQuiet fails t if, over quietWindow, the monitor of sandbox id makes a
// sandbox call, reads a netlink event, makes a reconcile pass (passes, when
// not nil) or the process burns CPU.
func checkQuiet(t *testing.T, e *env, id string, passes func() int64) {
	t.Helper()
	calls, events := callsTotal(t, e.reg, id), eventsTotal(t, e.reg, id)
	var p0 int64
	if passes != nil {
		p0 = passes()
	}
	cpu := processCPU()
	// A measurement over a window, not a wait: no event says that nothing
	// happens, so idleness is a rate (calls, events, passes and CPU per
	// quietWindow), and the window is its denominator.
	time.Sleep(quietWindow)
	used := processCPU() - cpu
	dCalls, dEvents := callsTotal(t, e.reg, id)-calls, eventsTotal(t, e.reg, id)-events
	var dPasses int64
	if passes != nil {
		dPasses = passes() - p0
	}
	t.Logf("over %v idle: %v CPU, %v sandbox calls, %v netlink events, %d reconcile passes", quietWindow, used, dCalls, dEvents, dPasses)
	if dCalls != 0 || dEvents != 0 || dPasses != 0 {
		t.Errorf("not idle: %v sandbox calls, %v events, %d passes in %v", dCalls, dEvents, dPasses, quietWindow)
	}
	if used > idleCPU {
		t.Errorf("%v CPU in %v while idle", used, quietWindow)
	}
}

// TestNetNSLosesAllLinks: every endpoint of the watched netns goes
// (and then its name in /run/netns too). The monitor detaches them and then
// does nothing at all: no reconcile pass, no call, no event, ~no CPU.
func TestNetNSLosesAllLinks(t *testing.T) {
	e := newEnv(t)
	const id = "ft-nolinks"
	fs := &hotplugtest.FakeSandbox{}
	d := e.startDirect(t, fs, id, nil)
	eps := []*endpoint{e.addEndpoint(t, "eth0", true), e.addEndpoint(t, "eth1", false)}
	waitUntil(t, waitTimeout, "both attached", func() (bool, string) {
		return len(d.Reconciler.NICs()) == 2, fmt.Sprint(fs.Ops())
	})
	for _, ep := range eps {
		if err := ep.Host.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ep.HostIndex}}); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, waitTimeout, "both detached", func() (bool, string) {
		return len(d.Reconciler.NICs()) == 0 && len(fs.GuestMACs()) == 0, fmt.Sprint(fs.Ops())
	})
	checkQuiet(t, e, id, d.Passes)
	// The netns loses its name too; nothing tells the monitor (its own
	// sockets keep the netns alive), and it does not spin either.
	netmontest.DeleteNetNS(t, e.SandboxPath)
	checkQuiet(t, e, id, d.Passes)
	select {
	case <-d.Netmon.Done():
		t.Errorf("monitor ended: %v", d.Netmon.Err())
	default:
	}
	checkInvariants(t, fs)
}

// TestWatchPIDExits: `kata-netmon watch --pid` on a process in its
// own netns. When the netns loses its endpoint the command detaches it and
// then uses no CPU; when the process exits (no netlink event says so) the
// command ends by itself, cleanly.
func TestWatchPIDExits(t *testing.T) {
	e := newEnv(t)
	target := startTarget(t)
	ep := target.addEndpoint(t, e, "eth0")
	events := make(chan hotplugtest.Event, 256)
	var overflow atomic.Bool
	w := watchbin.Start(t, watchbin.Options{
		Args: []string{"--pid", strconv.Itoa(target.pid), "--dockerd-netns", e.DockerdPath},
		OnEvent: func(ev hotplugtest.Event) {
			select {
			case events <- ev:
			default:
				overflow.Store(true)
			}
		},
	})
	// next waits for the next event of op about ep, skipping those of the
	// ops in skip.
	next := func(op string, skip ...string) {
		t.Helper()
		deadline := time.After(waitTimeout)
		for {
			select {
			case ev := <-events:
				if slices.Contains(skip, ev.Op) {
					continue
				}
				if ev.Op != op || (op != "routes" && ev.MAC != ep.MAC.String()) {
					t.Fatalf("watch printed %+v, want %s of %s; stderr:\n%s", ev, op, ep.MAC, w.Stderr.String())
				}
				return
			case <-w.Done():
				t.Fatalf("watch exited (%v) before its %s; stderr:\n%s", w.Err(), op, w.Stderr.String())
			case <-deadline:
				t.Fatalf("no %s from watch within %v; stderr:\n%s", op, waitTimeout, w.Stderr.String())
			}
		}
	}
	next("attach")
	next("routes")
	if err := ep.Host.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ep.HostIndex}}); err != nil {
		t.Fatal(err)
	}
	next("detach", "routes")
	// No link left but lo: the command must be idle. A measurement over a
	// window, not a wait: no event says that nothing happens.
	before := w.CPU(t)
	time.Sleep(quietWindow)
	used := w.CPU(t) - before
	t.Logf("watch used %v CPU over %v with no endpoint", used, quietWindow)
	if used > 50*time.Millisecond {
		t.Errorf("watch used %v CPU in %v while idle", used, quietWindow)
	}
	target.kill(t)
	begin := time.Now()
	select {
	case <-w.Done():
		if err := w.Err(); err != nil {
			t.Errorf("watch exited with %v; stderr:\n%s", err, w.Stderr.String())
		}
		took := time.Since(begin)
		t.Logf("watch exited %v after its target", took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("watch took %v to exit after its target", took)
		}
		if ru, ok := w.Cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			t.Logf("watch used %v CPU in total", time.Duration(ru.Utime.Nano()+ru.Stime.Nano()))
		}
	case <-time.After(waitTimeout):
		t.Fatalf("watch still running %v after its target exited; stderr:\n%s", waitTimeout, w.Stderr.String())
	}
	if !strings.Contains(w.Stderr.String(), "process exited; stopping") {
		t.Errorf("no exit log; stderr:\n%s", w.Stderr.String())
	}
	if overflow.Load() {
		t.Errorf("more than %d events from watch: some were dropped", cap(events))
	}
}
