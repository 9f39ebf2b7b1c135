//go:build linux

package replay

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestRun: `docker run` on a dual-stack network with a custom MTU:
// eth0 attached with the MAC, MTU and addresses the kernel reports, and
// both default routes pushed.
func TestRun(t *testing.T) {
	e := newEnv(t)
	n := e.newNetwork(t, "172.30.1.0/24", "fd30:1::/64")
	fs, _ := e.startFake(t, nil)

	const mtu = 1450
	eth0 := e.newEndpoint(t, n, "eth0", 2, mtu, true)
	ev, _ := waitEvent(t, fs, "attach eth0", 0, isAttach("eth0", eth0.MAC.String()))
	e.checkAttach(t, ev, "eth0", eth0.MAC, eth0.Addrs, mtu)

	// The routes the kernel has through eth0 (main table, default), which
	// must be the ones configured.
	var want []hotplugtest.EventRoute
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		r := e.kernelDefaultRoute(t, fam, eth0.Index)
		if r == nil {
			t.Fatalf("kernel: no family %d default route through eth0", fam)
		}
		want = append(want, hotplugtest.EventRoute{Dest: "default", Gateway: r.Gw.String(), Device: "eth0"})
	}
	if cfg := []hotplugtest.EventRoute{defaultVia(n.GW, "eth0"), defaultVia(n.GW6, "eth0")}; !slices.Equal(sortRoutes(cfg), sortRoutes(want)) {
		t.Fatalf("kernel default routes %v, configured %v", want, cfg)
	}
	evs := waitEvents(t, fs, "both default routes via eth0", lastRoutesAre(want...))

	if g := fs.GuestInterfaces(); len(g) != 1 || g[0].Type != "veth" || g[0].Name != "eth0" {
		t.Errorf("guest interfaces %+v, want eth0 of type veth", g)
	}
	if n := count(evs, "attach"); n != 1 {
		t.Errorf("%d attach events, want 1:%s", n, formatEvents(evs))
	}
}

// TestConnect: `docker network connect` while the container runs:
// eth1 is attached, and the default gateway moving from eth0 to eth1
// (DELROUTE, then NEWROUTE via eth1) reaches the routes pushed.
func TestConnect(t *testing.T) {
	e := newEnv(t)
	n1 := e.newNetwork(t, "172.30.1.0/24", "")
	n2 := e.newNetwork(t, "172.30.2.0/24", "")
	fs, _ := e.startFake(t, nil)

	eth0 := e.newEndpoint(t, n1, "eth0", 2, 0, true)
	waitEvent(t, fs, "attach eth0", 0, isAttach("eth0", eth0.MAC.String()))
	waitEvents(t, fs, "default via eth0", lastRoutesAre(defaultVia(n1.GW, "eth0")))

	const mtu2 = 1400
	eth1 := e.newEndpoint(t, n2, "eth1", 2, mtu2, false)
	ev, _ := waitEvent(t, fs, "attach eth1", 0, isAttach("eth1", eth1.MAC.String()))
	e.checkAttach(t, ev, "eth1", eth1.MAC, eth1.Addrs, mtu2)

	moveDefault(t, e, eth0, eth1, n2.GW)
	waitEvents(t, fs, "default via eth1 only", lastRoutesAre(defaultVia(n2.GW, "eth1")))
	if got, want := fs.GuestMACs(), slices.Sorted(slices.Values([]string{eth0.MAC.String(), eth1.MAC.String()})); !slices.Equal(got, want) {
		t.Errorf("guest MACs %v, want %v", got, want)
	}
}

// TestMacvlan: Docker's macvlan driver: a macvlan (mode bridge) on a
// parent in dockerd's netns, created under a temporary name, moved into the
// sandbox, renamed, MAC, address, up, default route.
func TestMacvlan(t *testing.T) {
	parents := []struct {
		name string
		make func(t *testing.T, e *env) netlink.Link
	}{
		{"ifb parent", func(t *testing.T, e *env) netlink.Link {
			l := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
			addUp(t, e.Dockerd, l)
			return l
		}},
		{"veth parent", func(t *testing.T, e *env) netlink.Link {
			peer := netmontest.RandName()
			l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}, PeerName: peer}
			addUp(t, e.Dockerd, l)
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
			e := newEnv(t)
			fs, _ := e.startFake(t, nil)

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

			ev, _ := waitEvent(t, fs, "attach the macvlan", 0, isAttach("eth0", mac.String()))
			pl, err := e.Dockerd.LinkByIndex(parent.Attrs().Index)
			if err != nil {
				t.Fatal(err)
			}
			e.checkAttach(t, ev, "eth0", mac, []string{cidr}, pl.Attrs().MTU)
			if g := fs.GuestInterfaces(); len(g) != 1 || g[0].Type != "macvlan" {
				t.Errorf("guest interfaces %+v, want one macvlan", g)
			}
			waitEvents(t, fs, "default via eth0", lastRoutesAre(defaultVia(netip.MustParseAddr(gw), "eth0")))
		})
	}
}
