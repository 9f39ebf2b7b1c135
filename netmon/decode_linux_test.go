package netmon

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// Messages built the way the kernel lays them out, with the netlink
// library's serialisers, then decoded: what the decoder makes of each, and
// what it refuses without failing anything else.

func rawMsg(typ, flags uint16, body []byte) *syscall.NetlinkMessage {
	return &syscall.NetlinkMessage{
		Header: syscall.NlMsghdr{Len: uint32(unix.SizeofNlMsghdr + len(body)), Type: typ, Flags: flags},
		Data:   body,
	}
}

func attr(typ int, data []byte) []byte { return nl.NewRtAttr(typ, data).Serialize() }

func u32(v int) []byte { return binary.NativeEndian.AppendUint32(nil, uint32(v)) }

func ipBytes(family int, s string) []byte {
	ip := net.ParseIP(s)
	if family == view.FamilyV4 {
		return ip.To4()
	}
	return ip.To16()
}

// routeBytes is an RTM_NEWROUTE or RTM_DELROUTE of a main-table unicast
// route; dst "" leaves RTA_DST out (a default route), idx 0 RTA_OIF.
func routeBytes(typ uint16, rtflags uint32, family int, dst string, idx int, gw string, prio int, extra ...[]byte) *syscall.NetlinkMessage {
	h := nl.RtMsg{RtMsg: unix.RtMsg{Family: uint8(family), Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT,
		Type: unix.RTN_UNICAST, Flags: rtflags}}
	var attrs []byte
	if dst != "" {
		ip, n, err := net.ParseCIDR(dst)
		if err != nil {
			panic(err)
		}
		ones, _ := n.Mask.Size()
		h.Dst_len = uint8(ones)
		attrs = append(attrs, attr(unix.RTA_DST, ipBytes(family, ip.String()))...)
	}
	attrs = append(attrs, attr(unix.RTA_TABLE, u32(unix.RT_TABLE_MAIN))...)
	if idx != 0 {
		attrs = append(attrs, attr(unix.RTA_OIF, u32(idx))...)
	}
	if gw != "" {
		attrs = append(attrs, attr(unix.RTA_GATEWAY, ipBytes(family, gw))...)
	}
	if prio != 0 {
		attrs = append(attrs, attr(unix.RTA_PRIORITY, u32(prio))...)
	}
	for _, e := range extra {
		attrs = append(attrs, e...)
	}
	return rawMsg(typ, 0, append(h.Serialize(), attrs...))
}

// srcLen sets rtm_src_len of a route message built by routeBytes (RTA_SRC
// goes in extra).
func srcLen(m *syscall.NetlinkMessage, n uint8) *syscall.NetlinkMessage {
	m.Data[2] = n // rtm_family, rtm_dst_len, rtm_src_len, ...
	return m
}

// via is an RTA_VIA (struct rtvia: a u16 family, then the address).
func via(family int, ip string) []byte {
	return attr(unix.RTA_VIA, append(binary.NativeEndian.AppendUint16(nil, uint16(family)), ipBytes(family, ip)...))
}

// rtnh is one struct rtnexthop of an RTA_MULTIPATH, with its attributes.
func rtnh(flags uint8, ifindex int, attrs ...[]byte) []byte {
	var body []byte
	for _, a := range attrs {
		body = append(body, a...)
	}
	b := binary.NativeEndian.AppendUint16(nil, uint16(rtnexthopLen+len(body)))
	b = append(b, flags, 0)
	b = binary.NativeEndian.AppendUint32(b, uint32(ifindex))
	return append(b, body...)
}

// multipath is an RTA_MULTIPATH of hops (each from rtnh).
func multipath(hops ...[]byte) []byte {
	var b []byte
	for _, h := range hops {
		b = append(b, h...)
	}
	return attr(unix.RTA_MULTIPATH, b)
}

