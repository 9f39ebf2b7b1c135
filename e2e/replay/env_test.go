//go:build linux

package replay

import (
	"net"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/direct"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// waitTimeout bounds every wait of the replay tests.
const waitTimeout = 10 * time.Second

// env is a "dockerd" netns (where the bridges and the host ends of
// the endpoints live) and a "sandbox" netns (Kata's, where Docker moves the
// container ends), both fresh and uniquely named.
type env struct {
	netmontest.Pair
}

// newEnv makes the two netns. Every goroutine a test starts after this
// must be gone once its cleanups have run (goleak, checked last).
func newEnv(t *testing.T) *env {
	t.Helper()
	netmontest.RequireRoot(t)
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // registered first: runs last
	e := &env{}
	e.Pair = netmontest.NewPair(t)
	return e
}

// dockerNet is a Docker bridge network: a bridge in the dockerd netns that
// carries the gateway addresses.
type dockerNet struct {
	Bridge  string
	Subnet  netip.Prefix // IPv4
	GW      netip.Addr
	Subnet6 netip.Prefix // invalid when the network is IPv4 only
	GW6     netip.Addr
}

// newNetwork creates a network on subnet ("172.30.1.0/24"), with
// subnet6 ("fd30:1::/64") too unless it is "". The gateway is host 1.
func (e *env) newNetwork(t *testing.T, subnet, subnet6 string) dockerNet {
	t.Helper()
	br := netmontest.AddBridge(t, e.Dockerd)
	n := dockerNet{Bridge: br.Name, Subnet: netip.MustParsePrefix(subnet)}
	n.GW = n.Subnet.Addr().Next()
	netmontest.AddAddr(t, e.Dockerd, br.Index, netip.PrefixFrom(n.GW, n.Subnet.Bits()).String())
	if subnet6 != "" {
		n.Subnet6 = netip.MustParsePrefix(subnet6)
		n.GW6 = n.Subnet6.Addr().Next()
		netmontest.AddAddr(t, e.Dockerd, br.Index, netip.PrefixFrom(n.GW6, n.Subnet6.Bits()).String())
	}
	return n
}

// Host returns host number h of the network as CIDRs (IPv4, then IPv6 when
// the network has it), as Docker assigns them to an endpoint.
func (n dockerNet) Host(h int) []string {
	out := []string{nthHost(n.Subnet, h).String()}
	if n.Subnet6.IsValid() {
		out = append(out, nthHost(n.Subnet6, h).String())
	}
	return out
}

func nthHost(p netip.Prefix, h int) netip.Prefix {
	a := p.Masked().Addr()
	for range h {
		a = a.Next()
	}
	return netip.PrefixFrom(a, p.Bits())
}

// endpoint is one Docker endpoint being replayed.
type endpoint struct {
	*netmontest.Endpoint
	TmpName string // the vethXXXXXXX name it arrived with
	MAC     net.HardwareAddr
	Addrs   []string
}

// newVeth is steps 1-3 up to the move: a veth created in the dockerd
// netns with its peer directly in the sandbox under vethXXXXXXX (no
// IFLA_LINK yet), the host end enslaved to the network's bridge and up.
// mtu > 0 is a custom network MTU: set on both ends before the rename, as
// Docker does (one more NEWLINK before the rename).
func (e *env) newVeth(t *testing.T, n dockerNet, mtu int) *endpoint {
	t.Helper()
	ep := &endpoint{Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, n.Bridge)}
	ep.TmpName = ep.Name
	if mtu > 0 {
		host, err := ep.Host.LinkByIndex(ep.HostIndex)
		if err != nil {
			t.Fatal(err)
		}
		if err := ep.Host.LinkSetMTU(host, mtu); err != nil {
			t.Fatalf("MTU %d on %s: %v", mtu, ep.HostName, err)
		}
		l, err := ep.Sandbox.LinkByIndex(ep.Index)
		if err != nil {
			t.Fatal(err)
		}
		if err := ep.Sandbox.LinkSetMTU(l, mtu); err != nil {
			t.Fatalf("MTU %d on %s: %v", mtu, ep.Name, err)
		}
	}
	return ep
}

// configure replays the rest of Docker 29's sequence: rename to name, a
// random locally administered MAC, the addresses, up. The kernel sets
// RUNNING on its own right after.
func (ep *endpoint) configure(t *testing.T, name string, addrs ...string) {
	t.Helper()
	ep.Rename(name)
	ep.MAC = netmontest.RandMAC()
	ep.SetMAC(ep.MAC.String())
	for _, a := range addrs {
		ep.AddAddr(a)
		ep.Addrs = append(ep.Addrs, a)
	}
	ep.Up()
}

// newEndpoint is a whole `docker run`/`connect` endpoint: veth,
// configure, and the default route via the network's gateway(s) when gw.
func (e *env) newEndpoint(t *testing.T, n dockerNet, name string, host, mtu int, gw bool) *endpoint {
	t.Helper()
	ep := e.newVeth(t, n, mtu)
	ep.configure(t, name, n.Host(host)...)
	if gw {
		ep.AddDefaultRoute(n.GW.String())
		if n.GW6.IsValid() {
			ep.AddDefaultRoute(n.GW6.String())
		}
	}
	return ep
}

