//go:build linux

package bench

import (
	"bytes"
	"fmt"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// BenchmarkAttachLatency: the time from the netlink event that makes a
// Docker endpoint ready to the sandbox's AddInterface call, through the
// whole production path (shimhook's background loop: netmon, matcher,
// reconciler). Each iteration replays one endpoint (veth with its end
// created in the sandbox, rename, MAC, then address and up in the order
// named) and removes it again (its detach awaited) before the next, so
// every measure starts from a quiet monitor with only lo in the view:
// `make bench` runs 200 (-benchtime 200x). The sandbox is in memory.
//
// The event's time is taken by an independent rtnetlink socket in the
// sandbox netns, read in a blocking recvfrom on a thread of its own
// ("from event"); "from syscall" starts just before the bench issues the
// last step's syscall (an upper bound including the kernel's linkwatch).
func BenchmarkAttachLatency(b *testing.B) {
	for _, order := range []struct {
		name     string
		addrLast bool
	}{{"running-last", false}, {"address-last", true}} {
		b.Run(order.name, func(b *testing.B) { benchAttachLatency(b, order.addrLast) })
	}
}

func benchAttachLatency(b *testing.B, addrLast bool) {
	e := newEnv(b)
	sb := newSandbox()
	e.start(b, sb)
	tr := newReadyTracker()
	t := openTap(b, e.SandboxPath, unix.RTMGRP_LINK|unix.RTMGRP_IPV4_IFADDR)
	t.run(b, tr.observe)

	var fromEvent, fromSyscall []time.Duration
	b.ResetTimer()
	for i := range b.N {
		ep, mac := e.endpoint(b, "eth0")
		var issued time.Time
		if addrLast {
			ep.Up()
			tr.wait(b, "RUNNING", func(r *readyTracker) (time.Time, bool) { return r.running[ep.Index], !r.running[ep.Index].IsZero() })
			issued = time.Now()
			ep.AddAddr(hostAddr(i + 2))
		} else {
			ep.AddAddr(hostAddr(i + 2))
			issued = time.Now()
			ep.Up()
		}
		added := sb.waitAdded(b, mac)
		ready := tr.readyAt(b, ep.Index)
		fromEvent = append(fromEvent, added.Sub(ready))
		fromSyscall = append(fromSyscall, added.Sub(issued))

		if err := e.Sandbox.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ep.Index}}); err != nil {
			b.Fatal(err)
		}
		sb.waitRemoved(b, mac)
		ep.Close()
	}
	b.StopTimer()

	ev, sc := sortDurations(fromEvent), sortDurations(fromSyscall)
	b.ReportMetric(us(percentile(ev, 50)), "p50-us")
	b.ReportMetric(us(percentile(ev, 99)), "p99-us")
	b.ReportMetric(us(ev[len(ev)-1]), "max-us")
	b.ReportMetric(us(percentile(sc, 99)), "p99-from-syscall-us")
	last := "RUNNING (after `ip link set up`)"
	if addrLast {
		last = "NEWADDR (`ip addr add` after up)"
	}
	fmt.Printf("\nattach latency, %d endpoints, last step %s, GOMAXPROCS %d, in-memory sandbox\n", len(ev), last, runtime.GOMAXPROCS(0))
	fmt.Printf("  %-34s %10s %10s %10s %10s\n", "", "min", "p50", "p99", "max")
	fmt.Printf("  %-34s %10s %10s %10s %10s\n", "event seen by tap -> AddInterface", ms(ev[0]), ms(percentile(ev, 50)), ms(percentile(ev, 99)), ms(ev[len(ev)-1]))
	fmt.Printf("  %-34s %10s %10s %10s %10s\n", "last syscall issued -> AddInterface", ms(sc[0]), ms(percentile(sc, 50)), ms(percentile(sc, 99)), ms(sc[len(sc)-1]))
	fmt.Printf("  target: p99 under 1 ms (event -> AddInterface)\n\n")
}

