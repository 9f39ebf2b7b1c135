package katarules

// The encoding rules Kata insists on, applied to hotplug's types, so they
// can be read and tested without a Kata tree. shimhook/kata only copies the
// fields into Kata's protocol types (pbTypes) and back.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// ErrInvalid is returned (wrapped) for an Interface or Route that Kata would
// refuse or misread. The adapter returns it before calling Kata: a refused
// AddInterface is not harmless in Kata 4.1 (see docs/kata.md, "endpoint list
// wiped").
var ErrInvalid = errors.New("kata adapter: invalid request")

// kataLinkKinds are the netlink kinds kata-netmon asks Kata to attach: the
// ones Kata 4.1's LinuxNetwork.addSingleEndpoint
// (virtcontainers/network_linux.go:128) attaches to the link named in the
// request. Kata takes other kinds, but not as that link: "tap" and "tuntap"
// create a new tap of their own ("tuntap" panicked before the series' patch
// 0008), "macvtap" and "ipvlan" fail or are not Docker's, and anything else
// is "Unsupported network interface", which (before the series' patch 0004)
// made Kata forget every endpoint. The adapter refuses them before calling
// Kata.
var kataLinkKinds = map[string]bool{
	"veth":    true,
	"macvlan": true,
}

// normalizeInterface checks inf the way Kata and its agent will read it and
// returns a canonical copy: Device defaults to Name, HwAddr is a lower-case
// EUI-48, Type is veth or macvlan, each address has the family of its
// address (v4=0, v6=1; an IPv4-mapped IPv6 address is IPv6, as
// hotplug.InterfaceFromLink keeps it) and Mask is the prefix length as a
// decimal string (Kata parses "%s/%s"; a dotted IPv4 netmask is converted).
func normalizeInterface(inf *hotplug.Interface) (hotplug.Interface, error) {
	if inf == nil {
		return hotplug.Interface{}, fmt.Errorf("%w: nil interface", ErrInvalid)
	}
	out := *inf
	out.IPAddresses = nil
	if out.Name == "" {
		return out, fmt.Errorf("%w: interface without a name (Kata looks the link up by name)", ErrInvalid)
	}
	if out.Device == "" {
		out.Device = out.Name
	}
	mac, err := net.ParseMAC(inf.HwAddr)
	if err != nil || len(mac) != 6 {
		return out, fmt.Errorf("%w: interface %q: MAC %q is not an EUI-48 address", ErrInvalid, inf.Name, inf.HwAddr)
	}
	out.HwAddr = mac.String()
	if !kataLinkKinds[out.Type] {
		return out, fmt.Errorf("%w: interface %q: link kind %q is not one Kata attaches as the named link (veth, macvlan)", ErrInvalid, inf.Name, inf.Type)
	}
	for i, a := range inf.IPAddresses {
		if a == nil {
			return out, fmt.Errorf("%w: interface %q: address %d is nil", ErrInvalid, inf.Name, i)
		}
		na, err := normalizeAddress(*a)
		if err != nil {
			return out, fmt.Errorf("%w: interface %q: %v", ErrInvalid, inf.Name, err)
		}
		out.IPAddresses = append(out.IPAddresses, &na)
	}
	return out, nil
}

func normalizeAddress(a hotplug.IPAddress) (hotplug.IPAddress, error) {
	ip, err := netip.ParseAddr(strings.TrimSpace(a.Address))
	if err != nil || ip.Zone() != "" {
		return a, fmt.Errorf("address %q is not an IP address without zone", a.Address)
	}
	bits, err := prefixLen(a.Mask, ip.Is4())
	if err != nil {
		return a, fmt.Errorf("address %s: %v", ip, err)
	}
	fam := hotplug.FamilyV6
	if ip.Is4() {
		fam = hotplug.FamilyV4
	}
	return hotplug.IPAddress{Family: fam, Address: ip.String(), Mask: strconv.Itoa(bits)}, nil
}

