package netmon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// errUndecodable wraps every failure to decode one message: the message
// is skipped and counted, and the table it belongs to re-listed (a dump
// skips what it cannot decode the same way), never the monitor.
var errUndecodable = errors.New("undecodable netlink message")

// Kinds of messages, as Observer.EventSeen and Observer.Undecodable name
// them.
const (
	kindLink    = "link"
	kindAddress = "address"
	kindRoute   = "route"
)

// message is one decoded rtnetlink message: what the state needs of it.
type message struct {
	typ     uint16 // RTM_*
	nlflags uint16 // NLM_F_*
	kind    string
	// keep is false for what the view does not hold: AF_BRIDGE link
	// messages (bridge port changes), routes of other families (an
	// AF_UNSPEC dump also returns multicast routing tables) and cloned
	// routes (PMTU or redirect exceptions, which dumps leave out too).
	keep bool

	link *view.Link // kindLink

	addrIndex int       // kindAddress: the link's ifindex
	addr      view.Addr // kindAddress

	route view.Route // kindRoute
	key   routeKey   // kindRoute
	// multipath: the route came with RTA_MULTIPATH (kindRoute). Only its
	// first next hop is in the route and its key (LinkIndex, Gateway, Via),
	// so the state re-lists routes when another hop's link goes.
	multipath bool
}

// kindOf names the kind of an rtnetlink message type, "" for others.
func kindOf(typ uint16) string {
	switch typ {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		return kindLink
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		return kindAddress
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		return kindRoute
	}
	return ""
}

func msgName(typ uint16) string {
	switch typ {
	case unix.RTM_NEWLINK:
		return "RTM_NEWLINK"
	case unix.RTM_DELLINK:
		return "RTM_DELLINK"
	case unix.RTM_GETLINK:
		return "RTM_GETLINK"
	case unix.RTM_NEWADDR:
		return "RTM_NEWADDR"
	case unix.RTM_DELADDR:
		return "RTM_DELADDR"
	case unix.RTM_GETADDR:
		return "RTM_GETADDR"
	case unix.RTM_NEWROUTE:
		return "RTM_NEWROUTE"
	case unix.RTM_DELROUTE:
		return "RTM_DELROUTE"
	case unix.RTM_GETROUTE:
		return "RTM_GETROUTE"
	}
	return fmt.Sprintf("type %d", typ)
}

// decodeError is an undecodable message: what it was, why, and the stack
// when decoding panicked (the netlink library's decoders index attribute
// values without checking their length).
type decodeError struct {
	typ   uint16
	err   error
	stack []byte // non-nil after a panic
}

func (e *decodeError) Error() string {
	return fmt.Sprintf("%s: %v: %v", msgName(e.typ), errUndecodable, e.err)
}

func (e *decodeError) Unwrap() []error { return []error{errUndecodable, e.err} }

// decode decodes one link, address or route message. Links go through the
// netlink library's LinkDeserialize. Addresses and routes are read here
// from the library's exported header decoders (nl.DeserializeIfAddrmsg,
// nl.DeserializeRtMsg) and this file's attribute splitter (parseAttrs),
// taking only the attributes the view keeps: the library's own decoders
// for them are not exported, and they fail on attributes the view never
// needs (an IPv6 seg6 encapsulation with an HMAC: its segment list is not a
// multiple of 16 bytes), which would lose the route itself. A message that
// still cannot be decoded, or whose decoding panics, is a *decodeError
// wrapping errUndecodable.
func decode(m *syscall.NetlinkMessage) (msg message, err error) {
	typ := m.Header.Type
	defer func() {
		if p := recover(); p != nil {
			err = &decodeError{typ: typ, err: fmt.Errorf("panic: %v", p), stack: debug.Stack()}
		}
	}()
	msg = message{typ: typ, nlflags: m.Header.Flags, kind: kindOf(typ)}
	switch msg.kind {
	case kindLink:
		err = decodeLink(m, &msg)
	case kindAddress:
		err = decodeAddr(m.Data, &msg)
	case kindRoute:
		err = decodeRoute(m.Data, &msg)
	default:
		return msg, nil // not for the view; keep is false
	}
	if err != nil {
		return msg, &decodeError{typ: typ, err: err}
	}
	return msg, nil
}

