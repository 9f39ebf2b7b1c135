package netmon_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

var native = binary.NativeEndian

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 10 * time.Second

// env is a sandbox netns to watch and a "dockerd" netns beside it.
type env struct {
	netmontest.Pair
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{}
	e.Pair = netmontest.NewPair(t)
	return e
}

// start creates and starts a monitor on the sandbox, closed on cleanup.
func (e *env) start(t *testing.T, mod func(*netmon.Config)) *netmon.Monitor {
	t.Helper()
	cfg := netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath, Log: netmontest.Log(t)}
	if mod != nil {
		mod(&cfg)
	}
	m, err := netmon.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return m
}

// waitView waits until cond holds for the monitor's view.
func waitView(t *testing.T, m *netmon.Monitor, what string, cond func(*view.Snapshot) bool) *view.Snapshot {
	t.Helper()
	return netmontest.WaitFor(t, m.Changed(), waitTimeout, what, m.Snapshot, cond)
}

func waitLink(t *testing.T, m *netmon.Monitor, index int, what string, cond func(*view.Link) bool) *view.Link {
	t.Helper()
	s := waitView(t, m, fmt.Sprintf("ifindex %d: %s", index, what), func(s *view.Snapshot) bool {
		l := s.Links[index]
		return l != nil && cond(l)
	})
	return s.Links[index]
}

func hasAddr(l *view.Link, p string) bool {
	want := netip.MustParsePrefix(p)
	for _, a := range l.Addrs {
		if a.Prefix == want {
			return true
		}
	}
	return false
}

func findRoute(s *view.Snapshot, f func(view.Route) bool) *view.Route {
	for _, r := range s.Routes {
		if f(r) {
			return &r
		}
	}
	return nil
}

func routesVia(s *view.Snapshot, index int) []view.Route {
	var out []view.Route
	for _, r := range s.Routes {
		if r.LinkIndex == index {
			out = append(out, r)
		}
	}
	return out
}

// vethPair creates a veth pair with both ends in the netns of h.
func vethPair(t *testing.T, h *netlink.Handle) (a, b netlink.Link) {
	t.Helper()
	an, bn := netmontest.RandName(), netmontest.RandName()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: an}, PeerName: bn}); err != nil {
		t.Fatalf("add veth %s/%s: %v", an, bn, err)
	}
	t.Cleanup(func() {
		if l, err := h.LinkByName(an); err == nil {
			_ = h.LinkDel(l)
		}
	})
	a, err := h.LinkByName(an)
	if err != nil {
		t.Fatal(err)
	}
	b, err = h.LinkByName(bn)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func linkUp(t *testing.T, h *netlink.Handle, l netlink.Link) {
	t.Helper()
	if err := h.LinkSetUp(l); err != nil {
		t.Fatalf("%s up: %v", l.Attrs().Name, err)
	}
}

// equalViews compares two snapshots' links and routes.
func equalViews(a, b *view.Snapshot) bool {
	return reflect.DeepEqual(a.Links, b.Links) && reflect.DeepEqual(a.Routes, b.Routes)
}

// waitFresh waits until the view equals what a fresh list gives.
func waitFresh(t *testing.T, m *netmon.Monitor) {
	t.Helper()
	var fresh *view.Snapshot
	waitView(t, m, "view equal to a fresh list", func(s *view.Snapshot) bool {
		var err error
		if fresh, err = netmon.FreshSnapshot(m); err != nil {
			t.Fatalf("fresh list: %v", err)
		}
		return equalViews(s, fresh)
	})
}