// addrBytes is an RTM_NEWADDR of cidr on ifindex idx, with IFA_LOCAL
// local when not "" (IPv4 sends both).
func addrBytes(family int, cidr, local string, idx int) *syscall.NetlinkMessage {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		panic(err)
	}
	ones, _ := n.Mask.Size()
	h := nl.NewIfAddrmsg(family)
	h.Prefixlen, h.Index = uint8(ones), uint32(idx)
	body := append(h.Serialize(), attr(unix.IFA_ADDRESS, ipBytes(family, ip.String()))...)
	if local != "" {
		body = append(body, attr(unix.IFA_LOCAL, ipBytes(family, local))...)
	}
	body = append(body, attr(unix.IFA_FLAGS, u32(unix.IFA_F_NODAD|unix.IFA_F_PERMANENT))...)
	return rawMsg(unix.RTM_NEWADDR, 0, body)
}

// linkBytes is an RTM_NEWLINK of an ifb named name, with kind as its
// IFLA_INFO_KIND (raw bytes, NUL included when wanted).
func linkBytes(idx int, name string, kind []byte) *syscall.NetlinkMessage {
	h := nl.NewIfInfomsg(unix.AF_UNSPEC)
	h.Index = int32(idx)
	body := append(h.Serialize(), attr(unix.IFLA_IFNAME, append([]byte(name), 0))...)
	body = append(body, attr(unix.IFLA_LINKINFO, attr(nl.IFLA_INFO_KIND, kind))...)
	return rawMsg(unix.RTM_NEWLINK, 0, body)
}

func mustDecode(t *testing.T, m *syscall.NetlinkMessage) message {
	t.Helper()
	msg, err := decode(m)
	if err != nil {
		t.Fatalf("decode %s: %v", msgName(m.Header.Type), err)
	}
	return msg
}

// seg6Encap is RTA_ENCAP_TYPE + RTA_ENCAP of `encap seg6 mode encap segs
// fd00::2 hmac 1`: the SRH ends with an HMAC TLV, so its segment list is
// not a multiple of 16 bytes, which the library's decoder refuses
// ("DecodeSEG6Encap: error parsing Segment List"), failing the route and,
// in its dumps, the whole list.
func seg6Encap() []byte {
	srh := []byte{0, 4, 4, 0, 0, 0x08 /* HMAC flag */, 0, 0} // nexthdr, hdrlen, type 4, left, first, flags, tag
	srh = append(srh, net.ParseIP("fd00::2").To16()...)
	srh = append(srh, 5 /* SR6_TLV_HMAC */, 38, 0, 0)
	srh = append(srh, u32(1)...)           // key id
	srh = append(srh, make([]byte, 32)...) // HMAC
	tun := append(u32(1 /* SEG6_IPTUN_MODE_ENCAP */), srh...)
	encap := attr(1 /* SEG6_IPTUNNEL_SRH */, tun)
	return append(attr(unix.RTA_ENCAP_TYPE, binary.NativeEndian.AppendUint16(nil, 5 /* LWTUNNEL_ENCAP_SEG6 */)),
		attr(unix.RTA_ENCAP|unix.NLA_F_NESTED, encap)...)
}

