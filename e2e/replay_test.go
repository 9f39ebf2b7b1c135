//go:build linux

package e2e

// Docker 29's endpoint sequences, replayed step by step on the real kernel
// (a "dockerd" netns with the bridges, a "sandbox" netns Kata would own),
// against the real monitor, matcher and reconciler and a dry-run sandbox
// with Kata's semantics. See docs in /work/shared/notes/docker-and-kata.md:
// vethXXXXXXX created with its peer in the sandbox (no IFLA_LINK yet),
// custom MTU, rename to ethN, MAC, addresses, up, RUNNING (set by the
// kernel), default route via the bridge's address.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/internal/recording"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestReplayRun: `docker run` on a dual-stack network with a custom MTU:
// eth0 attached with the MAC, MTU and addresses the kernel reports, and
// both default routes pushed.
func TestReplayRun(t *testing.T) {
	e := replayNewEnv(t)
	n := e.replayNetwork(t, "172.30.1.0/24", "fd30:1::/64")
	rec := replayNewRecorder()
	e.replayStart(t, rec, nil)

	const mtu = 1450
	eth0 := e.replayDockerEndpoint(t, n, "eth0", 2, mtu, true)
	ev, _ := rec.waitEvent(t, "attach eth0", 0, replayIsAttach("eth0", eth0.MAC.String()))
	e.replayCheckAttach(t, ev, "eth0", eth0.MAC, eth0.Addrs, mtu)

	// The routes the kernel has through eth0 (main table, default), which
	// must be the ones configured.
	var want []recording.EventRoute
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		r := e.replayKernelDefault(t, fam, eth0.Index)
		if r == nil {
			t.Fatalf("kernel: no family %d default route through eth0", fam)
		}
		want = append(want, recording.EventRoute{Dest: "default", Gateway: r.Gw.String(), Device: "eth0"})
	}
	if cfg := []recording.EventRoute{replayDefault(n.GW, "eth0"), replayDefault(n.GW6, "eth0")}; !slices.Equal(replaySortRoutes(cfg), replaySortRoutes(want)) {
		t.Fatalf("kernel default routes %v, configured %v", want, cfg)
	}
	evs := rec.wait(t, "both default routes via eth0", replayLastRoutesAre(want...))

	if g := rec.Guest(); len(g) != 1 || g[0].Type != "veth" || g[0].Name != "eth0" {
		t.Errorf("guest interfaces %+v, want eth0 of type veth", g)
	}
	if n := replayCount(evs, "attach"); n != 1 {
		t.Errorf("%d attach events, want 1:%s", n, replayEvents(evs))
	}
}

// TestReplayConnect: `docker network connect` while the container runs:
// eth1 is attached, and the default gateway moving from eth0 to eth1
// (DELROUTE, then NEWROUTE via eth1) reaches the routes pushed.
func TestReplayConnect(t *testing.T) {
	e := replayNewEnv(t)
	n1 := e.replayNetwork(t, "172.30.1.0/24", "")
	n2 := e.replayNetwork(t, "172.30.2.0/24", "")
	rec := replayNewRecorder()
	e.replayStart(t, rec, nil)

	eth0 := e.replayDockerEndpoint(t, n1, "eth0", 2, 0, true)
	rec.waitEvent(t, "attach eth0", 0, replayIsAttach("eth0", eth0.MAC.String()))
	rec.wait(t, "default via eth0", replayLastRoutesAre(replayDefault(n1.GW, "eth0")))

	const mtu2 = 1400
	eth1 := e.replayDockerEndpoint(t, n2, "eth1", 2, mtu2, false)
	ev, _ := rec.waitEvent(t, "attach eth1", 0, replayIsAttach("eth1", eth1.MAC.String()))
	e.replayCheckAttach(t, ev, "eth1", eth1.MAC, eth1.Addrs, mtu2)

	replayMoveDefault(t, e, eth0, eth1, n2.GW)
	rec.wait(t, "default via eth1 only", replayLastRoutesAre(replayDefault(n2.GW, "eth1")))
	if got, want := rec.guestMACs(), slices.Sorted(slices.Values([]string{eth0.MAC.String(), eth1.MAC.String()})); !slices.Equal(got, want) {
		t.Errorf("guest MACs %v, want %v", got, want)
	}
}

