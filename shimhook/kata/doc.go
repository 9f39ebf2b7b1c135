// Package kata joins kata-netmon to Kata Containers' Go runtime through the
// hook of kata-netmon's Kata patch series (series/, the last patch:
// containerdshim.SetNetworkMonitorFactory). It holds only what needs Kata's
// types:
//
//   - Factory: the NetworkMonitorFactory Kata's shim calls when the sandbox
//     container starts, before the sandbox does; it hands Kata's sandbox to
//     katarules.Start (the main module) and returns the monitor;
//   - the field copies between Kata's protocol types and hotplug's (port.go);
//   - the fixes of the series the tree has, set at build time by build.sh
//     from probe tests (fixes.go).
//
// Everything that needs no Kata type (the request encoding, the refusals,
// the capabilities, the settings, the mapping of the monitor's result) is in
// the main module's shimhook/katarules, tested by CI. This is its own Go
// module because it compiles only inside a Kata tree: build.sh copies Kata's
// src/runtime, applies the series, and builds it there. It holds no Kata
// code.
//
// Subpackages: register (blank-imported to register Factory, as build.sh
// does for Kata's own containerd-shim-kata-v2) and
// cmd/containerd-shim-kata-netmon-v2 (the drop-in shim, runtime type
// io.containerd.kata-netmon.v2). kataloop holds the Kata-in-the-loop tests
// build.sh runs inside the patched tree.
package kata
