package netmon

import (
	"bytes"
	"cmp"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeKey identifies a route the way the kernel does, plus what tells
// apart the routes the kernel lets share that identity.
//
// IPv4 identifies a FIB alias by (table, dst, tos, priority); IPv6 by
// (table, dst, metric). Both let several routes share that identity: IPv4
// appends (the kernel itself adds each address's prefix route with
// NLM_F_APPEND, so two links in one subnet each have one) and IPv6 keeps
// same-metric routes through different devices (every link's fe80::/64).
// The key therefore adds the output device, gateway and type, which every
// RTM_NEWROUTE / RTM_DELROUTE carries. What such a key cannot follow
// (NLM_F_REPLACE, IPv6 appends to ECMP groups, multipath routes, a delete of
// a route we do not have) makes the loop re-list the routes instead.
type routeKey struct {
	family, table, tos, priority, linkIndex, typ int
	dst                                          netip.Prefix
	gw                                           netip.Addr
}

func compareRouteKeys(a, b routeKey) int {
	return cmp.Or(
		cmp.Compare(a.family, b.family),
		cmp.Compare(a.table, b.table),
		a.dst.Addr().Compare(b.dst.Addr()),
		cmp.Compare(a.dst.Bits(), b.dst.Bits()),
		cmp.Compare(a.priority, b.priority),
		cmp.Compare(a.tos, b.tos),
		cmp.Compare(a.linkIndex, b.linkIndex),
		a.gw.Compare(b.gw),
		cmp.Compare(a.typ, b.typ),
	)
}

// state is the working view. It is owned by one goroutine at a time: Start
// before the loop runs, then the loop (see Monitor).
type state struct {
	links map[int]*view.Link // by ifindex; Addrs always nil here (see addrs)
	// addrs is kept apart from links because the three subscriptions are
	// three sockets with no order between them: a NEWADDR can be read
	// before the NEWLINK of its link. Snapshots attach addrs to known links.
	addrs  map[int]map[netip.Prefix]view.Addr
	routes map[routeKey]view.Route

	// incarnations numbers links as they appear (view.Link.Incarnation). A
	// re-list carries it over for a link it finds with the same ifindex
	// and MAC: it cannot tell a missed delete and re-create apart.
	incarnations uint64

	// Set by event handlers, consumed by Monitor.settle.
	changed      bool             // the published view is out of date
	relistAddrs  bool             // an event did not fit the state: re-list addresses
	relistRoutes bool             // the kernel changed routes silently, or an event did not fit
	peerDirty    map[int]struct{} // links whose peer facts must be re-read
	requery      map[int]struct{} // veths announced without IFLA_LINK: read them again
}

func newState() *state {
	return &state{
		links:     map[int]*view.Link{},
		addrs:     map[int]map[netip.Prefix]view.Addr{},
		routes:    map[routeKey]view.Route{},
		peerDirty: map[int]struct{}{},
		requery:   map[int]struct{}{},
	}
}

// operStates names IF_OPER_* (RFC 2863) as iproute2 prints them, lowercased.
var operStates = [...]string{"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"}

func linkFromNetlink(nl netlink.Link) *view.Link {
	a := nl.Attrs()
	op := "unknown"
	if int(a.OperState) < len(operStates) {
		op = operStates[a.OperState]
	}
	var mac net.HardwareAddr
	if len(a.HardwareAddr) > 0 {
		mac = slices.Clone(a.HardwareAddr)
	}
	return &view.Link{
		Index:       a.Index,
		Name:        a.Name,
		Kind:        nl.Type(),
		MAC:         mac,
		MTU:         a.MTU,
		RawFlags:    a.RawFlags,
		OperState:   op,
		ParentIndex: a.ParentIndex,
		LinkNetNSID: a.NetNsID, // the library sets -1 when IFLA_LINK_NETNSID is absent
		MasterIndex: a.MasterIndex,
	}
}

// sameLinkAttrs compares what a NEWLINK carries (not Addrs, not view.Peer).
func sameLinkAttrs(a, b *view.Link) bool {
	return a.Index == b.Index && a.Name == b.Name && a.Kind == b.Kind &&
		bytes.Equal(a.MAC, b.MAC) && a.MTU == b.MTU && a.RawFlags == b.RawFlags &&
		a.OperState == b.OperState && a.ParentIndex == b.ParentIndex &&
		a.LinkNetNSID == b.LinkNetNSID && a.MasterIndex == b.MasterIndex
}

func samePeer(a, b *view.Peer) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// prefixFromIPNet converts an address with its mask; the mask length says
// the family (a v4 address may come in 16-byte form).
func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	var a netip.Addr
	switch bits {
	case 32:
		ip4 := n.IP.To4()
		if ip4 == nil {
			return netip.Prefix{}, false
		}
		a = netip.AddrFrom4([4]byte(ip4))
	case 128:
		if len(n.IP) != net.IPv6len {
			return netip.Prefix{}, false
		}
		a = netip.AddrFrom16([16]byte(n.IP))
	default:
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

func addrOf(family int, ip net.IP) netip.Addr {
	if len(ip) == 0 {
		return netip.Addr{}
	}
	if family == view.FamilyV4 {
		if ip4 := ip.To4(); ip4 != nil {
			return netip.AddrFrom4([4]byte(ip4))
		}
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(ip)
	return a
}

// routeFromNetlink converts a route; ok is false for what the view does not
// keep: families other than IPv4/IPv6 (an AF_UNSPEC dump also returns
// multicast routing tables) and cloned routes (PMTU/redirect exceptions,
// which dumps leave out too).
func routeFromNetlink(r netlink.Route) (view.Route, routeKey, bool) {
	if r.Family != view.FamilyV4 && r.Family != view.FamilyV6 {
		return view.Route{}, routeKey{}, false
	}
	if r.Flags&unix.RTM_F_CLONED != 0 {
		return view.Route{}, routeKey{}, false
	}
	dst, ok := prefixFromIPNet(r.Dst)
	if !ok {
		// A route without RTA_DST is a default route.
		if r.Family == view.FamilyV4 {
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		} else {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
	}
	out := view.Route{
		Family:    r.Family,
		Dst:       dst,
		Gateway:   addrOf(r.Family, r.Gw),
		Src:       addrOf(r.Family, r.Src),
		LinkIndex: r.LinkIndex,
		Table:     r.Table,
		Protocol:  int(r.Protocol),
		Scope:     int(r.Scope),
		Type:      r.Type,
		Priority:  r.Priority,
		Flags:     r.Flags,
		MTU:       r.MTU,
	}
	k := routeKey{
		family: r.Family, table: r.Table, tos: r.Tos, priority: r.Priority,
		linkIndex: r.LinkIndex, typ: r.Type, dst: dst, gw: out.Gateway,
	}
	return out, k, true
}

// inherit carries link incarnations over from the state a re-list replaces:
// a link with the same ifindex and MAC keeps its number, any other gets a
// new one above every number old handed out.
func (s *state) inherit(old *state) {
	next := old.incarnations
	for _, idx := range sortedKeys(s.links) {
		l := s.links[idx]
		if o := old.links[idx]; o != nil && o.MAC.String() == l.MAC.String() {
			l.Incarnation = o.Incarnation
			continue
		}
		next++
		l.Incarnation = next
	}
	s.incarnations = next
}

func sortedKeys(m map[int]*view.Link) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// setLink applies RTM_NEWLINK (AF_UNSPEC). It replaces the link's attributes
// (addresses are kept apart) and marks its peer facts for re-reading.
func (s *state) setLink(l *view.Link) {
	old := s.links[l.Index]
	s.peerDirty[l.Index] = struct{}{}
	if l.Kind == "veth" && l.ParentIndex == 0 {
		// veth_newlink registers the peer before the device it pairs
		// with, so the peer's RTM_NEWLINK has no IFLA_LINK ("@NONE"), and
		// no further message says when it gets one. This is Docker's
		// first NEWLINK in the sandbox (the pair is created with its
		// peer there). Read the link again once the queue is drained.
		s.requery[l.Index] = struct{}{}
	}
	if l.Kind == "veth" && l.ParentIndex != 0 && l.LinkNetNSID < 0 {
		// The second end of a pair created in this netns: the first end
		// (announced untied) is tied now.
		if p := s.links[l.ParentIndex]; p != nil && p.Kind == "veth" && p.ParentIndex == 0 {
			s.requery[p.Index] = struct{}{}
		}
	}
	if old == nil {
		s.incarnations++
		l.Incarnation = s.incarnations
		s.links[l.Index] = l
		s.changed = true
		return
	}
	l.Incarnation = old.Incarnation
	// The kernel flushes IPv4 routes through a link that goes down without
	// any RTM_DELROUTE, and flags routes RTNH_F_LINKDOWN (also silently)
	// when the carrier goes: re-list routes on either transition. IPv6
	// addresses removed on down do come with RTM_DELADDR.
	const watched = view.FlagUp | view.FlagLowerUp
	if old.RawFlags&watched != l.RawFlags&watched {
		s.relistRoutes = true
	}
	// Links, addresses and routes come on three sockets with no order
	// between them: Docker adds an endpoint's addresses before it sets the
	// link up, but the UP (or RUNNING) event can be applied before the last
	// NEWADDR has been read, and the endpoint would look ready with part of
	// its addresses (seen: dual-stack eth0 attached with IPv4 only). Re-list
	// addresses when the flags that make a link ready change, so the view
	// published with them has every address the kernel had by then.
	const ready = view.FlagUp | view.FlagRunning | view.FlagLowerUp
	if old.RawFlags&ready != l.RawFlags&ready {
		s.relistAddrs = true
	}
	l.Peer = old.Peer // kept until settle re-reads it
	if !sameLinkAttrs(old, l) {
		s.changed = true
	}
	s.links[l.Index] = l
}

// delLink applies RTM_DELLINK (destroyed or moved to another netns): the
// link, its addresses and the routes through it go.
func (s *state) delLink(index int) {
	if _, ok := s.links[index]; ok {
		delete(s.links, index)
		s.changed = true
	}
	delete(s.addrs, index)
	delete(s.peerDirty, index)
	delete(s.requery, index)
	for k := range s.routes {
		if k.linkIndex == index {
			delete(s.routes, k)
			s.changed = true
		}
	}
	// Multipath routes with a nexthop through it are not keyed by it.
	s.relistRoutes = true
}

func (s *state) setAddr(index int, a view.Addr) {
	set := s.addrs[index]
	if set == nil {
		set = map[netip.Prefix]view.Addr{}
		s.addrs[index] = set
	}
	if old, ok := set[a.Prefix]; ok && old == a {
		return
	}
	set[a.Prefix] = a
	if _, ok := s.links[index]; ok {
		s.changed = true
	} else {
		// Either its NEWLINK is still queued on the link socket (kept, and
		// the re-list keeps it too), or it is a stale event for a link
		// already deleted (the re-list drops it).
		s.relistAddrs = true
	}
}

func (s *state) delAddr(index int, p netip.Prefix) {
	set := s.addrs[index]
	if _, ok := set[p]; !ok {
		return
	}
	delete(set, p)
	if len(set) == 0 {
		delete(s.addrs, index)
	}
	if _, ok := s.links[index]; ok {
		s.changed = true
	}
}

func (s *state) setRoute(k routeKey, r view.Route) {
	if old, ok := s.routes[k]; !ok || old != r {
		s.routes[k] = r
		s.changed = true
	}
	if r.LinkIndex != 0 {
		if l := s.links[r.LinkIndex]; l == nil || !l.Up() {
			// A route through an unknown or down link: out of order
			// with a DELLINK or a down transition already applied.
			s.relistRoutes = true
		}
	}
}

func (s *state) delRoute(k routeKey) {
	if _, ok := s.routes[k]; !ok {
		s.relistRoutes = true
		return
	}
	delete(s.routes, k)
	s.changed = true
}

func (s *state) replaceAddrs(list []netlink.Addr) {
	next := map[int]map[netip.Prefix]view.Addr{}
	for _, a := range list {
		p, ok := prefixFromIPNet(a.IPNet)
		if !ok {
			continue
		}
		set := next[a.LinkIndex]
		if set == nil {
			set = map[netip.Prefix]view.Addr{}
			next[a.LinkIndex] = set
		}
		set[p] = view.Addr{Prefix: p, Scope: a.Scope, Flags: a.Flags}
	}
	if !maps.EqualFunc(s.addrs, next, maps.Equal) {
		s.changed = true
	}
	s.addrs = next
	s.relistAddrs = false
}

func (s *state) replaceRoutes(list []netlink.Route) {
	next := map[routeKey]view.Route{}
	for _, r := range list {
		if v, k, ok := routeFromNetlink(r); ok {
			next[k] = v
		}
	}
	if !maps.Equal(s.routes, next) {
		s.changed = true
	}
	s.routes = next
	s.relistRoutes = false
}

// snapshot deep-copies the state into a view.Snapshot.
func (s *state) snapshot() *view.Snapshot {
	snap := &view.Snapshot{Links: make(map[int]*view.Link, len(s.links))}
	for i, l := range s.links {
		c := *l
		c.MAC = slices.Clone(l.MAC)
		if set := s.addrs[i]; len(set) > 0 {
			c.Addrs = make([]view.Addr, 0, len(set))
			for _, a := range set {
				c.Addrs = append(c.Addrs, a)
			}
			slices.SortFunc(c.Addrs, func(a, b view.Addr) int {
				return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
			})
		}
		if l.Peer != nil {
			p := *l.Peer
			c.Peer = &p
		}
		snap.Links[i] = &c
	}
	keys := slices.SortedFunc(maps.Keys(s.routes), compareRouteKeys)
	if len(keys) > 0 {
		snap.Routes = make([]view.Route, 0, len(keys))
		for _, k := range keys {
			snap.Routes = append(snap.Routes, s.routes[k])
		}
	}
	return snap
}