// replayMoveDefault moves the IPv4 default route from one endpoint to
// another as Docker does when a connect changes the gateway endpoint: the
// old one is deleted, then the new one added.
func replayMoveDefault(t *testing.T, e *replayEnv, from, to *replayEP, gw netip.Addr) {
	t.Helper()
	old := e.replayKernelDefault(t, netlink.FAMILY_V4, from.Index)
	if old == nil {
		t.Fatalf("kernel: no default route through %s", from.Name)
	}
	if err := e.Sandbox.RouteDel(old); err != nil {
		t.Fatalf("delete default via %s: %v", from.Name, err)
	}
	to.AddDefaultRoute(gw.String())
	if r := e.replayKernelDefault(t, netlink.FAMILY_V4, to.Index); r == nil || r.Gw.String() != gw.String() {
		t.Fatalf("kernel: default route through %s is %v, want via %s", to.Name, r, gw)
	}
}

// TestReplayDisconnect: `docker network disconnect` of the gateway
// endpoint eth1, Docker's way (down, renamed back to vethXXXXXXX, DELADDR,
// moved out to dockerd's netns) and by deletion. eth1 is detached once, eth0
// stays, Docker's new default via eth0 reaches the routes, and a new link
// that reuses the name eth1 is attached.
func TestReplayDisconnect(t *testing.T) {
	tests := []struct {
		name       string
		disconnect func(t *testing.T, e *replayEnv, ep *replayEP)
	}{
		{"docker", func(t *testing.T, e *replayEnv, ep *replayEP) {
			l, err := ep.Sandbox.LinkByIndex(ep.Index)
			if err != nil {
				t.Fatal(err)
			}
			if err := ep.Sandbox.LinkSetDown(l); err != nil {
				t.Fatal(err)
			}
			ep.Rename(ep.TmpName)
			for _, a := range ep.Addrs {
				addr, _ := netlink.ParseAddr(a)
				// IPv6 addresses went with the down already.
				if err := ep.Sandbox.AddrDel(l, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
					t.Fatalf("delete %s: %v", a, err)
				}
			}
			ep.MoveTo(e.DockerdNS)
		}},
		{"deleted", func(t *testing.T, e *replayEnv, ep *replayEP) {
			if err := e.Sandbox.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ep.Index}}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := replayNewEnv(t)
			n1 := e.replayNetwork(t, "172.30.1.0/24", "")
			n2 := e.replayNetwork(t, "172.30.2.0/24", "")
			rec := replayNewRecorder()
			e.replayStart(t, rec, nil)

			eth0 := e.replayDockerEndpoint(t, n1, "eth0", 2, 0, true)
			eth1 := e.replayDockerEndpoint(t, n2, "eth1", 2, 0, false)
			replayMoveDefault(t, e, eth0, eth1, n2.GW)
			rec.wait(t, "eth0 and eth1 attached, default via eth1", func(evs []recording.Event) bool {
				return len(rec.guestMACs()) == 2 && replayLastRoutesAre(replayDefault(n2.GW, "eth1"))(evs)
			})

			tc.disconnect(t, e, eth1)
			_, at := rec.waitEvent(t, "detach eth1", 0, replayIsDetach(eth1.MAC.String()))
			// Docker: NEWROUTE default via the remaining gateway.
			eth0.AddDefaultRoute(n1.GW.String())
			evs := rec.wait(t, "default via eth0", replayLastRoutesAre(replayDefault(n1.GW, "eth0")))

			if got := rec.guestMACs(); !slices.Equal(got, []string{eth0.MAC.String()}) {
				t.Errorf("guest MACs %v, want only eth0's %s", got, eth0.MAC)
			}
			if n := replayCount(evs, "detach"); n != 1 {
				t.Errorf("%d detach events, want 1:%s", n, replayEvents(evs))
			}
			for _, ev := range evs[at+1:] {
				for _, r := range ev.Routes {
					if r.Device == "eth1" {
						t.Errorf("route through eth1 pushed after its detach: %+v", ev)
					}
				}
			}

			// Connect again: Docker reuses the name eth1 for a new link.
			again := e.replayDockerEndpoint(t, n2, "eth1", 3, 0, false)
			rec.waitEvent(t, "attach the new eth1", at+1, replayIsAttach("eth1", again.MAC.String()))
			want := slices.Sorted(slices.Values([]string{eth0.MAC.String(), again.MAC.String()}))
			if got := rec.guestMACs(); !slices.Equal(got, want) {
				t.Errorf("guest MACs %v, want %v", got, want)
			}
		})
	}
}