// prefixLen reads a mask as Kata wants it, a decimal prefix length, or as a
// dotted IPv4 netmask (contiguous).
func prefixLen(mask string, v4 bool) (int, error) {
	max := 128
	if v4 {
		max = 32
	}
	mask = strings.TrimPrefix(strings.TrimSpace(mask), "/")
	if n, err := strconv.Atoi(mask); err == nil {
		if n < 0 || n > max {
			return 0, fmt.Errorf("prefix length %d out of range 0-%d", n, max)
		}
		return n, nil
	}
	if v4 {
		if m, err := netip.ParseAddr(mask); err == nil && m.Is4() {
			b := m.As4()
			ones, total := net.IPv4Mask(b[0], b[1], b[2], b[3]).Size()
			if total == 32 {
				return ones, nil
			}
		}
	}
	return 0, fmt.Errorf("mask %q is neither a prefix length nor a contiguous IPv4 netmask", mask)
}

func familyOf(ip netip.Addr) hotplug.IPFamily {
	if ip.Unmap().Is4() {
		return hotplug.FamilyV4
	}
	return hotplug.FamilyV6
}

// normalizeRoute checks a route the way the agent reads it and returns a
// canonical copy: a default route has Dest "" (the agent parses neither
// "default" nor a /0, and netlink reports default routes as 0.0.0.0/0 or
// ::/0); any other Dest is a masked CIDR (a bare address becomes a host
// route); Gateway and Source are plain addresses; Device is required (the
// agent looks it up by name, and one unknown device fails the whole
// UpdateRoutes call); Family follows the addresses.
func normalizeRoute(r *hotplug.Route) (hotplug.Route, error) {
	if r == nil {
		return hotplug.Route{}, fmt.Errorf("%w: nil route", ErrInvalid)
	}
	out := *r
	if out.Device == "" {
		return out, fmt.Errorf("%w: route to %q has no device", ErrInvalid, r.Dest)
	}
	if out.Family != hotplug.FamilyV4 && out.Family != hotplug.FamilyV6 {
		return out, fmt.Errorf("%w: route to %q: family %d is neither v4 (0) nor v6 (1)", ErrInvalid, r.Dest, r.Family)
	}
	var fams []hotplug.IPFamily
	switch d := strings.TrimSpace(r.Dest); d {
	case "", "default":
		out.Dest = ""
	default:
		var p netip.Prefix
		var err error
		if strings.Contains(d, "/") {
			p, err = netip.ParsePrefix(d)
		} else {
			var ip netip.Addr
			if ip, err = netip.ParseAddr(d); err == nil {
				p = netip.PrefixFrom(ip, ip.BitLen())
			}
		}
		if err != nil {
			return out, fmt.Errorf("%w: route destination %q: %v", ErrInvalid, r.Dest, err)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), p.Addr().Unmap().BitLen())).Masked()
		fams = append(fams, familyOf(p.Addr()))
		if p.Bits() == 0 {
			out.Dest = ""
		} else {
			out.Dest = p.String()
		}
	}
	for _, f := range []*string{&out.Gateway, &out.Source} {
		s := strings.TrimSpace(*f)
		if s == "" {
			*f = ""
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return out, fmt.Errorf("%w: route to %q: %q is not an IP address without zone", ErrInvalid, r.Dest, s)
		}
		*f = ip.Unmap().String()
		fams = append(fams, familyOf(ip))
	}
	for _, f := range fams {
		if f != fams[0] {
			return out, fmt.Errorf("%w: route to %q mixes IPv4 and IPv6 (gateway %q, source %q)", ErrInvalid, r.Dest, r.Gateway, r.Source)
		}
	}
	if len(fams) > 0 {
		out.Family = fams[0]
	}
	return out, nil
}

// fromGuest returns the guest's interfaces as ListInterfaces reports them,
// with what the agent gets wrong put right (Kata 4.1 agent, netlink.rs
// list_interfaces:310 and TryFrom<Address> for IPAddress:891): MACs in
// lower case, as RemoveInterface compares them (the agent prints them in
// upper case), and each address's family from the address itself (the
// agent reports IPv4 as v6 and IPv6 as v4).
func fromGuest(infs []*hotplug.Interface) []*hotplug.Interface {
	out := make([]*hotplug.Interface, 0, len(infs))
	for _, inf := range infs {
		if inf == nil {
			continue
		}
		c := inf.Clone()
		c.HwAddr = strings.ToLower(c.HwAddr)
		for _, a := range c.IPAddresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				a.Family = hotplug.FamilyV6
				if ip.Is4() {
					a.Family = hotplug.FamilyV4
				}
			}
		}
		out = append(out, c)
	}
	return out
}