func decodeLink(m *syscall.NetlinkMessage, msg *message) error {
	if len(m.Data) < unix.SizeofIfInfomsg {
		return fmt.Errorf("%d bytes, shorter than ifinfomsg", len(m.Data))
	}
	// RTNLGRP_LINK also carries AF_BRIDGE messages about bridge ports; a
	// port leaving its bridge is an AF_BRIDGE RTM_DELLINK of a link that
	// still exists. Only AF_UNSPEC messages describe links.
	if m.Data[0] != unix.AF_UNSPEC {
		return nil
	}
	hdr := unix.NlMsghdr{Len: m.Header.Len, Type: m.Header.Type, Flags: m.Header.Flags, Seq: m.Header.Seq, Pid: m.Header.Pid}
	nlk, err := netlink.LinkDeserialize(&hdr, m.Data)
	if err != nil {
		return err
	}
	msg.link = linkFromNetlink(nlk)
	msg.keep = true
	return nil
}

// decodeAddr reads an ifaddrmsg the way the library's parseAddr does: the
// address is IFA_LOCAL when present (IFA_ADDRESS is then the peer of a
// point-to-point link, unless it is the same IPv4 address), else
// IFA_ADDRESS; IFA_FLAGS, when present, holds all the flags.
func decodeAddr(b []byte, msg *message) error {
	if len(b) < unix.SizeofIfAddrmsg {
		return fmt.Errorf("%d bytes, shorter than ifaddrmsg", len(b))
	}
	h := *nl.DeserializeIfAddrmsg(b) // a copy: the buffer is reused
	if h.Family != unix.AF_INET && h.Family != unix.AF_INET6 {
		return nil
	}
	attrs, err := parseAttrs(b[unix.SizeofIfAddrmsg:])
	if err != nil {
		return err
	}
	var local, address []byte
	flags := int(h.Flags)
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFA_ADDRESS:
			address = a.Value
		case unix.IFA_LOCAL:
			local = a.Value
		case unix.IFA_FLAGS:
			if len(a.Value) < 4 {
				return fmt.Errorf("IFA_FLAGS of %d bytes", len(a.Value))
			}
			flags = int(nl.NativeEndian().Uint32(a.Value))
		}
	}
	ip, bits := address, int(h.Prefixlen)
	if local != nil && (h.Family != unix.AF_INET || !slices.Equal(local, address)) {
		ip, bits = local, 8*len(local)
	}
	if ip == nil {
		return errors.New("no IFA_ADDRESS or IFA_LOCAL")
	}
	p, err := prefixFrom(int(h.Family), ip, bits)
	if err != nil {
		return err
	}
	msg.addrIndex = int(h.Index)
	msg.addr = view.Addr{Prefix: p, Scope: int(h.Scope), Flags: flags}
	msg.keep = true
	return nil
}

