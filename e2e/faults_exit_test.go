//go:build linux

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/internal/recording"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// ftQuiet is the window over which an idle monitor must do nothing.
const ftQuiet = time.Second

// ftIdleCPU is the CPU time the whole test process may use in ftQuiet
// while the monitor is idle: a generous bound (the race detector, the
// runtime, other tests' leftovers), far below what a spinning loop burns.
const ftIdleCPU = 150 * time.Millisecond

// ftTarget is a process in a netns of its own, as QEMU sits in the sandbox
// netns Kata made for it.
type ftTarget struct {
	cmd    *exec.Cmd
	pid    int
	ns     netns.NsHandle
	h      *netlink.Handle
	waited chan struct{}
}

func ftStartTarget(t *testing.T) *ftTarget {
	t.Helper()
	cmd := exec.Command("sleep", "3600")
	// No Pdeathsig: it fires when the forking OS thread exits, and the
	// runtime discards threads (see netmon's inFreshThread).
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the target: %v", err)
	}
	p := &ftTarget{cmd: cmd, pid: cmd.Process.Pid, waited: make(chan struct{})}
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

func (p *ftTarget) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.waited
}

// endpoint replays Docker's sequence for an endpoint in the target's netns.
func (p *ftTarget) endpoint(t *testing.T, e *ftEnv, name string) *ftEP {
	t.Helper()
	ep := &ftEP{Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, p.ns, e.bridge), MAC: netmontest.RandMAC(),
		CIDR: fmt.Sprintf("172.31.9.%d/16", e.hosts.Add(1))}
	ep.configure(name, true)
	return ep
}

// TestFaultTargetExits: the hypervisor process (here: a process in the
// watched netns, found through HypervisorPID as Kata's shim passes it)
// exits. No netlink event says so (our own sockets keep the netns alive);
// the pidfd does: the monitor stops by itself, releases everything, and
// stays at zero sandbox calls, netlink events and ~zero CPU afterwards.
func TestFaultTargetExits(t *testing.T) {
	e := ftNewEnv(t)
	const id = "ft-exit"
	target := ftStartTarget(t)
	target.endpoint(t, e, "eth0")
	fs := &hotplugtest.FakeSandbox{}
	cfg := e.shimConfig(id, fs)
	cfg.NetNSPath = "" // /proc/<HypervisorPID>/ns/net, as in Kata
	cfg.HypervisorPID = target.pid
	base := runtime.NumGoroutine()
	m := ftStart(t, cfg)
	if got := m.NICNames(); len(got) != 1 {
		t.Fatalf("Attached = %v", got)
	}
	target.kill(t)
	ftWaitUntil(t, ftWait, "the monitor to stop by itself", func() (bool, string) {
		return len(ftEntries(e.hook, logrus.InfoLevel, "the watched process exited; stopping")) == 1 && runtime.NumGoroutine() <= base,
			fmt.Sprintf("%d goroutines (%d before Start); log:%s", runtime.NumGoroutine(), base, ftDumpLog(e.hook, logrus.InfoLevel))
	})
	ftQuietWindow(t, e, id, nil)
	begin := time.Now()
	if err := ftStop(t, m, time.Second); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if took := time.Since(begin); took > 100*time.Millisecond {
		t.Errorf("Stop after the exit took %v", took)
	}
	ftCheckLogFields(t, e.hook)
}

// ftQuietWindow fails t if, over ftQuiet, the monitor of sandbox id makes a
// sandbox call, reads a netlink event, makes a reconcile pass (passes, when
// not nil) or the process burns CPU.
func ftQuietWindow(t *testing.T, e *ftEnv, id string, passes func() int64) {
	t.Helper()
	calls, events := ftCalls(t, e.reg, id), ftEvents(t, e.reg, id)
	var p0 int64
	if passes != nil {
		p0 = passes()
	}
	cpu := ftCPU()
	time.Sleep(ftQuiet)
	used := ftCPU() - cpu
	dCalls, dEvents := ftCalls(t, e.reg, id)-calls, ftEvents(t, e.reg, id)-events
	var dPasses int64
	if passes != nil {
		dPasses = passes() - p0
	}
	t.Logf("over %v idle: %v CPU, %v sandbox calls, %v netlink events, %d reconcile passes", ftQuiet, used, dCalls, dEvents, dPasses)
	if dCalls != 0 || dEvents != 0 || dPasses != 0 {
		t.Errorf("not idle: %v sandbox calls, %v events, %d passes in %v", dCalls, dEvents, dPasses, ftQuiet)
	}
	if used > ftIdleCPU {
		t.Errorf("%v CPU in %v while idle", used, ftQuiet)
	}
}

