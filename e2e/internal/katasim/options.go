package katasim

import (
	"fmt"
	"strings"
	"time"
)

// Kata says which Kata 4.1 runtime a Sandbox behaves as.
type Kata int

const (
	// Patched is Kata 4.1 with this project's patch series (every Fix).
	// It is the zero value: the default of the e2e tests, the demo and
	// the guest benchmark.
	Patched Kata = iota
	// AsShipped is Kata 4.1.0 as released (7c6ba40c54), no Fix.
	AsShipped
)

func (k Kata) String() string {
	switch k {
	case Patched:
		return "Kata 4.1 + patch series"
	case AsShipped:
		return "Kata 4.1 as shipped"
	}
	return fmt.Sprintf("Kata(%d)", int(k))
}

// Model is Kata's internetworking_model: how the endpoint's link is wired
// to the VM's tap.
type Model int

const (
	// TCFilter is the default model: a tap "tap<N>_kata" and tc ingress
	// u32 filters redirecting link <-> tap (setupTCFiltering).
	TCFilter Model = iota
	// MacVTap is a macvtap "tap<N>_kata" on the link; the link is given
	// a random MAC and loses its addresses (tapNetworkPair).
	MacVTap
)

func (m Model) String() string {
	switch m {
	case TCFilter:
		return "tcfilter"
	case MacVTap:
		return "macvtap"
	}
	return fmt.Sprintf("Model(%d)", int(m))
}

// Fix is one change of this project's Kata patch series
// (shimhook/kata/series, 0001-0008, 0010 and 0011; 0009 closes a netns
// descriptor and 0012 is the shim's monitor hook: nothing a monitor sees),
// the runtime only: the agent is the same in both. Patched has them all.
type Fix uint

const (
	// FixPCIPath (0001): AddInterface tells the agent the PCI path of the
	// endpoint it just added, not the first endpoint's.
	FixPCIPath Fix = 1 << iota
	// FixDetachOrder (0002): HotDetach removes the device from QEMU first
	// and tears down the tap after; a link that has left the netns is
	// nothing left to tear down, not an error.
	FixDetachOrder
	// FixLinkByIndex (0003): the teardown finds the endpoint's link by
	// the ifindex recorded at attach, not by its attach-time name.
	FixLinkByIndex
	// FixForgetFailedOnly (0004): a failed hot-plug leaves the endpoint
	// list alone and undoes the failed endpoint's tap and tc (or
	// macvtap) without setting its link down; the rollback after an
	// agent failure detaches the endpoint just added.
	FixForgetFailedOnly
	// FixKeepLinkUp (0005): HotDetach leaves the admin state of the
	// container's link alone.
	FixKeepLinkUp
	// FixDetachNotCreatedNetNS (0006): HotDetach unplugs even when Kata
	// did not create the netns.
	FixDetachNotCreatedNetNS
	// FixFreeTapIndex (0007): a new endpoint's tap index is the lowest
	// that no endpoint's tap or netdev uses, whatever the link names.
	FixFreeTapIndex
	// FixNoTuntapPanic (0008): AddInterface of Type "tuntap" fails
	// instead of panicking.
	FixNoTuntapPanic
	// FixUndoPartialTap (0010): a tap setup (setupTCFiltering,
	// tapNetworkPair) that fails part way undoes what it did, and only
	// that: its queue fds, the tap or macvtap it made, the ingress qdisc
	// it added to the link, the link's MAC, addresses and admin state; a
	// tap that existed before gets its MTU, admin state and qdisc back.
	FixUndoPartialTap
	// FixSkipExistingTap (0011): the free tap index also skips an index
	// whose tap name a link of the netns has. It changes FixFreeTapIndex's
	// rule, which it is built on: without that fix it changes nothing.
	FixSkipExistingTap

	// AllFixes is the whole series: what Patched means.
	AllFixes = FixPCIPath | FixDetachOrder | FixLinkByIndex | FixForgetFailedOnly |
		FixKeepLinkUp | FixDetachNotCreatedNetNS | FixFreeTapIndex | FixNoTuntapPanic |
		FixUndoPartialTap | FixSkipExistingTap
)