func TestInitialList(t *testing.T) {
	e := newEnv(t)
	a, b := vethPair(t, e.Sandbox)
	linkUp(t, e.Sandbox, a)
	linkUp(t, e.Sandbox, b)
	netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, "10.61.0.2/24")
	netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, "fd61::2/64")
	if err := e.Sandbox.RouteAdd(&netlink.Route{LinkIndex: a.Attrs().Index, Gw: net.ParseIP("10.61.0.1")}); err != nil {
		t.Fatalf("default route: %v", err)
	}
	if err := e.Sandbox.RouteAdd(&netlink.Route{LinkIndex: a.Attrs().Index, Dst: mustCIDR("10.62.0.0/16"),
		Gw: net.ParseIP("10.61.0.1"), Table: 100}); err != nil {
		t.Fatalf("route in table 100: %v", err)
	}

	m := e.start(t, nil)
	s := m.Snapshot()
	if s.Generation == 0 {
		t.Errorf("Generation = 0 after Start")
	}
	lo := s.LinkByName("lo")
	if lo == nil || lo.Kind != "device" || lo.LinkNetNSID != -1 || lo.Peer != nil {
		t.Errorf("lo = %+v, want kind device, LinkNetNSID -1, no peer", lo)
	}
	la := s.Links[a.Attrs().Index]
	if la == nil {
		t.Fatalf("veth %s missing from the first snapshot: %+v", a.Attrs().Name, s.Links)
	}
	if la.Name != a.Attrs().Name || la.Kind != "veth" || !la.Up() || la.MTU != 1500 ||
		la.MAC.String() != a.Attrs().HardwareAddr.String() || la.LinkNetNSID != -1 ||
		la.ParentIndex != b.Attrs().Index {
		t.Errorf("veth = %+v", la)
	}
	if la.Peer == nil || la.Peer.State != view.PeerSameNetNS {
		t.Errorf("peer = %+v, want same-netns", la.Peer)
	}
	for _, p := range []string{"10.61.0.2/24", "fd61::2/64"} {
		if !hasAddr(la, p) {
			t.Errorf("address %s missing: %+v", p, la.Addrs)
		}
	}
	def := findRoute(s, func(r view.Route) bool { return r.Default() && r.Family == view.FamilyV4 })
	if def == nil || def.Gateway != netip.MustParseAddr("10.61.0.1") || def.LinkIndex != la.Index ||
		def.Table != view.TableMain || !def.Dst.IsValid() {
		t.Errorf("default route = %+v", def)
	}
	if r := findRoute(s, func(r view.Route) bool { return r.Table == 100 }); r == nil ||
		r.Dst != netip.MustParsePrefix("10.62.0.0/16") {
		t.Errorf("table 100 route = %+v", r)
	}
	if r := findRoute(s, func(r view.Route) bool {
		return r.Dst == netip.MustParsePrefix("10.61.0.0/24") && r.Protocol == view.RouteProtoKernel
	}); r == nil {
		t.Errorf("kernel prefix route 10.61.0.0/24 missing: %+v", s.Routes)
	}
	// The kernel is still at work on the links it just set up (carrier,
	// IPv6 link-local addresses and their routes, duplicate address
	// detection), so a fresh list taken now may already differ from the
	// first snapshot: the view must come to equal a fresh list.
	waitFresh(t, m)
}

// viewDiff describes how two views differ, for failures.
func viewDiff(a, b *view.Snapshot) string {
	var out []string
	for idx, la := range a.Links {
		if lb := b.Links[idx]; !reflect.DeepEqual(la, lb) {
			out = append(out, fmt.Sprintf("link %d: %+v (peer %+v)\n     vs %+v", idx, la, la.Peer, lb))
		}
	}
	for idx, lb := range b.Links {
		if a.Links[idx] == nil {
			out = append(out, fmt.Sprintf("link %d only in the second: %+v", idx, lb))
		}
	}
	if !reflect.DeepEqual(a.Routes, b.Routes) {
		out = append(out, fmt.Sprintf("routes %+v\n    vs %+v", a.Routes, b.Routes))
	}
	return strings.Join(out, "\n")
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestSnapshotIsACopy(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, nil)
	s := m.Snapshot()
	for _, l := range s.Links {
		l.Name = "mangled"
		l.MAC = nil
	}
	s.Links[9999] = &view.Link{}
	for _, l := range m.Snapshot().Links {
		if l.Name == "mangled" {
			t.Fatal("modifying a snapshot changed the monitor's view")
		}
	}
	if m.Snapshot().Links[9999] != nil {
		t.Fatal("modifying a snapshot changed the monitor's view")
	}
}

func TestNewLinkRenameKeepsIndex(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, nil)
	name := netmontest.RandName()
	if err := e.Sandbox.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("add ifb: %v", err)
	}
	l, err := e.Sandbox.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	idx := l.Attrs().Index
	before := waitLink(t, m, idx, "ifb appears", func(l *view.Link) bool { return l.Name == name })
	if before.Kind != "ifb" {
		t.Errorf("kind = %q, want ifb", before.Kind)
	}
	netmontest.AddAddr(t, e.Sandbox, idx, "10.63.0.1/24")
	waitLink(t, m, idx, "address", func(l *view.Link) bool { return hasAddr(l, "10.63.0.1/24") })

	renamed := netmontest.RandName()
	if err := e.Sandbox.LinkSetName(l, renamed); err != nil {
		t.Fatal(err)
	}
	if err := e.Sandbox.LinkSetMTU(l, 1400); err != nil {
		t.Fatal(err)
	}
	after := waitLink(t, m, idx, "renamed, MTU 1400", func(l *view.Link) bool { return l.Name == renamed && l.MTU == 1400 })
	if !hasAddr(after, "10.63.0.1/24") {
		t.Errorf("NEWLINK dropped the addresses: %+v", after.Addrs)
	}
	if s := m.Snapshot(); s.LinkByName(name) != nil || s.LinkByName(renamed).Index != idx {
		t.Errorf("after rename: old name still present or index changed")
	}
	gen := m.Snapshot().Generation
	if err := e.Sandbox.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	s := waitView(t, m, "ifb deleted", func(s *view.Snapshot) bool { return s.Links[idx] == nil })
	if s.Generation <= gen {
		t.Errorf("Generation did not increase: %d -> %d", gen, s.Generation)
	}
}

