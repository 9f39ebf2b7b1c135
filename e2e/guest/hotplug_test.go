//go:build linux

package guest

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestHotplugTraffic plays Kata with QEMU on a real guest: a veth whose
// host side sits on a bridge in a "dockerd" netns and whose other side is
// eth0 in the sandbox netns is hot-plugged with katasim, the guest serves a
// token that a client in the dockerd netns reads through bridge -> veth ->
// tc mirred -> tap -> virtio-net, then the NIC is unplugged again.
func TestHotplugTraffic(t *testing.T) {
	netmontest.RequireRoot(t)
	sfx := netmontest.RandName()[len("knm-"):]
	sbxPath, sbxH := newNetNS(t, "knm-sbx-"+sfx)
	brPath, brH := newNetNS(t, "knm-br-"+sfx)

	// The "dockerd" side: a bridge holding the gateway address.
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "knmbr" + sfx}}
	must(t, brH.LinkAdd(bridge))
	must(t, brH.AddrAdd(bridge, parseAddr(t, "10.201.0.1/24")))
	must(t, brH.LinkSetUp(bridge))
	eth0 := addVeth(t, brH, sbxH, sbxPath, bridge, "knmv0"+sfx, "eth0", "02:42:0a:c9:00:02", "10.201.0.2/24")
	eth1 := addVeth(t, brH, sbxH, sbxPath, bridge, "knmv1"+sfx, "eth1", "02:42:0a:c9:00:03", "10.201.0.3/24")

	vm := guest.Boot(t, guest.Options{NetNS: sbxPath})
	sb, err := katasim.New(vm, katasim.Options{})
	must(t, err)
	t.Cleanup(func() { sb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if got, want := sb.Capabilities(), (hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true}); got != want {
		t.Fatalf("Capabilities() = %+v, want %+v", got, want)
	}

	// Attach eth0 and eth1 as the monitor would describe them.
	var attached []*hotplug.Interface
	for _, l := range []netlink.Link{eth0, eth1} {
		inf := interfaceOf(t, sbxH, l.Attrs().Name)
		start := time.Now()
		res, err := sb.AddInterface(ctx, inf)
		if err != nil {
			t.Fatalf("AddInterface(%s): %v", inf.Name, err)
		}
		took := time.Since(start)
		calls := sb.Calls()
		t.Logf("AddInterface(%s) took %v: %s", inf.Name, took.Round(time.Millisecond), calls[len(calls)-1].PhasesString())
		if res == nil || res.Name != inf.Name || res.HwAddr != inf.HwAddr || res.Mtu != inf.Mtu ||
			len(res.IPAddresses) == 0 || res.IPAddresses[0].Address != inf.IPAddresses[0].Address {
			t.Fatalf("AddInterface(%s) = %+v, want the guest NIC named %s with MAC %s and %s", inf.Name, res, inf.Name, inf.HwAddr, inf.IPAddresses[0].Address)
		}
		attached = append(attached, inf)
	}
	eps := sb.Endpoints()
	if len(eps) != 2 || eps[0].TapName != "tap0_kata" || eps[1].TapName != "tap1_kata" || eps[0].Bus == eps[1].Bus {
		t.Fatalf("endpoints = %+v, want tap0_kata and tap1_kata on two root ports", eps)
	}
	// Kata's bug, copied: the second interface is told the first one's PCI path.
	if attached[1].DevicePath != eps[0].PCIPath {
		t.Errorf("DevicePath of eth1 = %q, want the first endpoint's %q (as Kata 4.1)", attached[1].DevicePath, eps[0].PCIPath)
	}
	for _, ep := range eps {
		assertMirred(t, sbxH, ep.Name, true)
		assertMirred(t, sbxH, ep.TapName, true)
	}

	// Routes: add or replace, by device name; one unknown device fails.
	routes, err := sb.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "", Gateway: "10.201.0.1", Device: "eth0"}})
	if err != nil || !hasRoute(routes, "", "10.201.0.1", "eth0") {
		t.Fatalf("UpdateRoutes(default via 10.201.0.1 dev eth0) = %+v, %v", routes, err)
	}
	if _, err := sb.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "10.9.0.0/16", Gateway: "10.201.0.1", Device: "eth9"}}); err == nil {
		t.Fatal("UpdateRoutes with a device the guest lacks succeeded")
	}
	if got, err := sb.UpdateRoutes(ctx, nil); got != nil || err != nil {
		t.Fatalf("UpdateRoutes(nil) = %v, %v; want nil, nil", got, err)
	}

	// Traffic from the dockerd netns reaches the guest through each NIC.
	for i, inf := range attached {
		port, token := 8080+i, netmontest.RandName()
		must(t, vm.Agent.ServeToken(ctx, port, token))
		addr := net.JoinHostPort(inf.IPAddresses[0].Address, fmt.Sprint(port))
		start := time.Now()
		got, err := guest.ReadToken(ctx, brPath, addr, 2*time.Second, 100*time.Millisecond)
		if err != nil {
			t.Fatalf("read token from %s in %s: %v", addr, brPath, err)
		}
		if got != token {
			t.Fatalf("token from %s = %q, want %q", addr, got, token)
		}
		t.Logf("token read from the guest at %s (%s) in %v", addr, inf.Name, time.Since(start).Round(time.Millisecond))
	}

	// Unplug: RemoveInterface matches by MAC and returns (nil, nil).
	for i, inf := range attached {
		start := time.Now()
		res, err := sb.RemoveInterface(ctx, &hotplug.Interface{Name: inf.Name, HwAddr: inf.HwAddr})
		if res != nil || err != nil {
			t.Fatalf("RemoveInterface(%s) = %+v, %v; want nil, nil", inf.Name, res, err)
		}
		calls := sb.Calls()
		last := calls[len(calls)-1]
		if last.Swallowed != nil {
			t.Fatalf("RemoveInterface(%s): detach failed: %v", inf.Name, last.Swallowed)
		}
		t.Logf("RemoveInterface(%s) took %v: %s", inf.Name, time.Since(start).Round(time.Millisecond), last.PhasesString())
		assertMirred(t, sbxH, inf.Name, false)
		if _, err := sbxH.LinkByName(eps[i].TapName); err == nil {
			t.Errorf("%s still exists after RemoveInterface(%s)", eps[i].TapName, inf.Name)
		}
	}
	// Unknown MAC: nothing to do, still (nil, nil).
	if res, err := sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: "02:00:00:00:00:99"}); res != nil || err != nil {
		t.Fatalf("RemoveInterface(unknown MAC) = %+v, %v; want nil, nil", res, err)
	}
	infs, err := sb.ListInterfaces(ctx)
	must(t, err)
	for _, g := range infs {
		if g.Name != "lo" {
			t.Errorf("guest still lists %s (%s) after unplug: %+v", g.Name, g.HwAddr, infs)
		}
	}
	if len(sb.Endpoints()) != 0 {
		t.Errorf("endpoints after unplug: %+v", sb.Endpoints())
	}
	for _, n := range []string{"tap0_kata", "tap1_kata"} {
		if _, err := sbxH.LinkByName(n); err == nil {
			t.Errorf("%s still exists in the sandbox netns", n)
		}
	}
	if err := vm.TapError(); err != nil {
		t.Error(err)
	}

	// Cloud Hypervisor: hot-plugs, cannot unplug.
	t.Run("NoUnplug", func(t *testing.T) {
		clh, err := katasim.New(vm, katasim.Options{NoUnplug: true})
		must(t, err)
		defer clh.Close()
		if got := clh.Capabilities(); !got.HotplugNIC || got.HotUnplugNIC {
			t.Fatalf("Capabilities() = %+v", got)
		}
		must(t, sbxH.LinkSetUp(eth0)) // Kata's detach set it down
		inf := interfaceOf(t, sbxH, "eth0")
		if _, err := clh.AddInterface(ctx, inf); err != nil {
			t.Fatalf("AddInterface: %v", err)
		}
		if eps := clh.Endpoints(); len(eps) != 1 || eps[0].TapName != "tap0_kata" {
			t.Fatalf("endpoints = %+v, want tap0_kata again", eps)
		}
		res, err := clh.RemoveInterface(ctx, &hotplug.Interface{HwAddr: inf.HwAddr})
		if err == nil || res == nil {
			t.Fatalf("RemoveInterface = %+v, %v; want the interface and an error", res, err)
		}
		if len(clh.Endpoints()) != 1 {
			t.Fatalf("endpoint dropped although it was not unplugged")
		}
	})
	// Firecracker: no NIC hot-plug at all.
	t.Run("NoHotplug", func(t *testing.T) {
		fc, err := katasim.New(vm, katasim.Options{NoHotplug: true})
		must(t, err)
		defer fc.Close()
		if got := fc.Capabilities(); got != (hotplug.Capabilities{}) {
			t.Fatalf("Capabilities() = %+v", got)
		}
		if _, err := fc.AddInterface(ctx, interfaceOf(t, sbxH, "eth1")); err == nil {
			t.Fatal("AddInterface succeeded")
		}
		if calls := fc.Calls(); len(calls) != 2 || calls[0].Method != "Capabilities" || calls[1].Method != "AddInterface" || calls[1].Err == nil {
			t.Fatalf("call log = %+v", calls)
		}
	})
}
