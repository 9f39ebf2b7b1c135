package main

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
)

// inspect_links and inspect_routes: the guest's state as the kernel has
// it, for tests to judge what the Kata calls did. Not Kata's API: a monitor
// never sees these.

func inspectLinks() ([]*guestproto.Link, error) {
	links, err := dumpLinks()
	if err != nil {
		return nil, err
	}
	addrs, err := dumpAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]*guestproto.Link, 0, len(links))
	for _, l := range links {
		gl := &guestproto.Link{Index: int(l.hdr.Index), Name: l.name, Kind: l.kind, Flags: l.hdr.Flags, MTU: int(l.mtu)}
		if len(l.mac) == 6 {
			gl.MAC = strings.ToLower(l.macString())
		}
		if dev, err := filepath.EvalSymlinks(filepath.Join("/sys/class/net", l.name, "device")); err == nil {
			gl.PCI = strings.TrimPrefix(dev, "/sys")
		}
		for _, ad := range addrs {
			if int32(ad.hdr.Index) != l.hdr.Index {
				continue
			}
			ip := ad.local
			if ip == nil {
				ip = ad.addr
			}
			fam := guestproto.FamilyV4
			if ad.hdr.Family == unix.AF_INET6 {
				fam = guestproto.FamilyV6
			}
			gl.Addrs = append(gl.Addrs, &guestproto.Addr{Family: fam, Address: ip.String(), PrefixLen: int(ad.hdr.Prefixlen)})
		}
		out = append(out, gl)
	}
	return out, nil
}

func inspectRoutes() ([]*guestproto.KernelRoute, error) {
	names := map[int32]string{}
	links, err := dumpLinks()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		names[l.hdr.Index] = l.name
	}
	var out []*guestproto.KernelRoute
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rs, err := dumpRoutes(fam)
		if err != nil {
			return nil, err
		}
		bits := 32
		gfam := guestproto.FamilyV4
		if fam == unix.AF_INET6 {
			bits, gfam = 128, guestproto.FamilyV6
		}
		for _, r := range rs {
			kr := &guestproto.KernelRoute{
				Family: gfam, Table: r.table, Device: names[r.oif], Protocol: r.hdr.Protocol, Scope: r.hdr.Scope,
				Type: r.hdr.Type, Flags: r.hdr.Flags, MTU: r.mtu, Priority: r.prio,
			}
			dst := r.dst
			if dst == nil {
				dst = make([]byte, bits/8)
			}
			kr.Dst = fmt.Sprintf("%s/%d", net.IP(dst), r.hdr.Dst_len)
			if r.gw != nil {
				kr.Gateway = r.gw.String()
			}
			if r.src != nil {
				kr.Src = fmt.Sprintf("%s/%d", r.src, r.hdr.Src_len)
			}
			if r.prefsrc != nil {
				kr.PrefSrc = r.prefsrc.String()
			}
			out = append(out, kr)
		}
	}
	return out, nil
}
