package hotplug

import (
	"strconv"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// InterfaceFromLink converts a link of the sandbox netns to the Interface
// Kata's AddInterface takes. Link-local addresses are left out: the guest's
// kernel makes its own, and Kata's agent would add a duplicate.
func InterfaceFromLink(l *view.Link) *Interface {
	inf := &Interface{
		Device:   l.Name,
		Name:     l.Name,
		Mtu:      uint64(l.MTU),
		HwAddr:   l.MAC.String(),
		Type:     l.Kind,
		RawFlags: l.RawFlags,
	}
	for _, a := range l.Addrs {
		if !a.Prefix.IsValid() || a.LinkLocal() {
			continue
		}
		// An IPv4-mapped IPv6 address (::ffff:a.b.c.d/120) is an IPv6
		// address on the link: kept in that form, as unmapping it would
		// send "a.b.c.d/120", which the agent cannot parse.
		fam := FamilyV4
		if !a.Prefix.Addr().Is4() {
			fam = FamilyV6
		}
		inf.IPAddresses = append(inf.IPAddresses, &IPAddress{
			Family:  fam,
			Address: a.Prefix.Addr().String(),
			Mask:    strconv.Itoa(a.Prefix.Bits()),
		})
	}
	return inf
}

// RouteFromView converts a route of the sandbox netns to Kata's form, with
// device named as the guest knows it. A default route (prefix length 0) gets
// an empty Dest: the agent does not parse "default" or "0.0.0.0/0".
func RouteFromView(r view.Route, device string) *Route {
	out := &Route{
		Device: device,
		Scope:  uint32(r.Scope),
		Flags:  uint32(r.Flags),
		Mtu:    uint32(r.MTU),
		Family: FamilyV4,
	}
	if r.Family == view.FamilyV6 {
		out.Family = FamilyV6
	}
	if !r.Default() {
		out.Dest = r.Dst.Masked().String()
	}
	// Addresses keep their family (netmon reads IPv4 ones as 4 bytes), so
	// an IPv6 route never carries an IPv4-looking gateway.
	if r.Gateway.IsValid() {
		out.Gateway = r.Gateway.String()
	}
	if r.Src.IsValid() {
		out.Source = r.Src.String()
	}
	return out
}
