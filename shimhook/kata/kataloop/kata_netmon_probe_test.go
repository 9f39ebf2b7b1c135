// Probes of kata-netmon's Kata patch series: this file belongs to
// kata-netmon (shimhook/kata/kataloop), not to Kata. build.sh runs the
// probes in the patched copy before building, and gives the adapter a fix
// only when its probe passed: what the tree does decides, not a version.

//go:build kata_netmon

package virtcontainers

import (
	"context"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	pbTypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestNetmonProbePCIPath: the second AddInterface of a sandbox configures
// its own NIC; the first NIC is neither re-MACed nor renamed (series patch
// 0001; Kata 4.1 announces endpoints[0]'s PCI path, sandbox.go:1276).
func TestNetmonProbePCIPath(t *testing.T) {
	netmontest.RequireRoot(t)
	path, ns := netmontest.NewNetNS(t)
	h := netmontest.HandleAt(t, ns)
	l := NewNetmonLoop(t, NetmonLoopOptions{NetNSPath: path})
	infs := []*pbTypes.Interface{
		netmonProbeVeth(t, h, "eth0", "172.17.0.2/16"),
		netmonProbeVeth(t, h, "eth1", "172.18.0.2/16"),
	}
	for _, inf := range infs {
		if _, err := l.Sandbox.AddInterface(context.Background(), inf); err != nil {
			t.Fatalf("AddInterface(%s): %v", inf.Name, err)
		}
	}
	if v := l.Guest.Violations(); len(v) > 0 {
		t.Fatalf("the guest's existing NIC was changed: %v", v)
	}
	nics := l.Guest.NICs()
	if len(nics) != 2 {
		t.Fatalf("guest NICs %+v, want 2", nics)
	}
	for i, inf := range infs {
		if nics[i].Name != inf.Name || nics[i].MAC != inf.HwAddr || !nics[i].Up {
			t.Errorf("guest NIC %d is %+v, want %s with MAC %s, up", i, nics[i], inf.Name, inf.HwAddr)
		}
	}
}

// TestNetmonProbeLinkByIndex: a hot unplug leaves alone the link that took
// the endpoint's name (series patch 0003; Kata 4.1's getLinkForEndpoint
// looks the link up by name, network_linux.go:788).
func TestNetmonProbeLinkByIndex(t *testing.T) {
	netmontest.RequireRoot(t)
	path, ns := netmontest.NewNetNS(t)
	h := netmontest.HandleAt(t, ns)
	l := NewNetmonLoop(t, NetmonLoopOptions{NetNSPath: path})
	ctx := context.Background()
	old := netmonProbeVeth(t, h, "eth1", "172.18.0.2/16")
	if _, err := l.Sandbox.AddInterface(ctx, old); err != nil {
		t.Fatal(err)
	}
	// docker network disconnect: down, renamed back; then connect: a new
	// eth1, attached.
	link, err := h.LinkByName("eth1")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetName(link, "knmold"+netmontest.RandName()[4:8]); err != nil {
		t.Fatal(err)
	}
	cur := netmonProbeVeth(t, h, "eth1", "172.19.0.2/16")
	if _, err := l.Sandbox.AddInterface(ctx, cur); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Sandbox.RemoveInterface(ctx, &pbTypes.Interface{HwAddr: old.HwAddr}); err != nil {
		t.Fatal(err)
	}
	if !netmonLinkUp(t, h, "eth1") {
		t.Error("the new eth1 was set down")
	}
	nl, err := h.LinkByName("eth1")
	if err != nil {
		t.Fatal(err)
	}
	qdiscs, err := h.QdiscList(nl)
	if err != nil {
		t.Fatal(err)
	}
	ingress := false
	for _, q := range qdiscs {
		_, ok := q.(*netlink.Ingress)
		ingress = ingress || ok
	}
	if !ingress {
		t.Error("the new eth1 lost its ingress qdisc (its redirect to its own tap)")
	}
}

// TestNetmonProbeKeepLinkUp: a hot unplug leaves the link up (series patch
// 0005; Kata 4.1's removeTCFiltering sets it down, network_linux.go:1311).
func TestNetmonProbeKeepLinkUp(t *testing.T) {
	netmontest.RequireRoot(t)
	path, ns := netmontest.NewNetNS(t)
	h := netmontest.HandleAt(t, ns)
	l := NewNetmonLoop(t, NetmonLoopOptions{NetNSPath: path})
	ctx := context.Background()
	inf := netmonProbeVeth(t, h, "eth0", "172.17.0.2/16")
	if _, err := l.Sandbox.AddInterface(ctx, inf); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Sandbox.RemoveInterface(ctx, &pbTypes.Interface{HwAddr: inf.HwAddr}); err != nil {
		t.Fatal(err)
	}
	if !netmonLinkUp(t, h, "eth0") {
		t.Error("eth0 was set down by the hot unplug")
	}
}

// TestNetmonProbeUnplugGivenNetNS: a hot unplug removes the NIC from the VM
// (and the tap from the netns) also when Kata did not create the netns
// (series patch 0006; Kata 4.1's VethEndpoint.HotDetach returns at once
// when !netNsCreated, veth_endpoint.go:159).
func TestNetmonProbeUnplugGivenNetNS(t *testing.T) {
	netmontest.RequireRoot(t)
	path, ns := netmontest.NewNetNS(t)
	h := netmontest.HandleAt(t, ns)
	l := NewNetmonLoop(t, NetmonLoopOptions{NetNSPath: path, NetNSGiven: true})
	ctx := context.Background()
	inf := netmonProbeVeth(t, h, "eth0", "172.17.0.2/16")
	if _, err := l.Sandbox.AddInterface(ctx, inf); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Sandbox.RemoveInterface(ctx, &pbTypes.Interface{HwAddr: inf.HwAddr}); err != nil {
		t.Fatal(err)
	}
	unplugged := false
	for _, p := range l.HV.Plugs() {
		unplugged = unplugged || strings.HasPrefix(p, "-"+inf.HwAddr+" ")
	}
	if !unplugged {
		t.Errorf("the NIC was not removed from the VM: plugs %v", l.HV.Plugs())
	}
}
