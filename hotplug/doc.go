// Package hotplug is the port from kata-netmon to the VM and the reconciler
// that drives it.
//
// Sandbox mirrors the part of Kata's virtcontainers.VCSandbox the monitor
// uses, with types shaped like Kata's protocol types (so an adapter is a field
// copy). The reconciler turns netmon's view, through the matcher's decisions,
// into serialised, deadline-bound AddInterface / RemoveInterface /
// UpdateRoutes calls, and retries only after checking what the sandbox has.
//
// It does not watch netlink (netmon) and does not decide what an endpoint is
// (matcher). It never imports Kata: the adapter lives in its own module.
package hotplug
