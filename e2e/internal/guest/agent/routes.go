package main

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
)

// update_routes and list_routes: routes name devices by name and are added
// or replaced, never deleted.

func (a *agent) updateRoutes(routes []*guestproto.Route) ([]*guestproto.Route, error) {
	a.netMu.Lock()
	defer a.netMu.Unlock()
	// Kata adds the routes without a gateway first (the gateway must be
	// reachable), each looked up by device name; the first failure ends
	// the call.
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
	return listRoutes()
}

func addRoute(r *guestproto.Route) error {
	link, err := netlink.LinkByName(r.Device)
	if err != nil {
		return fmt.Errorf("Link not found (name %q): %w", r.Device, err)
	}
	v6 := r.Family == guestproto.FamilyV6
	nr := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
		Protocol:  unix.RTPROT_BOOT,
		Scope:     netlink.Scope(r.Scope),
		Flags:     int(r.Flags),
		MTU:       int(r.Mtu),
	}
	if r.Dest == "" {
		nr.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if v6 {
			nr.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
	} else {
		_, dst, err := net.ParseCIDR(r.Dest)
		if err != nil {
			ip := net.ParseIP(r.Dest)
			if ip == nil {
				return fmt.Errorf("parse route destination %q: %w", r.Dest, err)
			}
			bits := 32
			if ip.To4() == nil {
				bits = 128
			} else {
				ip = ip.To4()
			}
			dst = &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
		}
		nr.Dst = dst
	}
	if r.Gateway != "" {
		if nr.Gw = net.ParseIP(r.Gateway); nr.Gw == nil {
			return fmt.Errorf("parse gateway %q", r.Gateway)
		}
	}
	if r.Source != "" {
		// A preferred source address ("10.0.0.2" or "10.0.0.2/32").
		src := r.Source
		if i := strings.IndexByte(src, '/'); i >= 0 {
			src = src[:i]
		}
		if nr.Src = net.ParseIP(src); nr.Src == nil {
			return fmt.Errorf("parse route source %q", r.Source)
		}
	}
	if err := netlink.RouteReplace(nr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("Failed to add route (src: %s, dst: %s, gtw: %s, dev: %s): %w", r.Source, r.Dest, r.Gateway, r.Device, err)
	}
	return nil
}

func listRoutes() ([]*guestproto.Route, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	out := make([]*guestproto.Route, 0, len(rs))
	for _, r := range rs {
		hr := &guestproto.Route{
			Device: names[r.LinkIndex],
			Scope:  uint32(r.Scope),
			Flags:  uint32(r.Flags),
			Mtu:    uint32(r.MTU),
		}
		if r.Family == unix.AF_INET6 {
			hr.Family = guestproto.FamilyV6
		}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 {
				hr.Dest = r.Dst.String()
			}
		}
		if r.Gw != nil {
			hr.Gateway = r.Gw.String()
		}
		if r.Src != nil {
			hr.Source = r.Src.String()
		}
		out = append(out, hr)
	}
	return out, nil
}