func TestDecode(t *testing.T) {
	t.Run("route", func(t *testing.T) {
		m := mustDecode(t, routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV6, "fc00::/64", 3, "fe80::1", 1024, seg6Encap()))
		want := view.Route{Family: view.FamilyV6, Dst: netip.MustParsePrefix("fc00::/64"), Gateway: netip.MustParseAddr("fe80::1"),
			LinkIndex: 3, Table: view.TableMain, Protocol: unix.RTPROT_BOOT, Type: view.RouteUnicast, Priority: 1024}
		if !m.keep || m.kind != kindRoute || m.route != want {
			t.Errorf("seg6/hmac route = %+v (keep %v), want %+v", m.route, m.keep, want)
		}
	})
	t.Run("default route", func(t *testing.T) {
		m := mustDecode(t, routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "", 2, "10.0.0.1", 0))
		if m.route.Dst != netip.MustParsePrefix("0.0.0.0/0") || !m.route.Default() {
			t.Errorf("default route Dst %v", m.route.Dst)
		}
	})
	t.Run("IPv4 address", func(t *testing.T) {
		m := mustDecode(t, addrBytes(view.FamilyV4, "10.1.2.3/24", "10.1.2.3", 4))
		if !m.keep || m.addrIndex != 4 || m.addr.Prefix != netip.MustParsePrefix("10.1.2.3/24") ||
			m.addr.Flags != unix.IFA_F_NODAD|unix.IFA_F_PERMANENT {
			t.Errorf("address %+v on %d", m.addr, m.addrIndex)
		}
	})
	t.Run("point-to-point address", func(t *testing.T) {
		m := mustDecode(t, addrBytes(view.FamilyV4, "10.9.9.9/24", "10.1.2.3", 4))
		if m.addr.Prefix != netip.MustParsePrefix("10.1.2.3/32") {
			t.Errorf("local address %v, want 10.1.2.3/32 (the peer has the prefix)", m.addr.Prefix)
		}
	})
	t.Run("link", func(t *testing.T) {
		m := mustDecode(t, linkBytes(7, "ifb7", []byte("ifb\x00")))
		if !m.keep || m.link.Index != 7 || m.link.Name != "ifb7" || m.link.Kind != "ifb" {
			t.Errorf("link %+v", m.link)
		}
	})
}

