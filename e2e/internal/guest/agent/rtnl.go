package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Raw rtnetlink, as Kata's agent speaks it (the rtnetlink 0.14 crate,
// src/agent/src/netlink.rs): links found by dumping them all and filtering
// in dump order, links changed with RTM_SETLINK requests that carry a copy
// of the header read earlier (so the kernel re-applies its flags), routes
// added with NLM_F_REPLACE and the fields Kata sets. The vishvananda/netlink
// helpers hide exactly what matters here (a stale header, RTA_SRC), so the
// agent builds these messages itself.

// link is one RTM_NEWLINK message of a dump: the header as the kernel sent
// it (ifi_change is 0 in a dump) and the attributes the agent reads.
type link struct {
	hdr  unix.IfInfomsg
	name string
	mac  []byte // IFLA_ADDRESS (nil when the link has none)
	mtu  uint32
	kind string // IFLA_INFO_KIND ("" for a physical NIC)
}

func (l *link) up() bool { return l.hdr.Flags&unix.IFF_UP != 0 }

// macString is the MAC in Kata's list_interfaces form (format_address):
// colon-separated uppercase hex for 6 bytes, dotted for 4 (an IPv4 tunnel
// endpoint), "" for anything else.
func (l *link) macString() string {
	switch len(l.mac) {
	case 6:
		return strings.ToUpper(net.HardwareAddr(l.mac).String())
	case 4, 16:
		return net.IP(l.mac).String()
	}
	return ""
}

func parseLink(m []byte) (*link, error) {
	if len(m) < unix.SizeofIfInfomsg {
		return nil, fmt.Errorf("short link message (%d bytes)", len(m))
	}
	l := &link{hdr: nl.DeserializeIfInfomsg(m).IfInfomsg}
	attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
	if err != nil {
		return nil, err
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFLA_IFNAME:
			l.name = strings.TrimRight(string(a.Value), "\x00")
		case unix.IFLA_ADDRESS:
			l.mac = append([]byte(nil), a.Value...)
		case unix.IFLA_MTU:
			if len(a.Value) >= 4 {
				l.mtu = nl.NativeEndian().Uint32(a.Value)
			}
		case unix.IFLA_LINKINFO:
			infos, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				continue
			}
			for _, i := range infos {
				if i.Attr.Type == unix.IFLA_INFO_KIND {
					l.kind = strings.TrimRight(string(i.Value), "\x00")
				}
			}
		}
	}
	return l, nil
}

// dumpLinks lists every link in the kernel's dump order (ascending
// ifindex). An interrupted dump is used as it came, as the rtnetlink crate
// does.
func dumpLinks() ([]*link, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
		return nil, rtnlError(err)
	}
	out := make([]*link, 0, len(msgs))
	for _, m := range msgs {
		l, err := parseLink(m)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// getLinkByName is the rtnetlink crate's `link().get().match_name(name)`:
// one RTM_GETLINK naming the link, answered by the link or by an error
// (ENODEV when no link has the name). Kata's find_link(LinkFilter::Name)
// passes that error on as it is: "Received a netlink error message No such
// device (os error 19)", not "Link not found".
func getLinkByName(name string) (*link, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, rtnlError(err)
	}
	if len(msgs) == 0 {
		// The crate's stream ends empty: find_link's own error.
		return nil, fmt.Errorf("Link not found (Name: %s)", name)
	}
	return parseLink(msgs[0])
}

// getLinkByIndex is `link().get().match_index(index)`.
func getLinkByIndex(index int32) (*link, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = index
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, rtnlError(err)
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("Link not found (Index: %d)", index)
	}
	return parseLink(msgs[0])
}

// tryFindLinkByMAC is try_find_link(LinkFilter::Address): a dump, and the
// first link (lowest ifindex) whose IFLA_ADDRESS equals the parsed MAC;
// nil when none has it.
func tryFindLinkByMAC(mac string) (*link, error) {
	want, err := parseMACAddress(mac)
	if err != nil {
		return nil, fmt.Errorf("Failed to parse MAC address: %s: %w", mac, err)
	}
	links, err := dumpLinks()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if string(l.mac) == string(want[:]) {
			return l, nil
		}
	}
	return nil, nil
}

