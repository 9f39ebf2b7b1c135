package matcher

import (
	"cmp"
	"fmt"
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
}

// Gone reports whether the link behind a guest NIC no longer stands for a
// Docker endpoint in s, and why: the link was deleted or moved out
// (DELLINK), was taken down and renamed away from its attach name (docker
// network disconnect), or now carries a MAC that is neither the NIC's nor
// the one the sandbox gave it. A link that is merely down, renamed while up,
// or not ready, is not gone.
func Gone(n GuestNIC, s *view.Snapshot) (bool, string) {
	l, ok := s.Links[n.Index]
	if !ok {
		return true, "link deleted or moved out"
	}
	if l.Incarnation != n.Incarnation {
		return true, "link deleted and re-created with the same ifindex"
	}
	// Either MAC: the view may not show the sandbox's change yet.
	if mac := l.MAC.String(); mac != n.MAC && (n.LinkMAC == "" || mac != n.LinkMAC) {
		return true, fmt.Sprintf("MAC changed to %s", mac)
	}
	if !l.Up() && l.Name != n.Name {
		return true, fmt.Sprintf("taken down and renamed to %q", l.Name)
	}
	// Peer facts are deliberately not re-checked here: a transient failure
	// to read them must not unplug a working NIC.
	return false, ""
}

// Routes returns the routes the VM should have through the given devices
// (ifindexes of attached endpoints): main-table routes that the kernel did
// not add for an address itself, IPv4 and IPv6, in a stable order. Kernel
// prefix routes are left out because the guest's kernel makes its own when
// the addresses are configured.
func Routes(s *view.Snapshot, devices map[int]bool) []view.Route {
	var out []view.Route
	for _, r := range s.Routes {
		if !devices[r.LinkIndex] || r.Table != view.TableMain || r.Protocol == view.RouteProtoKernel {
			continue
		}
		if r.Type != 0 && r.Type != view.RouteUnicast {
			continue
		}
		if !r.Dst.IsValid() || r.Dst.Addr().IsMulticast() || (r.Dst.Bits() > 0 && r.Dst.Addr().IsLinkLocalUnicast()) {
			continue
		}
		out = append(out, r)
	}
	sort.SliceStable(out, func(i, j int) bool { return routeLess(out[i], out[j]) })
	return out
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
	// Routes can still tie (IPv6 nexthops dumped one by one, `ip route
	// append`): compare every other field so the dump order never decides.
	if c := a.Gateway.Compare(b.Gateway); c != 0 {
		return c < 0
	}
	if c := a.Src.Compare(b.Src); c != 0 {
		return c < 0
	}
	return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Scope, b.Scope), cmp.Compare(a.Type, b.Type),
		cmp.Compare(a.Table, b.Table), cmp.Compare(a.Flags, b.Flags), cmp.Compare(a.MTU, b.MTU)) < 0
}