var fixNames = []struct {
	f    Fix
	name string
}{
	{FixPCIPath, "pci-path"}, {FixDetachOrder, "detach-order"}, {FixLinkByIndex, "link-by-index"},
	{FixForgetFailedOnly, "forget-failed-only"}, {FixKeepLinkUp, "keep-link-up"},
	{FixDetachNotCreatedNetNS, "detach-not-created-netns"}, {FixFreeTapIndex, "free-tap-index"},
	{FixNoTuntapPanic, "no-tuntap-panic"}, {FixUndoPartialTap, "undo-partial-tap"},
	{FixSkipExistingTap, "skip-existing-tap"},
}

// TapStep names a step of the tap setup that Options.FailTapStep can make
// fail.
type TapStep string

const (
	// StepVhostFds is createVhostFds, which opens /dev/vhost-net when
	// disable_vhost_net is false: in the tcfilter model right after the
	// tap is made (setupTCFiltering), in the macvtap model last, after
	// the link's MAC, addresses and admin state changed (tapNetworkPair).
	// katasim otherwise runs as with disable_vhost_net = true.
	StepVhostFds TapStep = "createVhostFds"
	// StepRedirect is the tcfilter model's last step, the redirect from
	// the tap to the link (addRedirectTCFilter), after both ingress
	// qdiscs and the link's redirect were added.
	StepRedirect TapStep = "addRedirectTCFilter"
)

func (f Fix) String() string {
	if f == 0 {
		return "none"
	}
	var parts []string
	for _, n := range fixNames {
		if f&n.f != 0 {
			parts = append(parts, n.name)
		}
	}
	return strings.Join(parts, "+")
}

// Options configure a Sandbox. The zero value (with the VM's netns) is
// Kata 4.1 with the patch series, tcfilter model, QEMU.
type Options struct {
	// NetNS is the sandbox netns path; default: the VM's.
	NetNS string
	// Kata selects the runtime: Patched (default) or AsShipped.
	Kata Kata
	// Without removes fixes from Kata's set and With adds some: a
	// control test can run Patched without the one fix it is about.
	Without, With Fix
	// Model is the internetworking model (default TCFilter).
	Model Model
	// NetNSNotCreated: Kata did not create the sandbox netns (the OCI spec
	// named one: Kubernetes, --net=container:X, a netns dockerd made).
	// As shipped, HotDetach then does nothing at all (R40).
	NetNSNotCreated bool
	// NoUnplug makes the hypervisor unable to unplug NICs (Cloud
	// Hypervisor's HotplugRemoveDevice has no NIC case): the removal
	// fails inside RemoveInterface, which still returns (nil, nil), and
	// Capabilities says so.
	NoUnplug bool
	// NoHotplug makes it unable to hot-plug NICs at all (Firecracker,
	// StratoVirt): AddInterface fails after the tap is made, and
	// Capabilities is all false.
	NoHotplug bool
	// NICWait is the agent's hotplug_timeout: how long update_interface
	// waits for a net device at the announced PCI path (Kata: 3 s;
	// default here 10 s, TCG being slower than KVM).
	NICWait time.Duration
	// UnplugWait bounds the wait for QEMU's DEVICE_DELETED (default
	// 10 s). Kata has no bound (the VM's context): a guest that never
	// lets go blocks every later QMP command.
	UnplugWait time.Duration
	// FailTapStep, if set, is asked at each TapStep of an endpoint's
	// tap setup; an error fails the setup there as Kata's fails (e.g.
	// StepVhostFds: "open /dev/vhost-net: no such file or directory", a
	// host without vhost-net and disable_vhost_net = false). It is
	// called with the sandbox's lock held, from the goroutine of the
	// AddInterface or RescanNetwork call.
	FailTapStep func(TapStep) error
}

// fixes is the set of fixes the options select.
func (o Options) fixes() Fix {
	var f Fix
	if o.Kata == Patched {
		f = AllFixes
	}
	return (f | o.With) &^ o.Without
}

// Describe names the model for figures and logs: "Kata 4.1 + patch series,
// tcfilter" (with any fix added or removed).
func (o Options) Describe() string {
	s := o.Kata.String()
	if o.Without != 0 {
		s += " without " + o.Without.String()
	}
	if o.With != 0 {
		s += " with " + o.With.String()
	}
	s += ", " + o.Model.String()
	if o.NetNSNotCreated {
		s += ", netns not created by Kata"
	}
	return s
}