func TestAddrAddDel(t *testing.T) {
	e := newEnv(t)
	a, _ := vethPair(t, e.Sandbox)
	linkUp(t, e.Sandbox, a)
	idx := a.Attrs().Index
	m := e.start(t, nil)
	for _, p := range []string{"10.64.0.2/24", "10.64.1.2/32", "fd64::2/64"} {
		t.Run(p, func(t *testing.T) {
			netmontest.AddAddr(t, e.Sandbox, idx, p)
			l := waitLink(t, m, idx, "added "+p, func(l *view.Link) bool { return hasAddr(l, p) })
			for _, ad := range l.Addrs {
				if ad.Prefix.String() == p && ad.Scope != int(netlink.SCOPE_UNIVERSE) {
					t.Errorf("scope = %d", ad.Scope)
				}
			}
			addr, _ := netlink.ParseAddr(p)
			if err := e.Sandbox.AddrDel(a, addr); err != nil {
				t.Fatal(err)
			}
			waitLink(t, m, idx, "deleted "+p, func(l *view.Link) bool { return !hasAddr(l, p) })
		})
	}
	waitFresh(t, m)
}

func TestRoutesAndLinkDown(t *testing.T) {
	e := newEnv(t)
	a, b := vethPair(t, e.Sandbox)
	linkUp(t, e.Sandbox, a)
	linkUp(t, e.Sandbox, b)
	idx := a.Attrs().Index
	m := e.start(t, nil)
	netmontest.AddAddr(t, e.Sandbox, idx, "10.65.0.2/24")
	netmontest.AddAddr(t, e.Sandbox, idx, "fd65::2/64")
	for _, r := range []*netlink.Route{
		{LinkIndex: idx, Gw: net.ParseIP("10.65.0.1")},
		{LinkIndex: idx, Dst: mustCIDR("10.66.0.0/16"), Gw: net.ParseIP("10.65.0.1"), Priority: 10},
		{LinkIndex: idx, Gw: net.ParseIP("fd65::1")},
	} {
		if err := e.Sandbox.RouteAdd(r); err != nil {
			t.Fatalf("add %v: %v", r, err)
		}
	}
	s := waitView(t, m, "routes", func(s *view.Snapshot) bool {
		return findRoute(s, func(r view.Route) bool { return r.Default() && r.Family == view.FamilyV4 }) != nil &&
			findRoute(s, func(r view.Route) bool { return r.Default() && r.Family == view.FamilyV6 }) != nil &&
			findRoute(s, func(r view.Route) bool { return r.Dst.String() == "10.66.0.0/16" && r.Priority == 10 }) != nil
	})
	if d := findRoute(s, func(r view.Route) bool { return r.Default() && r.Family == view.FamilyV6 }); d.Dst != netip.MustParsePrefix("::/0") {
		t.Errorf("IPv6 default Dst = %v", d.Dst)
	}
	// Delete one route: DELROUTE.
	if err := e.Sandbox.RouteDel(&netlink.Route{LinkIndex: idx, Dst: mustCIDR("10.66.0.0/16"), Gw: net.ParseIP("10.65.0.1"), Priority: 10}); err != nil {
		t.Fatal(err)
	}
	waitView(t, m, "10.66/16 gone", func(s *view.Snapshot) bool {
		return findRoute(s, func(r view.Route) bool { return r.Dst.String() == "10.66.0.0/16" }) == nil
	})
	waitFresh(t, m)

	// Down: the kernel drops the IPv4 routes without RTM_DELROUTE.
	if err := e.Sandbox.LinkSetDown(a); err != nil {
		t.Fatal(err)
	}
	s = waitView(t, m, "no IPv4 route through the down link", func(s *view.Snapshot) bool {
		for _, r := range routesVia(s, idx) {
			if r.Family == view.FamilyV4 && r.Table == view.TableMain {
				return false
			}
		}
		return !s.Links[idx].Up()
	})
	if hasAddr(s.Links[idx], "fd65::2/64") {
		t.Errorf("IPv6 address survived link down (keep_addr_on_down=0): %+v", s.Links[idx].Addrs)
	}
	waitFresh(t, m)
}

func TestBridgePortReleaseKeepsLink(t *testing.T) {
	e := newEnv(t)
	br := netmontest.AddBridge(t, e.Sandbox)
	a, _ := vethPair(t, e.Sandbox)
	idx := a.Attrs().Index
	m := e.start(t, nil)
	if err := e.Sandbox.LinkSetMaster(a, br); err != nil {
		t.Fatal(err)
	}
	waitLink(t, m, idx, "enslaved", func(l *view.Link) bool { return l.MasterIndex == br.Index })
	if err := e.Sandbox.LinkSetNoMaster(a); err != nil {
		t.Fatal(err)
	}
	// The kernel sends an AF_BRIDGE RTM_DELLINK here; the link must stay.
	waitLink(t, m, idx, "released", func(l *view.Link) bool { return l.MasterIndex == 0 })
	waitFresh(t, m)
	if m.Snapshot().Links[idx] == nil {
		t.Fatal("link vanished after leaving its bridge")
	}
}