// TestDecodeRouteShapes: each route shape the view tells apart, as the
// kernel sends it (fib_dump_info for IPv4, rt6_fill_node for IPv6).
func TestDecodeRouteShapes(t *testing.T) {
	v4, v6 := view.FamilyV4, view.FamilyV6
	addr := netip.MustParseAddr
	pfx := netip.MustParsePrefix
	base := func(family int, dst string) view.Route {
		return view.Route{Family: family, Dst: pfx(dst), Table: view.TableMain, Protocol: unix.RTPROT_BOOT, Type: view.RouteUnicast}
	}
	with := func(r view.Route, f func(*view.Route)) view.Route { f(&r); return r }
	for _, tc := range []struct {
		name      string
		msg       *syscall.NetlinkMessage
		want      view.Route
		multipath bool
	}{
		{"gateway and metric", routeBytes(unix.RTM_NEWROUTE, 0, v4, "", 2, "10.0.0.1", 100),
			with(base(v4, "0.0.0.0/0"), func(r *view.Route) { r.LinkIndex, r.Gateway, r.Priority = 2, addr("10.0.0.1"), 100 }), false},
		{"IPv4 via inet6 (RTA_VIA)", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.1.0.0/16", 2, "", 0, via(v6, "fe80::1")),
			with(base(v4, "10.1.0.0/16"), func(r *view.Route) { r.LinkIndex, r.Via = 2, addr("fe80::1") }), false},
		{"RTA_VIA of the route's own family is its gateway", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.1.0.0/16", 2, "", 0, via(v4, "10.0.0.1")),
			with(base(v4, "10.1.0.0/16"), func(r *view.Route) { r.LinkIndex, r.Gateway = 2, addr("10.0.0.1") }), false},
		{"IPv6 source-specific default", srcLen(routeBytes(unix.RTM_NEWROUTE, 0, v6, "", 3, "fe80::1", 1024,
			attr(unix.RTA_SRC, ipBytes(v6, "2001:db8::"))), 64),
			with(base(v6, "::/0"), func(r *view.Route) {
				r.LinkIndex, r.Gateway, r.Priority, r.SrcPrefix = 3, addr("fe80::1"), 1024, pfx("2001:db8::/64")
			}), false},
		{"nexthop object, compat mode", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.3.0.0/16", 2, "10.0.0.1", 0, attr(rtaNHID, u32(77))),
			with(base(v4, "10.3.0.0/16"), func(r *view.Route) { r.LinkIndex, r.Gateway, r.NHID = 2, addr("10.0.0.1"), 77 }), false},
		{"nexthop object, no compat", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.3.0.0/16", 0, "", 0, attr(rtaNHID, u32(77))),
			with(base(v4, "10.3.0.0/16"), func(r *view.Route) { r.NHID = 77 }), false},
		{"onlink, linkdown, dead in rtm_flags", routeBytes(unix.RTM_NEWROUTE, unix.RTNH_F_ONLINK|unix.RTNH_F_LINKDOWN|unix.RTNH_F_DEAD, v4, "10.4.0.0/16", 2, "203.0.113.1", 0),
			with(base(v4, "10.4.0.0/16"), func(r *view.Route) {
				r.LinkIndex, r.Gateway, r.Flags = 2, addr("203.0.113.1"), unix.RTNH_F_ONLINK|unix.RTNH_F_LINKDOWN|unix.RTNH_F_DEAD
			}), false},
		{"two-hop multipath: the first hop's device and gateway", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.2.0.0/16", 0, "", 0,
			multipath(rtnh(unix.RTNH_F_LINKDOWN, 2, attr(unix.RTA_GATEWAY, ipBytes(v4, "192.0.2.1"))),
				rtnh(0, 3, attr(unix.RTA_GATEWAY, ipBytes(v4, "198.51.100.1"))))),
			with(base(v4, "10.2.0.0/16"), func(r *view.Route) { r.LinkIndex, r.Gateway, r.Hops = 2, addr("192.0.2.1"), 2 }), true},
		{"two-hop IPv4 multipath via inet6", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.2.0.0/16", 0, "", 0,
			multipath(rtnh(0, 2, via(v6, "fe80::1")), rtnh(0, 3, via(v6, "fe80::2")))),
			with(base(v4, "10.2.0.0/16"), func(r *view.Route) { r.LinkIndex, r.Via, r.Hops = 2, addr("fe80::1"), 2 }), true},
		{"one-hop multipath is the plain route, its flags too", routeBytes(unix.RTM_NEWROUTE, 0, v6, "2001:db8:7::/48", 0, "", 1024,
			attr(rtaNHID, u32(82)), multipath(rtnh(unix.RTNH_F_ONLINK|unix.RTNH_F_LINKDOWN, 4, attr(unix.RTA_GATEWAY, ipBytes(v6, "fe80::1"))))),
			with(base(v6, "2001:db8:7::/48"), func(r *view.Route) {
				r.LinkIndex, r.Gateway, r.Priority, r.NHID, r.Hops = 4, addr("fe80::1"), 1024, 82, 1
				r.Flags = unix.RTNH_F_ONLINK | unix.RTNH_F_LINKDOWN
			}), true},
		{"one-hop IPv4 multipath via inet6", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.9.0.0/16", 0, "", 0,
			multipath(rtnh(0, 5, via(v6, "fe80::9")))),
			with(base(v4, "10.9.0.0/16"), func(r *view.Route) { r.LinkIndex, r.Via, r.Hops = 5, addr("fe80::9"), 1 }), true},
		{"one-hop multipath without a gateway", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.9.0.0/16", 0, "", 0, multipath(rtnh(0, 5))),
			with(base(v4, "10.9.0.0/16"), func(r *view.Route) { r.LinkIndex, r.Hops = 5, 1 }), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mustDecode(t, tc.msg)
			if !m.keep || m.kind != kindRoute {
				t.Fatalf("not kept (%+v)", m)
			}
			if m.route != tc.want {
				t.Errorf("route\n got %+v\nwant %+v", m.route, tc.want)
			}
			if m.multipath != tc.multipath {
				t.Errorf("multipath = %v, want %v", m.multipath, tc.multipath)
			}
			k := m.key
			if k.linkIndex != tc.want.LinkIndex || k.gw != tc.want.Gateway || k.via != tc.want.Via ||
				k.nhid != tc.want.NHID || k.src != tc.want.SrcPrefix || k.priority != tc.want.Priority {
				t.Errorf("key %+v does not match the route", k)
			}
		})
	}
}

