package netmon

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
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
			if err := decodeRoute(data, &own); err == nil && own.keep && !own.route.Dst.IsValid() {
				t.Fatalf("kept a route without a valid destination %+v", own.route)
			}
		}
		m := &syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: typ}, Data: data}
		if _, err := decode(m); err != nil && !errors.Is(err, errUndecodable) {
			t.Fatalf("error %v does not wrap errUndecodable", err)
		}
	})
}
