package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
)

// update_routes as Kata 4.1's agent does it (src/agent/src/rpc.rs
// update_routes 1302-1334, netlink.rs update_routes 509-658).

// updateRoutes adds the routes without a gateway first, then the others
// (input order kept in each), and answers with list_routes. The first
// failure ends it ("Failed to update routes: ..."); routes added before it
// stay. Nothing is ever deleted.
func (a *agent) updateRoutes(routes []*guestproto.Route) ([]*guestproto.Route, error) {
	if routes == nil {
		return nil, errors.New("empty update routes request")
	}
	a.netMu.Lock()
	defer a.netMu.Unlock()
	var direct, viaGW []*guestproto.Route
	for _, r := range routes {
		if r == nil {
			continue
		}
		if r.Gateway == "" {
			direct = append(direct, r)
		} else {
			viaGW = append(viaGW, r)
		}
	}
	for _, r := range append(direct, viaGW...) {
		if err := addRoute(r); err != nil {
			return nil, fmt.Errorf("Failed to update routes: %w", err)
		}
	}
	out, err := listRoutesLocked()
	if err != nil {
		return nil, fmt.Errorf("Failed to list routes after update: %w", err)
	}
	return out, nil
}

// addRoute adds one route the way Kata's agent builds it: the device
// looked up by name; RTM_NEWROUTE with NLM_F_CREATE|NLM_F_REPLACE, main
// table, unicast, proto boot, the request's scope, rtm_flags = Flags as
// given (the kernel decides: IPv4 refuses RTNH_F_DEAD and RTNH_F_LINKDOWN
// with EINVAL), RTAX_MTU if set, the destination parsed as IPv6 when Family
// is v6 and as IPv4 otherwise ("" is the default route), Source parsed as a
// network: prefix > 0 (a bare address is /32 or /128) goes as RTA_SRC, a
// source-specific route; only "ip/0" becomes RTA_PREFSRC. Every netlink
// error ends the call: the agent compares the negative errno it gets with
// EEXIST, which never matches.
func addRoute(r *guestproto.Route) error {
	l, err := getLinkByName(r.Device)
	if err != nil {
		return err
	}
	v6 := r.Family == guestproto.FamilyV6
	bits, fam, famName := 32, unix.AF_INET, "4"
	if v6 {
		bits, fam, famName = 128, unix.AF_INET6, "6"
	}
	dst, dstLen := net.IP(make([]byte, bits/8)), 0
	if r.Dest != "" {
		if dst, dstLen, err = parseNetwork(r.Dest, v6); err != nil {
			return err
		}
	}
	msg := nl.NewRtMsg()
	msg.Family = uint8(fam)
	msg.Dst_len = uint8(dstLen)
	msg.Table = unix.RT_TABLE_MAIN
	msg.Protocol = unix.RTPROT_BOOT
	msg.Type = unix.RTN_UNICAST
	msg.Scope = uint8(r.Scope)
	msg.Flags = r.Flags
	var attrs []*nl.RtAttr
	if r.Mtu != 0 {
		metrics := nl.NewRtAttr(unix.RTA_METRICS, nil)
		metrics.AddRtAttr(unix.RTAX_MTU, nl.Uint32Attr(r.Mtu))
		attrs = append(attrs, metrics)
	}
	attrs = append(attrs, nl.NewRtAttr(unix.RTA_DST, dst), nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(l.hdr.Index))))
	if r.Source != "" {
		src, srcLen, err := parseNetwork(r.Source, v6)
		if err != nil {
			return err
		}
		if srcLen > 0 {
			msg.Src_len = uint8(srcLen)
			attrs = append(attrs, nl.NewRtAttr(unix.RTA_SRC, src))
		} else {
			attrs = append(attrs, nl.NewRtAttr(unix.RTA_PREFSRC, src))
		}
	}
	if r.Gateway != "" {
		gw := net.ParseIP(r.Gateway)
		if gw == nil || (v6 && gw.To4() != nil && !strings.Contains(r.Gateway, ":")) || (!v6 && gw.To4() == nil) {
			return fmt.Errorf("invalid IP address syntax: %q", r.Gateway)
		}
		if v6 {
			gw = gw.To16()
		} else {
			gw = gw.To4()
		}
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_GATEWAY, gw))
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWROUTE, unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return fmt.Errorf("Failed to add IP v%s route (src: %s, dst: %s, gtw: %s,Err: %s)", famName, r.Source, r.Dest, r.Gateway, ioErrorString(errno))
		}
		// Kata's agent drops errors that are not the kernel's.
	}
	return nil
}

// parseNetwork is ipnetwork's Ipv4Network/Ipv6Network::from_str: "ip" or
// "ip/len"; host bits are kept (the kernel judges them).
func parseNetwork(s string, v6 bool) (net.IP, int, error) {
	ipStr, lenStr, hasLen := strings.Cut(s, "/")
	ip := net.ParseIP(ipStr)
	bits := 32
	if v6 {
		bits = 128
	}
	if ip == nil || (v6 != strings.Contains(ipStr, ":")) {
		return nil, 0, fmt.Errorf("invalid address: %s", s)
	}
	n := bits
	if hasLen {
		v, err := strconv.Atoi(lenStr)
		if err != nil || v < 0 || v > bits {
			return nil, 0, fmt.Errorf("invalid prefix: %s", s)
		}
		n = v
	}
	if v6 {
		return ip.To16(), n, nil
	}
	return ip.To4(), n, nil
}