// TestDecodeInjected: bytes no decoder can make sense of, injected through
// the same path as the socket's messages. Each is refused with
// errUndecodable (and a stack when decoding panicked), never a panic.
func TestDecodeInjected(t *testing.T) {
	short := routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.0.0.0/8", 2, "", 0)
	short.Data = short.Data[:5]
	badAttr := routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.0.0.0/8", 2, "", 0)
	binary.NativeEndian.PutUint16(badAttr.Data[unix.SizeofRtMsg:], 0xfff0) // RTA_DST's length past the end
	v6dst := routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "", 2, "", 0, attr(unix.RTA_DST, net.ParseIP("fd00::1").To16()))
	oif := routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.0.0.0/8", 0, "", 0, attr(unix.RTA_OIF, []byte{1}))
	// RTA_OIF of 3 bytes as the last attribute, without its padding:
	// nl.ParseRouteAttr panics slicing past the end.
	unpadded := routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.0.0.0/8", 0, "", 0, attr(unix.RTA_OIF, []byte{1, 2, 3}))
	unpadded.Data = unpadded.Data[:len(unpadded.Data)-1]
	addrShort := addrBytes(view.FamilyV4, "10.1.2.3/24", "", 4)
	addrShort.Data = addrShort.Data[:3]
	mp := func(b []byte) *syscall.NetlinkMessage {
		return routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.2.0.0/16", 0, "", 0, attr(unix.RTA_MULTIPATH, b))
	}
	hop := rtnh(0, 2, attr(unix.RTA_GATEWAY, ipBytes(view.FamilyV4, "192.0.2.1")))
	longHop := slices.Clone(hop)
	binary.NativeEndian.PutUint16(longHop, uint16(len(hop)+8))
	shortHop := slices.Clone(hop)
	binary.NativeEndian.PutUint16(shortHop, 4)
	v4 := view.FamilyV4
	for _, tc := range []struct {
		name  string
		msg   *syscall.NetlinkMessage
		panic bool
	}{
		{"route shorter than rtmsg", short, false},
		{"route attribute longer than the message", badAttr, false},
		{"IPv6 destination in an IPv4 route", v6dst, false},
		{"RTA_OIF of one byte", oif, false},
		{"last attribute without its padding", unpadded, false},
		{"address shorter than ifaddrmsg", addrShort, false},
		{"RTA_VIA of one byte", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.1.0.0/16", 2, "", 0, attr(unix.RTA_VIA, []byte{10})), false},
		{"RTA_VIA inet6 with 4 bytes", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.1.0.0/16", 2, "", 0,
			attr(unix.RTA_VIA, append(binary.NativeEndian.AppendUint16(nil, unix.AF_INET6), 1, 2, 3, 4))), false},
		{"RTA_VIA of an unknown family", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.1.0.0/16", 2, "", 0,
			attr(unix.RTA_VIA, append(binary.NativeEndian.AppendUint16(nil, unix.AF_PACKET), 1, 2, 3, 4, 5, 6))), false},
		{"RTA_NH_ID of two bytes", routeBytes(unix.RTM_NEWROUTE, 0, v4, "10.3.0.0/16", 2, "", 0, attr(rtaNHID, []byte{1, 0})), false},
		{"rtm_src_len without RTA_SRC", srcLen(routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV6, "", 2, "fe80::1", 0), 64), false},
		{"RTA_SRC of 4 bytes in an IPv6 route", srcLen(routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV6, "", 2, "fe80::1", 0,
			attr(unix.RTA_SRC, []byte{1, 2, 3, 4})), 64), false},
		{"rtm_src_len past the address", srcLen(routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV6, "", 2, "fe80::1", 0,
			attr(unix.RTA_SRC, ipBytes(view.FamilyV6, "2001:db8::"))), 129), false},
		{"empty RTA_MULTIPATH", mp(nil), false},
		{"RTA_MULTIPATH shorter than rtnexthop", mp([]byte{8, 0, 0, 0}), false},
		{"rtnh_len past the attribute", mp(longHop), false},
		{"rtnh_len shorter than rtnexthop", mp(shortHop), false},
		{"bytes after the last next hop", mp(append(slices.Clone(hop), 1, 2, 3, 4)), false},
		{"next hop with an IPv6 RTA_GATEWAY in an IPv4 route", mp(rtnh(0, 2, attr(unix.RTA_GATEWAY, ipBytes(view.FamilyV6, "fe80::1")))), false},
		// The library's LinkDeserialize slices IFLA_INFO_KIND's value
		// [:len-1]: an empty one panics inside it.
		{"link kind of zero bytes", linkBytes(7, "x", nil), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decode(tc.msg)
			var de *decodeError
			if !errors.Is(err, errUndecodable) || !errors.As(err, &de) {
				t.Fatalf("err = %v, want errUndecodable", err)
			}
			if got := de.stack != nil; got != tc.panic {
				t.Errorf("stack recorded = %v, want %v (%v)", got, tc.panic, err)
			}
		})
	}
}

