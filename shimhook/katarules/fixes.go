package katarules

import (
	"fmt"
	"strings"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Fixes says which fixes of kata-netmon's Kata patch series
// (shimhook/kata/series) the Kata tree the shim was built from has. build.sh
// finds out by running a probe test for each against the tree (a behaviour,
// not a version string); a fix it could not prove is false, and the adapter
// then steers around the bug.
type Fixes struct {
	// PCIPath: Sandbox.AddInterface announces the PCI path of the NIC it
	// just plugged (patch 0001). Without it (Kata 4.1, sandbox.go:1276,
	// inf.DevicePath = endpoints[0].PciPath()), every NIC after the first
	// is announced with the first NIC's path: the agent does not wait for
	// the new NIC, usually fails to find it ("No such device"), and Kata's
	// rollback sets the container's link down (docs/kata-model.md, row 15).
	PCIPath bool
	// LinkByIndex: a hot unplug finds the endpoint's link by the ifindex
	// recorded at attach, not by its name (patch 0003). Without it
	// (getLinkForEndpoint, network_linux.go:788), whatever link holds the
	// endpoint's attach-time name is torn down.
	LinkByIndex bool
	// KeepLinkUp: a hot unplug leaves the admin state of the endpoint's
	// link alone (patch 0005). Without it (removeTCFiltering,
	// network_linux.go:1311; untapNetworkPair, :1267), the link is set
	// down.
	KeepLinkUp bool
	// UnplugGivenNetNS: a hot unplug removes the NIC also when Kata did not
	// create the netns (patch 0006). Without it (VethEndpoint.HotDetach,
	// veth_endpoint.go:159: `if !netNsCreated { return nil }`), RemoveInterface
	// does nothing and reports success for a sandbox whose netns the OCI
	// spec named.
	UnplugGivenNetNS bool
}

// Fix names, as build.sh reports them and docs/kata.md lists them.
const (
	FixPCIPath     = "0001 runtime: give the agent the PCI path of the hot-plugged NIC"
	FixLinkByIndex = "0003 runtime: do not tear down a link that took a detached endpoint's name"
	FixKeepLinkUp  = "0005 runtime: leave the link up when a NIC is hot unplugged"
	// FixUnplugGivenNetNS names patch 0006.
	FixUnplugGivenNetNS = "0006 runtime: hot unplug a NIC also when the netns was given to the runtime"
)

// BuildCommand is how to get a Kata with the series, as the refusals say.
const BuildCommand = "make kata KATA_SRC=/path/to/kata-containers (in the kata-netmon repository; see docs/kata.md)"

// Missing names the fixes f lacks ("" when it has them all).
func (f Fixes) Missing() string {
	var m []string
	if !f.PCIPath {
		m = append(m, FixPCIPath)
	}
	if !f.LinkByIndex {
		m = append(m, FixLinkByIndex)
	}
	if !f.KeepLinkUp {
		m = append(m, FixKeepLinkUp)
	}
	if !f.UnplugGivenNetNS {
		m = append(m, FixUnplugGivenNetNS)
	}
	return strings.Join(m, "; ")
}

// OneNICReason is the refusal hotplug.OneNIC gives, on a Kata without the
// PCI-path fix, for a NIC the guest would not get right.
func OneNICReason() string {
	return fmt.Sprintf("this Kata lacks the fix %q of kata-netmon's Kata patch series: it would announce the guest's first NIC "+
		"for this one, so the agent would not wait for this NIC and Kata would undo the attach, taking the container's link down. "+
		"Build Kata with the series: %s",
		FixPCIPath, BuildCommand)
}

// Hypervisor type names as Kata 4.1 spells them (virtcontainers/hypervisor.go,
// HypervisorType constants, l. 44-75). shimhook/kata's tests check them
// against Kata's constants.
const (
	HypervisorQEMU          = "qemu"
	HypervisorCloudHyp      = "clh"
	HypervisorFirecracker   = "firecracker"
	HypervisorStratoVirt    = "stratovirt"
	HypervisorRemote        = "remote"
	HypervisorDragonball    = "dragonball"
	HypervisorVirtframework = "virtframework"
	HypervisorMock          = "mock"
)

// Interworking models as Kata spells them (NetInterworkingModel.GetModel,
// virtcontainers/network.go).
const (
	ModelTCFilter = "tcfilter"
	ModelMacVtap  = "macvtap"
)

// Config is what the adapter needs of Kata's runtime configuration and
// tree.
type Config struct {
	// HypervisorType is oci.RuntimeConfig.HypervisorType.
	HypervisorType string
	// InterworkingModel is the model the sandbox uses (ModelTCFilter,
	// ModelMacVtap, "none"), from oci.RuntimeConfig.InterNetworkModel with
	// Kata's default resolved. (NetInterworkingModel.GetModel is no help:
	// its first case is the default model, tcfilter, so it spells tcfilter
	// "default".)
	InterworkingModel string
	// Fixes are the series' fixes the tree has.
	Fixes Fixes
	// NetNSGiven: the OCI spec named the sandbox's netns (dockerd created
	// it), so Kata records NetworkCreated=false.
	NetNSGiven bool
}

// Capabilities maps Kata's configuration to what the reconciler must know.
//
// NICs (Kata 4.1's Go runtime): QEMU hot-plugs and unplugs
// (qemu.hotplugNetDevice); Cloud Hypervisor hot-plugs (NetDev in
// cloudHypervisor.HotplugAddDevice) but its HotplugRemoveDevice has no NetDev
// case; Firecracker, StratoVirt and remote refuse NetDev in both; Dragonball
// is runtime-rs only; anything unknown is assumed unable.
//
// Hazards: ReMACsLink with the macvtap interworking model (tapNetworkPair
// gives the link a random MAC); DetachByName unless the tree has both
// LinkByIndex and KeepLinkUp (either missing, a hot unplug may switch off a
// link the container still has). In a netns Kata did not create, a tree
// without UnplugGivenNetNS cannot unplug at all (its RemoveInterface is a
// silent no-op): HotUnplugNIC is false, so the reconciler says so and never
// plugs a second NIC for the same MAC.
func Capabilities(cfg Config) hotplug.Capabilities {
	var c hotplug.Capabilities
	switch cfg.HypervisorType {
	case HypervisorQEMU:
		c.HotplugNIC, c.HotUnplugNIC = true, true
	case HypervisorCloudHyp:
		c.HotplugNIC = true
	}
	if cfg.NetNSGiven && !cfg.Fixes.UnplugGivenNetNS {
		c.HotUnplugNIC = false
	}
	c.ReMACsLink = cfg.InterworkingModel == ModelMacVtap
	c.DetachByName = !(cfg.Fixes.LinkByIndex && cfg.Fixes.KeepLinkUp)
	return c
}
