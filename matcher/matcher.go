package matcher

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// State is the matcher's verdict on one link.
type State int

const (
	// Ignored links are never attached: lo, Kata's own links, taps, links of
	// other kinds, and candidates whose peer facts are final and not those
	// of an endpoint.
	Ignored State = iota
	// Pending links look like Docker endpoints on their way to ready (peer
	// not tied yet, peer facts netmon still re-reads, down, not running, no
	// address yet).
	Pending
	// Ready links are Docker endpoints fully configured: attach them.
	Ready
)

func (s State) String() string {
	switch s {
	case Ignored:
		return "ignored"
	case Pending:
		return "pending"
	case Ready:
		return "ready"
	}
	return "unknown"
}

// Decision is the verdict on one link, with a short reason for logs.
type Decision struct {
	Index  int
	Name   string
	Kind   string // the link's netlink kind
	State  State
	Reason string
}

// kataSuffix ends the names of the links Kata creates in the sandbox netns
// (tap0_kata, br0_kata). An endpoint renamed to one of them is left alone:
// attaching it would fight Kata over its own device.
const kataSuffix = "_kata"

// Classify decides one link. It reads only the link: peer facts were
// resolved by netmon in the netns where they are valid.
func Classify(l *view.Link) Decision {
	d := Decision{Index: l.Index, Name: l.Name, Kind: l.Kind, State: Ignored}
	switch {
	case l.RawFlags&view.FlagLoopback != 0 || l.Name == "lo":
		d.Reason = "loopback"
		return d
	case strings.HasSuffix(l.Name, kataSuffix):
		d.Reason = "Kata's own link"
		return d
	case l.Kind != "veth" && l.Kind != "macvlan":
		d.Reason = fmt.Sprintf("kind %q is not a Docker endpoint kind", l.Kind)
		return d
	case len(l.MAC) != 6:
		d.Reason = "no Ethernet MAC address"
		return d
	}
	if why, pending := peerProblem(l); why != "" {
		if pending {
			d.State = Pending
		}
		d.Reason = why
		return d
	}
	// The link is a Docker endpoint; now: is it fully configured?
	d.State = Pending
	switch {
	case !l.Up():
		d.Reason = "down"
	case !l.Running():
		d.Reason = "up, not running yet"
	case !hasRoutableAddr(l):
		d.Reason = "no address yet"
	default:
		d.State = Ready
		d.Reason = "ready"
	}
	return d
}

// peerProblem returns why l's peer (veth) or parent (macvlan) facts do not
// make it a Docker endpoint, and whether that may still change (pending):
// a peer not tied yet, or facts netmon still re-reads (view.Peer.Rechecking:
// a failed read, a peer on no bridge yet). An empty reason means the facts
// hold.
func peerProblem(l *view.Link) (reason string, pending bool) {
	p := l.Peer
	if l.ParentIndex == 0 || p == nil || p.State == view.PeerUntied {
		// Docker's veth arrives with no IFLA_LINK; the rename that
		// follows carries it.
		return "peer not tied yet", true
	}
	switch p.State {
	case view.PeerSameNetNS:
		return "peer is in the sandbox netns itself", false
	case view.PeerForeignNetNS:
		// Rechecking: netmon looks for the id in Docker's netns
		// directory again (a netns bind-mounted there later).
		if p.NetNS != "" {
			return fmt.Sprintf("peer netns %s is not dockerd's nor Docker's", p.NetNS), p.Rechecking
		}
		return fmt.Sprintf("peer netns id %d is not dockerd's nor Docker's", l.LinkNetNSID), p.Rechecking
	case view.PeerError:
		return "peer facts unreadable: " + p.Err, p.Rechecking
	case view.PeerResolved:
	default:
		return fmt.Sprintf("peer state %v", p.State), false
	}
	if !p.Found {
		return fmt.Sprintf("peer ifindex %d not found in %s netns %s", l.ParentIndex, p.Home, p.NetNS), false
	}
	if l.Kind == "macvlan" {
		// A macvlan's IFLA_LINK is its parent; there is no peer to
		// check back. Docker's macvlan driver takes the
		// parent in dockerd's netns; no Docker driver puts one in a
		// netns of its own.
		if p.Home == view.HomeDockerOwned {
			return fmt.Sprintf("macvlan parent %q is in Docker-owned netns %s, not dockerd's", p.Name, p.NetNS), false
		}
		return "", false
	}
	// A veth: its peer is in dockerd's netns (bridge driver), or in a netns
	// Docker owns (overlay driver: the peer sits on bridge br0 in the
	// network's own netns, <exec-root>/netns/1-<network id>). Either way
	// it must point back and be enslaved to a bridge.
	switch {
	case p.Kind != "veth":
		return fmt.Sprintf("peer %q is a %s, not a veth", p.Name, p.Kind), false
	case !p.PointsBack:
		return fmt.Sprintf("peer %q does not point back at this link", p.Name), false
	case p.MasterIndex == 0 && p.Rechecking:
		return fmt.Sprintf("peer %q is on no bridge yet", p.Name), true
	case p.MasterIndex == 0:
		return fmt.Sprintf("peer %q is on no bridge", p.Name), false
	case p.MasterKind != "bridge":
		return fmt.Sprintf("peer %q is enslaved to a %s, not a bridge", p.Name, p.MasterKind), false
	}
	return "", false
}

