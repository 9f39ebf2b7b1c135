// Package nsfs opens and checks network namespace files and runs code in a
// network namespace without leaving a goroutine there. It is the one place in
// kata-netmon that looks at nsfs files or switches a thread's netns.
//
// Two rules for threads, one helper each:
//   - Do runs a function with its thread inside the namespace (a tap opened
//     through /dev/net/tun binds to the opening thread's netns): a fresh
//     goroutine locks its thread, enters, runs, switches back, and unlocks
//     only after the switch back succeeded; otherwise the thread dies with
//     the goroutine.
//   - Throwaway runs a library call that switches namespaces by itself
//     (netlink.NewHandleAt, netlink's Subscribe with a Namespace option,
//     which ignore a failed switch back): on a fresh locked thread that is
//     never unlocked, so the runtime discards it when the goroutine exits.
//
// Sockets and devices created inside stay bound to the namespace: the
// monitor's netlink sockets are made that way and never need a thread
// there again.
package nsfs