// TestReplayMacvlan: Docker's macvlan driver: a macvlan (mode bridge) on a
// parent in dockerd's netns, created under a temporary name, moved into the
// sandbox, renamed, MAC, address, up, default route.
func TestReplayMacvlan(t *testing.T) {
	parents := []struct {
		name string
		make func(t *testing.T, e *replayEnv) netlink.Link
	}{
		{"ifb parent", func(t *testing.T, e *replayEnv) netlink.Link {
			l := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
			replayAddUp(t, e.Dockerd, l)
			return l
		}},
		{"veth parent", func(t *testing.T, e *replayEnv) netlink.Link {
			peer := netmontest.RandName()
			l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}, PeerName: peer}
			replayAddUp(t, e.Dockerd, l)
			p, err := e.Dockerd.LinkByName(peer)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Dockerd.LinkSetUp(p); err != nil {
				t.Fatal(err)
			}
			return l
		}},
	}
	for _, pc := range parents {
		t.Run(pc.name, func(t *testing.T) {
			e := replayNewEnv(t)
			rec := replayNewRecorder()
			e.replayStart(t, rec, nil)

			parent := pc.make(t, e)
			tmp := "veth" + netmontest.RandName()[4:11]
			mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: tmp, ParentIndex: parent.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}
			if err := e.Dockerd.LinkAdd(mv); err != nil {
				t.Fatalf("add macvlan on %s: %v", parent.Attrs().Name, err)
			}
			if err := e.Dockerd.LinkSetNsFd(mv, int(e.SandboxNS)); err != nil {
				t.Fatalf("move %s into the sandbox: %v", tmp, err)
			}
			l, err := e.Sandbox.LinkByName(tmp)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Sandbox.LinkSetName(l, "eth0"); err != nil {
				t.Fatal(err)
			}
			mac := netmontest.RandMAC()
			if err := e.Sandbox.LinkSetHardwareAddr(l, mac); err != nil {
				t.Fatal(err)
			}
			const cidr, gw = "192.168.50.2/24", "192.168.50.1"
			netmontest.AddAddr(t, e.Sandbox, l.Attrs().Index, cidr)
			if err := e.Sandbox.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
			if err := e.Sandbox.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw), Protocol: unix.RTPROT_BOOT}); err != nil {
				t.Fatal(err)
			}

			ev, _ := rec.waitEvent(t, "attach the macvlan", 0, replayIsAttach("eth0", mac.String()))
			pl, err := e.Dockerd.LinkByIndex(parent.Attrs().Index)
			if err != nil {
				t.Fatal(err)
			}
			e.replayCheckAttach(t, ev, "eth0", mac, []string{cidr}, pl.Attrs().MTU)
			if g := rec.Guest(); len(g) != 1 || g[0].Type != "macvlan" {
				t.Errorf("guest interfaces %+v, want one macvlan", g)
			}
			rec.wait(t, "default via eth0", replayLastRoutesAre(replayDefault(netip.MustParseAddr(gw), "eth0")))
		})
	}
}

func replayAddUp(t *testing.T, h *netlink.Handle, l netlink.Link) {
	t.Helper()
	if err := h.LinkAdd(l); err != nil {
		t.Fatalf("add %s %s: %v", l.Type(), l.Attrs().Name, err)
	}
	t.Cleanup(func() { _ = h.LinkDel(l) })
	if err := h.LinkSetUp(l); err != nil {
		t.Fatalf("%s up: %v", l.Attrs().Name, err)
	}
}