func hasRoutableAddr(l *view.Link) bool {
	for _, a := range l.Addrs {
		if a.Prefix.IsValid() && !a.LinkLocal() {
			return true
		}
	}
	return false
}

// Endpoints classifies every link of s, ordered by ifindex.
func Endpoints(s *view.Snapshot) []Decision {
	links := s.SortedLinks()
	out := make([]Decision, 0, len(links))
	for _, l := range links {
		out = append(out, Classify(l))
	}
	return out
}

// GuestNIC is a NIC the guest has, and the link it stands for: the link's
// ifindex and incarnation when it was plugged, and the name and MAC the
// guest knows it by.
type GuestNIC struct {
	Index       int
	Incarnation uint64 // view.Link.Incarnation when plugged
	Name        string
	MAC         string // the guest NIC's MAC: lower-case colon form, as net.HardwareAddr.String
	// LinkMAC is the link's MAC after the plug when the sandbox changed it
	// (Kata's macvtap model gives the link a random MAC and the guest NIC
	// the original); "" when the link kept MAC.
	LinkMAC string
	// Addrs are the addresses the guest NIC was given (RoutableAddrs of
	// the link then).
	Addrs []netip.Prefix
}

// Gone reports whether the link behind a guest NIC no longer stands for a
// Docker endpoint in s, and why: the link was deleted or moved out
// (DELLINK), was taken down and renamed away from its attach name (docker
// network disconnect), now carries a MAC other than the NIC's (unless the
// sandbox moved the NIC's MAC off the link: LinkMAC), or is ready with
// other addresses than the NIC was given. A link that is merely down,
// renamed while up, or not ready, is not gone.
func Gone(n GuestNIC, s *view.Snapshot) (bool, string) {
	l, ok := s.Links[n.Index]
	if !ok {
		return true, "link deleted or moved out"
	}
	if l.Incarnation != n.Incarnation {
		return true, "link deleted and re-created with the same ifindex"
	}
	// When the sandbox gave the link a MAC of its own (Kata's macvtap
	// model), the guest's MAC lives on the sandbox's macvtap, not on the
	// link: a later change of the link's MAC changes nothing for the guest.
	if mac := l.MAC.String(); n.LinkMAC == "" && mac != n.MAC {
		return true, fmt.Sprintf("MAC changed to %s", mac)
	}
	if !l.Up() && l.Name != n.Name {
		return true, fmt.Sprintf("taken down and renamed to %q", l.Name)
	}
	// The guest NIC got its addresses when it was plugged, and Kata has no
	// call to change them: a ready endpoint whose addresses changed must be
	// plugged again. (Only a ready one: a link that is down has lost its
	// IPv6 addresses, and Kata's macvtap model strips them from the link.)
	if Classify(l).State == Ready {
		if now := RoutableAddrs(l); !slices.Equal(now, n.Addrs) {
			return true, fmt.Sprintf("addresses changed from %v to %v", n.Addrs, now)
		}
	}
	// Peer facts are deliberately not re-checked here: a transient failure
	// to read them must not unplug a working NIC.
	return false, ""
}