// TestDockerSequence replays Docker's bridge endpoint step by step and
// checks the peer facts, with dockerd's netns given and found by scanning.
func TestDockerSequence(t *testing.T) {
	scan := func(c *netmon.Config) { c.DockerdNetNS = ""; c.ScanNetNS = true }
	for _, tc := range []struct {
		name string
		cfg  func(*netmon.Config)
		veth func(testing.TB, netns.NsHandle, netns.NsHandle, string) *netmontest.Endpoint
		home view.PeerHome
	}{
		{"DockerdNetNS/moved", nil, netmontest.VethToNetNS, view.HomeDockerd},
		{"DockerdNetNS/created-there", nil, netmontest.VethPeerInNetNS, view.HomeDockerd},
		{"ScanNetNS/moved", scan, netmontest.VethToNetNS, view.HomeScanned},
		{"ScanNetNS/created-there", scan, netmontest.VethPeerInNetNS, view.HomeScanned},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			br := netmontest.AddBridge(t, e.Dockerd)
			m := e.start(t, tc.cfg)

			ep := tc.veth(t, e.DockerdNS, e.SandboxNS, br.Name)
			// Even before any further change, the view ties the veth to
			// its peer (a created-there veth is announced untied).
			first := waitLink(t, m, ep.Index, "veth tied to its peer", func(l *view.Link) bool {
				return l.ParentIndex == ep.HostIndex && l.Peer != nil && l.Peer.State == view.PeerResolved
			})
			t.Logf("before the rename: name %s link %d link-netnsid %d peer %+v", first.Name, first.ParentIndex, first.LinkNetNSID, first.Peer)

			ep.Rename("eth0")
			l := waitLink(t, m, ep.Index, "renamed eth0 with its peer resolved", func(l *view.Link) bool {
				return l.Name == "eth0" && l.Peer != nil && l.Peer.State == view.PeerResolved
			})
			if l.LinkNetNSID < 0 || l.ParentIndex != ep.HostIndex {
				t.Errorf("eth0 link %d link-netnsid %d, want link %d and an id", l.ParentIndex, l.LinkNetNSID, ep.HostIndex)
			}
			ep.SetMAC("02:42:ac:12:00:02")
			ep.AddAddr("172.18.0.2/16")
			ep.AddAddr("fd18::2/64")
			ep.Up()
			ep.AddDefaultRoute("172.18.0.1")

			s := waitView(t, m, "configured eth0", func(s *view.Snapshot) bool {
				l := s.Links[ep.Index]
				return l != nil && l.MAC.String() == "02:42:ac:12:00:02" && l.Up() &&
					hasAddr(l, "172.18.0.2/16") && hasAddr(l, "fd18::2/64") &&
					findRoute(s, func(r view.Route) bool { return r.Default() && r.LinkIndex == ep.Index }) != nil
			})
			p := s.Links[ep.Index].Peer
			want := view.Peer{State: view.PeerResolved, Home: tc.home, NetNS: e.DockerdPath, Found: true,
				Name: ep.HostName, Kind: "veth", PointsBack: true, MasterIndex: br.Index, MasterKind: "bridge"}
			if p == nil || *p != want {
				t.Errorf("peer = %+v\nwant   %+v", p, want)
			}
			waitFresh(t, m)

			// docker network disconnect: down, rename back, move out.
			if err := ep.Sandbox.LinkSetDown(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ep.Index}}); err != nil {
				t.Fatal(err)
			}
			ep.Rename("veth" + netmontest.RandName()[4:11])
			ep.MoveTo(e.DockerdNS)
			s = waitView(t, m, "moved-out link gone", func(s *view.Snapshot) bool { return s.Links[ep.Index] == nil })
			if rs := routesVia(s, ep.Index); len(rs) > 0 {
				t.Errorf("routes through the moved-out link remain: %+v", rs)
			}
			waitFresh(t, m)
		})
	}
}

func TestPeerSameNetNS(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, nil)
	a, b := vethPair(t, e.Sandbox)
	for _, l := range []netlink.Link{a, b} {
		waitLink(t, m, l.Attrs().Index, "same-netns peer", func(l *view.Link) bool {
			return l.Peer != nil && l.Peer.State == view.PeerSameNetNS && l.LinkNetNSID == -1
		})
	}
}

func TestPeerForeignNetNS(t *testing.T) {
	for _, scan := range []bool{false, true} {
		t.Run(fmt.Sprintf("scan=%v", scan), func(t *testing.T) {
			e := newEnv(t)
			otherPath, otherNS := netmontest.NewNetNS(t)
			m := e.start(t, func(c *netmon.Config) { c.ScanNetNS = scan })
			ep := netmontest.VethToNetNS(t, otherNS, e.SandboxNS, "")
			ep.Rename("eth0")
			if !scan {
				l := waitLink(t, m, ep.Index, "foreign peer", func(l *view.Link) bool {
					return l.Name == "eth0" && l.Peer != nil && l.Peer.State == view.PeerForeignNetNS
				})
				if l.Peer.Found {
					t.Errorf("foreign peer read anyway: %+v", l.Peer)
				}
				return
			}
			// Scanning finds the third netns in /run/netns and accepts it.
			l := waitLink(t, m, ep.Index, "scanned peer", func(l *view.Link) bool {
				return l.Name == "eth0" && l.Peer != nil && l.Peer.State == view.PeerResolved
			})
			if p := l.Peer; p.NetNS != otherPath || p.Home != view.HomeScanned || !p.Found || !p.PointsBack || p.MasterIndex != 0 {
				t.Errorf("peer = %+v, want found in scanned %s, pointing back, no master", p, otherPath)
			}
		})
	}
}

