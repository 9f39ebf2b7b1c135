// Package katarules is everything kata-netmon knows about Kata Containers
// that needs no Kata code, so that CI tests it without a Kata tree:
//
//   - the port to a Kata sandbox (NewSandbox): requests encoded the way Kata
//     and its agent read them (wire.go), refusals of what Kata would misread,
//     the agent's reports put right, Kata's "sandbox gone" errors marked
//     hotplug.ErrSandboxDead, and on a Kata without the series' PCI-path fix
//     the hotplug.OneNIC guard with Kata's RescanNetwork;
//   - the capabilities and hazards that follow from Kata's configuration and
//     from the fixes its tree has (Fixes, Capabilities);
//   - the settings ([netmon] in Kata's configuration file, KATA_NETMON_*
//     variables) and the logger of the shim's monitor;
//   - Start: what Kata's NetworkMonitorFactory does with a sandbox, and how
//     shimhook.Start's result maps to what Kata's shim does next.
//
// shimhook/kata, the module compiled inside a patched Kata tree, only copies
// fields between Kata's types and hotplug's and registers the factory. This
// package must never import Kata.
package katarules
