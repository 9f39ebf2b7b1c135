// Package benchguest measures kata-netmon end to end on a real Docker 29 and
// a real QEMU guest (TCG), as a report rather than a timed test:
//
//	make bench-guest   (go test -run '^$' -bench Guest -benchtime 1x ./e2e/benchguest/)
//
// BenchmarkGuest prints, over several rounds, p50 and max of:
//   - docker network connect / disconnect to the guest answering on the new
//     address / the NIC gone from the guest, split into the monitor's
//     decision, the sandbox's hot-plug call and the guest's share;
//   - the first attach after the shim's Start, kata-netmon (shimhook.Start)
//     against the upstream strategy (Rescan, an emulation of Kata 4.1's
//     RescanNetwork loop) driving the same sandbox.
//
// The sandbox is katasim as Kata 4.1 with this project's patch series,
// tcfilter model (the report's header says so, and the guest kernel).
//
// docs/perf-guest.md holds the method and the figures.
package benchguest