// findLinkByMAC is find_link(LinkFilter::Address).
func findLinkByMAC(mac string) (*link, error) {
	l, err := tryFindLinkByMAC(mac)
	if err == nil && l == nil {
		err = fmt.Errorf("Link not found (Address: %s)", mac)
	}
	return l, err
}

// parseMACAddress is the agent's parse_mac_address: split on ':' into at
// most 6 fields, each parsed as a hexadecimal u8 ("2" and "0ff" are
// accepted; a seventh field stays in the sixth and fails it).
func parseMACAddress(s string) ([6]byte, error) {
	var out [6]byte
	parts := strings.SplitN(s, ":", 6)
	for i := range out {
		if i >= len(parts) {
			return out, fmt.Errorf("Invalid MAC address %s", s)
		}
		v, err := strconv.ParseUint(strings.TrimPrefix(parts[i], "+"), 16, 8)
		if err != nil {
			return out, fmt.Errorf("invalid MAC field %q", parts[i])
		}
		out[i] = byte(v)
	}
	return out, nil
}

// enableLink is the agent's enable_link: `link().set(index).up()` or
// `.down()`, a fresh header whose change mask is IFF_UP only.
func enableLink(index int32, up bool) error {
	hdr := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: index, Change: unix.IFF_UP}
	if up {
		hdr.Flags = unix.IFF_UP
	}
	return setLink(hdr)
}

// setLink sends one RTM_SETLINK with hdr and attrs, as the rtnetlink
// crate's LinkSetRequest does. With a header copied from a dump (ifi_change
// 0), the kernel sets the link's flags to ifi_flags (it reads ifi_change 0
// as ~0): a link set down since comes back up.
func setLink(hdr unix.IfInfomsg, attrs ...*nl.RtAttr) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK|unix.NLM_F_EXCL|unix.NLM_F_CREATE)
	req.AddData(&nl.IfInfomsg{IfInfomsg: hdr})
	for _, a := range attrs {
		req.AddData(a)
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return rtnlError(err)
}

func nameAttr(name string) *nl.RtAttr {
	return nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name))
}

func mtuAttr(mtu uint32) *nl.RtAttr { return nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(mtu)) }

func macAttr(mac [6]byte) *nl.RtAttr { return nl.NewRtAttr(unix.IFLA_ADDRESS, mac[:]) }

// netlinkError is an error the kernel answered, in the words of the
// rtnetlink crate (Error::NetlinkError displays "Received a netlink error
// message" and the io::Error of the errno: "No such device (os error 19)").
type netlinkError struct{ errno syscall.Errno }

func (e *netlinkError) Error() string {
	return "Received a netlink error message " + ioErrorString(e.errno)
}

// ioErrorString is Rust's io::Error display of an errno: "No such device
// (os error 19)".
func ioErrorString(errno syscall.Errno) string {
	msg := errno.Error()
	if msg != "" {
		msg = strings.ToUpper(msg[:1]) + msg[1:]
	}
	return fmt.Sprintf("%s (os error %d)", msg, int(errno))
}

func (e *netlinkError) Unwrap() error { return e.errno }

// rtnlError turns a kernel errno into a netlinkError; other errors pass.
func rtnlError(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return &netlinkError{errno: errno}
	}
	return err
}

// addAddress is `address().add(index, ip, prefix).replace()`: IFA_ADDRESS
// and IFA_LOCAL, and for IPv4 the broadcast address the crate computes,
// with NLM_F_REPLACE|NLM_F_CREATE.
func addAddress(index int32, ip net.IP, prefix int) error {
	family := unix.AF_INET6
	raw := ip.To16()
	if v4 := ip.To4(); v4 != nil {
		family, raw = unix.AF_INET, v4
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWADDR, unix.NLM_F_ACK|unix.NLM_F_REPLACE|unix.NLM_F_CREATE)
	msg := nl.NewIfAddrmsg(family)
	msg.Prefixlen = uint8(prefix)
	msg.Index = uint32(index)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, raw))
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, raw))
	if family == unix.AF_INET {
		// The crate's broadcast: the address with every host bit set
		// (the address itself for a /32).
		b := binary.BigEndian.Uint32(raw)
		if prefix < 32 {
			b |= ^uint32(0) >> uint(prefix)
		}
		brd := binary.BigEndian.AppendUint32(nil, b)
		req.AddData(nl.NewRtAttr(unix.IFA_BROADCAST, brd))
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return rtnlError(err)
}

