package view

import (
	"net"
	"net/netip"
	"slices"
	"sort"
)

// Kernel interface flags (IFF_*) as carried in Link.RawFlags. Spelled out here
// so the view and the packages that read it build on every OS without a
// syscall package.
const (
	FlagUp       uint32 = 0x1     // IFF_UP
	FlagLoopback uint32 = 0x8     // IFF_LOOPBACK
	FlagRunning  uint32 = 0x40    // IFF_RUNNING: carrier seen by linkwatch, set asynchronously after UP
	FlagNoARP    uint32 = 0x80    // IFF_NOARP
	FlagLowerUp  uint32 = 0x10000 // IFF_LOWER_UP
)

// Route protocols, tables and types (rtnetlink).
const (
	RouteProtoKernel = 2   // RTPROT_KERNEL: prefix routes the kernel adds for an address
	TableMain        = 254 // RT_TABLE_MAIN
	RouteUnicast     = 1   // RTN_UNICAST
	RouteFlagOnLink  = 0x4 // RTNH_F_ONLINK: the gateway is on the link, whatever the addresses say
)

// Address families, as in Route.Family.
const (
	FamilyV4 = 2  // AF_INET
	FamilyV6 = 10 // AF_INET6
)

// Link is one link of the watched netns as the kernel last described it.
type Link struct {
	Index int
	// Incarnation tells apart two links that held the same ifindex: it is
	// new each time a link appears in the view (created, or moved in), so a
	// delete and re-create that fall between two snapshots still shows.
	Incarnation uint64
	Name        string
	Kind        string // netlink kind: "veth", "macvlan", "bridge", "tuntap", "ifb", "device" (lo and physical), ...
	MAC         net.HardwareAddr
	MTU         int
	RawFlags    uint32 // IFF_* flags
	OperState   string // "up", "down", "unknown", "lowerlayerdown", ...

	// ParentIndex is IFLA_LINK: the veth peer's or macvlan parent's ifindex.
	// It is an index in the netns named by LinkNetNSID, or in this netns when
	// LinkNetNSID is -1. 0 when the kernel reports none (a veth just moved in,
	// before the rename, has none yet).
	ParentIndex int
	// LinkNetNSID is IFLA_LINK_NETNSID: the id this netns gives to the netns
	// holding the peer or parent; -1 when absent.
	LinkNetNSID int
	MasterIndex int // IFLA_MASTER in this netns; 0 when none

	Addrs []Addr

	// Peer holds what netmon found about the other end of ParentIndex; nil
	// when ParentIndex is 0 or the kind has no other end worth resolving.
	Peer *Peer
}

// Up reports IFF_UP.
func (l *Link) Up() bool { return l.RawFlags&FlagUp != 0 }

// Running reports IFF_RUNNING.
func (l *Link) Running() bool { return l.RawFlags&FlagRunning != 0 }

// Addr is one address on a link.
type Addr struct {
	Prefix netip.Prefix // address and prefix length, e.g. 172.18.0.2/16
	Scope  int          // RT_SCOPE_*: 0 universe, 253 link, 254 host
	Flags  int          // IFA_F_* (nodad, tentative, ...)
}

// LinkLocal reports an IPv4 169.254/16 or IPv6 fe80::/10 address.
func (a Addr) LinkLocal() bool {
	return a.Prefix.Addr().IsLinkLocalUnicast()
}

// Route is one route of the watched netns.
type Route struct {
	Family    int          // FamilyV4 or FamilyV6
	Dst       netip.Prefix // always valid; a default route has prefix length 0
	Gateway   netip.Addr   // zero when the route has no gateway
	Src       netip.Addr   // preferred source; zero when none
	LinkIndex int          // output device
	Table     int
	Protocol  int // RTPROT_*
	Scope     int // RT_SCOPE_*
	Type      int // RTN_* (1 unicast)
	Priority  int // the metric (RTA_PRIORITY)
	// Flags are the RTNH_F_* flags in rtm_flags: onlink (RTNH_F_ONLINK),
	// and those the kernel sets itself, linkdown (the output device has no
	// carrier) and dead. Those of a one-hop multipath route's hop are
	// included.
	Flags int
	MTU   int

	// Via is the gateway when it is of the other family (RTA_VIA: an IPv4
	// route through an IPv6 next hop); zero when none. Gateway is then zero.
	Via netip.Addr
	// SrcPrefix is the source prefix of a source-specific route (rtm_src_len
	// > 0 with RTA_SRC: IPv6 `default from 2001:db8::/64 via ...`); zero
	// when the route applies to every source.
	SrcPrefix netip.Prefix
	// Hops is the number of next hops of a multipath route (RTA_MULTIPATH);
	// 0 for a route with one next hop. A multipath route with one hop is
	// kept as a plain route (Hops 1, LinkIndex, Gateway or Via, and Flags
	// that hop's); with several, LinkIndex and Gateway or Via are those of
	// the first hop.
	Hops int
	// NHID is the nexthop object the route uses (RTA_NH_ID: `ip route add
	// ... nhid N`); 0 when none. With the kernel's default
	// net.ipv4.nexthop_compat_mode (1) the object's next hops come with
	// the route as well, read as above (LinkIndex and Gateway, or Hops);
	// with 0 they do not, and LinkIndex is 0.
	NHID int
}

