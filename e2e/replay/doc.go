// Package replay tests the monitor against Docker 29's netlink sequence
// replayed step by step on the real kernel, without Docker: a fresh
// "dockerd" netns holding the bridges and the host ends of the endpoints, a
// fresh "sandbox" netns (the one Kata owns) receiving the container ends,
// and the real netmon, matcher and reconciler (direct.Start) driving
// hotplugtest.FakeSandbox, which has Kata 4.1's semantics in memory.
//
// It needs root (and fails instead of skipping under CI=true); no Docker, no
// QEMU. Every netns and link has a unique name, and every test checks that
// the goroutines it started are gone (goleak).
//
// Covered: docker run (dual stack, custom MTU), network connect (the default
// route moving to the new endpoint), disconnect the way Docker does it and
// by deletion (and a new link reusing the name), the macvlan driver, links
// that must never be attached (Kata's own tap, an ifb, a veth whose peer is
// on no bridge), endpoints the sandbox already has (adopted, not attached
// twice), and a subscription that overflows and resyncs mid-sequence.
//
// The sequence replayed is the one a watcher in the sandbox netns sees from
// Docker 29's bridge driver, per endpoint, in order (e2e/docker's TestEnv
// watches a real Docker 29 do it and logs each link and address message):
//
//  1. NEWLINK vethXXXXXXX, kind veth, down: Docker creates the pair with this
//     end directly in the sandbox netns, so the first message has IFLA_LINK 0
//     and no link-netnsid (the peer is not tied yet). A network with a
//     custom MTU adds one NEWLINK here, before the rename.
//  2. NEWNSID (the sandbox netns gives dockerd's netns an id), then NEWLINK
//     renamed to the lowest free ethN, now with IFLA_LINK (the host
//     end's ifindex in dockerd's netns) and IFLA_LINK_NETNSID.
//  3. NEWLINK with Docker's MAC (random and locally administered since
//     Docker 28, or --mac-address).
//  4. NEWADDR for the IPv4 address (and IPv6 on a dual-stack network).
//  5. NEWLINK up, then NEWLINK RUNNING: the kernel sets RUNNING on its own,
//     asynchronously (linkwatch).
//  6. NEWROUTE default via the network's gateway (protocol boot), only for
//     the endpoint Docker makes the gateway one.
//
// The host end (vethYYYYYYY) stays in dockerd's netns, enslaved to the
// network's bridge. docker network connect runs steps 1-5 for the new
// endpoint while the container runs, and step 6 only if it becomes the
// gateway endpoint (DELROUTE of the old default first). docker network
// disconnect: NEWLINK down (IPv6 addresses and the routes through the link
// vanish with it), rename back to vethXXXXXXX, DELADDR, then DELLINK
// carrying IFLA_NEW_NETNSID (moved out to dockerd's netns, not destroyed),
// and maybe a NEWROUTE default via the remaining gateway. Docker's macvlan
// driver creates the macvlan under a temporary name on a parent in
// dockerd's netns, moves it into the sandbox, then renames it and sets MAC,
// address, up and the default route.
package replay