// TestScanCacheRevalidated: link-netnsids are reused once a netns dies. A
// cached id whose netns is gone, or whose path now holds another netns, is
// noticed and the id resolved again.
func TestScanCacheRevalidated(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, func(c *netmon.Config) { c.ScanNetNS = true; c.DockerdNetNS = "" })
	name := netmontest.RandName()
	ids := map[int]int{}
	for i := 0; i < 3; i++ {
		// Rounds 0 and 1 reuse one path (a new netns behind it), round 2
		// uses another.
		path, ns := netmontest.NewNamedNetNS(t, name)
		if i == 2 {
			netmontest.DeleteNetNS(t, path)
			path, ns = netmontest.NewNetNS(t)
		}
		ep := netmontest.VethToNetNS(t, ns, e.SandboxNS, "")
		ep.Rename(fmt.Sprintf("eth%d", i))
		l := waitLink(t, m, ep.Index, "scanned peer", func(l *view.Link) bool {
			return l.Name == fmt.Sprintf("eth%d", i) && l.Peer != nil && l.Peer.State == view.PeerResolved &&
				l.Peer.NetNS == path && l.Peer.PointsBack && l.Peer.Name == ep.HostName
		})
		ids[l.LinkNetNSID]++
		// Kill this netns: the pair dies with it and its id is freed.
		ep.Close()
		netmontest.DeleteNetNS(t, path)
		waitView(t, m, "veth gone with its peer netns", func(s *view.Snapshot) bool { return s.Links[ep.Index] == nil })
		// The kernel frees the id when the dead netns is cleaned up (a
		// work queue, later) and then hands out the lowest free id: wait
		// for the id to be free, so that the next round reuses it.
		for deadline := time.Now().Add(waitTimeout); nsidInUse(t, e.SandboxPath, l.LinkNetNSID); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("link-netnsid %d still in use %v after its netns was deleted", l.LinkNetNSID, waitTimeout)
			}
		}
	}
	t.Logf("link-netnsids used: %v", ids)
	if len(ids) == 3 {
		t.Fatal("the kernel did not reuse a freed id: the cache was not put to the test")
	}
}

// nsidInUse reports whether the netns at path has id assigned to a peer
// netns (an RTM_GETNSID dump read in that netns).
func nsidInUse(t *testing.T, path string, id int) bool {
	t.Helper()
	var found bool
	err := nsfs.DoPath(path, func() error {
		req := nl.NewNetlinkRequest(unix.RTM_GETNSID, unix.NLM_F_DUMP)
		req.AddData(nl.NewRtGenMsg())
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNSID)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			const hdr = 4 // struct rtgenmsg, aligned
			if len(m) < hdr {
				continue
			}
			attrs, err := nl.ParseRouteAttr(m[hdr:])
			if err != nil {
				return err
			}
			for _, a := range attrs {
				if a.Attr.Type == unix.NETNSA_NSID && len(a.Value) == 4 && int(int32(native.Uint32(a.Value))) == id {
					found = true
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("RTM_GETNSID dump in %s: %v", path, err)
	}
	return found
}

func TestMacvlanParentInDockerdNetNS(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, nil)
	parent := netmontest.RandName()
	if err := e.Dockerd.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: parent}}); err != nil {
		t.Fatalf("add ifb parent: %v", err)
	}
	pl, err := e.Dockerd.LinkByName(parent)
	if err != nil {
		t.Fatal(err)
	}
	name := netmontest.RandName()
	mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: pl.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}
	if err := e.Dockerd.LinkAdd(mv); err != nil {
		t.Fatalf("add macvlan: %v", err)
	}
	ml, err := e.Dockerd.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Dockerd.LinkSetNsFd(ml, int(e.SandboxNS)); err != nil {
		t.Fatal(err)
	}
	sl, err := e.Sandbox.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	l := waitLink(t, m, sl.Attrs().Index, "macvlan with resolved parent", func(l *view.Link) bool {
		return l.Peer != nil && l.Peer.State == view.PeerResolved
	})
	want := view.Peer{State: view.PeerResolved, NetNS: e.DockerdPath, Found: true, Name: parent, Kind: "ifb"}
	if l.Kind != "macvlan" || l.ParentIndex != pl.Attrs().Index || *l.Peer != want {
		t.Errorf("macvlan %+v peer %+v, want parent %d and %+v", l, l.Peer, pl.Attrs().Index, want)
	}
}