// Default reports a default route (prefix length 0, IPv4 or IPv6).
func (r Route) Default() bool { return r.Dst.Bits() == 0 }

// PeerState says how far netmon got resolving a link's other end.
type PeerState int

const (
	// PeerUntied: the link has no IFLA_LINK yet, or it names a netns id that
	// is not known yet. Docker's veth is in this state between the move and
	// the rename.
	PeerUntied PeerState = iota
	// PeerSameNetNS: IFLA_LINK names a link in the watched netns itself.
	PeerSameNetNS
	// PeerForeignNetNS: the netns holding the other end is not an accepted
	// one (dockerd's, or one under Docker's netns directory), or could not
	// be identified.
	PeerForeignNetNS
	// PeerResolved: the other end's netns is accepted and its facts below
	// were read there.
	PeerResolved
	// PeerError: reading the facts failed (Err says why).
	PeerError
)

func (s PeerState) String() string {
	switch s {
	case PeerUntied:
		return "untied"
	case PeerSameNetNS:
		return "same-netns"
	case PeerForeignNetNS:
		return "foreign-netns"
	case PeerResolved:
		return "resolved"
	case PeerError:
		return "error"
	}
	return "unknown"
}

// PeerHome says which accepted netns holds a link's other end.
type PeerHome int

const (
	// HomeDockerd: dockerd's own netns (bridge and macvlan endpoints). The
	// zero value: every peer netmon resolved before Docker-owned netns were
	// accepted lived there.
	HomeDockerd PeerHome = iota
	// HomeDockerOwned: a netns dockerd bind-mounted under its netns
	// directory that is not dockerd's own, such as an overlay network's
	// "1-<network id>" netns holding the peer on its bridge br0.
	HomeDockerOwned
	// HomeScanned: a named or process netns found by a scan (the watch
	// command and tests only).
	HomeScanned
)

func (h PeerHome) String() string {
	switch h {
	case HomeDockerd:
		return "dockerd"
	case HomeDockerOwned:
		return "docker-owned"
	case HomeScanned:
		return "scanned"
	}
	return "unknown"
}

// Peer is what netmon read about a link's veth peer or macvlan parent, in the
// netns where that ifindex is valid.
type Peer struct {
	State PeerState
	// Home says which accepted netns NetNS is; meaningful when State is
	// PeerResolved, or PeerError with NetNS set.
	Home  PeerHome
	NetNS string // the netns the id resolved to (a path), when known
	Err   string // why the facts could not be read, when State is PeerError

	Found       bool   // a link with index ParentIndex exists there
	Name        string // its name there
	Kind        string // its kind there ("veth", "bridge", ...)
	PointsBack  bool   // a veth whose IFLA_LINK is this link and whose link-netnsid names the watched netns
	MasterIndex int    // its master there; 0 when none
	MasterKind  string // the master's kind ("bridge" for Docker's docker0 / br-*)

	// Rechecking: these facts are not yet those of a Docker endpoint but
	// may become so with no change in the watched netns (a veth peer that
	// points back but is on no bridge yet, a read that failed), and netmon
	// reads them again on a schedule of its own. False once they are
	// final, or the schedule ended without them settling.
	Rechecking bool
}

// Snapshot is an immutable copy of the view. Callers must not modify it.
type Snapshot struct {
	Links  map[int]*Link // by ifindex
	Routes []Route

	// Generation increases with every change to the view.
	Generation uint64
	// Resyncs counts full re-lists after the first (subscription died,
	// overflow, interrupted dump).
	Resyncs uint64
}

// SortedLinks returns the links ordered by ifindex.
func (s *Snapshot) SortedLinks() []*Link {
	out := make([]*Link, 0, len(s.Links))
	for _, l := range s.Links {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// LinkByName returns the link currently carrying name, or nil.
func (s *Snapshot) LinkByName(name string) *Link {
	for _, l := range s.Links {
		if l.Name == name {
			return l
		}
	}
	return nil
}

// Clone returns a deep copy of s: the caller may keep and modify it.
func (s *Snapshot) Clone() *Snapshot {
	c := &Snapshot{
		Links:      make(map[int]*Link, len(s.Links)),
		Routes:     slices.Clone(s.Routes),
		Generation: s.Generation,
		Resyncs:    s.Resyncs,
	}
	for i, l := range s.Links {
		c.Links[i] = l.Clone()
	}
	return c
}

// Clone returns a deep copy of l.
func (l *Link) Clone() *Link {
	c := *l
	c.MAC = slices.Clone(l.MAC)
	c.Addrs = slices.Clone(l.Addrs)
	if l.Peer != nil {
		p := *l.Peer
		c.Peer = &p
	}
	return &c
}