// TestReplayNeverAttached: Kata's own tap0_kata (a multi-queue tap with a
// queue open, as QEMU holds it: up and running, even with an address), an
// ifb with an address, and a fully configured veth whose peer is on no
// bridge are never attached; a real endpoint added after them is.
func TestReplayNeverAttached(t *testing.T) {
	e := replayNewEnv(t)
	n := e.replayNetwork(t, "172.30.1.0/24", "")
	rec := replayNewRecorder()
	mon := e.replayStart(t, rec, nil)

	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0_kata"}, Mode: netlink.TUNTAP_MODE_TAP,
		Queues: 1, Flags: netlink.TUNTAP_MULTI_QUEUE_DEFAULTS | netlink.TUNTAP_VNET_HDR}
	replayInNetNS(t, e.SandboxPath, func() error { return netlink.LinkAdd(tap) })
	t.Cleanup(func() {
		for _, f := range tap.Fds {
			f.Close()
		}
		_ = e.Sandbox.LinkDel(tap)
	})
	if err := e.Sandbox.LinkSetUp(tap); err != nil {
		t.Fatal(err)
	}
	netmontest.AddAddr(t, e.Sandbox, tap.Index, "10.99.0.1/24")

	ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
	replayAddUp(t, e.Sandbox, ifb)
	netmontest.AddAddr(t, e.Sandbox, ifb.Index, "10.98.0.1/24")

	lone := &replayEP{Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, "")}
	lone.configure(t, "eth5", n.Host(9)...)

	// Wait until the monitor has seen all three in their final state,
	// then add a real endpoint: once it is attached, the reconciler has
	// had its chance at the others.
	ready := func(l *view.Link) bool { return l.Up() && l.Running() && len(l.Addrs) > 0 }
	snap := mon.waitView(t, replayTimeout, "tap, ifb and lone veth configured", func(s *view.Snapshot) bool {
		l := s.LinkByName("eth5")
		return replayLinkState("tap0_kata", ready)(s) && replayLinkState(ifb.Name, ready)(s) &&
			l != nil && ready(l) && l.Peer != nil && l.Peer.State == view.PeerResolved
	})
	for _, name := range []string{"tap0_kata", ifb.Name, "eth5"} {
		d := matcher.Classify(snap.LinkByName(name))
		t.Logf("%s (%s): %s, %s", name, d.Kind, d.State, d.Reason)
		if d.State != matcher.Ignored {
			t.Errorf("%s classified %s (%s), want ignored", name, d.State, d.Reason)
		}
	}

	eth0 := e.replayDockerEndpoint(t, n, "eth0", 2, 0, false)
	_, at := rec.waitEvent(t, "attach eth0", 0, replayIsAttach("eth0", eth0.MAC.String()))
	if evs := rec.Events(); replayCount(evs, "attach") != 1 || at != 0 {
		t.Errorf("want eth0's attach as the only event so far:%s", replayEvents(evs))
	}
}

// TestReplayAlreadyAttached: an endpoint the sandbox has already (Kata's
// own rescan attached it, or a monitor before this one) is adopted, not
// attached a second time; its routes are still pushed.
func TestReplayAlreadyAttached(t *testing.T) {
	for _, before := range []bool{true, false} {
		t.Run(fmt.Sprintf("ready before start %v", before), func(t *testing.T) {
			e := replayNewEnv(t)
			n := e.replayNetwork(t, "172.30.1.0/24", "")
			fs := &hotplugtest.FakeSandbox{}
			ep := e.replayVeth(t, n, 0)
			// The MAC Docker is about to give the endpoint is already the
			// guest's NIC's.
			mac := netmontest.RandMAC()
			if _, err := fs.GuestAddInterface(&hotplug.Interface{Name: "eth0", Device: "eth0", HwAddr: mac.String(), Type: "veth"}); err != nil {
				t.Fatal(err)
			}
			configure := func() {
				ep.Rename("eth0")
				ep.MAC = mac
				ep.SetMAC(mac.String())
				ep.AddAddr(n.Host(2)[0])
				ep.Up()
				ep.AddDefaultRoute(n.GW.String())
			}
			if before {
				configure()
			}
			mon := e.replayStart(t, fs, nil)
			if !before {
				configure()
			}
			marker := e.replayDockerEndpoint(t, n, "eth1", 3, 0, false)

			if _, err := fs.WaitCalls(hotplugtest.OpAddInterface, 1, replayTimeout); err != nil {
				t.Fatal(err)
			}
			wantRoute := hotplug.Route{Dest: "", Gateway: n.GW.String(), Device: "eth0", Family: hotplug.FamilyV4}
			if _, err := fs.WaitFor(replayTimeout, func(calls []hotplugtest.Call) bool {
				for _, c := range calls {
					if c.Op == hotplugtest.OpUpdateRoutes && slices.ContainsFunc(c.Routes, func(r *hotplug.Route) bool {
						return r.Dest == wantRoute.Dest && r.Gateway == wantRoute.Gateway && r.Device == wantRoute.Device
					}) {
						return true
					}
				}
				return false
			}, "default route via eth0"); err != nil {
				t.Fatal(err)
			}
			for _, c := range fs.CallsOf(hotplugtest.OpAddInterface) {
				if c.MAC() != marker.MAC.String() {
					t.Errorf("AddInterface(%s %s): the sandbox had it already", c.Interface.Name, c.MAC())
				}
			}
			if got, want := fs.GuestMACs(), slices.Sorted(slices.Values([]string{mac.String(), marker.MAC.String()})); !slices.Equal(got, want) {
				t.Errorf("guest MACs %v, want %v (each once)", got, want)
			}
			if !slices.ContainsFunc(mon.rec.NICs(), func(a matcher.GuestNIC) bool { return a.Index == ep.Index && a.MAC == mac.String() }) {
				t.Errorf("eth0 not adopted: attached %+v", mon.rec.NICs())
			}
		})
	}
}