// decodeRoute reads an rtmsg: the fixed header (rtm_flags: RTNH_F_ONLINK,
// LINKDOWN, DEAD, ... of a route with one next hop) and the attributes the
// view keeps: RTA_DST, RTA_SRC with rtm_src_len (a source-specific route),
// RTA_GATEWAY, RTA_VIA (a gateway of the other family), RTA_PREFSRC,
// RTA_OIF, RTA_PRIORITY, RTA_TABLE, RTA_NH_ID, RTAX_MTU in RTA_METRICS,
// and the next hops of RTA_MULTIPATH (see decodeMultipath).
// Encapsulations and the rest are not decoded.
func decodeRoute(b []byte, msg *message) error {
	if len(b) < unix.SizeofRtMsg {
		return fmt.Errorf("%d bytes, shorter than rtmsg", len(b))
	}
	h := *nl.DeserializeRtMsg(b) // a copy: the buffer is reused
	family := int(h.Family)
	if family != view.FamilyV4 && family != view.FamilyV6 {
		return nil
	}
	if h.Flags&unix.RTM_F_CLONED != 0 {
		return nil
	}
	attrs, err := parseAttrs(b[unix.SizeofRtMsg:])
	if err != nil {
		return err
	}
	r := view.Route{
		Family:   family,
		Table:    int(h.Table),
		Protocol: int(h.Protocol),
		Scope:    int(h.Scope),
		Type:     int(h.Type),
		Flags:    int(h.Flags),
	}
	u32 := func(a syscall.NetlinkRouteAttr, name string) (int, error) {
		if len(a.Value) < 4 {
			return 0, fmt.Errorf("%s of %d bytes", name, len(a.Value))
		}
		return int(nl.NativeEndian().Uint32(a.Value)), nil
	}
	var dst, src []byte
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_DST:
			dst = a.Value
		case unix.RTA_SRC:
			src = a.Value
		case unix.RTA_GATEWAY:
			if r.Gateway, err = addrFrom(family, a.Value); err != nil {
				return fmt.Errorf("RTA_GATEWAY: %w", err)
			}
		case unix.RTA_VIA:
			if err := setVia(&r, a.Value); err != nil {
				return err
			}
		case rtaNHID:
			if r.NHID, err = u32(a, "RTA_NH_ID"); err != nil {
				return err
			}
		case unix.RTA_PREFSRC:
			if r.Src, err = addrFrom(family, a.Value); err != nil {
				return fmt.Errorf("RTA_PREFSRC: %w", err)
			}
		case unix.RTA_OIF:
			if r.LinkIndex, err = u32(a, "RTA_OIF"); err != nil {
				return err
			}
		case unix.RTA_PRIORITY:
			if r.Priority, err = u32(a, "RTA_PRIORITY"); err != nil {
				return err
			}
		case unix.RTA_TABLE:
			if r.Table, err = u32(a, "RTA_TABLE"); err != nil {
				return err
			}
		case unix.RTA_MULTIPATH:
			if err := decodeMultipath(&r, a.Value); err != nil {
				return err
			}
			msg.multipath = true
		case unix.RTA_METRICS:
			metrics, err := parseAttrs(a.Value)
			if err != nil {
				return fmt.Errorf("RTA_METRICS: %w", err)
			}
			for _, mt := range metrics {
				if mt.Attr.Type == unix.RTAX_MTU {
					if r.MTU, err = u32(mt, "RTAX_MTU"); err != nil {
						return err
					}
				}
			}
		}
	}
	if dst != nil {
		if r.Dst, err = prefixFrom(family, dst, int(h.Dst_len)); err != nil {
			return fmt.Errorf("RTA_DST: %w", err)
		}
	} else {
		// A route without RTA_DST is a default route.
		r.Dst = netip.PrefixFrom(unspecified(family), 0)
	}
	switch {
	case src != nil && h.Src_len > 0:
		if r.SrcPrefix, err = prefixFrom(family, src, int(h.Src_len)); err != nil {
			return fmt.Errorf("RTA_SRC: %w", err)
		}
	case h.Src_len > 0:
		// The kernel sends RTA_SRC whenever rtm_src_len is set; without
		// it the route's meaning is unknown.
		return fmt.Errorf("rtm_src_len %d without RTA_SRC", h.Src_len)
	}
	msg.route = r
	msg.key = routeKey{
		family: family, table: r.Table, tos: int(h.Tos), priority: r.Priority,
		linkIndex: r.LinkIndex, typ: r.Type, dst: r.Dst, src: r.SrcPrefix,
		gw: r.Gateway, via: r.Via, nhid: r.NHID,
	}
	msg.keep = true
	return nil
}

// parseAttrs splits a run of rtattrs the way the kernel's nla_ok and
// nla_next walk them: each at least its header and within the bytes left,
// the next one at the 4-byte aligned end of the previous, fewer than a
// header's bytes at the end ignored. The netlink library's
// nl.ParseRouteAttr does the same but slices past the end (a panic) when
// the last attribute's length is not a multiple of 4 and the padding is
// missing.
func parseAttrs(b []byte) ([]syscall.NetlinkRouteAttr, error) {
	var attrs []syscall.NetlinkRouteAttr
	for len(b) >= unix.SizeofRtAttr {
		n := int(nl.NativeEndian().Uint16(b))
		if n < unix.SizeofRtAttr || n > len(b) {
			return nil, fmt.Errorf("attribute of %d bytes with %d bytes left", n, len(b))
		}
		attrs = append(attrs, syscall.NetlinkRouteAttr{
			Attr:  syscall.RtAttr{Len: uint16(n), Type: nl.NativeEndian().Uint16(b[2:])},
			Value: b[unix.SizeofRtAttr:n],
		})
		b = b[min(rtaAlign(n), len(b)):]
	}
	return attrs, nil
}

// rtaAlign rounds n up to the 4-byte alignment of rtattrs (RTA_ALIGN).
func rtaAlign(n int) int { return (n + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1) }

// setVia reads RTA_VIA (struct rtvia: a u16 address family, then the
// address) into r. The kernel sends it for a gateway of the other family
// than the route's (an IPv4 route via inet6 fe80::1: fib_nexthop_info);
// one of the route's own family is its Gateway.
func setVia(r *view.Route, b []byte) error {
	if len(b) < 2 {
		return fmt.Errorf("RTA_VIA of %d bytes", len(b))
	}
	family := int(nl.NativeEndian().Uint16(b))
	gw, err := addrFrom(family, b[2:])
	if err != nil {
		return fmt.Errorf("RTA_VIA: %w", err)
	}
	if family == r.Family {
		r.Gateway = gw
	} else {
		r.Via = gw
	}
	return nil
}

// rtaNHID is RTA_NH_ID (include/uapi/linux/rtnetlink.h, Linux 5.3), which
// golang.org/x/sys/unix does not define.
const rtaNHID = 30

