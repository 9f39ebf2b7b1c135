// Package kata joins kata-netmon to Kata Containers' Go runtime (4.1).
//
// It owns:
//   - Adapter: Kata's virtcontainers.VCSandbox as a hotplug.Sandbox
//     (conversions to and from Kata's protocol types, capabilities from the
//     hypervisor type, the symptoms of Kata 4.1's hotplug bugs named in the
//     log);
//   - Service / New: Kata's own containerd shim service
//     (pkg/containerd-shim-v2) wrapped so that a Docker sandbox's first
//     reconcile runs before its Start reaches Kata, the monitor stops on
//     Delete/Shutdown, and the monitor and Kata's RescanNetwork never attach
//     the same link (guard.go);
//   - Settings: [netmon] in Kata's configuration file and KATA_NETMON_*
//     environment variables.
//
// It does not watch netlink or decide what to attach (the main module's
// shimhook, netmon, matcher and hotplug packages do), and it holds no Kata
// code. It is its own Go module because it needs a Kata source tree to
// build: build.sh supplies one through a go.work outside the repository.
// The files wire.go, diagnose.go, guard.go, settings.go and log.go import
// nothing from Kata.
package kata