// TestReplayResync: the subscription dies mid-stream (a tiny receive
// buffer and a burst of address churn on an ifb the matcher ignores) while
// Docker runs, connects, moves the gateway and deletes an endpoint. The
// monitor must resync, and the end state must be exactly what the netns
// implies: the attached set and the last routes pushed.
func TestReplayResync(t *testing.T) {
	e := replayNewEnv(t)
	n1 := e.replayNetwork(t, "172.30.1.0/24", "")
	n2 := e.replayNetwork(t, "172.30.2.0/24", "")
	rec := replayNewRecorder()
	mon := e.replayStart(t, rec, func(c *netmon.Config) { c.ReceiveBufferSize = 1 })

	churn := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
	replayAddUp(t, e.Sandbox, churn)
	stop, churnErr := make(chan struct{}), make(chan error, 1)
	var churned int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				churnErr <- nil
				return
			default:
			}
			addr, _ := netlink.ParseAddr(fmt.Sprintf("10.77.%d.%d/32", i/250%250, i%250+1))
			if err := e.Sandbox.AddrAdd(churn, addr); err != nil {
				churnErr <- fmt.Errorf("churn: add %s: %w", addr, err)
				return
			}
			if err := e.Sandbox.AddrDel(churn, addr); err != nil {
				churnErr <- fmt.Errorf("churn: delete %s: %w", addr, err)
				return
			}
			churned++
		}
	}()
	stopChurn := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
		if err := <-churnErr; err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(stopChurn)

	eth0 := e.replayDockerEndpoint(t, n1, "eth0", 2, 0, true)
	eth1 := e.replayDockerEndpoint(t, n2, "eth1", 2, 0, false)
	eth2 := e.replayDockerEndpoint(t, n2, "eth2", 3, 0, false)
	mon.waitView(t, 30*time.Second, "a resync", func(s *view.Snapshot) bool { return s.Resyncs > 0 })
	// More changes while events keep being lost.
	replayMoveDefault(t, e, eth0, eth1, n2.GW)
	if err := e.Sandbox.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: eth2.Index}}); err != nil {
		t.Fatal(err)
	}
	stopChurn()

	wantMACs := slices.Sorted(slices.Values([]string{eth0.MAC.String(), eth1.MAC.String()}))
	wantRoutes := []recording.EventRoute{replayDefault(n2.GW, "eth1")}
	// A fresh list of the netns agrees with what was configured...
	if macs, routes := e.replayImplied(t); !slices.Equal(macs, wantMACs) || !slices.Equal(routes, wantRoutes) {
		t.Fatalf("a fresh list implies endpoints %v and routes %v; configured %v and %v", macs, routes, wantMACs, wantRoutes)
	}
	// ...and the resynced monitor got there.
	evs := rec.wait(t, "the attached set and the last routes the netns implies", func(evs []recording.Event) bool {
		return slices.Equal(rec.guestMACs(), wantMACs) && replayLastRoutesAre(wantRoutes...)(evs)
	})
	snap := mon.Snapshot()
	t.Logf("%d addresses churned, %d resyncs, %d sandbox events", churned, snap.Resyncs, len(evs))
	if snap.Resyncs == 0 {
		t.Error("no resync recorded")
	}
	select {
	case <-mon.Done():
		t.Fatalf("monitor ended: %v", mon.Err())
	default:
	}
	// Every attach of eth2 (if it was seen at all) was undone.
	var eth2Attached bool
	for _, ev := range evs {
		if ev.MAC == eth2.MAC.String() {
			eth2Attached = ev.Op == "attach"
		}
	}
	if eth2Attached {
		t.Errorf("eth2 deleted but still attached:%s", replayEvents(evs))
	}
}

func replayCount(evs []recording.Event, op string) int {
	n := 0
	for _, e := range evs {
		if e.Op == op {
			n++
		}
	}
	return n
}