func TestLinkByName(t *testing.T) {
	e := newEnv(t)
	a, _ := vethPair(t, e.Sandbox)
	m, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath})
	if err != nil {
		t.Fatal(err)
	}
	// Works before Start: it asks the kernel, not the view.
	l, err := m.LinkByName(a.Attrs().Name)
	if err != nil || l == nil || l.Index != a.Attrs().Index || l.MAC.String() != a.Attrs().HardwareAddr.String() || l.Kind != "veth" {
		t.Errorf("LinkByName = %+v, %v; want ifindex %d MAC %s kind veth", l, err, a.Attrs().Index, a.Attrs().HardwareAddr)
	}
	if l, err := m.LinkByName("knm-nothere"); l != nil || err != nil {
		t.Errorf("missing link: %+v, %v; want nil, nil", l, err)
	}
	// SetLinkUp: the one write, for the reconciler's repair.
	if err := m.SetLinkUp(a.Attrs().Index); err != nil {
		t.Fatalf("SetLinkUp: %v", err)
	}
	if l, err := m.LinkByName(a.Attrs().Name); err != nil || !l.Up() {
		t.Errorf("after SetLinkUp: %+v, %v; want it up", l, err)
	}
	if err := m.SetLinkUp(99999); err == nil {
		t.Error("SetLinkUp of a missing ifindex succeeded")
	}
	m.Close()
	if _, err := m.LinkByName(a.Attrs().Name); !errors.Is(err, netmon.ErrClosed) {
		t.Errorf("after Close: err = %v, want ErrClosed", err)
	}
}

// TestLinkByNameRunning: once the view knows the name, LinkByName answers
// from ioctls; whatever the view says, the answer is the kernel's now,
// including right after two links swapped names.
func TestLinkByNameRunning(t *testing.T) {
	e := newEnv(t)
	a, b := vethPair(t, e.Sandbox)
	linkUp(t, e.Sandbox, a)
	m := e.start(t, nil)
	check := func(name string) {
		t.Helper()
		want, err := e.Sandbox.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.LinkByName(name)
		if err != nil || got == nil {
			t.Fatalf("LinkByName(%q) = %+v, %v", name, got, err)
		}
		wa := want.Attrs()
		if got.Index != wa.Index || got.Name != name || got.MAC.String() != wa.HardwareAddr.String() ||
			got.MTU != wa.MTU || got.Up() != (wa.RawFlags&unix.IFF_UP != 0) || got.Kind != "veth" {
			t.Errorf("LinkByName(%q) = %+v; kernel: ifindex %d MAC %s MTU %d flags %#x", name, got, wa.Index, wa.HardwareAddr, wa.MTU, wa.RawFlags)
		}
	}
	an, bn := a.Attrs().Name, b.Attrs().Name
	waitView(t, m, "both links known", func(s *view.Snapshot) bool { return s.LinkByName(an) != nil && s.LinkByName(bn) != nil })
	check(an)
	check(bn)
	// Swap the names; ask before and after the view follows.
	tmp := netmontest.RandName()
	for _, step := range [][2]string{{an, tmp}, {bn, an}, {tmp, bn}} {
		l, err := e.Sandbox.LinkByName(step[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Sandbox.LinkSetName(l, step[1]); err != nil {
			t.Fatal(err)
		}
	}
	check(an)
	check(bn)
	if l, err := m.LinkByName(tmp); l != nil || err != nil {
		t.Errorf("LinkByName(%q) after it was renamed away = %+v, %v; want nil, nil", tmp, l, err)
	}
	waitView(t, m, "names swapped", func(s *view.Snapshot) bool {
		l := s.LinkByName(an)
		return l != nil && l.Index == b.Attrs().Index
	})
	check(an)
	check(bn)
}

// TestResyncAfterENOBUFS overflows a tiny receive buffer with a burst of
// address events in the watched netns.
func TestResyncAfterENOBUFS(t *testing.T) {
	e := newEnv(t)
	a, _ := vethPair(t, e.Sandbox)
	linkUp(t, e.Sandbox, a)
	m := e.start(t, func(c *netmon.Config) { c.ReceiveBufferSize = 1 })
	deadline := time.Now().Add(20 * time.Second)
	for round := 0; m.Snapshot().Resyncs == 0; round++ {
		if time.Now().After(deadline) {
			t.Fatal("no resync after repeated bursts")
		}
		for i := 0; i < 1000; i++ {
			addr, _ := netlink.ParseAddr(fmt.Sprintf("10.67.%d.%d/32", i/250, i%250+1))
			if err := e.Sandbox.AddrAdd(a, addr); err != nil {
				t.Fatal(err)
			}
			if err := e.Sandbox.AddrDel(a, addr); err != nil {
				t.Fatal(err)
			}
		}
		// Give the loop a chance to see the dead socket before checking.
		select {
		case <-m.Changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
	netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, "10.68.0.1/24")
	waitLink(t, m, a.Attrs().Index, "marker address", func(l *view.Link) bool { return hasAddr(l, "10.68.0.1/24") })
	waitFresh(t, m)
	select {
	case <-m.Done():
		t.Fatalf("monitor ended: %v", m.Err())
	default:
	}
}

// TestResyncAfterKilledSubscription closes the subscription sockets behind
// the loop's back.
func TestResyncAfterKilledSubscription(t *testing.T) {
	e := newEnv(t)
	a, _ := vethPair(t, e.Sandbox)
	m := e.start(t, nil)
	for i := 1; i <= 3; i++ {
		if !netmon.KillSocket(m) {
			t.Fatal("no subscription to kill")
		}
		// Changes made while the subscription is dead are in the re-list.
		netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, fmt.Sprintf("10.69.0.%d/24", i))
		waitView(t, m, fmt.Sprintf("resync %d", i), func(s *view.Snapshot) bool { return s.Resyncs == uint64(i) })
		waitLink(t, m, a.Attrs().Index, "address", func(l *view.Link) bool { return hasAddr(l, fmt.Sprintf("10.69.0.%d/24", i)) })
	}
	// The new subscription works.
	netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, "fd69::1/64")
	waitLink(t, m, a.Attrs().Index, "address after resync", func(l *view.Link) bool { return hasAddr(l, "fd69::1/64") })
	waitFresh(t, m)
}

// TestNetNSGone: the watched path disappears; the next resync ends the
// monitor with ErrNetNSGone.
func TestNetNSGone(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, nil)
	if err := netns.DeleteNamed(filepath.Base(e.SandboxPath)); err != nil {
		t.Fatal(err)
	}
	netmon.KillSocket(m)
	select {
	case <-m.Done():
	case <-time.After(waitTimeout):
		t.Fatal("monitor still running")
	}
	if err := m.Err(); !errors.Is(err, netmon.ErrNetNSGone) {
		t.Errorf("Err = %v, want ErrNetNSGone", err)
	}
}

