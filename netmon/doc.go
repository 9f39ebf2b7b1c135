// Package netmon observes one network namespace through netlink and keeps a
// consistent view of its links, addresses and routes, keyed by ifindex.
//
// It owns: sockets bound to the target netns (never a goroutine parked inside
// it), subscribe-then-list so no event falls in a gap, resubscribe and re-list
// when a subscription dies (ENOBUFS, closed channel, socket error), and the
// facts about each link's peer or parent in another netns (which netns that
// is, what the peer is there, whether it points back, its bridge master).
//
// It does not decide anything: which links are Docker endpoints is the
// matcher's job, and talking to the VM is hotplug's.
//
// # How the view follows the kernel
//
// Events are applied incrementally by one loop goroutine and the view is
// published (Generation+1, a Changed notification) whenever no event is
// queued, or every 256 events under a storm. Where an event cannot be
// applied exactly, the loop re-lists that table instead of guessing:
//
//   - Links and addresses come from three sockets (links, addresses,
//     routes) with no order between them, so addresses are kept per ifindex
//     apart from links, and an address or route naming an unknown link makes
//     the loop re-list that table once the queue is drained.
//   - Routes are keyed by (family, table, dst, tos, priority, oif, gateway,
//     type): the kernel's identity (IPv4: table, dst, tos, priority; IPv6:
//     table, dst, metric) plus what tells apart the routes it lets share one
//     (appended IPv4 aliases, same-metric IPv6 routes on several devices,
//     such as every link's fe80::/64). NLM_F_REPLACE, IPv6 NLM_F_APPEND,
//     multipath routes and an RTM_DELROUTE for a route not in the view make
//     the loop re-list routes. All tables are kept; the matcher filters.
//   - A link going down loses its IPv4 routes without RTM_DELROUTE, and a
//     carrier change flags routes RTNH_F_LINKDOWN silently: any change of
//     IFF_UP or IFF_LOWER_UP re-lists the routes. RTM_DELLINK (destroyed or
//     moved out) removes the link, its addresses and routes, and re-lists
//     routes (multipath nexthops). IPv6 addresses dropped on down do come with
//     RTM_DELADDR.
//   - AF_BRIDGE RTM_NEWLINK/RTM_DELLINK (bridge port changes; a port leaving
//     its bridge is an AF_BRIDGE DELLINK) are ignored.
//   - A veth is announced without IFLA_LINK when it is the first end of a
//     pair to be registered (always the case for a pair created with its
//     peer in another netns, as Docker 28+ does), and nothing is sent when
//     it gets one: such a veth is read again after the queue drains, then
//     every 50 ms for up to 1 s.
//
// # view.Peer facts
//
// A link with IFLA_LINK and no IFLA_LINK_NETNSID has its peer here
// (view.PeerSameNetNS). Otherwise the id is resolved as the watched netns sees
// it: RTM_GETNSID by fd, asked through sockets in the watched netns, first
// for dockerd's netns, then (ScanNetNS only) for /run/netns/* and
// /proc/*/ns/net, deduplicated by nsfs dev/inode. Scanned ids are cached;
// since ids are reused once a netns dies, a cached entry is re-opened and
// re-checked (same dev/inode, same id) on every use, and a miss rescans.
// The peer is then read with sockets in its netns (cached for dockerd's),
// and a veth points back when its IFLA_LINK is this link and its link-netnsid
// is the id the peer's netns gives the watched one. view.Peer facts are re-read
// on every RTM_NEWLINK of the link and on every resync, not on changes made
// in the peer's netns (netmon does not watch it).
//
// # Lifecycle
//
// New opens the netns paths; Start subscribes, lists and starts the loop;
// Close stops everything and waits. A subscription that dies is replaced
// (new sockets, then a full list that replaces the state; view.Snapshot.Resyncs
// counts these) with a bounded backoff; the loop ends with Err set when that
// keeps failing or when the watched path no longer opens to the same netns.
// The open netns and sockets keep the netns alive, so its end is only seen
// through the path.
package netmon
