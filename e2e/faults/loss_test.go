//go:build linux

package faults

import (
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/direct"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// lossRounds is how many overflow rounds TestFaultEventLoss runs.
const lossRounds = 50

// burstAddrs is how many addresses each round puts on a throw-away ifb
// and then drops at once by deleting it: one syscall, and the kernel queues
// a RTM_DELADDR and RTM_DELROUTE per address on the monitor's sockets,
// orders of magnitude more than their tiny receive buffer holds.
const burstAddrs = 1000

// TestEventLoss: the monitor's sockets overflow (ReceiveBufferSize 1,
// bursts of thousands of address and route events) in every round, while
// Docker endpoints are added, configured, removed and the default route
// moves between them; many of those events are lost. In every round the
// monitor must have resynced, and afterwards the attached set and the last
// routes pushed must be exactly what a fresh list of the netns implies.
func TestEventLoss(t *testing.T) {
	e := newEnv(t)
	sb := &hotplugtest.FakeSandbox{}
	const id = "ft-loss"
	d := e.startDirect(t, sb, id, func(c *direct.Config) {
		c.Netmon = func(n *netmon.Config) { n.ReceiveBufferSize = 1 }
	})

	// Two endpoints stay for the whole test; the default route moves
	// between them. Extras come and go, named like Docker does (the lowest
	// free ethN), so names are reused by new links.
	fixed := []*endpoint{e.addEndpoint(t, "eth0", true), e.addEndpoint(t, "eth1", false)}
	gwOn := 0
	var extras []*endpoint
	freeName := func() string {
		for i := 2; ; i++ {
			n := fmt.Sprintf("eth%d", i)
			if !slices.ContainsFunc(extras, func(ep *endpoint) bool { return ep.Name == n }) {
				return n
			}
		}
	}
	var slowest time.Duration
	begin := time.Now()
	for round := range lossRounds {
		start := time.Now()
		resyncs := d.View().Resyncs
		metResyncs := metric(t, e.reg, "kata_netmon_resyncs_total", id)

		// Docker's first step for a new endpoint (untied veth)...
		ep := e.newVeth(t)
		// ...a burst of address (and local route) events...
		churn := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
		if err := e.Sandbox.LinkAdd(churn); err != nil {
			t.Fatalf("add ifb: %v", err)
		}
		if err := e.Sandbox.LinkSetUp(churn); err != nil {
			t.Fatalf("ifb up: %v", err)
		}
		for i := range burstAddrs {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, byte(i/250), byte(i%250+1)), Mask: net.CIDRMask(32, 32)}}
			if err := e.Sandbox.AddrAdd(churn, a); err != nil {
				t.Fatalf("add %s: %v", a, err)
			}
			if i == burstAddrs/2 {
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
				if err := e.Sandbox.RouteAdd(routeVia(fmt.Sprintf("10.200.%d.0/24", round), ep.Index)); err != nil {
					t.Fatalf("route via %s: %v", ep.Name, err)
				}
				if round%5 == 4 {
					gwOn = 1 - gwOn
					r := routeVia("0.0.0.0/0", fixed[gwOn].Index)
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
		waitRunning(t, e.Sandbox, ep.Index)
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
			t.Fatalf("round %d: a fresh list implies routes %s", round, formatRoutes(wantRoutes))
		}
		// ...and the monitor, having resynced, got there.
		waitUntil(t, waitTimeout, fmt.Sprintf("round %d: a resync, then the implied state", round), func() (bool, string) {
			snap := d.View()
			got, _ := lastRoutes(sb)
			macs := sb.GuestMACs()
			// The view is published before the resync is counted in
			// the metric: wait for both.
			met := metric(t, e.reg, "kata_netmon_resyncs_total", id)
			ok := snap.Resyncs > resyncs && met > metResyncs && slices.Equal(macs, wantMACs) && sameRoutes(got, wantRoutes)
			return ok, fmt.Sprintf("resyncs %d -> %d (resyncs_total %v -> %v); guest %v, want %v; last routes %s, want %s",
				resyncs, snap.Resyncs, metResyncs, met, macs, wantMACs, formatRoutes(got), formatRoutes(wantRoutes))
		})
		checkInvariants(t, sb)
		select {
		case <-d.Netmon.Done():
			t.Fatalf("round %d: monitor ended: %v", round, d.Netmon.Err())
		default:
		}
		slowest = max(slowest, time.Since(start))
	}
	snap := d.View()
	t.Logf("%d rounds in %v (slowest %v): %d resyncs, %d netlink events read, %d sandbox calls, %d reconcile passes",
		lossRounds, time.Since(begin).Round(time.Millisecond), slowest.Round(time.Millisecond), snap.Resyncs,
		int(eventsTotal(t, e.reg, id)), len(sb.Calls()), d.Passes())
	// The metric counts what the view counts. The monitor still runs (and
	// with a one-byte buffer a late kernel message, such as the end of IPv6
	// DAD on a link, can make it resync again), so the two are compared
	// when they agree, not at one arbitrary moment between two updates.
	waitUntil(t, waitTimeout, "resyncs_total to equal Snapshot.Resyncs", func() (bool, string) {
		got, want := metric(t, e.reg, "kata_netmon_resyncs_total", id), d.View().Resyncs
		return got == float64(want), fmt.Sprintf("resyncs_total = %v, Snapshot.Resyncs = %d", got, want)
	})
	if got, want := metric(t, e.reg, "kata_netmon_interfaces_attached", id), float64(2+len(extras)); got != want {
		t.Errorf("interfaces_attached = %v, want %v", got, want)
	}
}
