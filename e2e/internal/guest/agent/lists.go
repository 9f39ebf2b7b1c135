package main

import (
	"fmt"
	"net"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
)

// list_interfaces and list_routes as Kata 4.1's agent answers them
// (src/agent/src/netlink.rs list_interfaces 310-336, list_routes 438-503):
// what a monitor sees through ListInterfaces and ListRoutes.

// listInterfaces: every link in dump order (lo included): name, MAC in
// uppercase (format_address), MTU, and its addresses with the family
// INVERTED (TryFrom<Address> for IPAddress: IPv4 reported as v6, IPv6 as
// v4), the address from IFA_ADDRESS else IFA_LOCAL. Device, DevicePath,
// Type and RawFlags are left empty.
func (a *agent) listInterfaces() ([]*guestproto.Interface, error) {
	a.netMu.Lock()
	defer a.netMu.Unlock()
	links, err := dumpLinks()
	if err != nil {
		return nil, err
	}
	addrs, err := dumpAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]*guestproto.Interface, 0, len(links))
	for _, l := range links {
		inf := &guestproto.Interface{Name: l.name, HwAddr: l.macString(), Mtu: uint64(l.mtu)}
		for _, ad := range addrs {
			if int32(ad.hdr.Index) != l.hdr.Index {
				continue
			}
			fam := guestproto.FamilyV6 // an IPv4 address, reported as v6
			if ad.hdr.Family == unix.AF_INET6 {
				fam = guestproto.FamilyV4
			}
			ip := ad.addr
			if ip == nil {
				ip = ad.local
			}
			s := ""
			if ip != nil {
				s = ip.String()
			}
			inf.IPAddresses = append(inf.IPAddresses, &guestproto.IPAddress{Family: fam, Address: s, Mask: strconv.Itoa(int(ad.hdr.Prefixlen))})
		}
		out = append(out, inf)
	}
	return out, nil
}

// listRoutes: the main table, IPv4 then IPv6. Dest is "<ip>/<len>" from
// RTA_DST, but every route with a gateway gets Dest "0.0.0.0" (IPv4) or
// "::1" (IPv6), default or not; Source is RTA_SRC as "<ip>/<len>"
// (RTA_PREFSRC is not read); Device is the name of RTA_OIF ("" if no such
// link); routes with no Dest at all are left out. Family and Flags are
// never set.
func (a *agent) listRoutes() ([]*guestproto.Route, error) {
	a.netMu.Lock()
	defer a.netMu.Unlock()
	return listRoutesLocked()
}

func listRoutesLocked() ([]*guestproto.Route, error) {
	var all []*route
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rs, err := dumpRoutes(fam)
		if err != nil {
			return nil, fmt.Errorf("Failed to query IP v%d routes: %w", map[int]int{unix.AF_INET: 4, unix.AF_INET6: 6}[fam], err)
		}
		all = append(all, rs...)
	}
	out := []*guestproto.Route{}
	for _, r := range all {
		if r.hdr.Table != unix.RT_TABLE_MAIN {
			continue
		}
		kr := &guestproto.Route{Scope: uint32(r.hdr.Scope), Mtu: r.mtu}
		if r.dst != nil {
			kr.Dest = fmt.Sprintf("%s/%d", canonical(r.dst), r.hdr.Dst_len)
		}
		if r.src != nil {
			kr.Source = fmt.Sprintf("%s/%d", canonical(r.src), r.hdr.Src_len)
		}
		if r.gw != nil {
			gw := canonical(r.gw)
			if gw.To4() != nil {
				kr.Dest = "0.0.0.0"
			} else {
				kr.Dest = "::1"
			}
			kr.Gateway = gw.String()
		}
		if r.oif != 0 {
			if l, err := getLinkByIndex(r.oif); err == nil {
				kr.Device = l.name
			}
		}
		if kr.Dest != "" {
			out = append(out, kr)
		}
	}
	return out, nil
}

// canonical is parse_route_addr: an IPv4-mapped IPv6 address becomes IPv4
// (Ipv6Addr::to_canonical).
func canonical(ip net.IP) net.IP {
	if len(ip) == net.IPv6len {
		if v4 := ip.To4(); v4 != nil {
			return v4
		}
	}
	return ip
}
