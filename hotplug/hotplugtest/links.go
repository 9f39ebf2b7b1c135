package hotplugtest

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// Flags of a ready endpoint: IFF_UP | IFF_RUNNING | IFF_LOWER_UP.
const UpRunning = view.FlagUp | view.FlagRunning | view.FlagLowerUp

// Bridge is the ifindex of the bridge (docker0) every endpoint's host peer
// is enslaved to.
const Bridge = 3

// rtprotBoot is RTPROT_BOOT: Docker adds its default route with it.
const rtprotBoot = 3

// MAC parses s, panicking on malformed input like netip.MustParseAddr: it is
// for literals in tests.
func MAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(fmt.Sprintf("hotplugtest.MAC(%q): %v", s, err))
	}
	return m
}

// Endpoint returns a Docker bridge endpoint after step 7 of Docker's
// sequence: a veth, UP|RUNNING, with the given addresses ("172.18.0.2/16",
// "fd00::2/64"), its peer resolved in dockerd's netns (a veth pointing back,
// enslaved to the bridge at index 3). Malformed arguments panic.
func Endpoint(index int, name, mac string, addrs ...string) *view.Link {
	l := &view.Link{
		Index:       index,
		Name:        name,
		Kind:        "veth",
		MAC:         MAC(mac),
		MTU:         1500,
		RawFlags:    UpRunning,
		OperState:   "up",
		ParentIndex: 100 + index,
		LinkNetNSID: 0,
		Peer: &view.Peer{
			State:       view.PeerResolved,
			NetNS:       "/proc/1/ns/net",
			Found:       true,
			Name:        fmt.Sprintf("veth%07x", 100+index),
			Kind:        "veth",
			PointsBack:  true,
			MasterIndex: Bridge,
			MasterKind:  "bridge",
		},
	}
	for _, a := range addrs {
		l.Addrs = append(l.Addrs, Addr(a))
	}
	return l
}

// Addr returns an address of universe scope ("172.18.0.2/16"); link-local
// addresses get link scope.
func Addr(prefix string) view.Addr {
	a := view.Addr{Prefix: netip.MustParsePrefix(prefix)}
	if a.LinkLocal() {
		a.Scope = 253 // RT_SCOPE_LINK
	}
	return a
}

// Loopback returns lo at ifindex 1, up.
func Loopback() *view.Link {
	return &view.Link{
		Index: 1, Name: "lo", Kind: "device", MTU: 65536, OperState: "unknown",
		RawFlags: view.FlagUp | view.FlagRunning | view.FlagLowerUp | 0x8, // IFF_LOOPBACK
		Addrs:    []view.Addr{{Prefix: netip.MustParsePrefix("127.0.0.1/8"), Scope: 254}},
	}
}

// SetDown clears UP and RUNNING, as `ip link set down` does, and returns l.
func SetDown(l *view.Link) *view.Link {
	l.RawFlags &^= UpRunning
	l.OperState = "down"
	return l
}

// SetUp sets UP and RUNNING and returns l.
func SetUp(l *view.Link) *view.Link {
	l.RawFlags |= UpRunning
	l.OperState = "up"
	return l
}

// DefaultRoute returns the default route Docker adds via gw (IPv4 or IPv6)
// through the link at index dev: Dst 0.0.0.0/0 or ::/0, as netlink v1.3.1
// reports it.
func DefaultRoute(gw string, dev int) view.Route {
	g := netip.MustParseAddr(gw)
	dst := netip.MustParsePrefix("0.0.0.0/0")
	fam := view.FamilyV4
	if !g.Is4() {
		dst = netip.MustParsePrefix("::/0")
		fam = view.FamilyV6
	}
	return view.Route{
		Family: fam, Dst: dst, Gateway: g, LinkIndex: dev,
		Table: view.TableMain, Protocol: rtprotBoot, Type: 1,
	}
}

// StaticRoute returns a unicast main-table route to dst via gw ("" for
// none) through the link at index dev, as an operator or a driver adds it.
func StaticRoute(dst, gw string, dev int) view.Route {
	d := netip.MustParsePrefix(dst)
	r := view.Route{
		Family: view.FamilyV4, Dst: d, LinkIndex: dev,
		Table: view.TableMain, Protocol: rtprotBoot, Type: 1,
	}
	if !d.Addr().Is4() {
		r.Family = view.FamilyV6
	}
	if gw != "" {
		r.Gateway = netip.MustParseAddr(gw)
	}
	return r
}

// KernelRoute returns the prefix route the kernel adds for an address on the
// link at index dev (the guest makes its own: never pushed).
func KernelRoute(dst string, dev int) view.Route {
	r := StaticRoute(dst, "", dev)
	r.Protocol = view.RouteProtoKernel
	r.Scope = 253
	return r
}

// KernelLink is what Source.LinkByName returns for an up veth with index and
// MAC: for LinkByNameFn overrides that model a kernel ahead of the view.
func KernelLink(index int, mac string) *view.Link {
	return &view.Link{Index: index, Kind: "veth", MAC: MAC(mac), MTU: 1500, RawFlags: UpRunning, OperState: "up"}
}
