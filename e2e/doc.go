// Package e2e holds kata-netmon's end-to-end tests, grouped in packages by
// the environment they need:
//
//   - e2e/replay: Docker's netlink sequence replayed step by step on the
//     real kernel (root; no Docker, no VM);
//   - e2e/docker: a real Docker 29 (root and the binaries from
//     scripts/deps-docker.sh);
//   - e2e/guest: a real QEMU guest behind katasim, which behaves as Kata
//     4.1 (as shipped or patched, tcfilter or macvtap; docs/kata-model.md),
//     with or without Docker (root, QEMU and scripts/deps-guest.sh);
//   - e2e/faults: faults and hostile input on the real kernel (root).
//
// Each package's doc.go says what it needs and covers. Helpers used by more
// than one live under e2e/internal: dockerenv (the private Docker daemon),
// guest and katasim (the QEMU guest and the sandbox on it), dockerguest (a
// guest behind a Docker container), direct (netmon and the reconciler run
// without shimhook), shimcfg (the shim's config for a Docker sandbox),
// watchbin (the watch command as a process), logrec (a recorded monitor
// log) and prereq (skip, or fail under CI=true). The one in-memory sandbox
// is hotplug/hotplugtest.FakeSandbox.
//
// Benchmarks and reports live beside them: e2e/bench, e2e/load,
// e2e/benchguest; e2e/cmd/demo runs the whole arrangement live.
//
// Under CI=true a missing prerequisite fails instead of skipping; the suite
// runs with `CI=true go test -race ./e2e/...` as root.
package e2e