// BenchmarkIdle: what an idle monitor costs once the sandbox is set up
// (eth0 attached, its default route pushed): goroutines, heap, and wakeups
// over 10 s compared with the same process idling without a monitor
// (context switches of all threads, getrusage). Then 1000 unrelated events
// and 20 connect/disconnect cycles, to show the goroutine count does not
// grow with events.
func BenchmarkIdle(b *testing.B) {
	const idle = 10 * time.Second
	e := newEnv(b)
	sb := newSandbox()
	ep, mac := e.endpoint(b, "eth0")
	ep.AddAddr(hostAddr(2))
	ep.Up()
	ep.AddDefaultRoute(gateway)
	churn := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
	if err := e.Sandbox.LinkAdd(churn); err != nil {
		b.Fatal(err)
	}
	if err := e.Sandbox.LinkSetUp(churn); err != nil {
		b.Fatal(err)
	}

	time.Sleep(time.Second) // let the set-up's after-effects (GC, runtime threads) settle: a report, not an assertion
	gBefore, stacksBefore := runtime.NumGoroutine(), goroutines()
	memBefore := memStats()
	base := idleFor(idle)

	e.start(b, sb)
	sb.waitAdded(b, mac) // eth0 attached
	// Let the start-up settle before measuring (a report, not an assertion).
	time.Sleep(100 * time.Millisecond)
	gAfter, stacksAfter := runtime.NumGoroutine(), goroutines()
	memAfter := memStats()
	calls := sb.callCount()
	mon := idleFor(idle)
	idleCalls := sb.callCount() - calls

	// Events: address churn the matcher ignores, then endpoints coming and
	// going.
	for i := range 500 {
		a, _ := netlink.ParseAddr(fmt.Sprintf("10.66.%d.%d/32", i/250, i%250+1))
		if err := e.Sandbox.AddrAdd(churn, a); err != nil {
			b.Fatal(err)
		}
		if err := e.Sandbox.AddrDel(churn, a); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 20 {
		ep, mac := e.endpoint(b, "eth1")
		ep.AddAddr(hostAddr(100 + i))
		ep.Up()
		sb.waitAdded(b, mac)
		if err := e.Sandbox.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ep.Index}}); err != nil {
			b.Fatal(err)
		}
		sb.waitRemoved(b, mac)
		ep.Close()
	}
	// Sandbox calls run in short-lived goroutines: wait for them to end.
	gEvents := runtime.NumGoroutine()
	for deadline := time.Now().Add(5 * time.Second); gEvents != gAfter && time.Now().Before(deadline); gEvents = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	memEvents := memStats()

	wake := func(r rusage) float64 { return float64(r.vcsw+r.ivcsw) / idle.Seconds() }
	b.ReportMetric(float64(gAfter-gBefore), "goroutines")
	b.ReportMetric(float64(memAfter.HeapAlloc)-float64(memBefore.HeapAlloc), "heap-B")
	b.ReportMetric(wake(mon), "ctxsw/s")
	b.ReportMetric(wake(base), "baseline-ctxsw/s")

	fmt.Printf("\nidle monitor (eth0 attached, in-memory sandbox), %v per measure\n", idle)
	fmt.Printf("  %-44s %12s %12s %12s\n", "", "no monitor", "monitor", "after events")
	fmt.Printf("  %-44s %12d %12d %12d\n", "goroutines (process)", gBefore, gAfter, gEvents)
	fmt.Printf("  %-44s %12d %12d %12d\n", "heap in use after GC (HeapAlloc, bytes)", memBefore.HeapAlloc, memAfter.HeapAlloc, memEvents.HeapAlloc)
	fmt.Printf("  %-44s %12d %12d %12d\n", "goroutine stacks (StackInuse, bytes)", memBefore.StackInuse, memAfter.StackInuse, memEvents.StackInuse)
	fmt.Printf("  %-44s %12.1f %12.1f\n", "context switches/s, all threads (vol+invol)", wake(base), wake(mon))
	fmt.Printf("  %-44s %12d %12d\n", "  voluntary / involuntary", base.vcsw, mon.vcsw)
	fmt.Printf("  %-44s %12d %12d\n", "", base.ivcsw, mon.ivcsw)
	fmt.Printf("  %-44s %12v %12v\n", "CPU time", base.cpu.Round(time.Microsecond), mon.cpu.Round(time.Microsecond))
	fmt.Printf("  %-44s %12s %12d\n", "sandbox calls while idle", "-", idleCalls)
	fmt.Printf("  monitor: %d goroutines (heap %+d B, stacks %+d B); after 1000 address events and 20 attach/detach: %d goroutines\n",
		gAfter-gBefore, int64(memAfter.HeapAlloc)-int64(memBefore.HeapAlloc), int64(memAfter.StackInuse)-int64(memBefore.StackInuse), gEvents-gBefore)
	for _, g := range newGoroutines(stacksBefore, stacksAfter) {
		fmt.Printf("    %s\n", g)
	}
	fmt.Printf("  targets: at most 4 goroutines, fixed; heap under 1 MiB; no periodic wakeups (context switches as without a monitor)\n\n")
}

// idleFor blocks for d and returns the process's resource use meanwhile.
func idleFor(d time.Duration) rusage {
	runtime.GC()
	before := getRusage()
	time.Sleep(d)
	return getRusage().sub(before)
}

func memStats() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

// goroutines returns the stacks of all goroutines by id.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := map[string]string{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if m := goroutineID.FindStringSubmatch(s); m != nil {
			out[m[1]] = s
		}
	}
	return out
}

var (
	goroutineID = regexp.MustCompile(`^goroutine (\d+) \[`)
	createdBy   = regexp.MustCompile(`created by (\S+)`)
	state       = regexp.MustCompile(`^goroutine \d+ \[([^\]]+)\]`)
)

// newGoroutines describes the goroutines in after that are not in before:
// where they were created and what they wait on.
func newGoroutines(before, after map[string]string) []string {
	var out []string
	for id, s := range after {
		if _, ok := before[id]; ok {
			continue
		}
		lines := strings.Split(s, "\n")
		top := ""
		if len(lines) > 1 {
			top = lines[1]
			if i := strings.LastIndex(top, "("); i > 0 {
				top = top[:i]
			}
		}
		st, cb := "", ""
		if m := state.FindStringSubmatch(s); m != nil {
			st = m[1]
		}
		if m := createdBy.FindStringSubmatch(s); m != nil {
			cb = m[1]
		}
		out = append(out, fmt.Sprintf("[%s] %s, created by %s", st, top, cb))
	}
	sort.Strings(out)
	return out
}
