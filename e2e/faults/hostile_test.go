//go:build linux

package faults

import (
	"context"
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// TestHostileLinks: links made to look like Docker endpoints, in the
// sandbox netns, fully configured (name, MAC, address, up): the full
// monitor (shimhook.Start: netmon, matcher, reconciler) never attaches any
// of them, while a real endpoint in the same netns, created last, is
// attached (so the monitor was working and had seen them all).
func TestHostileLinks(t *testing.T) {
	e := newEnv(t)
	const id = "ft-hostile"
	// A netns that is not dockerd's, with a bridge of its own.
	_, rogueNS := netmontest.NewNetNS(t)
	rogue := netmontest.HandleAt(t, rogueNS)
	rogueBr := netmontest.AddBridge(t, rogue)

	hostile := map[string]string{} // name in the sandbox netns -> why it must not be attached
	var hostileMACs []string
	finish := func(l netlink.Link, name, why string) {
		t.Helper()
		mac := netmontest.RandMAC()
		if err := e.Sandbox.LinkSetHardwareAddr(l, mac); err != nil {
			t.Fatalf("%s: MAC: %v", name, err)
		}
		netmontest.AddAddr(t, e.Sandbox, l.Attrs().Index, fmt.Sprintf("172.31.200.%d/16", len(hostile)+2))
		if err := e.Sandbox.LinkSetUp(l); err != nil {
			t.Fatalf("%s: up: %v", name, err)
		}
		hostile[name] = why
		hostileMACs = append(hostileMACs, mac.String())
	}
	byName := func(name string) netlink.Link {
		t.Helper()
		l, err := e.Sandbox.LinkByName(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return l
	}
	cases := []struct {
		name, why string
		make      func(name string) netlink.Link
	}{
		{"eth0", "a veth named eth0 whose peer is in the same netns", func(name string) netlink.Link {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "vethsame0"}
			if err := e.Sandbox.LinkAdd(v); err != nil {
				t.Fatal(err)
			}
			if err := e.Sandbox.LinkSetUp(byName("vethsame0")); err != nil {
				t.Fatal(err)
			}
			return byName(name)
		}},
		{"eth1", "a veth whose peer (in dockerd's netns) is on no bridge", func(name string) netlink.Link {
			ep := netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, "")
			ep.Rename(name)
			return byName(name)
		}},
		{"eth2", "a tap named like Docker's endpoints", func(name string) netlink.Link {
			ns := filepath.Base(e.SandboxPath)
			if out, err := exec.Command("ip", "-n", ns, "tuntap", "add", "dev", name, "mode", "tap").CombinedOutput(); err != nil {
				t.Fatalf("ip tuntap add: %v: %s", err, out)
			}
			return byName(name)
		}},
		{"tap9_kata", "a real Docker endpoint renamed like Kata's own tap", func(name string) netlink.Link {
			ep := netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, e.bridge)
			ep.Rename(name)
			return byName(name)
		}},
		{"eth3", "a veth whose peer sits on a bridge in a netns that is not dockerd's", func(name string) netlink.Link {
			ep := netmontest.VethPeerInNetNS(t, rogueNS, e.SandboxNS, rogueBr.Name)
			ep.Rename(name)
			return byName(name)
		}},
		{"eth4", "a macvlan whose parent is in a netns that is not dockerd's", func(name string) netlink.Link {
			mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: rogueBr.Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}
			if err := rogue.LinkAdd(mv); err != nil {
				t.Fatal(err)
			}
			l, err := rogue.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := rogue.LinkSetNsFd(l, int(e.SandboxNS)); err != nil {
				t.Fatal(err)
			}
			return byName(name)
		}},
	}
	fs := &hotplugtest.FakeSandbox{}
	// Half of them exist before Start (the first list sees them), the
	// rest arrive as events.
	for _, c := range cases[:3] {
		finish(c.make(c.name), c.name, c.why)
	}
	m := startShim(t, e.shimConfig(id, fs))
	for _, c := range cases[3:] {
		finish(c.make(c.name), c.name, c.why)
	}
	real := e.addEndpoint(t, "eth5", true)
	waitUntil(t, waitTimeout, "the real endpoint attached", func() (bool, string) {
		return slices.Equal(m.NICNames(), []string{"eth5"}), fmt.Sprintf("attached %v, calls %v", m.NICNames(), fs.Ops())
	})
	// A second real endpoint given the same MAC (docker network connect
	// --mac-address): Kata tells NICs apart by MAC only, so it is refused
	// too, with one warning.
	dup := e.newVeth(t)
	dup.MAC = real.MAC
	dup.configure("eth6", false)
	hostile["eth6"] = "a real endpoint with the MAC of an attached one"
	if es, err := e.log.Wait(waitTimeout, logrus.WarnLevel, "another attached endpoint has this MAC", 1); err != nil {
		t.Fatal(err)
	} else if len(es) != 1 {
		t.Errorf("%d warnings about the duplicate MAC, want 1:%s", len(es), e.log.Dump(logrus.WarnLevel))
	}
	// Each of the others was final in the kernel before eth5 was created,
	// and netmon reads messages in kernel order, so the pass that attached
	// eth5 (ready only after its own messages) saw all of them as they
	// are, and so did every pass since (the one that refused eth6 has
	// begun). eth1 (its peer on no bridge) is pending rather than ignored
	// while netmon re-reads its peer (view.Peer.Rechecking, a 2 s window:
	// Docker enslaves a host end a moment after configuring the sandbox
	// end), but pending is not ready: it is never attached. The matcher
	// decides on the view alone; a fresh view of the netns, classified
	// below once its peer facts are final, says why each stays out.
	for _, c := range fs.CallsOf(hotplugtest.OpAddInterface) {
		if why, bad := hostile[c.Interface.Name]; bad || slices.Contains(hostileMACs, c.MAC()) {
			t.Errorf("attached %q (%s): %s", c.Interface.Name, c.MAC(), why)
		}
	}
	if adds := fs.CallsOf(hotplugtest.OpAddInterface); len(adds) != 1 || adds[0].MAC() != real.MAC.String() {
		t.Errorf("AddInterface calls %v, want only the real endpoint %s", fs.Ops(), real.MAC)
	}
	if got := fs.GuestMACs(); !slices.Equal(got, []string{real.MAC.String()}) {
		t.Errorf("guest NICs %v, want only %s", got, real.MAC)
	}
	for _, r := range fs.GuestRoutes() {
		if _, bad := hostile[r.Device]; bad {
			t.Errorf("route pushed through %q", r.Device)
		}
	}
	if w := e.log.Entries(logrus.WarnLevel, ""); len(w) != 1 {
		t.Errorf("warnings (want only the duplicate MAC's):%s", e.log.Dump(logrus.WarnLevel))
	}
	// Each was refused for what it is (Ignored), not merely still pending:
	// a fresh view of the netns, classified.
	mon, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath})
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	if err := mon.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap := waitPeersFinal(t, mon, waitTimeout)
	for _, name := range slices.Sorted(maps.Keys(hostile)) {
		if name == "eth6" {
			continue // a Docker endpoint to the matcher: refused by the reconciler
		}
		l := snap.LinkByName(name)
		if l == nil {
			t.Errorf("%s: not in the view", name)
			continue
		}
		d := matcher.Classify(l)
		t.Logf("%-9s %s: %v (%s)", name, hostile[name], d.State, d.Reason)
		if d.State != matcher.Ignored {
			t.Errorf("%s (%s) is %v (%s), want ignored", name, hostile[name], d.State, d.Reason)
		}
	}
	if d := matcher.Classify(snap.LinkByName("eth5")); d.State != matcher.Ready {
		t.Errorf("the real endpoint is %v (%s)", d.State, d.Reason)
	}
}

// waitPeersFinal waits until mon re-reads no link's peer facts any more
// (no view.Peer.Rechecking: every verdict the matcher gives is final) and
// returns that view.
func waitPeersFinal(t *testing.T, mon *netmon.Monitor, timeout time.Duration) *view.Snapshot {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		snap := mon.Snapshot()
		var rechecking []string
		for _, l := range snap.Links {
			if l.Peer != nil && l.Peer.Rechecking {
				rechecking = append(rechecking, l.Name)
			}
		}
		if len(rechecking) == 0 {
			return snap
		}
		select {
		case <-mon.Changed():
		case <-mon.Done():
			t.Fatalf("netmon ended while its peer facts were re-read: %v", mon.Err())
		case <-deadline.C:
			t.Fatalf("peer facts of %v still re-read after %v", rechecking, timeout)
		}
	}
}
