package kata

// This file has no Kata import on purpose: it holds the encoding rules Kata
// insists on, applied to hotplug's types, so they can be read and tested
// without a Kata tree. adapter.go only copies the fields into Kata's protocol
// types (pbTypes) and back.

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

// kataLinkKinds are the netlink kinds Kata 4.1's
// LinuxNetwork.addSingleEndpoint (virtcontainers/network_linux.go) turns into
// an endpoint. Anything else fails there with "Unsupported network
// interface", and that failure makes LinuxNetwork.AddEndpoints drop Kata's
// whole endpoint list: so the adapter refuses other kinds itself.
var kataLinkKinds = map[string]bool{
	"veth":    true,
	"macvlan": true,
	"macvtap": true,
	"ipvlan":  true,
	"tap":     true,
	"tuntap":  true,
	"device":  true,
}

// Hypervisor type names as Kata 4.1 spells them (virtcontainers/hypervisor.go,
// HypervisorType constants). adapter_test.go checks them against Kata's
// constants.
const (
	hvQEMU          = "qemu"
	hvCloudHyp      = "clh"
	hvFirecracker   = "firecracker"
	hvStratoVirt    = "stratovirt"
	hvRemote        = "remote"
	hvDragonball    = "dragonball"
	hvVirtframework = "virtframework"
	hvMock          = "mock"
)

// capabilitiesFor maps Kata's hypervisor type to what its Go runtime can do
// with NICs at run time (Kata 4.1): QEMU hot-plugs and unplugs
// (qemu.hotplugNetDevice); Cloud Hypervisor hot-plugs (NetDev in
// cloudHypervisor.HotplugAddDevice) but HotplugRemoveDevice has no NetDev
// case; Firecracker, StratoVirt and remote refuse NetDev in both. Dragonball
// is runtime-rs only; anything unknown is assumed unable.
func capabilitiesFor(hypervisorType string) hotplug.Capabilities {
	switch hypervisorType {
	case hvQEMU:
		return hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true}
	case hvCloudHyp:
		return hotplug.Capabilities{HotplugNIC: true}
	default:
		return hotplug.Capabilities{}
	}
}

// normalizeInterface checks inf the way Kata and its agent will read it and
// returns a canonical copy: Device defaults to Name, HwAddr is a lower-case
// EUI-48, Type is a netlink kind Kata accepts, each address has the family of
// its address (v4=0, v6=1) and Mask is the prefix length as a decimal string
// (Kata parses "%s/%s"; a dotted IPv4 netmask is converted).
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
		return out, fmt.Errorf("%w: interface %q: link kind %q is not one Kata can attach (want one of veth, macvlan, macvtap, ipvlan, tap, tuntap, device)", ErrInvalid, inf.Name, inf.Type)
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
	ip = ip.Unmap()
	bits, err := prefixLen(a.Mask, ip.Is4())
	if err != nil {
		return a, fmt.Errorf("address %s: %v", ip, err)
	}
	return hotplug.IPAddress{Family: familyOf(ip), Address: ip.String(), Mask: strconv.Itoa(bits)}, nil
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

// findMAC returns the guest interface with this MAC, or nil.
func findMAC(infs []*hotplug.Interface, mac string) *hotplug.Interface {
	for _, inf := range infs {
		if inf != nil && inf.HwAddr != "" && strings.EqualFold(inf.HwAddr, mac) {
			return inf
		}
	}
	return nil
}

// guestMACs returns the MACs of the guest's real NICs (not lo, not a zero
// MAC), lower-case.
func guestMACs(infs []*hotplug.Interface) map[string]bool {
	out := map[string]bool{}
	for _, inf := range infs {
		if inf == nil || inf.Name == "lo" {
			continue
		}
		mac, err := net.ParseMAC(inf.HwAddr)
		if err != nil || isZero(mac) {
			continue
		}
		out[mac.String()] = true
	}
	return out
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