// TestFaultNetNSLosesAllLinks: every endpoint of the watched netns goes
// (and then its name in /run/netns too). The monitor detaches them and then
// does nothing at all: no reconcile pass, no call, no event, ~no CPU.
func TestFaultNetNSLosesAllLinks(t *testing.T) {
	e := ftNewEnv(t)
	const id = "ft-nolinks"
	fs := &hotplugtest.FakeSandbox{}
	d := e.startDirect(t, fs, id, nil)
	eps := []*ftEP{e.endpoint(t, "eth0", true), e.endpoint(t, "eth1", false)}
	ftWaitUntil(t, ftWait, "both attached", func() (bool, string) {
		return len(d.rec.NICs()) == 2, fmt.Sprint(fs.Ops())
	})
	for _, ep := range eps {
		if err := ep.Host.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ep.HostIndex}}); err != nil {
			t.Fatal(err)
		}
	}
	ftWaitUntil(t, ftWait, "both detached", func() (bool, string) {
		return len(d.rec.NICs()) == 0 && len(fs.GuestMACs()) == 0, fmt.Sprint(fs.Ops())
	})
	ftQuietWindow(t, e, id, d.passes.Load)
	// The netns loses its name too; nothing tells the monitor (its own
	// sockets keep the netns alive), and it does not spin either.
	netmontest.DeleteNetNS(t, e.SandboxPath)
	ftQuietWindow(t, e, id, d.passes.Load)
	select {
	case <-d.Done():
		t.Errorf("monitor ended: %v", d.Err())
	default:
	}
	ftInvariants(t, fs)
}

// TestFaultWatchPIDExits: `kata-netmon watch --pid` on a process in its
// own netns. When the netns loses its endpoint the command detaches it and
// then uses no CPU; when the process exits (no netlink event says so) the
// command ends by itself, cleanly.
func TestFaultWatchPIDExits(t *testing.T) {
	e := ftNewEnv(t)
	target := ftStartTarget(t)
	ep := target.endpoint(t, e, "eth0")
	bin := buildWatch(t)
	cmd := exec.Command(bin, "watch", "--pid", strconv.Itoa(target.pid), "--json", "--dockerd-netns", e.DockerdPath)
	// The race detector sleeps 1 s at exit by default: not ours to measure.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	var stderr netmontest.SyncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	events := make(chan recording.Event, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(events)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev recording.Event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				events <- ev
			}
		}
	})
	go func() { wg.Wait(); exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range events {
		}
		<-exited
	})
	next := func(op string) {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok || ev.Op != op || ev.MAC != ep.MAC.String() {
				t.Fatalf("watch printed %+v (open %v), want %s of %s; stderr:\n%s", ev, ok, op, ep.MAC, stderr.String())
			}
		case <-time.After(ftWait):
			t.Fatalf("no %s from watch; stderr:\n%s", op, stderr.String())
		}
	}
	next("attach")
	for {
		if ev := <-events; ev.Op == "routes" {
			break
		}
	}
	if err := ep.Host.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ep.HostIndex}}); err != nil {
		t.Fatal(err)
	}
	next("detach")
	// No link left but lo: the command must be idle.
	before := ftProcCPU(t, cmd.Process.Pid)
	time.Sleep(ftQuiet)
	used := ftProcCPU(t, cmd.Process.Pid) - before
	t.Logf("watch used %v CPU over %v with no endpoint", used, ftQuiet)
	if used > 50*time.Millisecond {
		t.Errorf("watch used %v CPU in %v while idle", used, ftQuiet)
	}
	target.kill(t)
	begin := time.Now()
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("watch exited with %v; stderr:\n%s", err, stderr.String())
		}
		took := time.Since(begin)
		t.Logf("watch exited %v after its target", took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("watch took %v to exit after its target", took)
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			t.Logf("watch used %v CPU in total", time.Duration(ru.Utime.Nano()+ru.Stime.Nano()))
		}
	case <-time.After(ftWait):
		t.Fatalf("watch still running %v after its target exited; stderr:\n%s", ftWait, stderr.String())
	}
	if !strings.Contains(stderr.String(), "process exited; stopping") {
		t.Errorf("no exit log; stderr:\n%s", stderr.String())
	}
}

// ftProcCPU reads utime + stime of pid from /proc (clock ticks).
func ftProcCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command (which may hold spaces) start after ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz
}
