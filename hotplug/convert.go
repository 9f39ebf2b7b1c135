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
//
// What the agent would apply with another meaning is not sent (kata-
// containers src/agent/src/netlink.rs update_routes): the preferred source
// (the agent takes Source as a source prefix, making an IPv6 route
// source-specific), and every flag but onlink with a gateway (the kernel
// sets linkdown itself on a link without carrier and refuses it on add,
// with dead). An IPv6 source-specific route's prefix goes in Source, which
// the agent installs as exactly that. Metric is kept for logs and the watch
// output: Kata's pbTypes.Route has no metric, and the agent installs every
// route with the kernel's default, which is why matcher.Routes keeps one
// route per destination.
func RouteFromView(r view.Route, device string) *Route {
	out := &Route{
		Device: device,
		Scope:  uint32(r.Scope),
		Mtu:    uint32(r.MTU),
		Family: FamilyV4,
		Metric: uint32(r.Priority),
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
		out.Flags = uint32(r.Flags & view.RouteFlagOnLink)
	}
	if r.SrcPrefix.IsValid() && r.Family == view.FamilyV6 {
		out.Source = r.SrcPrefix.Masked().String()
	}
	return out
}
