//go:build linux

package replay

import (
	"fmt"
	"slices"
	"testing"

	"github.com/kata-netmon/kata-netmon/e2e/internal/direct"
	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// What is never attached (links that are not Docker endpoints) and what is
// adopted rather than attached again (endpoints the sandbox has already).

// TestNeverAttached: Kata's own tap0_kata (a multi-queue tap with a
// queue open, as QEMU holds it: up and running, even with an address), an
// ifb with an address, and a fully configured veth whose peer is on no
// bridge are never attached; a real endpoint added after them is.
func TestNeverAttached(t *testing.T) {
	e := newEnv(t)
	n := e.newNetwork(t, "172.30.1.0/24", "")
	fs, mon := e.startFake(t, nil)

	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0_kata"}, Mode: netlink.TUNTAP_MODE_TAP,
		Queues: 1, Flags: netlink.TUNTAP_MULTI_QUEUE_DEFAULTS | netlink.TUNTAP_VNET_HDR}
	inNetNS(t, e.SandboxPath, func() error { return netlink.LinkAdd(tap) })
	t.Cleanup(func() {
		for _, f := range tap.Fds {
			f.Close()
		}
		_ = e.Sandbox.LinkDel(tap)
	})
	if err := e.Sandbox.LinkSetUp(tap); err != nil {
		t.Fatal(err)
	}
	netmontest.AddAddr(t, e.Sandbox, tap.Index, "10.99.0.1/24")

	ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
	addUp(t, e.Sandbox, ifb)
	netmontest.AddAddr(t, e.Sandbox, ifb.Index, "10.98.0.1/24")

	lone := &endpoint{Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, "")}
	lone.configure(t, "eth5", n.Host(9)...)

	// Wait until the monitor has seen all three in their final state,
	// then add a real endpoint: once it is attached, the reconciler has
	// had its chance at the others. The lone veth's peer facts are final
	// only once netmon stops re-reading them (view.Peer.Rechecking, its
	// 2 s window): until then a peer on no bridge may still be enslaved,
	// as Docker does a moment after configuring the sandbox end, and the
	// matcher keeps it pending.
	ready := func(l *view.Link) bool { return l.Up() && l.Running() && len(l.Addrs) > 0 }
	snap := mon.WaitView(t, waitTimeout, "tap, ifb and lone veth configured, its peer facts final", func(s *view.Snapshot) bool {
		l := s.LinkByName("eth5")
		return direct.LinkState("tap0_kata", ready)(s) && direct.LinkState(ifb.Name, ready)(s) &&
			l != nil && ready(l) && l.Peer != nil && l.Peer.State == view.PeerResolved && !l.Peer.Rechecking
	})
	for _, name := range []string{"tap0_kata", ifb.Name, "eth5"} {
		d := matcher.Classify(snap.LinkByName(name))
		t.Logf("%s (%s): %s, %s", name, d.Kind, d.State, d.Reason)
		if d.State != matcher.Ignored {
			t.Errorf("%s classified %s (%s), want ignored", name, d.State, d.Reason)
		}
	}

	eth0 := e.newEndpoint(t, n, "eth0", 2, 0, false)
	_, at := waitEvent(t, fs, "attach eth0", 0, isAttach("eth0", eth0.MAC.String()))
	if evs := fs.Events(); count(evs, "attach") != 1 || at != 0 {
		t.Errorf("want eth0's attach as the only event so far:%s", formatEvents(evs))
	}
}

// TestAlreadyAttached: an endpoint the sandbox has already (Kata's
// own rescan attached it, or a monitor before this one) is adopted, not
// attached a second time; its routes are still pushed.
func TestAlreadyAttached(t *testing.T) {
	for _, before := range []bool{true, false} {
		t.Run(fmt.Sprintf("ready before start %v", before), func(t *testing.T) {
			e := newEnv(t)
			n := e.newNetwork(t, "172.30.1.0/24", "")
			fs := &hotplugtest.FakeSandbox{}
			ep := e.newVeth(t, n, 0)
			// The MAC Docker is about to give the endpoint is already the
			// guest's NIC's.
			mac := netmontest.RandMAC()
			if _, err := fs.GuestAddInterface(&hotplug.Interface{Name: "eth0", Device: "eth0", HwAddr: mac.String(), Type: "veth"}); err != nil {
				t.Fatal(err)
			}
			configure := func() {
				ep.Rename("eth0")
				ep.MAC = mac
				ep.SetMAC(mac.String())
				ep.AddAddr(n.Host(2)[0])
				ep.Up()
				ep.AddDefaultRoute(n.GW.String())
			}
			if before {
				configure()
			}
			mon := e.start(t, fs, nil)
			if !before {
				configure()
			}
			marker := e.newEndpoint(t, n, "eth1", 3, 0, false)

			if _, err := fs.WaitCalls(hotplugtest.OpAddInterface, 1, waitTimeout); err != nil {
				t.Fatal(err)
			}
			wantRoute := hotplug.Route{Dest: "", Gateway: n.GW.String(), Device: "eth0", Family: hotplug.FamilyV4}
			if _, err := fs.WaitFor(waitTimeout, func(calls []hotplugtest.Call) bool {
				for _, c := range calls {
					if c.Op == hotplugtest.OpUpdateRoutes && slices.ContainsFunc(c.Routes, func(r *hotplug.Route) bool {
						return r.Dest == wantRoute.Dest && r.Gateway == wantRoute.Gateway && r.Device == wantRoute.Device
					}) {
						return true
					}
				}
				return false
			}, "default route via eth0"); err != nil {
				t.Fatal(err)
			}
			for _, c := range fs.CallsOf(hotplugtest.OpAddInterface) {
				if c.MAC() != marker.MAC.String() {
					t.Errorf("AddInterface(%s %s): the sandbox had it already", c.Interface.Name, c.MAC())
				}
			}
			if got, want := fs.GuestMACs(), slices.Sorted(slices.Values([]string{mac.String(), marker.MAC.String()})); !slices.Equal(got, want) {
				t.Errorf("guest MACs %v, want %v (each once)", got, want)
			}
			if !slices.ContainsFunc(mon.Reconciler.NICs(), func(a matcher.GuestNIC) bool { return a.Index == ep.Index && a.MAC == mac.String() }) {
				t.Errorf("eth0 not adopted: attached %+v", mon.Reconciler.NICs())
			}
		})
	}
}
