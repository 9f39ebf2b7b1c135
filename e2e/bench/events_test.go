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
// monitor (the baseline cost of generating and counting), then with a
// monitor running (eth0 attached). An independent tap counts the events
// (link, address and route messages: what the monitor's sockets receive).
// The monitor's CPU per event is the difference of process CPU per event
// between the two runs; one core's capacity is its inverse. After the
// churn, a marker endpoint is replayed, and the time from its RUNNING event
// to its AddInterface shows whether the monitor kept up (compare with
// BenchmarkAttachLatency).
//
// Workloads: an ifb flapping up/down (each change of IFF_UP makes netmon
// re-list the routes: its most expensive event), address add/delete on an
// ifb (plus the local routes the kernel adds and removes with them), and
// ifb create/delete (bounded by the kernel's unregister, ~10 ms each).
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
			withMon := measure()
			callsDuring := sb.callCount() - calls0
			resyncs := e.log.count("resynced")
			marker, mmac := e.endpoint(b, "eth1")
			marker.AddAddr(hostAddr(3))
			upAt := time.Now()
			marker.Up()
			added := sb.waitAdded(b, mmac)
			fromEvent, fromUp := added.Sub(tr.readyAt(b, marker.Index)), added.Sub(upAt)

			perEvent := func(r result) time.Duration {
				if r.events == 0 {
					return 0
				}
				return time.Duration(int64(r.ru.cpu) / r.events)
			}
			monCPU := perEvent(withMon) - perEvent(base)
			capacity := 0.0
			if monCPU > 0 {
				capacity = float64(time.Second) / float64(monCPU)
			}
			rate := float64(withMon.events) / run.Seconds()
			b.ReportMetric(rate, "events/s")
			b.ReportMetric(float64(monCPU.Nanoseconds())/1000, "monitor-cpu-us/event")
			b.ReportMetric(capacity, "capacity-events/s")
			b.ReportMetric(float64(resyncs), "resyncs")

			fmt.Printf("\nunrelated events: %s, %v per run, one generator goroutine\n", w.name, run)
			fmt.Printf("  %-40s %14s %14s\n", "", "no monitor", "monitor")
			fmt.Printf("  %-40s %14d %14d\n", "operations", base.ops, withMon.ops)
			fmt.Printf("  %-40s %14d %14d\n", "netlink events (tap count)", base.events, withMon.events)
			fmt.Printf("  %-40s %14.0f %14.0f\n", "events/s", float64(base.events)/run.Seconds(), rate)
			fmt.Printf("  %-40s %14v %14v\n", "process CPU", base.ru.cpu.Round(time.Millisecond), withMon.ru.cpu.Round(time.Millisecond))
			fmt.Printf("  %-40s %14v %14v\n", "process CPU per event", perEvent(base), perEvent(withMon))
			fmt.Printf("  monitor CPU per event %v -> one core absorbs ~%.0f events/s\n", monCPU, capacity)
			fmt.Printf("  during the churn: %d sandbox calls, %d resyncs (socket overruns), %d tap overruns\n", callsDuring, resyncs, t.overruns.Load())
			fmt.Printf("  marker endpoint after the churn: RUNNING event -> AddInterface %s (`up` syscall -> AddInterface %s)\n\n", ms(fromEvent), ms(fromUp))
		})
	}
}
