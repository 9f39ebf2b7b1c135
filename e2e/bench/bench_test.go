//go:build linux

package bench

import (
	"bytes"
	"fmt"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// readyTracker records, per ifindex, when the tap saw the link RUNNING and
// when it saw its first IPv4 address: the later of the two is the event
// that made the endpoint ready (the matcher also wants up, a tied peer and
// a MAC, which Docker sets before).
type readyTracker struct {
	mu      sync.Mutex
	running map[int]time.Time
	addr    map[int]time.Time
	ch      chan struct{}
}

func newReadyTracker() *readyTracker {
	return &readyTracker{running: map[int]time.Time{}, addr: map[int]time.Time{}, ch: make(chan struct{})}
}

func (r *readyTracker) observe(at time.Time, m syscall.NetlinkMessage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch m.Header.Type {
	case unix.RTM_NEWLINK:
		if idx, flags, ok := ifinfo(m); ok && flags&unix.IFF_RUNNING != 0 && r.running[idx].IsZero() {
			r.running[idx] = at
		}
	case unix.RTM_NEWADDR:
		if fam, idx, ok := ifaddr(m); ok && fam == unix.AF_INET && r.addr[idx].IsZero() {
			r.addr[idx] = at
		}
	default:
		return
	}
	close(r.ch)
	r.ch = make(chan struct{})
}

// wait waits until the tracker has what need asks for and returns it.
func (r *readyTracker) wait(b *testing.B, what string, need func(r *readyTracker) (time.Time, bool)) time.Time {
	b.Helper()
	deadline := time.NewTimer(benchWait)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		t, ok := need(r)
		ch := r.ch
		r.mu.Unlock()
		if ok {
			return t
		}
		select {
		case <-ch:
		case <-deadline.C:
			b.Fatalf("tap: timed out waiting for %s", what)
		}
	}
}

func (r *readyTracker) readyAt(b *testing.B, idx int) time.Time {
	return r.wait(b, fmt.Sprintf("ifindex %d running with an address", idx), func(r *readyTracker) (time.Time, bool) {
		run, addr := r.running[idx], r.addr[idx]
		if run.IsZero() || addr.IsZero() {
			return time.Time{}, false
		}
		if addr.After(run) {
			return addr, true
		}
		return run, true
	})
}

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
	sb.wait(b, "eth0 attached", func(s *sandbox) bool { return !s.added[mac.String()].IsZero() })
	time.Sleep(100 * time.Millisecond) // let the start-up settle before measuring (not an assertion)
	gAfter, stacksAfter := runtime.NumGoroutine(), goroutines()
	memAfter := memStats()
	calls := sb.Calls()
	mon := idleFor(idle)
	idleCalls := sb.Calls() - calls

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

