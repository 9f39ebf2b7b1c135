//go:build linux

package bench

import (
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

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
			calls0 := sb.callCount()
			applied0, resyncs0, skipped0 := e.counter(b, "kata_netmon_netlink_events_total"),
				e.counter(b, "kata_netmon_resyncs_total"), e.counter(b, "kata_netmon_netlink_undecodable_total")
			withMon := measure()
			callsDuring := sb.callCount() - calls0
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