func TestCloseLifecycle(t *testing.T) {
	e := newEnv(t)
	t.Run("before Start, twice", func(t *testing.T) {
		m, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if err := m.Close(); err != nil {
				t.Fatalf("Close %d: %v", i, err)
			}
		}
		select {
		case <-m.Done():
		default:
			t.Fatal("Done not closed after Close")
		}
		if err := m.Err(); err != nil {
			t.Errorf("Err = %v", err)
		}
		if err := m.Start(context.Background()); !errors.Is(err, netmon.ErrClosed) {
			t.Errorf("Start after Close: %v, want ErrClosed", err)
		}
	})
	t.Run("Start twice", func(t *testing.T) {
		m := e.start(t, nil)
		if err := m.Start(context.Background()); err == nil {
			t.Error("second Start succeeded")
		}
	})
	t.Run("cancelled ctx", func(t *testing.T) {
		m, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := m.Start(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Start = %v, want context.Canceled", err)
		}
	})
	t.Run("ctx ends after Start", func(t *testing.T) {
		m, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx, cancel := context.WithCancel(context.Background())
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		a, _ := vethPair(t, e.Sandbox)
		waitLink(t, m, a.Attrs().Index, "still watching", func(*view.Link) bool { return true })
	})
	t.Run("concurrently with events", func(t *testing.T) {
		a, _ := vethPair(t, e.Sandbox)
		m := e.start(t, nil)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				addr, _ := netlink.ParseAddr(fmt.Sprintf("10.70.%d.%d/32", i/250%250, i%250+1))
				_ = e.Sandbox.AddrAdd(a, addr)
				_ = e.Sandbox.AddrDel(a, addr)
			}
		}()
		// Let events flow, then close from several goroutines at once,
		// with readers still using the monitor.
		waitView(t, m, "events flowing", func(s *view.Snapshot) bool { return s.Generation > 5 })
		var cwg sync.WaitGroup
		for i := 0; i < 4; i++ {
			cwg.Add(2)
			go func() { defer cwg.Done(); m.Close() }()
			go func() { defer cwg.Done(); _ = m.Snapshot(); _, _ = m.LinkByName("lo") }()
		}
		cwg.Wait()
		close(stop)
		wg.Wait()
		select {
		case <-m.Done():
		default:
			t.Fatal("Done not closed")
		}
		if m.Err() != nil {
			t.Errorf("Err after Close = %v", m.Err())
		}
	})
}

