package kata

// No Kata import here either: recognising, from what the adapter can see,
// the symptoms of the Kata 4.1 bugs that hit connect/disconnect, and naming
// their likely cause in the log. docs/kata.md explains each one.

import (
	"strconv"
	"strings"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Likely causes, as logged. Each names the Kata function at fault.
const (
	// virtcontainers/sandbox.go, Sandbox.AddInterface:
	//	inf.DevicePath = endpoints[0].PciPath().String()
	// where endpoints is the whole list LinuxNetwork.AddEndpoints returns.
	causeFirstPCIPath = "likely cause: Kata 4.1's Sandbox.AddInterface sends the agent the PCI path of the FIRST endpoint " +
		"(endpoints[0].PciPath()), not of the NIC it just plugged; the agent then waits on, and in 4.1 re-MACs, the wrong NIC " +
		"(update_interface: set_link_mac_by_name on the netdev at that path), or fails with \"Link not found\" when the new NIC " +
		"has not been probed yet. Fix in Kata: use the endpoint just added (the last one), see docs/kata.md"
	// virtcontainers/network_linux.go, LinuxNetwork.AddEndpoints, explicit
	// endpoint branch: on any addSingleEndpoint error it sets n.eps = nil.
	causeEndpointWipe = "Kata 4.1's LinuxNetwork.AddEndpoints sets its endpoint list to nil when an explicit attach fails: Kata now " +
		"forgets every NIC of this sandbox (a later RemoveInterface silently does nothing, the next tap index restarts at 0 and " +
		"collides with an existing tap0_kata). Fix in Kata: leave n.eps alone on error and undo only the failed endpoint"
	// virtcontainers/veth_endpoint.go (and macvlan, ipvlan, tap, tuntap):
	// HotDetach calls xDisconnectVMNetwork (tap and tc first) before
	// h.HotplugRemoveDevice.
	causeDetachOrder = "likely cause: Kata 4.1's VethEndpoint.HotDetach deletes the tap and tc filters (xDisconnectVMNetwork) " +
		"before asking the hypervisor to remove the device (HotplugRemoveDevice), so QEMU loses its tap while the guest still " +
		"has the NIC. Fix in Kata: HotplugRemoveDevice first (device_del, DEVICE_DELETED, netdev_del), then tc and tap"
	// The agent looks each route's device up by name.
	causeRouteDevice = "likely cause: a route names a device the guest does not have (the agent looks devices up by name and " +
		"fails the whole UpdateRoutes call); a NIC may have been renamed by the agent after a misdirected AddInterface"
)

// diagnoseAddError names the likely cause of a failed AddInterface.
func diagnoseAddError(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "Link not found"), strings.Contains(s, "interface not available"):
		return causeFirstPCIPath + ". Also: " + causeEndpointWipe
	case strings.Contains(s, "_kata") && (strings.Contains(s, "exists") || strings.Contains(s, "busy")):
		return "likely cause: an earlier failed hotplug; " + causeEndpointWipe
	default:
		return "if the hypervisor or netns step failed: " + causeEndpointWipe
	}
}

// diagnoseAfterAdd compares the guest before and after a successful
// AddInterface of mac and names the likely cause when the guest does not show
// exactly one more NIC with that MAC while keeping the others.
func diagnoseAfterAdd(before, after []*hotplug.Interface, mac string) string {
	if after == nil {
		return ""
	}
	n := 0
	for _, inf := range after {
		if inf != nil && strings.EqualFold(inf.HwAddr, mac) {
			n++
		}
	}
	lost := []string{}
	now := guestMACs(after)
	for m := range guestMACs(before) {
		if !now[m] && !strings.EqualFold(m, mac) {
			lost = append(lost, m)
		}
	}
	switch {
	case n > 1 || len(lost) > 0:
		return "the guest re-MACed an existing NIC (" + strings.Join(lost, ",") + " vanished, new MAC on " + strconv.Itoa(n) + " NICs): " + causeFirstPCIPath
	case n == 0:
		return "the guest does not list the new NIC after AddInterface returned: " + causeFirstPCIPath
	}
	return ""
}

// diagnoseRemoveError names the likely cause of a failed RemoveInterface.
func diagnoseRemoveError(err error) string {
	if err == nil {
		return ""
	}
	return causeDetachOrder
}

// diagnoseRoutesError names the likely cause of a failed UpdateRoutes.
func diagnoseRoutesError(err error) string {
	if err == nil {
		return ""
	}
	if strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "No such device") {
		return causeRouteDevice
	}
	return ""
}

// deadError reports whether Kata's error means the sandbox is gone: the
// agent connection is closed or the sandbox is not running.
func deadError(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "Dead agent") || strings.Contains(s, "ttrpc: closed") ||
		strings.Contains(s, "Sandbox not running")
}
