// Package netmon observes one network namespace through netlink and keeps a
// consistent view of its links, addresses and routes, keyed by ifindex.
//
// It owns: one netlink socket bound to the target netns (never a goroutine
// parked inside it), joined to the link, address and route groups before
// it lists, so no change falls in a gap; re-lists when messages were lost;
// and the facts about each link's peer or parent in another netns (which
// netns that is, what the peer is there, whether it points back, its bridge
// master).
//
// It does not decide anything: which links are Docker endpoints is the
// matcher's job, and talking to the VM is hotplug's.
//
// # One socket, in the kernel's order
//
// Links, IPv4/IPv6 addresses and IPv4/IPv6 routes arrive on one
// NETLINK_ROUTE socket, in the order the kernel sent them: a link's
// RTM_NEWLINK precedes its addresses and routes, its RTM_DELLINK follows
// their removal, and an endpoint's addresses precede the RTM_NEWLINK that
// makes it RUNNING. Dumps are asked on the same socket; the events that
// arrive while one runs are read (so they cannot overflow the buffer) and
// applied after it, in order. One goroutine, the loop, reads and applies;
// it publishes the view (Generation+1, a Changed notification) whenever no
// message is queued, or every 256 messages under a storm. While idle it is
// parked on the runtime's poller: no thread, no timer, no wakeup.
//
// Message bodies are decoded with the netlink library's LinkDeserialize
// (links) and its exported header decoders and attribute splitter
// (addresses, routes: only the attributes the view keeps are read, so an
// encapsulation the library cannot parse, such as seg6 with an HMAC, does
// not lose the route). A message that still cannot be decoded, or whose
// decoding panics, is skipped: counted (Observer.Undecodable), warned at a
// limited rate, and its table re-listed (a link: a resync); a dump skips it
// the same way and goes on.
//
// # Where the kernel sends nothing
//
//   - Routes are keyed by (family, table, dst, src, tos, priority, oif,
//     gateway or via, nexthop id, type): the kernel's identity (IPv4:
//     table, dst, tos, priority; IPv6: table, dst, src, metric) plus what
//     tells apart the routes it lets share one (appended IPv4 aliases,
//     same-metric IPv6 routes on several devices, such as every link's
//     fe80::/64). A multipath route is keyed by its first next hop. NLM_F_REPLACE, IPv6 NLM_F_APPEND,
//     multipath routes and an RTM_DELROUTE for a route neither in the view
//     nor just removed by a re-list make the loop re-list routes. All
//     tables are kept; the matcher filters.
//   - A link going down loses its IPv4 routes without RTM_DELROUTE, and a
//     carrier change flags (or unflags) routes RTNH_F_LINKDOWN silently: a
//     change of IFF_UP or IFF_LOWER_UP re-lists the routes when one in the
//     view can have changed (one through that link, or a multipath one).
//     RTM_DELLINK (destroyed or moved out) removes the link, its addresses
//     and routes. IPv6 addresses dropped on down do come with RTM_DELADDR.
//   - AF_BRIDGE RTM_NEWLINK/RTM_DELLINK (bridge port changes; a port leaving
//     its bridge is an AF_BRIDGE DELLINK) are ignored.
//   - A veth is announced without IFLA_LINK when it is the first end of a
//     pair to be registered (always the case for a pair created with its
//     peer in another netns, as Docker 28+ does), and nothing is sent when
//     it gets one. Docker's rename follows at once and carries it; a veth
//     still untied 500 ms later is read again on the recheck schedule.
//
// # view.Peer facts
//
// A link with IFLA_LINK and no IFLA_LINK_NETNSID has its peer here
// (view.PeerSameNetNS). Otherwise the id is resolved as the watched netns
// sees it: RTM_GETNSID by fd, asked through sockets in the watched netns,
// first for dockerd's netns (asked once: an id stays while both netns
// live), then (DockerNetNSDir set) for the netns files directly in Docker's
// netns directory, where the overlay driver keeps each network's netns
// with the peer on its bridge br0 (view.HomeDockerOwned), then (ScanNetNS
// only) for /run/netns/* and /proc/*/ns/net, deduplicated by nsfs
// dev/inode. Scanned ids are cached; since ids are
// reused once a netns dies, a cached entry is re-opened and re-checked
// (same dev/inode, same id) on every use, and a miss rescans. The peer is
// then read with sockets in its netns (cached for dockerd's, with the kinds
// of its bridges), and a veth points back when its IFLA_LINK is this link
// and its link-netnsid is the id the peer's netns gives the watched one.
//
// Facts are read when a link appears, when its IFLA_LINK, link-netnsid or
// kind change, and on every resync: each read is an RTM_GETLINK that waits
// for the kernel's rtnl_lock, which a busy dockerd holds, so the other
// RTM_NEWLINKs of a link do not trigger one. netmon does not watch the
// peer's netns. Facts that are not yet those of an endpoint but may become
// so there (a veth peer that points back but is on no bridge yet, a read
// that failed, a veth peer in a netns not found in Docker's netns
// directory yet) are read again 5, 15, 35, 75 ... ms later, at most every
// 250 ms, for 2 s, with view.Peer.Rechecking set meanwhile; once that
// ends, the next message about the link starts it again.
//
// # Lifecycle
//
// New opens the netns paths; Start opens the socket, lists and starts the
// loop; Close stops everything and waits. When messages were lost
// (ENOBUFS), a message or the socket could not be used, or the loop
// panicked (recovered, logged with its stack, counted), the loop resyncs:
// a full list that replaces the state (view.Snapshot.Resyncs counts
// these), on the same socket when it is sound, else on a new one. A failed
// resync is retried with a backoff doubling from 20 ms to 5 s for as long
// as the watched path opens to the same netns; the loop ends, with Err
// set, only when it no longer does. The open netns and socket keep the
// netns alive, so its end is only seen through the path (and, in a shim,
// through the watched process's exit).
package netmon