// kernelDefaultRoute finds the sandbox's main-table default route of family
// through ifindex dev, as the kernel reports it.
func (e *env) kernelDefaultRoute(t *testing.T, family, dev int) *netlink.Route {
	t.Helper()
	rs, err := e.Sandbox.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: dev},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	for i := range rs {
		if rs[i].Dst == nil || prefixLen(rs[i].Dst) == 0 {
			return &rs[i]
		}
	}
	return nil
}

func prefixLen(n *net.IPNet) int { o, _ := n.Mask.Size(); return o }

// kernelLink reads a link of the sandbox as the kernel reports it now:
// MAC, MTU and its non-link-local addresses as CIDRs, sorted.
func (e *env) kernelLink(t *testing.T, name string) (mac string, mtu int, addrs []string) {
	t.Helper()
	l, err := e.Sandbox.LinkByName(name)
	if err != nil {
		t.Fatalf("kernel: link %s: %v", name, err)
	}
	as, err := e.Sandbox.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		addrs = append(addrs, a.IPNet.String())
	}
	sort.Strings(addrs)
	return l.Attrs().HardwareAddr.String(), l.Attrs().MTU, addrs
}

// checkAttach compares an attach event with what the kernel reports
// for the link now, and that with what the test configured.
func (e *env) checkAttach(t *testing.T, ev hotplugtest.Event, name string, wantMAC net.HardwareAddr, wantAddrs []string, wantMTU int) {
	t.Helper()
	mac, mtu, addrs := e.kernelLink(t, name)
	got := slices.Sorted(slices.Values(ev.Addresses))
	if ev.Op != "attach" || ev.Name != name || ev.MAC != mac || ev.MTU != uint64(mtu) || !slices.Equal(got, addrs) {
		t.Errorf("attach event %+v; the kernel says name %s mac %s mtu %d addresses %v", ev, name, mac, mtu, addrs)
	}
	want := slices.Sorted(slices.Values(wantAddrs))
	if mac != wantMAC.String() || mtu != wantMTU || !slices.Equal(addrs, want) {
		t.Errorf("kernel: %s has mac %s mtu %d addresses %v; configured %s, %d, %v", name, mac, mtu, addrs, wantMAC, wantMTU, want)
	}
}

// start starts netmon on the sandbox netns (peers resolved in the dockerd
// netns) and a reconciler driving sb, as shimhook does after its first
// reconcile (direct.Start). mod, if set, changes netmon's config.
func (e *env) start(t *testing.T, sb hotplug.Sandbox, mod func(*netmon.Config)) *direct.Monitor {
	t.Helper()
	return direct.Start(t, direct.Config{Sandbox: sb, SandboxNetNS: e.SandboxPath, DockerdNetNS: e.DockerdPath, Netmon: mod})
}

// startFake is start with a fresh FakeSandbox, which it returns.
func (e *env) startFake(t *testing.T, mod func(*netmon.Config)) (*hotplugtest.FakeSandbox, *direct.Monitor) {
	t.Helper()
	fs := &hotplugtest.FakeSandbox{}
	return fs, e.start(t, fs, mod)
}

// implied reads the sandbox netns from scratch (a new monitor, its
// first list) and returns what a correct monitor must have done by now: the
// MACs of the ready Docker endpoints and the routes through them, in the
// form the sandbox's events give routes.
func (e *env) implied(t *testing.T) (macs []string, routes []hotplugtest.EventRoute) {
	t.Helper()
	macs, hrs := hotplugtest.Implied(t, e.SandboxPath, e.DockerdPath)
	for _, hr := range hrs {
		dest := hr.Dest
		if dest == "" {
			dest = "default"
		}
		routes = append(routes, hotplugtest.EventRoute{Dest: dest, Gateway: hr.Gateway, Device: hr.Device})
	}
	return macs, sortRoutes(routes)
}

// inNetNS runs fn on a thread switched into the netns at path
// (nsdo.Do), failing the test on an error.
func inNetNS(t *testing.T, path string, fn func() error) {
	t.Helper()
	if err := nsfs.DoPath(path, fn); err != nil {
		t.Fatal(err)
	}
}

// Changes a test makes on the kernel beyond Docker's endpoint sequence.

// moveDefault moves the IPv4 default route from one endpoint to
// another as Docker does when a connect changes the gateway endpoint: the
// old one is deleted, then the new one added.
func moveDefault(t *testing.T, e *env, from, to *endpoint, gw netip.Addr) {
	t.Helper()
	old := e.kernelDefaultRoute(t, netlink.FAMILY_V4, from.Index)
	if old == nil {
		t.Fatalf("kernel: no default route through %s", from.Name)
	}
	if err := e.Sandbox.RouteDel(old); err != nil {
		t.Fatalf("delete default via %s: %v", from.Name, err)
	}
	to.AddDefaultRoute(gw.String())
	if r := e.kernelDefaultRoute(t, netlink.FAMILY_V4, to.Index); r == nil || r.Gw.String() != gw.String() {
		t.Fatalf("kernel: default route through %s is %v, want via %s", to.Name, r, gw)
	}
}

func addUp(t *testing.T, h *netlink.Handle, l netlink.Link) {
	t.Helper()
	if err := h.LinkAdd(l); err != nil {
		t.Fatalf("add %s %s: %v", l.Type(), l.Attrs().Name, err)
	}
	t.Cleanup(func() { _ = h.LinkDel(l) })
	if err := h.LinkSetUp(l); err != nil {
		t.Fatalf("%s up: %v", l.Attrs().Name, err)
	}
}