// rtnexthopLen is sizeof(struct rtnexthop): rtnh_len (u16), rtnh_flags
// (u8), rtnh_hops (u8), rtnh_ifindex (s32).
const rtnexthopLen = 8

// decodeMultipath reads RTA_MULTIPATH, a run of struct rtnexthop each
// followed by its own attributes (RTA_GATEWAY, RTA_VIA, ...) up to
// rtnh_len, aligned to 4 bytes. r.Hops is the number of next hops. The
// first one's ifindex, gateway (or via) go in the route's plain fields;
// with exactly one, its flags too (RTNH_F_* of a multipath route are per
// next hop, not in rtm_flags), so a one-hop multipath route (an IPv6 route
// through a nexthop group of one) reads as the plain route it is. Several
// hops are left to the matcher, which refuses them (Hops > 1).
func decodeMultipath(r *view.Route, b []byte) error {
	var first struct {
		flags, index int
		gw, via      netip.Addr
	}
	hops := 0
	for len(b) > 0 {
		if len(b) < rtnexthopLen {
			return fmt.Errorf("RTA_MULTIPATH: %d bytes left, shorter than rtnexthop", len(b))
		}
		n := int(nl.NativeEndian().Uint16(b))
		if n < rtnexthopLen || n > len(b) {
			return fmt.Errorf("RTA_MULTIPATH: rtnh_len %d with %d bytes left", n, len(b))
		}
		hop := view.Route{Family: r.Family}
		attrs, err := parseAttrs(b[rtnexthopLen:n])
		if err != nil {
			return fmt.Errorf("RTA_MULTIPATH next hop %d: %w", hops+1, err)
		}
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.RTA_GATEWAY:
				if hop.Gateway, err = addrFrom(r.Family, a.Value); err != nil {
					return fmt.Errorf("RTA_MULTIPATH next hop %d: RTA_GATEWAY: %w", hops+1, err)
				}
			case unix.RTA_VIA:
				if err := setVia(&hop, a.Value); err != nil {
					return fmt.Errorf("RTA_MULTIPATH next hop %d: %w", hops+1, err)
				}
			}
		}
		if hops == 0 {
			first.flags = int(b[2])
			first.index = int(int32(nl.NativeEndian().Uint32(b[4:8])))
			first.gw, first.via = hop.Gateway, hop.Via
		}
		hops++
		b = b[min(rtaAlign(n), len(b)):] // RTNH_ALIGN
	}
	if hops == 0 {
		return errors.New("RTA_MULTIPATH without a next hop")
	}
	r.Hops = hops
	r.LinkIndex, r.Gateway, r.Via = first.index, first.gw, first.via
	if hops == 1 {
		r.Flags |= first.flags
	}
	return nil
}

func unspecified(family int) netip.Addr {
	if family == view.FamilyV4 {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// addrFrom converts an address attribute of family (4 or 16 bytes).
func addrFrom(family int, b []byte) (netip.Addr, error) {
	switch {
	case family == view.FamilyV4 && len(b) == net.IPv4len:
		return netip.AddrFrom4([4]byte(b)), nil
	case family == view.FamilyV6 && len(b) == net.IPv6len:
		return netip.AddrFrom16([16]byte(b)), nil
	}
	return netip.Addr{}, fmt.Errorf("%d-byte address in family %d", len(b), family)
}

// prefixFrom converts an address attribute and its prefix length.
func prefixFrom(family int, b []byte, bits int) (netip.Prefix, error) {
	a, err := addrFrom(family, b)
	if err != nil {
		return netip.Prefix{}, err
	}
	p := netip.PrefixFrom(a, bits)
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("prefix length %d for %s", bits, a)
	}
	return p, nil
}

// operStates names IF_OPER_* (RFC 2863) as iproute2 prints them, lowercased.
var operStates = [...]string{"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"}

// linkFromNetlink converts what the library decoded. Nothing in the result
// aliases the library's value (whose byte slices may alias the receive
// buffer).
func linkFromNetlink(nlk netlink.Link) *view.Link {
	a := nlk.Attrs()
	op := "unknown"
	if int(a.OperState) < len(operStates) {
		op = operStates[a.OperState]
	}
	var mac net.HardwareAddr
	if len(a.HardwareAddr) > 0 {
		mac = slices.Clone(a.HardwareAddr)
	}
	return &view.Link{
		Index:       a.Index,
		Name:        a.Name,
		Kind:        nlk.Type(),
		MAC:         mac,
		MTU:         a.MTU,
		RawFlags:    a.RawFlags,
		OperState:   op,
		ParentIndex: a.ParentIndex,
		LinkNetNSID: a.NetNsID, // the library sets -1 when IFLA_LINK_NETNSID is absent
		MasterIndex: a.MasterIndex,
	}
}
