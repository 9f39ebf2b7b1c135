//go:build linux

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestGuestHotplugTraffic plays Kata with QEMU on a real guest: a veth whose
// host side sits on a bridge in a "dockerd" netns and whose other side is
// eth0 in the sandbox netns is hot-plugged with katasim, the guest serves a
// token that a client in the dockerd netns reads through bridge -> veth ->
// tc mirred -> tap -> virtio-net, then the NIC is unplugged again.
func TestGuestHotplugTraffic(t *testing.T) {
	netmontest.RequireRoot(t)
	sfx := guestRandHex(4)
	sbxPath, sbxH := guestNetNS(t, "knm-sbx-"+sfx)
	brPath, brH := guestNetNS(t, "knm-br-"+sfx)

	// The "dockerd" side: a bridge holding the gateway address.
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "knmbr" + sfx}}
	guestMust(t, brH.LinkAdd(bridge))
	guestMust(t, brH.AddrAdd(bridge, guestAddr(t, "10.201.0.1/24")))
	guestMust(t, brH.LinkSetUp(bridge))
	eth0 := guestVeth(t, brH, sbxH, sbxPath, bridge, "knmv0"+sfx, "eth0", "02:42:0a:c9:00:02", "10.201.0.2/24")
	eth1 := guestVeth(t, brH, sbxH, sbxPath, bridge, "knmv1"+sfx, "eth1", "02:42:0a:c9:00:03", "10.201.0.3/24")

	vm := guest.Boot(t, guest.Options{NetNS: sbxPath})
	sb, err := katasim.New(vm, katasim.Options{})
	guestMust(t, err)
	t.Cleanup(func() { sb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if got, want := sb.Capabilities(), (hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true}); got != want {
		t.Fatalf("Capabilities() = %+v, want %+v", got, want)
	}

	// Attach eth0 and eth1 as the monitor would describe them.
	var attached []*hotplug.Interface
	for _, l := range []netlink.Link{eth0, eth1} {
		inf := guestInterfaceOf(t, sbxH, l.Attrs().Name)
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
		guestAssertMirred(t, sbxH, ep.Name, true)
		guestAssertMirred(t, sbxH, ep.TapName, true)
	}

	// Routes: add or replace, by device name; one unknown device fails.
	routes, err := sb.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "", Gateway: "10.201.0.1", Device: "eth0"}})
	if err != nil || !guestHasRoute(routes, "", "10.201.0.1", "eth0") {
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
		port, token := 8080+i, "knm-token-"+guestRandHex(8)
		guestMust(t, vm.Agent.ServeToken(ctx, port, token))
		addr := net.JoinHostPort(inf.IPAddresses[0].Address, fmt.Sprint(port))
		start := time.Now()
		got, err := guestReadTokenFrom(ctx, brPath, addr)
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
		guestAssertMirred(t, sbxH, inf.Name, false)
		if _, err := sbxH.LinkByName(eps[i].TapName); err == nil {
			t.Errorf("%s still exists after RemoveInterface(%s)", eps[i].TapName, inf.Name)
		}
	}
	// Unknown MAC: nothing to do, still (nil, nil).
	if res, err := sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: "02:00:00:00:00:99"}); res != nil || err != nil {
		t.Fatalf("RemoveInterface(unknown MAC) = %+v, %v; want nil, nil", res, err)
	}
	infs, err := sb.ListInterfaces(ctx)
	guestMust(t, err)
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
	if log := strings.ToLower(vm.QEMULog()); strings.Contains(log, "tap") || strings.Contains(log, "tun") {
		t.Errorf("QEMU logged a tun/tap error:\n%s", vm.QEMULog())
	}

	// Cloud Hypervisor: hot-plugs, cannot unplug.
	t.Run("NoUnplug", func(t *testing.T) {
		clh, err := katasim.New(vm, katasim.Options{NoUnplug: true})
		guestMust(t, err)
		defer clh.Close()
		if got := clh.Capabilities(); !got.HotplugNIC || got.HotUnplugNIC {
			t.Fatalf("Capabilities() = %+v", got)
		}
		guestMust(t, sbxH.LinkSetUp(eth0)) // Kata's detach set it down
		inf := guestInterfaceOf(t, sbxH, "eth0")
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
		guestMust(t, err)
		defer fc.Close()
		if got := fc.Capabilities(); got != (hotplug.Capabilities{}) {
			t.Fatalf("Capabilities() = %+v", got)
		}
		if _, err := fc.AddInterface(ctx, guestInterfaceOf(t, sbxH, "eth1")); err == nil {
			t.Fatal("AddInterface succeeded")
		}
		if calls := fc.Calls(); len(calls) != 2 || calls[0].Method != "Capabilities" || calls[1].Method != "AddInterface" || calls[1].Err == nil {
			t.Fatalf("call log = %+v", calls)
		}
	})
}