func TestNewErrors(t *testing.T) {
	netmontest.RequireRoot(t)
	dir := t.TempDir()
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  netmon.Config
		is   error
	}{
		{"missing", netmon.Config{NetNSPath: filepath.Join(dir, "missing")}, os.ErrNotExist},
		{"regular file", netmon.Config{NetNSPath: regular}, netmon.ErrNotNetNS},
		{"directory", netmon.Config{NetNSPath: dir}, netmon.ErrNotNetNS},
		{"mount namespace", netmon.Config{NetNSPath: "/proc/self/ns/mnt"}, netmon.ErrNotNetNS},
		{"dockerd not a netns", netmon.Config{NetNSPath: "/proc/self/ns/net", DockerdNetNS: regular}, netmon.ErrNotNetNS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := netmon.New(tc.cfg)
			if err == nil {
				m.Close()
				t.Fatal("New succeeded")
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want %v", err, tc.is)
			}
			t.Log(err)
		})
	}
	t.Run("empty path", func(t *testing.T) {
		if _, err := netmon.New(netmon.Config{}); err == nil {
			t.Fatal("New accepted an empty path")
		}
	})
	t.Run("no permission", func(t *testing.T) {
		private := filepath.Join(dir, "private")
		if err := os.Mkdir(private, 0o700); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(private, "net")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		// Drop the filesystem uid (and with it CAP_DAC_OVERRIDE) on one
		// thread that is discarded afterwards.
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			if _, err := unix.SetfsuidRetUid(65534); err != nil {
				errc <- err
				return
			}
			m, err := netmon.New(netmon.Config{NetNSPath: path})
			if err == nil {
				m.Close()
			}
			errc <- err
		}()
		err := <-errc
		if !errors.Is(err, os.ErrPermission) {
			t.Errorf("err = %v, want os.ErrPermission", err)
		}
		t.Log(err)
	})
	t.Run("process netns is accepted", func(t *testing.T) {
		m, err := netmon.New(netmon.Config{NetNSPath: fmt.Sprintf("/proc/%d/ns/net", os.Getpid())})
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
	})
}

// BenchmarkEventToView measures the time from a netlink change in the
// watched netns to the view reflecting it (Changed fired, view.Snapshot shows it).
func BenchmarkEventToView(b *testing.B) {
	netmontest.RequireRoot(b)
	path, ns := netmontest.NewNetNS(b)
	h := netmontest.HandleAt(b, ns)
	name := netmontest.RandName()
	if err := h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		b.Fatal(err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		b.Fatal(err)
	}
	idx := l.Attrs().Index
	m, err := netmon.New(netmon.Config{NetNSPath: path})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.71.0.1/32")
	present, up := false, false // toggled across runs: the benchmark function runs several times
	wait := func(b *testing.B, ok func(*view.Link) bool) {
		timeout := time.NewTimer(waitTimeout)
		defer timeout.Stop()
		for {
			select {
			case <-m.Changed():
			case <-timeout.C:
				b.Fatal("view did not change")
			}
			if ll := m.Snapshot().Links[idx]; ll != nil && ok(ll) {
				return
			}
		}
	}
	b.Run("addr", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if present {
				err = h.AddrDel(l, addr)
			} else {
				err = h.AddrAdd(l, addr)
			}
			if err != nil {
				b.Fatal(err)
			}
			present = !present
			wait(b, func(ll *view.Link) bool { return hasAddr(ll, "10.71.0.1/32") == present })
		}
	})
	b.Run("link", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if up {
				err = h.LinkSetDown(l)
			} else {
				err = h.LinkSetUp(l)
			}
			if err != nil {
				b.Fatal(err)
			}
			up = !up
			wait(b, func(ll *view.Link) bool { return ll.Up() == up })
		}
	})
}

// A link deleted and re-created on the same ifindex (with the same name and
// MAC) gets a new incarnation, so the matcher can tell it is not the link
// it attached, even if both events fall between two snapshots.
func TestIncarnationOnRecreate(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, nil)
	name := netmontest.RandName()
	mac, _ := net.ParseMAC("02:6b:6e:6d:00:01")
	add := func() int {
		attrs := netlink.LinkAttrs{Name: name, HardwareAddr: mac, Index: 4242}
		if err := e.Sandbox.LinkAdd(&netlink.Ifb{LinkAttrs: attrs}); err != nil {
			t.Fatalf("add ifb: %v", err)
		}
		l, err := e.Sandbox.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Index
	}
	idx := add()
	first := waitLink(t, m, idx, "ifb appears", func(l *view.Link) bool { return l.Name == name })
	if err := e.Sandbox.LinkDel(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Index: idx}}); err != nil {
		t.Fatal(err)
	}
	if again := add(); again != idx {
		t.Fatalf("re-created on ifindex %d, want %d", again, idx)
	}
	second := waitLink(t, m, idx, "re-created", func(l *view.Link) bool { return l.Incarnation != first.Incarnation })
	if second.Name != first.Name || second.MAC.String() != first.MAC.String() {
		t.Fatalf("re-created link differs: %+v vs %+v", second, first)
	}
	// A rename keeps it.
	renamed := netmontest.RandName()
	if err := e.Sandbox.LinkSetName(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Index: idx}}, renamed); err != nil {
		t.Fatal(err)
	}
	third := waitLink(t, m, idx, "renamed", func(l *view.Link) bool { return l.Name == renamed })
	if third.Incarnation != second.Incarnation {
		t.Errorf("rename changed the incarnation: %d -> %d", second.Incarnation, third.Incarnation)
	}
}
