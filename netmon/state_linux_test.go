package netmon

import (
	"net/netip"
	"testing"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"golang.org/x/sys/unix"
)

// These tests drive the state without a kernel: what each event does to the
// view and when it asks for a re-list.

func upLink(idx int, flags uint32) *view.Link {
	return &view.Link{Index: idx, Name: "l", Kind: "veth", RawFlags: flags, LinkNetNSID: -1}
}

// route decodes the RTM_NEWROUTE the kernel would send for a main-table
// unicast route (dst "" for none: a default route).
func route(t *testing.T, family int, dst string, idx int, gw string, prio int) message {
	t.Helper()
	return mustDecode(t, routeBytes(unix.RTM_NEWROUTE, 0, family, dst, idx, gw, prio))
}

// fromRoute decodes the RTM_NEWROUTE of `default from src/64 via fe80::1
// dev 2 metric 1024`.
func fromRoute(t *testing.T, src string) message {
	t.Helper()
	return mustDecode(t, srcLen(routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV6, "", 2, "fe80::1", 1024,
		attr(unix.RTA_SRC, ipBytes(view.FamilyV6, src))), 64))
}

func TestRouteKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b message
		same bool
	}{
		{"fe80::/64 on two links", route(t, view.FamilyV6, "fe80::/64", 2, "", 256), route(t, view.FamilyV6, "fe80::/64", 3, "", 256), false},
		{"same prefix, two metrics", route(t, view.FamilyV4, "10.0.0.0/8", 2, "", 10), route(t, view.FamilyV4, "10.0.0.0/8", 2, "", 20), false},
		{"identical", route(t, view.FamilyV4, "10.0.0.0/8", 2, "10.1.0.1", 0), route(t, view.FamilyV4, "10.0.0.0/8", 2, "10.1.0.1", 0), true},
		{"v4 default with and without RTA_DST", route(t, view.FamilyV4, "0.0.0.0/0", 2, "10.1.0.1", 0), route(t, view.FamilyV4, "", 2, "10.1.0.1", 0), true},
		// IPv6 keys a route by its source prefix too (subtrees): two
		// defaults from two prefixes through one gateway are two routes.
		{"v6 defaults from two source prefixes", fromRoute(t, "2001:db8:1::"), fromRoute(t, "2001:db8:2::"), false},
		{"v6 default from a prefix and from any", fromRoute(t, "2001:db8:1::"), route(t, view.FamilyV6, "", 2, "fe80::1", 1024), false},
		{"v4 via two inet6 gateways", mustDecode(t, routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.1.0.0/16", 2, "", 0, via(view.FamilyV6, "fe80::1"))),
			mustDecode(t, routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.1.0.0/16", 2, "", 0, via(view.FamilyV6, "fe80::2"))), false},
		{"two nexthop objects", mustDecode(t, routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.3.0.0/16", 2, "10.1.0.1", 0, attr(rtaNHID, u32(1)))),
			mustDecode(t, routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.3.0.0/16", 2, "10.1.0.1", 0, attr(rtaNHID, u32(2)))), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.a.keep || !tc.b.keep {
				t.Fatal("route dropped")
			}
			if got := tc.a.key == tc.b.key; got != tc.same {
				t.Errorf("same key = %v, want %v (%+v vs %+v)", got, tc.same, tc.a.key, tc.b.key)
			}
			if !tc.a.route.Dst.IsValid() {
				t.Errorf("Dst invalid")
			}
		})
	}
	if m := mustDecode(t, routeBytes(unix.RTM_NEWROUTE, unix.RTM_F_CLONED, view.FamilyV6, "fd00::/64", 2, "", 0)); m.keep {
		t.Error("cloned route kept")
	}
	if m := mustDecode(t, routeBytes(unix.RTM_NEWROUTE, 0, 128 /* RTNL_FAMILY_IPMR */, "", 2, "", 0)); m.keep {
		t.Error("multicast routing table route kept")
	}
}

func TestStateEvents(t *testing.T) {
	const up = view.FlagUp | view.FlagRunning | view.FlagLowerUp
	p := netip.MustParsePrefix("10.0.0.2/24")
	for _, tc := range []struct {
		name                   string
		do                     func(s *state)
		changed, rAddr, rRoute bool
	}{
		{"new link", func(s *state) { s.setLink(upLink(5, up)) }, true, false, false},
		{"same attributes again", func(s *state) {
			l := *s.links[2]
			s.setLink(&l)
		}, false, false, false},
		{"down re-lists the routes through it", func(s *state) {
			s.apply(ptr(route(t, view.FamilyV4, "10.5.0.0/16", 2, "", 0)))
			s.setLink(upLink(2, 0))
		}, true, false, true},
		{"carrier loss re-lists the routes through it", func(s *state) {
			s.apply(ptr(route(t, view.FamilyV4, "10.5.0.0/16", 2, "", 0)))
			s.setLink(upLink(2, view.FlagUp))
		}, true, false, true},
		{"down with no route through it re-lists nothing", func(s *state) { s.setLink(upLink(2, 0)) }, true, false, false},
		{"carrier back clears linkdown flags silently", func(s *state) {
			s.setLink(upLink(2, view.FlagUp))
			m := route(t, view.FamilyV4, "10.5.0.0/16", 2, "", 0)
			m.route.Flags |= unix.RTNH_F_LINKDOWN
			s.apply(&m)
			s.changed = false
			s.setLink(upLink(2, up))
		}, true, false, true},
		// Messages come in the kernel's order: RUNNING after the addresses
		// added before it needs no re-list of them.
		{"running alone re-lists nothing", func(s *state) {
			s.setLink(upLink(2, view.FlagUp|view.FlagLowerUp))
			s.changed, s.relistAddrs, s.relistRoutes = false, false, false
			s.setLink(upLink(2, up))
		}, true, false, false},
		{"a flag the matcher ignores re-lists nothing", func(s *state) { s.setLink(upLink(2, up|0x1000)) }, true, false, false},
		{"address on a known link", func(s *state) { s.setAddr(2, view.Addr{Prefix: p}) }, true, false, false},
		{"address of a link a dump no longer had (replay)", func(s *state) { s.setAddr(9, view.Addr{Prefix: p}) }, false, false, false},
		{"delete an unknown address", func(s *state) { s.delAddr(2, netip.MustParsePrefix("10.9.9.9/32")) }, false, false, false},
		{"route through a known up link", func(s *state) {
			s.apply(ptr(route(t, view.FamilyV4, "10.5.0.0/16", 2, "", 0)))
		}, true, false, false},
		{"route through a down link (a local route of an address added while down)", func(s *state) {
			s.setLink(upLink(2, 0))
			s.changed = false
			s.apply(ptr(route(t, view.FamilyV4, "10.5.0.2/32", 2, "", 0)))
		}, true, false, false},
		{"delete of a route a re-list dropped already", func(s *state) {
			s.apply(ptr(route(t, view.FamilyV4, "10.5.0.0/16", 2, "", 0)))
			s.replaceRoutes(nil)
			s.changed = false
			s.apply(ptr(mustDecode(t, routeBytes(unix.RTM_DELROUTE, 0, view.FamilyV4, "10.5.0.0/16", 2, "", 0))))
		}, false, false, false},
		{"route through an unknown link", func(s *state) {
			s.apply(ptr(route(t, view.FamilyV4, "10.5.0.0/16", 7, "", 0)))
		}, true, false, true},
		{"replace", func(s *state) {
			m := route(t, view.FamilyV4, "10.5.0.0/16", 2, "", 0)
			m.nlflags |= unix.NLM_F_REPLACE
			s.apply(&m)
		}, true, false, true},
		{"IPv6 append", func(s *state) {
			m := route(t, view.FamilyV6, "fd05::/64", 2, "", 0)
			m.nlflags |= unix.NLM_F_APPEND
			s.apply(&m)
		}, true, false, true},
		{"delete a route not in the view", func(s *state) {
			m := mustDecode(t, routeBytes(unix.RTM_DELROUTE, 0, view.FamilyV4, "10.6.0.0/16", 2, "", 0))
			s.apply(&m)
		}, false, false, true},
		{"delete link drops its routes and addresses", func(s *state) {
			s.setAddr(2, view.Addr{Prefix: p})
			s.apply(ptr(route(t, view.FamilyV4, "10.5.0.0/16", 2, "", 0)))
			s.changed = false
			s.delLink(2)
			if len(s.routes) != 0 || len(s.addrs) != 0 {
				t.Errorf("left routes %v addrs %v", s.routes, s.addrs)
			}
		}, true, false, false},
		{"delete link re-lists routes when one is multipath", func(s *state) {
			m := route(t, view.FamilyV4, "10.7.0.0/16", 0, "", 0)
			m.multipath = true
			s.setRoute(m.key, m.route, true)
			s.changed = false
			s.delLink(2)
		}, true, false, true},
		{"untied veth is read again", func(s *state) {
			l := upLink(8, 0)
			s.setLink(l)
			if _, ok := s.untied[8]; !ok {
				t.Error("not marked for re-read")
			}
		}, true, false, false},
		{"second end of a local pair re-reads the first", func(s *state) {
			s.setLink(upLink(8, 0))
			clear(s.untied)
			l := upLink(9, 0)
			l.ParentIndex = 8
			s.setLink(l)
			if _, ok := s.untied[8]; !ok {
				t.Error("first end not marked for re-read")
			}
		}, true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState()
			l := upLink(2, up)
			l.ParentIndex = 3
			s.links[2] = l
			tc.do(s)
			if s.changed != tc.changed || s.relistAddrs != tc.rAddr || s.relistRoutes != tc.rRoute {
				t.Errorf("changed %v relistAddrs %v relistRoutes %v, want %v %v %v",
					s.changed, s.relistAddrs, s.relistRoutes, tc.changed, tc.rAddr, tc.rRoute)
			}
		})
	}
}

func TestNewLinkKeepsAddrsAndPeer(t *testing.T) {
	s := newState()
	l := upLink(2, view.FlagUp)
	l.Peer = &view.Peer{State: view.PeerSameNetNS}
	s.links[2] = l
	s.setAddr(2, view.Addr{Prefix: netip.MustParsePrefix("fd00::1/64")})
	renamed := upLink(2, view.FlagUp)
	renamed.Name = "eth0"
	s.setLink(renamed)
	snap := s.snapshot()
	got := snap.Links[2]
	if got.Name != "eth0" || len(got.Addrs) != 1 || got.Peer == nil || got.Peer.State != view.PeerSameNetNS {
		t.Errorf("after NEWLINK: %+v", got)
	}
	// The snapshot is a deep copy.
	got.Addrs[0].Scope = 99
	got.Peer.State = view.PeerError
	if again := s.snapshot().Links[2]; again.Addrs[0].Scope == 99 || again.Peer.State == view.PeerError {
		t.Error("snapshot shares memory with the state")
	}
}

func ptr[T any](v T) *T { return &v }