func guestMust(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func guestRandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func guestAddr(t testing.TB, s string) *netlink.Addr {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	guestMust(t, err)
	return a
}

// guestNetNS creates a named netns (ip netns add) and a netlink handle in it,
// both removed on cleanup.
func guestNetNS(t testing.TB, name string) (string, *netlink.Handle) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	path := "/run/netns/" + name
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns, err := netns.GetFromPath(path)
	guestMust(t, err)
	h, err := netlink.NewHandleAt(ns)
	ns.Close()
	guestMust(t, err)
	t.Cleanup(h.Close)
	guestMust(t, h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}))
	return path, h
}

// guestVeth makes a veth pair in the bridge netns, enslaves hostName to
// bridge and moves the peer into the sandbox netns as name, with mac and
// addr, up: what Docker's bridge driver leaves there.
func guestVeth(t testing.TB, brH, sbxH *netlink.Handle, sbxPath string, bridge netlink.Link, hostName, name, mac, addr string) netlink.Link {
	t.Helper()
	peer := hostName + "p"
	guestMust(t, brH.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName, MasterIndex: bridge.Attrs().Index}, PeerName: peer}))
	host, err := brH.LinkByName(hostName)
	guestMust(t, err)
	guestMust(t, brH.LinkSetUp(host))
	p, err := brH.LinkByName(peer)
	guestMust(t, err)
	ns, err := netns.GetFromPath(sbxPath)
	guestMust(t, err)
	defer ns.Close()
	guestMust(t, brH.LinkSetNsFd(p, int(ns)))
	l, err := sbxH.LinkByName(peer)
	guestMust(t, err)
	guestMust(t, sbxH.LinkSetName(l, name))
	hw, err := net.ParseMAC(mac)
	guestMust(t, err)
	guestMust(t, sbxH.LinkSetHardwareAddr(l, hw))
	guestMust(t, sbxH.AddrAdd(l, guestAddr(t, addr)))
	guestMust(t, sbxH.LinkSetUp(l))
	l, err = sbxH.LinkByName(name)
	guestMust(t, err)
	return l
}

// guestInterfaceOf describes a sandbox link the way the monitor hands it to
// Kata: netlink kind, MAC, MTU, IPv4 addresses with the prefix length.
func guestInterfaceOf(t testing.TB, h *netlink.Handle, name string) *hotplug.Interface {
	t.Helper()
	l, err := h.LinkByName(name)
	guestMust(t, err)
	a := l.Attrs()
	inf := &hotplug.Interface{Name: a.Name, HwAddr: a.HardwareAddr.String(), Mtu: uint64(a.MTU), Type: l.Type(), RawFlags: a.RawFlags}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	guestMust(t, err)
	for _, ad := range addrs {
		ones, _ := ad.Mask.Size()
		inf.IPAddresses = append(inf.IPAddresses, &hotplug.IPAddress{Family: hotplug.FamilyV4, Address: ad.IP.String(), Mask: fmt.Sprint(ones)})
	}
	if len(inf.IPAddresses) == 0 {
		t.Fatalf("%s has no IPv4 address", name)
	}
	return inf
}

// guestAssertMirred checks whether link has an ingress qdisc with a u32
// mirred filter.
func guestAssertMirred(t testing.TB, h *netlink.Handle, name string, want bool) {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		if want {
			t.Errorf("%s: %v", name, err)
		}
		return
	}
	filters, err := h.FilterList(l, netlink.MakeHandle(0xffff, 0))
	if err != nil && want {
		t.Errorf("tc filters of %s: %v", name, err)
		return
	}
	mirred := false
	for _, f := range filters {
		if u, ok := f.(*netlink.U32); ok {
			for _, a := range u.Actions {
				if _, ok := a.(*netlink.MirredAction); ok {
					mirred = true
				}
			}
		}
	}
	if mirred != want {
		t.Errorf("%s: u32 mirred filter present = %v, want %v (filters %+v)", name, mirred, want, filters)
	}
}

func guestHasRoute(rs []*hotplug.Route, dest, gw, dev string) bool {
	for _, r := range rs {
		if r.Dest == dest && r.Gateway == gw && r.Device == dev {
			return true
		}
	}
	return false
}

// guestReadTokenFrom connects to addr from the netns at nsPath and reads one
// line, retrying until ctx ends (the first SYN may wait for ARP). The socket
// is created on a locked thread inside the netns; the thread goes back before
// it is unlocked.
func guestReadTokenFrom(ctx context.Context, nsPath, addr string) (string, error) {
	var last error
	for {
		conn, err := guest.DialFrom(ctx, nsPath, addr, 2*time.Second)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			line, rerr := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if rerr == nil {
				return strings.TrimSpace(line), nil
			}
			err = rerr
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
