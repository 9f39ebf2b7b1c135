//go:build linux

package guest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// lab is a guest without Docker: a sandbox netns where QEMU runs and a
// "dockerd" netns holding a bridge with the gateway address, and endpoints
// replayed the way Docker's bridge driver leaves them (veths, host end on
// the bridge, sandbox end ethN with a MAC and an address, up).
type lab struct {
	netmontest.Pair
	bridge *netlink.Bridge
	vm     *guest.VM
	next   int // host part of the next endpoint address
}

// labSubnet is the bridge's subnet (the dockerd netns is the lab's own).
const labSubnet = "10.201.0"

// newLab boots a guest with rootPorts hot-pluggable slots (0: 4) in a fresh
// sandbox netns beside a dockerd netns with a bridge at 10.201.0.1/24.
func newLab(t *testing.T, rootPorts int) *lab {
	t.Helper()
	l := &lab{Pair: netmontest.NewPair(t), next: 2}
	l.bridge = netmontest.AddBridge(t, l.Dockerd)
	must(t, l.Dockerd.AddrAdd(l.bridge, parseAddr(t, labSubnet+".1/24")))
	must(t, l.Sandbox.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}))
	l.vm = guest.Boot(t, guest.Options{NetNS: l.SandboxPath, RootPorts: rootPorts})
	return l
}

// gateway is the bridge's address.
func (l *lab) gateway() string { return labSubnet + ".1" }

// endpoint is a replayed Docker endpoint.
type endpoint struct {
	*netmontest.Endpoint
	MAC string // the MAC Docker gave it (lowercase)
	IP  string // its IPv4 address, /24
}

// endpoint replays a connect: a veth whose sandbox end is name, with a
// fresh MAC and the next address of the bridge's subnet, up.
func (l *lab) endpoint(t *testing.T, name string) *endpoint {
	t.Helper()
	e := &endpoint{Endpoint: netmontest.VethToNetNS(t, l.DockerdNS, l.SandboxNS, l.bridge.Name),
		MAC: netmontest.RandMAC().String(), IP: fmt.Sprintf("%s.%d", labSubnet, l.next)}
	e.Configure(name, e.MAC, e.IP+"/24", "")
	l.next++
	return e
}

// disconnect replays Docker's disconnect of e: down, renamed back to a
// veth name, moved out to dockerd's netns.
func (l *lab) disconnect(t *testing.T, e *endpoint) {
	t.Helper()
	l.setDown(t, e.Index)
	e.Rename("veth" + netmontest.RandName()[4:11])
	e.MoveTo(l.DockerdNS)
}

func (l *lab) setDown(t *testing.T, index int) {
	t.Helper()
	must(t, l.Sandbox.LinkSetDown(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}))
}

// sim returns a katasim sandbox on the lab's guest.
func (l *lab) sim(t *testing.T, opts katasim.Options) *katasim.Sandbox {
	t.Helper()
	sb, err := katasim.New(l.vm, opts)
	must(t, err)
	t.Cleanup(func() { sb.Close() })
	return sb
}

// link reads a sandbox link by ifindex.
func (l *lab) link(t *testing.T, index int) netlink.Link {
	t.Helper()
	k, err := l.Sandbox.LinkByIndex(index)
	must(t, err)
	return k
}

// reach serves a fresh token in the guest on port and reads it from the
// dockerd netns at ip: an answer proves bridge -> veth -> tap -> guest.
func (l *lab) reach(ctx context.Context, t *testing.T, ip string, port int) {
	t.Helper()
	token := netmontest.RandName()
	must(t, l.vm.Agent.ServeToken(ctx, port, token))
	addr := net.JoinHostPort(ip, fmt.Sprint(port))
	start := time.Now()
	got, err := guest.ReadToken(ctx, l.DockerdPath, addr, 2*time.Second, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("read the guest's token at %s from the dockerd netns: %v", addr, err)
	}
	if got != token {
		t.Fatalf("token from %s = %q, want %q", addr, got, token)
	}
	t.Logf("guest answered at %s in %v", addr, time.Since(start).Round(100*time.Microsecond))
}

// links returns the guest's links as its kernel has them.
func (l *lab) links(ctx context.Context, t *testing.T) []*guestproto.Link {
	t.Helper()
	ls, err := l.vm.Agent.Links(ctx)
	must(t, err)
	return ls
}

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

// interfaceOf describes a sandbox link the way the monitor hands it to
// Kata (hotplug.InterfaceFromLink's fields): netlink kind, MAC, MTU, IPv4
// addresses with the prefix length.
func interfaceOf(t testing.TB, h *netlink.Handle, index int) *hotplug.Interface {
	t.Helper()
	l, err := h.LinkByIndex(index)
	must(t, err)
	a := l.Attrs()
	inf := &hotplug.Interface{Device: a.Name, Name: a.Name, HwAddr: a.HardwareAddr.String(), Mtu: uint64(a.MTU), Type: l.Type(), RawFlags: a.RawFlags}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	must(t, err)
	for _, ad := range addrs {
		ones, _ := ad.Mask.Size()
		inf.IPAddresses = append(inf.IPAddresses, &hotplug.IPAddress{Family: hotplug.FamilyV4, Address: ad.IP.String(), Mask: fmt.Sprint(ones)})
	}
	return inf
}

// mirred reports whether the link has an ingress u32 filter with a mirred
// redirect.
func mirred(t testing.TB, h *netlink.Handle, index int) bool {
	t.Helper()
	l, err := h.LinkByIndex(index)
	if err != nil {
		return false
	}
	filters, err := h.FilterList(l, netlink.MakeHandle(0xffff, 0))
	if err != nil {
		return false
	}
	for _, f := range filters {
		if u, ok := f.(*netlink.U32); ok {
			for _, a := range u.Actions {
				if _, ok := a.(*netlink.MirredAction); ok {
					return true
				}
			}
		}
	}
	return false
}

// addrsOf lists a sandbox link's IPv4 addresses ("10.1.0.2/24").
func addrsOf(t testing.TB, h *netlink.Handle, index int) []string {
	t.Helper()
	l, err := h.LinkByIndex(index)
	must(t, err)
	as, err := h.AddrList(l, netlink.FAMILY_V4)
	must(t, err)
	var out []string
	for _, a := range as {
		out = append(out, a.IPNet.String())
	}
	return out
}

// describeLinks renders the guest's links for a failure message.
func describeLinks(ls []*guestproto.Link) string {
	var parts []string
	for _, l := range ls {
		s := fmt.Sprintf("%s(%d) %s", l.Name, l.Index, l.MAC)
		if !l.Up() {
			s += " DOWN"
		}
		for _, a := range l.Addrs {
			if a.Family == guestproto.FamilyV4 {
				s += fmt.Sprintf(" %s/%d", a.Address, a.PrefixLen)
			}
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}
