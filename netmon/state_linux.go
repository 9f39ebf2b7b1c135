package netmon

import (
	"bytes"
	"cmp"
	"maps"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// routeKey identifies a route the way the kernel does, plus what tells
// apart the routes the kernel lets share that identity.
//
// IPv4 identifies a FIB alias by (table, dst, tos, priority); IPv6 by
// (table, dst, metric). Both let several routes share that identity: IPv4
// appends (the kernel itself adds each address's prefix route with
// NLM_F_APPEND, so two links in one subnet each have one) and IPv6 keeps
// same-metric routes through different devices (every link's fe80::/64).
// The key therefore adds the output device, gateway (RTA_GATEWAY or
// RTA_VIA), nexthop object and type, which every RTM_NEWROUTE /
// RTM_DELROUTE carries, and the source prefix, which is part of an IPv6
// route's identity (source-specific routes: two defaults from different
// prefixes through one gateway are two routes). What such a key cannot follow
// (NLM_F_REPLACE, IPv6 appends to ECMP groups, multipath routes, a delete of
// a route we do not have) makes the loop re-list the routes instead.
type routeKey struct {
	family, table, tos, priority, linkIndex, typ, nhid int
	dst, src                                           netip.Prefix
	gw, via                                            netip.Addr
}

func compareRouteKeys(a, b routeKey) int {
	return cmp.Or(
		cmp.Compare(a.family, b.family),
		cmp.Compare(a.table, b.table),
		a.dst.Addr().Compare(b.dst.Addr()),
		cmp.Compare(a.dst.Bits(), b.dst.Bits()),
		a.src.Addr().Compare(b.src.Addr()),
		cmp.Compare(a.src.Bits(), b.src.Bits()),
		cmp.Compare(a.priority, b.priority),
		cmp.Compare(a.tos, b.tos),
		cmp.Compare(a.linkIndex, b.linkIndex),
		a.gw.Compare(b.gw),
		a.via.Compare(b.via),
		cmp.Compare(a.nhid, b.nhid),
		cmp.Compare(a.typ, b.typ),
	)
}

// state is the working view. It is owned by one goroutine at a time: Start
// before the loop runs, then the loop (see Monitor).
//
// Messages come from one socket in the order the kernel sent them, so a
// link's NEWLINK precedes its addresses and routes, and its DELLINK follows
// their removal. What remains out of step is what the kernel does without
// a message (see setLink), and a re-list's replay: the messages read while
// a dump runs are applied after it, in order, and may be older than the
// dump; applying them in order still ends at the kernel's state.
type state struct {
	links map[int]*view.Link // by ifindex; Addrs always nil here (see addrs)
	// addrs holds each link's addresses by ifindex; snapshots attach them
	// to the links. Kept apart so a NEWLINK (which carries none) replaces
	// a link without touching them.
	addrs  map[int]map[netip.Prefix]view.Addr
	routes map[routeKey]view.Route
	// multipath is the keys of the routes that came with RTA_MULTIPATH:
	// their nexthops are not keyed, so a DELLINK re-lists routes when any
	// exists.
	multipath map[routeKey]struct{}
	// dropped is the keys the last re-list or DELLINK removed: the
	// RTM_DELROUTE the kernel may still send for one is no surprise.
	dropped map[routeKey]struct{}

	// incarnations numbers links as they appear (view.Link.Incarnation). A
	// re-list carries it over for a link it finds with the same ifindex
	// and MAC: it cannot tell a missed delete and re-create apart.
	incarnations uint64

	// Set by the apply methods, consumed by Monitor.settle.
	changed      bool             // the published view is out of date
	relistAddrs  bool             // an address message could not be decoded
	relistRoutes bool             // the kernel changed routes silently, or a message did not fit
	peerDirty    map[int]struct{} // links whose peer facts must be re-read
	// untied is the veths announced without IFLA_LINK (see setLink) and
	// not read again yet; the loop schedules a read of each.
	untied map[int]struct{}
}

func newState() *state {
	return &state{
		links:     map[int]*view.Link{},
		addrs:     map[int]map[netip.Prefix]view.Addr{},
		routes:    map[routeKey]view.Route{},
		multipath: map[routeKey]struct{}{},
		dropped:   map[routeKey]struct{}{},
		peerDirty: map[int]struct{}{},
		untied:    map[int]struct{}{},
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

// apply applies one decoded message.
func (s *state) apply(m *message) {
	if !m.keep {
		return
	}
	switch m.kind {
	case kindLink:
		if m.typ == unix.RTM_NEWLINK {
			s.setLink(m.link)
		} else {
			s.delLink(m.link.Index)
		}
	case kindAddress:
		if m.typ == unix.RTM_NEWADDR {
			s.setAddr(m.addrIndex, m.addr)
		} else {
			s.delAddr(m.addrIndex, m.addr.Prefix)
		}
	case kindRoute:
		// What the key cannot follow: a replace (the kernel swaps one
		// route of that identity for another), IPv6 appends (to an ECMP
		// group, the message holds only the new nexthop) and multipath
		// routes.
		if m.nlflags&unix.NLM_F_REPLACE != 0 || m.multipath ||
			(m.route.Family == view.FamilyV6 && m.nlflags&unix.NLM_F_APPEND != 0) {
			s.relistRoutes = true
		}
		if m.typ == unix.RTM_NEWROUTE {
			s.setRoute(m.key, m.route, m.multipath)
		} else {
			s.delRoute(m.key)
		}
	}
}

// inherit carries link incarnations over from the state a re-list replaces:
// a link with the same ifindex and MAC keeps its number, any other gets a
// new one above every number old handed out.
func (s *state) inherit(old *state) {
	next := old.incarnations
	for _, idx := range slices.Sorted(maps.Keys(s.links)) {
		l := s.links[idx]
		if o := old.links[idx]; o != nil && bytes.Equal(o.MAC, l.MAC) {
			l.Incarnation = o.Incarnation
			continue
		}
		next++
		l.Incarnation = next
	}
	s.incarnations = next
}

// setLink applies RTM_NEWLINK (AF_UNSPEC). It replaces the link's attributes
// (addresses are kept apart) and marks its peer facts for re-reading when
// what they depend on changed (IFLA_LINK, the link-netnsid, the kind) or
// when they are not final yet.
func (s *state) setLink(l *view.Link) {
	old := s.links[l.Index]
	if old == nil || old.ParentIndex != l.ParentIndex || old.LinkNetNSID != l.LinkNetNSID ||
		old.Kind != l.Kind || old.Peer == nil || old.Peer.Rechecking {
		s.peerDirty[l.Index] = struct{}{}
	}
	if l.Kind == "veth" && l.ParentIndex == 0 {
		// veth_newlink registers the peer before the device it pairs
		// with, so the peer's RTM_NEWLINK has no IFLA_LINK ("@NONE"), and
		// no further message says when it gets one. This is Docker's
		// first NEWLINK in the sandbox (the pair is created with its
		// peer there); its rename follows at once and carries IFLA_LINK,
		// so the link is read again only if nothing comes (see untied).
		s.untied[l.Index] = struct{}{}
	} else {
		delete(s.untied, l.Index)
	}
	if l.Kind == "veth" && l.ParentIndex != 0 && l.LinkNetNSID < 0 {
		// The second end of a pair created in this netns: the first end
		// (announced untied) is tied now.
		if p := s.links[l.ParentIndex]; p != nil && p.Kind == "veth" && p.ParentIndex == 0 {
			s.untied[p.Index] = struct{}{}
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
	// The kernel flushes the IPv4 routes through a link that goes down,
	// and flags routes RTNH_F_LINKDOWN when its carrier goes (and clears
	// the flag when it comes back), all without a message: re-list routes
	// when such a transition can have changed one in the view.
	const watched = view.FlagUp | view.FlagLowerUp
	if lost := old.RawFlags & watched &^ l.RawFlags; lost != 0 && (s.routesVia(l.Index, 0) || len(s.multipath) > 0) {
		s.relistRoutes = true
	}
	if gained := l.RawFlags & watched &^ old.RawFlags; gained != 0 && (s.routesVia(l.Index, unix.RTNH_F_LINKDOWN|unix.RTNH_F_DEAD) || len(s.multipath) > 0) {
		s.relistRoutes = true
	}
	l.Peer = old.Peer // kept until settle re-reads it
	if !sameLinkAttrs(old, l) {
		s.changed = true
	}
	s.links[l.Index] = l
}

// routesVia reports a route in the view through ifindex index with any of
// flags set (flags 0: any route through it).
func (s *state) routesVia(index, flags int) bool {
	for k, r := range s.routes {
		if k.linkIndex == index && (flags == 0 || r.Flags&flags != 0) {
			return true
		}
	}
	return false
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
	delete(s.untied, index)
	for k := range s.routes {
		if k.linkIndex == index {
			delete(s.routes, k)
			s.dropped[k] = struct{}{}
			s.changed = true
		}
	}
	// Multipath routes with a nexthop through it are not keyed by it.
	if len(s.multipath) > 0 {
		s.relistRoutes = true
	}
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
	}
	// Otherwise: a message read during a dump, about a link the dump no
	// longer had; its DELLINK follows in the replay and drops the set.
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

func (s *state) setRoute(k routeKey, r view.Route, multipath bool) {
	if old, ok := s.routes[k]; !ok || old != r {
		s.routes[k] = r
		s.changed = true
	}
	if multipath {
		s.multipath[k] = struct{}{}
	}
	if r.LinkIndex != 0 && s.links[r.LinkIndex] == nil {
		// In the kernel's order a link's NEWLINK precedes its routes:
		// this one can only be a replayed message older than a dump
		// (and its link's DELLINK follows), or a sign the view went
		// astray. A re-list costs little and settles either.
		s.relistRoutes = true
	}
}

func (s *state) delRoute(k routeKey) {
	if _, ok := s.routes[k]; !ok {
		if _, ok := s.dropped[k]; ok {
			// A re-list or a DELLINK removed it already: the kernel's
			// RTM_DELROUTE for it came after.
			delete(s.dropped, k)
			return
		}
		s.relistRoutes = true
		return
	}
	delete(s.routes, k)
	delete(s.multipath, k)
	s.changed = true
}

func (s *state) replaceAddrs(list []message) {
	next := map[int]map[netip.Prefix]view.Addr{}
	for _, m := range list {
		set := next[m.addrIndex]
		if set == nil {
			set = map[netip.Prefix]view.Addr{}
			next[m.addrIndex] = set
		}
		set[m.addr.Prefix] = m.addr
	}
	if !maps.EqualFunc(s.addrs, next, maps.Equal) {
		s.changed = true
	}
	s.addrs = next
	s.relistAddrs = false
}

func (s *state) replaceRoutes(list []message) {
	next := make(map[routeKey]view.Route, len(list))
	mp := map[routeKey]struct{}{}
	for _, m := range list {
		next[m.key] = m.route
		if m.multipath {
			mp[m.key] = struct{}{}
		}
	}
	if !maps.Equal(s.routes, next) {
		s.changed = true
	}
	clear(s.dropped)
	for k := range s.routes {
		if _, ok := next[k]; !ok {
			s.dropped[k] = struct{}{}
		}
	}
	s.routes, s.multipath = next, mp
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