// address is one RTM_NEWADDR of a dump.
type address struct {
	hdr   unix.IfAddrmsg
	addr  net.IP // IFA_ADDRESS
	local net.IP // IFA_LOCAL
}

// dumpAddrs lists every address (all families), as
// `address().get().execute()` does before the agent filters by link.
func dumpAddrs() ([]*address, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfAddrmsg(unix.AF_UNSPEC))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
	if err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
		return nil, rtnlError(err)
	}
	var out []*address
	for _, m := range msgs {
		if len(m) < unix.SizeofIfAddrmsg {
			continue
		}
		a := &address{hdr: nl.DeserializeIfAddrmsg(m).IfAddrmsg}
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfAddrmsg:])
		if err != nil {
			return nil, err
		}
		for _, at := range attrs {
			switch at.Attr.Type {
			case unix.IFA_ADDRESS:
				a.addr = append(net.IP(nil), at.Value...)
			case unix.IFA_LOCAL:
				a.local = append(net.IP(nil), at.Value...)
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// route is one RTM_NEWROUTE of a dump.
type route struct {
	hdr     unix.RtMsg
	dst     net.IP // RTA_DST
	src     net.IP // RTA_SRC (a source prefix, with hdr.Src_len)
	gw      net.IP // RTA_GATEWAY
	prefsrc net.IP // RTA_PREFSRC
	oif     int32  // RTA_OIF
	table   uint32 // RTA_TABLE (or the header's)
	mtu     uint32 // RTAX_MTU
	prio    uint32 // RTA_PRIORITY
}

// dumpRoutes lists the routes of one family, every table, in dump order.
func dumpRoutes(family int) ([]*route, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
	msg := nl.NewRtMsg()
	msg.Family = uint8(family)
	msg.Table, msg.Protocol, msg.Type, msg.Scope = 0, 0, 0, 0
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE)
	if err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
		return nil, rtnlError(err)
	}
	var out []*route
	for _, m := range msgs {
		if len(m) < unix.SizeofRtMsg {
			continue
		}
		r := &route{hdr: nl.DeserializeRtMsg(m).RtMsg}
		r.table = uint32(r.hdr.Table)
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofRtMsg:])
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			v := a.Value
			switch a.Attr.Type {
			case unix.RTA_DST:
				r.dst = append(net.IP(nil), v...)
			case unix.RTA_SRC:
				r.src = append(net.IP(nil), v...)
			case unix.RTA_GATEWAY:
				r.gw = append(net.IP(nil), v...)
			case unix.RTA_PREFSRC:
				r.prefsrc = append(net.IP(nil), v...)
			case unix.RTA_OIF:
				if len(v) >= 4 {
					r.oif = int32(nl.NativeEndian().Uint32(v))
				}
			case unix.RTA_TABLE:
				if len(v) >= 4 {
					r.table = nl.NativeEndian().Uint32(v)
				}
			case unix.RTA_PRIORITY:
				if len(v) >= 4 {
					r.prio = nl.NativeEndian().Uint32(v)
				}
			case unix.RTA_METRICS:
				metrics, err := nl.ParseRouteAttr(v)
				if err != nil {
					continue
				}
				for _, mt := range metrics {
					if mt.Attr.Type == unix.RTAX_MTU && len(mt.Value) >= 4 {
						r.mtu = nl.NativeEndian().Uint32(mt.Value)
					}
				}
			}
		}
		out = append(out, r)
	}
	return out, nil
}