// SkippedRoute is a route through a guest NIC that the guest does not get,
// and why.
type SkippedRoute struct {
	Route  view.Route
	Reason string
	// Shadowed: another route to the same destination has a lower metric,
	// so the kernel does not use this one either: leaving it out changes
	// nothing. Every other skip changes what the guest can reach and is
	// worth a warning.
	Shadowed bool
}

// Routes returns the routes the guest should have through its NICs, in a
// stable order, and the ones it must not get, with the reason. nics maps
// the ifindex of each link the guest has a NIC for to the addresses that
// NIC was given (for the reachability of gateways).
//
// Kept: main-table unicast routes the kernel did not add for an address
// itself (the guest's kernel makes its own prefix routes), IPv4 and IPv6,
// that the agent applies with the same meaning. Kata's agent installs each
// route with the kernel's default metric, replacing any route to the same
// destination, parses the gateway in the route's own family, and takes one
// next hop per route (kata-containers src/agent/src/netlink.rs
// update_routes). So, per destination (and source prefix), only the route
// the kernel uses is kept: the lowest metric, and none when several share
// it (which one wins depends on insertion order, which a dump does not
// say). Left out, with a reason: multipath routes and nexthop objects, a
// gateway of the other family (RTA_VIA), an IPv4 source-specific route,
// and a gateway on no subnet of the NIC's addresses nor of a kept on-link
// route through it (the agent would fail the whole call).
func Routes(s *view.Snapshot, nics map[int][]netip.Prefix) (keep []view.Route, skipped []SkippedRoute) {
	type dest struct {
		family int
		dst    netip.Prefix
		src    netip.Prefix
	}
	groups := map[dest][]view.Route{}
	for _, r := range s.Routes {
		if _, ok := nics[r.LinkIndex]; !ok || r.Table != view.TableMain || r.Protocol == view.RouteProtoKernel {
			continue
		}
		if r.Type != 0 && r.Type != view.RouteUnicast {
			continue
		}
		if !r.Dst.IsValid() || r.Dst.Addr().IsMulticast() || (r.Dst.Bits() > 0 && r.Dst.Addr().IsLinkLocalUnicast()) {
			continue
		}
		if why := inexpressible(r); why != "" {
			skipped = append(skipped, SkippedRoute{Route: r, Reason: why})
			continue
		}
		k := dest{r.Family, r.Dst.Masked(), r.SrcPrefix}
		groups[k] = append(groups[k], r)
	}
	var candidates []view.Route
	for _, g := range groups {
		sort.Slice(g, func(i, j int) bool { return routeLess(g[i], g[j]) })
		best := g[0].Priority
		n := 0
		for _, r := range g {
			if r.Priority == best {
				n++
			}
		}
		for _, r := range g {
			switch {
			case r.Priority != best:
				skipped = append(skipped, SkippedRoute{Route: r, Shadowed: true,
					Reason: fmt.Sprintf("a route to %s with the lower metric %d is used instead", r.Dst, best)})
			case n > 1:
				skipped = append(skipped, SkippedRoute{Route: r, Reason: fmt.Sprintf(
					"%d routes to %s share metric %d: the kernel uses one by insertion order or spreads over them, "+
						"the agent keeps one per destination", n, r.Dst, best)})
			default:
				candidates = append(candidates, r)
			}
		}
	}
	for _, r := range candidates {
		if r.Gateway.IsValid() && !gatewayOnLink(r, nics[r.LinkIndex], candidates) {
			skipped = append(skipped, SkippedRoute{Route: r, Reason: fmt.Sprintf(
				"gateway %s is on no subnet of the guest NIC's addresses nor of an on-link route through it: the agent would fail the whole update", r.Gateway)})
			continue
		}
		keep = append(keep, r)
	}
	sort.SliceStable(keep, func(i, j int) bool { return routeLess(keep[i], keep[j]) })
	sort.SliceStable(skipped, func(i, j int) bool { return routeLess(skipped[i].Route, skipped[j].Route) })
	return keep, skipped
}