// BenchmarkUnrelatedEvents: how many unrelated netlink events one monitor
// absorbs. A generator makes events in the watched netns that the matcher
// ignores, as fast as one goroutine can, for a fixed time: first with no
// monitor (the baseline cost of generating them), then with a monitor
// running (eth0 attached). An independent tap counts the events the kernel
// sent (link, address and route messages: what the monitor's socket
// receives); the monitor's own metrics count those it applied to its view
// (kata_netmon_netlink_events_total), which is what "absorbed" means here:
// events lost to an overflow are not absorbed, a resync repairs the view
// instead. The monitor's CPU is the process CPU with it minus what the
// generator cost per event without it; per applied event, its inverse is
// one core's capacity. After the churn, a marker endpoint is replayed, and
// the time from its RUNNING event to its AddInterface shows whether the
// monitor kept up (compare with BenchmarkAttachLatency).
//
// Workloads: an ifb flapping up/down (with an address on it, each change
// of IFF_UP makes netmon re-list the routes: its most expensive event),
// address add/delete on an ifb (plus the local routes the kernel adds and
// removes with them), and ifb create/delete (bounded by the kernel's
// unregister, ~10 ms each). The sandbox is in memory.
func BenchmarkUnrelatedEvents(b *testing.B) {
	workloads := []struct {
		name string
		op   func(b *testing.B, e *env, i int, ifb netlink.Link)
	}{
		{"link-up-down", func(b *testing.B, e *env, i int, ifb netlink.Link) {
			var err error
			if i%2 == 0 {
				err = e.Sandbox.LinkSetDown(ifb)
			} else {
				err = e.Sandbox.LinkSetUp(ifb)
			}
			if err != nil {
				b.Fatal(err)
			}
		}},
		{"address-add-delete", func(b *testing.B, e *env, i int, ifb netlink.Link) {
			a, _ := netlink.ParseAddr(fmt.Sprintf("10.65.%d.%d/32", i/2/250%250, i/2%250+1))
			var err error
			if i%2 == 0 {
				err = e.Sandbox.AddrAdd(ifb, a)
			} else {
				err = e.Sandbox.AddrDel(ifb, a)
			}
			if err != nil {
				b.Fatal(err)
			}
		}},
		{"ifb-create-delete", func(b *testing.B, e *env, i int, _ netlink.Link) {
			l := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("knm-c%d", i/2%1000)}}
			var err error
			if i%2 == 0 {
				err = e.Sandbox.LinkAdd(l)
			} else {
				err = e.Sandbox.LinkDel(l)
			}
			if err != nil {
				b.Fatal(err)
			}
		}},
	}
	const run = 3 * time.Second
	type result struct {
		ops, events int64
		ru          rusage
	}
	for _, w := range workloads {
		b.Run(w.name, func(b *testing.B) {
			e := newEnv(b)
			ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
			if err := e.Sandbox.LinkAdd(ifb); err != nil {
				b.Fatal(err)
			}
			if err := e.Sandbox.LinkSetUp(ifb); err != nil {
				b.Fatal(err)
			}
			netmontest.AddAddr(b, e.Sandbox, ifb.Index, "10.64.0.1/24")
			var count struct {
				sync.Mutex
				n int64
			}
			tr := newReadyTracker()
			t := openTap(b, e.SandboxPath, unix.RTMGRP_LINK|unix.RTMGRP_IPV4_IFADDR|unix.RTMGRP_IPV6_IFADDR|unix.RTMGRP_IPV4_ROUTE|unix.RTMGRP_IPV6_ROUTE)
			t.run(b, func(at time.Time, m syscall.NetlinkMessage) {
				count.Lock()
				count.n++
				count.Unlock()
				tr.observe(at, m)
			})
			events := func() int64 { count.Lock(); defer count.Unlock(); return count.n }
			measure := func() result {
				runtime.GC()
				ev, ru := events(), getRusage()
				var ops int64
				for end := time.Now().Add(run); time.Now().Before(end) || ops%2 == 1; ops++ {
					w.op(b, e, int(ops), ifb)
				}
				// Let the tap drain what is queued (it reads within µs).
				time.Sleep(50 * time.Millisecond)
				return result{ops: ops, events: events() - ev, ru: getRusage().sub(ru)}
			}

			base := measure()

			sb := newSandbox()
			ep, mac := e.endpoint(b, "eth0")
			ep.AddAddr(hostAddr(2))
			ep.Up()
			e.start(b, sb)
			sb.waitAdded(b, mac)
			calls0 := sb.Calls()
			applied0, resyncs0, skipped0 := e.counter(b, "kata_netmon_netlink_events_total"),
				e.counter(b, "kata_netmon_resyncs_total"), e.counter(b, "kata_netmon_netlink_undecodable_total")
			withMon := measure()
			callsDuring := sb.Calls() - calls0
			applied := int64(e.counter(b, "kata_netmon_netlink_events_total") - applied0)
			resyncs := int64(e.counter(b, "kata_netmon_resyncs_total") - resyncs0)
			skipped := int64(e.counter(b, "kata_netmon_netlink_undecodable_total") - skipped0)
			marker, mmac := e.endpoint(b, "eth1")
			marker.AddAddr(hostAddr(3))
			upAt := time.Now()
			marker.Up()
			added := sb.waitAdded(b, mmac)
			fromEvent, fromUp := added.Sub(tr.readyAt(b, marker.Index)), added.Sub(upAt)

			perEvent := func(cpu time.Duration, n int64) time.Duration {
				if n == 0 {
					return 0
				}
				return time.Duration(int64(cpu) / n)
			}
			// The generator's share of the run with the monitor, at its
			// cost per event without it; the rest is the monitor's.
			monCPU := withMon.ru.cpu - time.Duration(withMon.events)*perEvent(base.ru.cpu, base.events)
			perApplied := perEvent(monCPU, applied)
			capacity := 0.0
			if perApplied > 0 {
				capacity = float64(time.Second) / float64(perApplied)
			}
			rate := float64(applied) / run.Seconds()
			b.ReportMetric(rate, "applied-events/s")
			b.ReportMetric(float64(perApplied.Nanoseconds())/1000, "monitor-cpu-us/event")
			b.ReportMetric(capacity, "capacity-events/s")
			b.ReportMetric(float64(resyncs), "resyncs")

			fmt.Printf("\nunrelated events: %s, %v per run, one generator goroutine, in-memory sandbox\n", w.name, run)
			fmt.Printf("  %-44s %14s %14s\n", "", "no monitor", "monitor")
			fmt.Printf("  %-44s %14d %14d\n", "operations", base.ops, withMon.ops)
			fmt.Printf("  %-44s %14d %14d\n", "netlink events the kernel sent (tap count)", base.events, withMon.events)
			fmt.Printf("  %-44s %14s %14d\n", "events the monitor applied (its metrics)", "-", applied)
			fmt.Printf("  %-44s %14s %14.0f\n", "applied events/s", "-", rate)
			fmt.Printf("  %-44s %14v %14v\n", "process CPU", base.ru.cpu.Round(time.Millisecond), withMon.ru.cpu.Round(time.Millisecond))
			fmt.Printf("  monitor CPU %v, %v per applied event -> one core would apply ~%.0f events/s\n",
				monCPU.Round(time.Millisecond), perApplied, capacity)
			fmt.Printf("  during the churn: %d sandbox calls, %d resyncs (events lost to overflow: %d sent, %d applied), %d undecodable, %d tap overruns\n",
				callsDuring, resyncs, withMon.events, applied, skipped, t.overruns.Load())
			fmt.Printf("  marker endpoint after the churn: RUNNING event -> AddInterface %s (`up` syscall -> AddInterface %s)\n\n", ms(fromEvent), ms(fromUp))
		})
	}
}
