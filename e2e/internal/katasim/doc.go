// Package katasim is a test hotplug.Sandbox that behaves as Kata 4.1's Go
// runtime with QEMU does, rule by rule, on a real guest booted by the guest
// package, whose agent behaves as Kata 4.1's agent (e2e/internal/guest/agent).
// docs/kata-model.md is the conformance table: every behaviour of Kata a
// monitor can observe, the Kata source it comes from, and the code here that
// reproduces it.
//
// Options select the runtime: Kata 4.1 as shipped (AsShipped) or with this
// project's patch series (Patched, the default; Without and With change
// single fixes for control tests), in the tcfilter (default) or macvtap
// internetworking model, in a netns Kata created (default) or not; and
// FailTapStep fails a step of the tap setup on demand (where Kata opens
// /dev/vhost-net, or the last redirect), which as shipped leaves what the
// setup made behind and patched (0010) undoes it.
//
// AddInterface looks the link up by name inside the attach, wires it to a
// tap "tap<N>_kata" (tc mirred redirects both ways, or a macvtap on the
// link, which then gets a random MAC and loses its addresses), passes the
// tap's queue fd to QEMU (getfd), adds a netdev and a virtio-net-pci device
// on a free pcie-root-port and has the agent configure the NIC at the PCI
// path it announces: the first endpoint's as shipped (the agent then does
// not wait for the new NIC and usually fails to find it), the new one's
// when patched. RemoveInterface
// finds the endpoint by MAC and hot-detaches it: as shipped the tap and the
// link found by its attach-time name go first (that link is set DOWN),
// then the device; patched, the device first and the link by its ifindex,
// left up. RescanNetwork is Kata's, so that hotplug.OneNIC can attach the
// start-time networks through it. Port returns what production hands the
// monitor: the sandbox wrapped in OneNIC when the PCI-path fix is missing.
//
// Where katasim differs from Kata it says so: it serialises its methods
// (Kata takes no lock), bounds the wait for DEVICE_DELETED (Kata does not),
// uses pcie-root-ports instead of a pci-bridge (PCI paths "03/00", not
// "02/01"), one vCPU's single queue and no vhost-net, and models neither
// rate limiters, physical or vhost-user endpoints beyond their failure, nor
// other hypervisors beyond "cannot unplug" (NoUnplug) and "cannot hot-plug"
// (NoHotplug).
package katasim