// inexpressible says why the agent cannot install r with its meaning; ""
// when it can.
func inexpressible(r view.Route) string {
	switch {
	case r.NHID != 0:
		// With nexthop_compat_mode netmon has the object's next hop in
		// the route too, but the object is the route's: `ip nexthop
		// replace` moves every route using it at once, and a group is
		// several next hops.
		return fmt.Sprintf("uses nexthop object %d, whose next hops can change under the route: the agent has no nexthop objects and takes one gateway per route", r.NHID)
	case r.Hops > 1:
		return fmt.Sprintf("multipath route with %d next hops: the agent installs one next hop per destination, "+
			"and one of them alone would carry all the traffic", r.Hops)
	case r.Via.IsValid():
		return fmt.Sprintf("gateway %s is of the other address family (RTA_VIA): the agent parses the gateway in the route's family", r.Via)
	case r.SrcPrefix.IsValid() && r.Family != view.FamilyV6:
		return fmt.Sprintf("source-specific IPv4 route (from %s): the kernel ignores the source prefix of IPv4 routes", r.SrcPrefix)
	}
	return ""
}

// gatewayOnLink reports whether the guest can reach r's gateway directly:
// an IPv6 link-local gateway, the onlink flag, a subnet of the NIC's
// addresses, or a gateway-less route through the same NIC (the agent adds
// those first).
func gatewayOnLink(r view.Route, addrs []netip.Prefix, kept []view.Route) bool {
	gw := r.Gateway
	if r.Flags&view.RouteFlagOnLink != 0 || (gw.Is6() && gw.IsLinkLocalUnicast()) {
		return true
	}
	for _, a := range addrs {
		if a.Masked().Contains(gw) {
			return true
		}
	}
	for _, o := range kept {
		if o.LinkIndex == r.LinkIndex && !o.Gateway.IsValid() && !o.SrcPrefix.IsValid() && o.Dst.Contains(gw) {
			return true
		}
	}
	return false
}

// RoutableAddrs returns the addresses of l the guest NIC gets: valid, not
// link-local (the guest's kernel makes its own), sorted, each once.
func RoutableAddrs(l *view.Link) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range l.Addrs {
		if a.Prefix.IsValid() && !a.LinkLocal() {
			out = append(out, a.Prefix)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr().Compare(out[j].Addr()); c != 0 {
			return c < 0
		}
		return out[i].Bits() < out[j].Bits()
	})
	return slices.Compact(out)
}

// routeLess orders by family, then non-default before default (the guest
// needs the gateway's subnet first), then destination, metric and device,
// then every remaining field: a total order.
func routeLess(a, b view.Route) bool {
	if a.Family != b.Family {
		return a.Family < b.Family
	}
	if a.Default() != b.Default() {
		return !a.Default()
	}
	if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
		return c < 0
	}
	if a.Dst.Bits() != b.Dst.Bits() {
		return a.Dst.Bits() < b.Dst.Bits()
	}
	if a.Priority != b.Priority {
		return a.Priority < b.Priority
	}
	if a.LinkIndex != b.LinkIndex {
		return a.LinkIndex < b.LinkIndex
	}
	// Routes can still tie (a skipped group, IPv6 nexthops dumped one by
	// one): compare every other field so the dump order never decides.
	if c := a.Gateway.Compare(b.Gateway); c != 0 {
		return c < 0
	}
	if c := a.Src.Compare(b.Src); c != 0 {
		return c < 0
	}
	if c := a.SrcPrefix.Addr().Compare(b.SrcPrefix.Addr()); c != 0 {
		return c < 0
	}
	if c := a.Via.Compare(b.Via); c != 0 {
		return c < 0
	}
	return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Scope, b.Scope), cmp.Compare(a.Type, b.Type),
		cmp.Compare(a.Table, b.Table), cmp.Compare(a.Flags, b.Flags), cmp.Compare(a.MTU, b.MTU),
		cmp.Compare(a.SrcPrefix.Bits(), b.SrcPrefix.Bits()), cmp.Compare(a.Hops, b.Hops), cmp.Compare(a.NHID, b.NHID)) < 0
}
