package netmon

import (
	"net"
	"net/netip"
	"testing"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// These tests drive the state without a kernel: what each event does to the
// view and when it asks for a re-list.

func upLink(idx int, flags uint32) *view.Link {
	return &view.Link{Index: idx, Name: "l", Kind: "veth", RawFlags: flags, LinkNetNSID: -1}
}

func nlRoute(family int, dst string, idx int, gw string, prio int) netlink.Route {
	_, n, _ := net.ParseCIDR(dst)
	return netlink.Route{Family: family, Dst: n, LinkIndex: idx, Gw: net.ParseIP(gw), Priority: prio, Table: view.TableMain, Type: unix.RTN_UNICAST}
}

func TestRouteKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b netlink.Route
		same bool
	}{
		{"fe80::/64 on two links", nlRoute(view.FamilyV6, "fe80::/64", 2, "", 256), nlRoute(view.FamilyV6, "fe80::/64", 3, "", 256), false},
		{"same prefix, two metrics", nlRoute(view.FamilyV4, "10.0.0.0/8", 2, "", 10), nlRoute(view.FamilyV4, "10.0.0.0/8", 2, "", 20), false},
		{"identical", nlRoute(view.FamilyV4, "10.0.0.0/8", 2, "10.1.0.1", 0), nlRoute(view.FamilyV4, "10.0.0.0/8", 2, "10.1.0.1", 0), true},
		{"v4 default with and without Dst", nlRoute(view.FamilyV4, "0.0.0.0/0", 2, "10.1.0.1", 0),
			netlink.Route{Family: view.FamilyV4, LinkIndex: 2, Gw: net.ParseIP("10.1.0.1"), Table: view.TableMain, Type: unix.RTN_UNICAST}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ra, ka, oka := routeFromNetlink(tc.a)
			_, kb, okb := routeFromNetlink(tc.b)
			if !oka || !okb {
				t.Fatal("route dropped")
			}
			if got := ka == kb; got != tc.same {
				t.Errorf("same key = %v, want %v (%+v vs %+v)", got, tc.same, ka, kb)
			}
			if !ra.Dst.IsValid() {
				t.Errorf("Dst invalid")
			}
		})
	}
	if _, _, ok := routeFromNetlink(netlink.Route{Family: view.FamilyV6, Flags: unix.RTM_F_CLONED}); ok {
		t.Error("cloned route kept")
	}
	if _, _, ok := routeFromNetlink(netlink.Route{Family: 128 /* RTNL_FAMILY_IPMR */}); ok {
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
		{"down re-lists routes and addresses", func(s *state) { s.setLink(upLink(2, 0)) }, true, true, true},
		{"carrier loss re-lists routes and addresses", func(s *state) { s.setLink(upLink(2, view.FlagUp)) }, true, true, true},
		// The case the address re-list is for: the link comes up (RUNNING)
		// while a NEWADDR that preceded it may still be unread.
		{"running re-lists addresses", func(s *state) {
			s.setLink(upLink(2, view.FlagUp))
			s.changed, s.relistAddrs, s.relistRoutes = false, false, false
			s.setLink(upLink(2, up))
		}, true, true, true},
		{"a flag the matcher ignores re-lists nothing", func(s *state) { s.setLink(upLink(2, up|0x1000)) }, true, false, false},
		{"address on a known link", func(s *state) { s.setAddr(2, view.Addr{Prefix: p}) }, true, false, false},
		{"address before its link", func(s *state) { s.setAddr(9, view.Addr{Prefix: p}) }, false, true, false},
		{"delete an unknown address", func(s *state) { s.delAddr(2, netip.MustParsePrefix("10.9.9.9/32")) }, false, false, false},
		{"route through a known up link", func(s *state) {
			r, k, _ := routeFromNetlink(nlRoute(view.FamilyV4, "10.5.0.0/16", 2, "", 0))
			s.setRoute(k, r)
		}, true, false, false},
		{"route through an unknown link", func(s *state) {
			r, k, _ := routeFromNetlink(nlRoute(view.FamilyV4, "10.5.0.0/16", 7, "", 0))
			s.setRoute(k, r)
		}, true, false, true},
		{"delete a route not in the view", func(s *state) {
			_, k, _ := routeFromNetlink(nlRoute(view.FamilyV4, "10.6.0.0/16", 2, "", 0))
			s.delRoute(k)
		}, false, false, true},
		{"delete link drops its routes and addresses", func(s *state) {
			s.setAddr(2, view.Addr{Prefix: p})
			r, k, _ := routeFromNetlink(nlRoute(view.FamilyV4, "10.5.0.0/16", 2, "", 0))
			s.setRoute(k, r)
			s.changed = false
			s.delLink(2)
			if len(s.routes) != 0 || len(s.addrs) != 0 {
				t.Errorf("left routes %v addrs %v", s.routes, s.addrs)
			}
		}, true, false, true},
		{"untied veth is read again", func(s *state) {
			l := upLink(8, 0)
			s.setLink(l)
			if _, ok := s.requery[8]; !ok {
				t.Error("not marked for re-read")
			}
		}, true, false, false},
		{"second end of a local pair re-reads the first", func(s *state) {
			s.setLink(upLink(8, 0))
			clear(s.requery)
			l := upLink(9, 0)
			l.ParentIndex = 8
			s.setLink(l)
			if _, ok := s.requery[8]; !ok {
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

func FuzzPrefixFromIPNet(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, []byte{255, 255, 255, 0})
	f.Add([]byte(net.ParseIP("fe80::1").To16()), []byte(net.CIDRMask(64, 128)))
	f.Add([]byte(net.ParseIP("10.0.0.1").To16()), []byte(net.CIDRMask(8, 32)))
	f.Fuzz(func(t *testing.T, ip, mask []byte) {
		p, ok := prefixFromIPNet(&net.IPNet{IP: ip, Mask: mask})
		if !ok {
			return
		}
		ones, bits := net.IPMask(mask).Size()
		if p.Bits() != ones || p.Addr().BitLen() != bits {
			t.Errorf("%v/%v -> %v", net.IP(ip), net.IPMask(mask), p)
		}
	})
}
