//go:build linux

package guest

import (
	"fmt"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// The kernel side of TestHotplugTraffic: two netns, a bridge, veths
// configured as Docker leaves them, and what tc shows.

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func parseAddr(t testing.TB, s string) *netlink.Addr {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	must(t, err)
	return a
}

// newNetNS creates a named netns with lo up and a netlink handle in it,
// both removed on cleanup.
func newNetNS(t testing.TB, name string) (string, *netlink.Handle) {
	t.Helper()
	path, ns := netmontest.NewNamedNetNS(t, name)
	h := netmontest.HandleAt(t, ns)
	must(t, h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}))
	return path, h
}

// addVeth makes a veth pair in the bridge netns, enslaves hostName to
// bridge and moves the peer into the sandbox netns as name, with mac and
// addr, up: what Docker's bridge driver leaves there.
func addVeth(t testing.TB, brH, sbxH *netlink.Handle, sbxPath string, bridge netlink.Link, hostName, name, mac, addr string) netlink.Link {
	t.Helper()
	peer := hostName + "p"
	must(t, brH.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName, MasterIndex: bridge.Attrs().Index}, PeerName: peer}))
	host, err := brH.LinkByName(hostName)
	must(t, err)
	must(t, brH.LinkSetUp(host))
	p, err := brH.LinkByName(peer)
	must(t, err)
	ns, err := netns.GetFromPath(sbxPath)
	must(t, err)
	defer ns.Close()
	must(t, brH.LinkSetNsFd(p, int(ns)))
	l, err := sbxH.LinkByName(peer)
	must(t, err)
	must(t, sbxH.LinkSetName(l, name))
	hw, err := net.ParseMAC(mac)
	must(t, err)
	must(t, sbxH.LinkSetHardwareAddr(l, hw))
	must(t, sbxH.AddrAdd(l, parseAddr(t, addr)))
	must(t, sbxH.LinkSetUp(l))
	l, err = sbxH.LinkByName(name)
	must(t, err)
	return l
}

// interfaceOf describes a sandbox link the way the monitor hands it to
// Kata: netlink kind, MAC, MTU, IPv4 addresses with the prefix length.
func interfaceOf(t testing.TB, h *netlink.Handle, name string) *hotplug.Interface {
	t.Helper()
	l, err := h.LinkByName(name)
	must(t, err)
	a := l.Attrs()
	inf := &hotplug.Interface{Name: a.Name, HwAddr: a.HardwareAddr.String(), Mtu: uint64(a.MTU), Type: l.Type(), RawFlags: a.RawFlags}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	must(t, err)
	for _, ad := range addrs {
		ones, _ := ad.Mask.Size()
		inf.IPAddresses = append(inf.IPAddresses, &hotplug.IPAddress{Family: hotplug.FamilyV4, Address: ad.IP.String(), Mask: fmt.Sprint(ones)})
	}
	if len(inf.IPAddresses) == 0 {
		t.Fatalf("%s has no IPv4 address", name)
	}
	return inf
}

// assertMirred checks whether link has an ingress qdisc with a u32
// mirred filter.
func assertMirred(t testing.TB, h *netlink.Handle, name string, want bool) {
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

func hasRoute(rs []*hotplug.Route, dest, gw, dev string) bool {
	for _, r := range rs {
		if r.Dest == dest && r.Gateway == gw && r.Device == dev {
			return true
		}
	}
	return false
}