// FuzzDecode: whatever the bytes, decode returns (no panic escapes), and
// what it keeps is well formed. The address and route decoders of this
// package are fuzzed without the recover: they must not panic at all.
func FuzzDecode(f *testing.F) {
	for _, m := range []*syscall.NetlinkMessage{
		routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV6, "fc00::/64", 3, "fe80::1", 1024, seg6Encap()),
		routeBytes(unix.RTM_DELROUTE, 0, view.FamilyV4, "", 2, "10.0.0.1", 0),
		routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.1.0.0/16", 2, "", 0, via(view.FamilyV6, "fe80::1")),
		srcLen(routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV6, "", 3, "fe80::1", 1024, attr(unix.RTA_SRC, ipBytes(view.FamilyV6, "2001:db8::"))), 64),
		routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.2.0.0/16", 0, "", 0, attr(rtaNHID, u32(79)),
			multipath(rtnh(0, 2, attr(unix.RTA_GATEWAY, ipBytes(view.FamilyV4, "192.0.2.1"))), rtnh(unix.RTNH_F_DEAD, 3, via(view.FamilyV6, "fe80::2")))),
		addrBytes(view.FamilyV4, "10.1.2.3/24", "10.1.2.3", 4),
		addrBytes(view.FamilyV6, "fd00::1/64", "", 4),
		linkBytes(7, "ifb7", []byte("ifb\x00")),
	} {
		f.Add(m.Header.Type, m.Data)
	}
	f.Fuzz(func(t *testing.T, typ uint16, data []byte) {
		// This package's own decoders, without decode's recover.
		var own message
		switch kindOf(typ) {
		case kindAddress:
			if err := decodeAddr(data, &own); err == nil && own.keep && !own.addr.Prefix.IsValid() {
				t.Fatalf("kept an invalid address %+v", own.addr)
			}
		case kindRoute:
			if err := decodeRoute(data, &own); err == nil && own.keep {
				r := own.route
				switch {
				case !r.Dst.IsValid():
					t.Fatalf("kept a route without a valid destination %+v", r)
				case r.Via.IsValid() && r.Via.Is4() == (r.Family == view.FamilyV4):
					t.Fatalf("kept RTA_VIA %s of the route's own family (it is the gateway) %+v", r.Via, r)
				case r.SrcPrefix.IsValid() && r.SrcPrefix.Addr().Is4() != (r.Family == view.FamilyV4):
					t.Fatalf("kept a source prefix of the other family %+v", r)
				case own.multipath != (r.Hops > 0):
					t.Fatalf("RTA_MULTIPATH %v but Hops %d", own.multipath, r.Hops)
				}
			}
		}
		m := &syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: typ}, Data: data}
		if _, err := decode(m); err != nil && !errors.Is(err, errUndecodable) {
			t.Fatalf("error %v does not wrap errUndecodable", err)
		}
	})
}
