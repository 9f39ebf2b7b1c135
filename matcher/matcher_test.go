package matcher_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/kata-netmon/kata-netmon/matcher"
)

const (
	upRunning = view.FlagUp | view.FlagRunning | view.FlagLowerUp
	dockerMAC = "02:42:ac:12:00:02"
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func addr(s string) view.Addr {
	return view.Addr{Prefix: netip.MustParsePrefix(s)}
}

// goodPeer is a Docker bridge endpoint's host side as netmon resolves it:
// a veth in dockerd's netns pointing back at the sandbox link, enslaved to
// docker0.
func goodPeer() *view.Peer {
	return &view.Peer{
		State:       view.PeerResolved,
		NetNS:       "/proc/1/ns/net",
		Found:       true,
		Name:        "veth1a2b3c4",
		Kind:        "veth",
		PointsBack:  true,
		MasterIndex: 3,
		MasterKind:  "bridge",
	}
}

// readyVeth is a Docker bridge endpoint after step 7 of the sequence: every
// fact holds. Tests break one fact at a time.
func readyVeth() *view.Link {
	return &view.Link{
		Index:       7,
		Name:        "eth0",
		Kind:        "veth",
		MAC:         mustMAC(dockerMAC),
		MTU:         1500,
		RawFlags:    upRunning,
		OperState:   "up",
		ParentIndex: 57,
		LinkNetNSID: 0,
		Addrs:       []view.Addr{addr("172.18.0.2/16")},
		Peer:        goodPeer(),
	}
}

// readyOverlay is a Docker overlay endpoint as a real Docker 29 swarm made
// it: eth0 (MTU 1450) whose peer veth1 sits on bridge br0 in the overlay
// network's own netns, which dockerd bind-mounted as 1-<network id> in its
// netns directory (moby daemon/libnetwork/drivers/overlay/ov_network.go:
// initSandbox, joinleave.go: Join).
func readyOverlay() *view.Link {
	l := readyVeth()
	l.MTU = 1450
	l.ParentIndex, l.LinkNetNSID = 15, 1
	l.Addrs = []view.Addr{addr("10.0.1.3/24")}
	l.Peer = &view.Peer{State: view.PeerResolved, Home: view.HomeDockerOwned, NetNS: "/run/docker/netns/1-z94n0wz9xl",
		Found: true, Name: "veth1", Kind: "veth", PointsBack: true, MasterIndex: 2, MasterKind: "bridge"}
	return l
}

// readyMacvlan is a Docker macvlan endpoint: IFLA_LINK is its parent in the
// host netns; there is no peer to point back.
func readyMacvlan() *view.Link {
	l := readyVeth()
	l.Kind = "macvlan"
	l.ParentIndex = 2
	l.Peer = &view.Peer{State: view.PeerResolved, NetNS: "/proc/1/ns/net", Found: true, Name: "enp1s0", Kind: "device"}
	return l
}

type classifyCase struct {
	name       string
	link       func() *view.Link
	want       matcher.State
	wantReason string // a substring of the reason: proves which branch decided
}

func with(base func() *view.Link, mod func(*view.Link)) func() *view.Link {
	return func() *view.Link {
		l := base()
		mod(l)
		return l
	}
}

func runClassify(t *testing.T, tests []classifyCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tt.link()
			got := matcher.Classify(l)
			if got.State != tt.want || !strings.Contains(got.Reason, tt.wantReason) {
				t.Errorf("Classify(%s) = %v (%q), want %v (reason containing %q)", l.Name, got.State, got.Reason, tt.want, tt.wantReason)
			}
			if got.Index != l.Index || got.Name != l.Name || got.Kind != l.Kind {
				t.Errorf("Classify(%s) identifies %d/%q/%q, want %d/%q/%q", l.Name, got.Index, got.Name, got.Kind, l.Index, l.Name, l.Kind)
			}
		})
	}
}

func TestClassifyIgnored(t *testing.T) {
	runClassify(t, []classifyCase{
		{"lo by flag", func() *view.Link {
			return &view.Link{Index: 1, Name: "lo", Kind: "device", RawFlags: view.FlagLoopback | view.FlagUp | view.FlagRunning,
				MAC: make(net.HardwareAddr, 6), Addrs: []view.Addr{addr("127.0.0.1/8")}}
		}, matcher.Ignored, "loopback"},
		{"loopback flag on an otherwise ready veth", with(readyVeth, func(l *view.Link) { l.RawFlags |= view.FlagLoopback }), matcher.Ignored, "loopback"},
		{"named lo without the flag", with(readyVeth, func(l *view.Link) { l.Name = "lo" }), matcher.Ignored, "loopback"},
		{"tap0_kata", func() *view.Link {
			return &view.Link{Index: 9, Name: "tap0_kata", Kind: "tuntap", MAC: mustMAC("b6:1f:00:00:00:01"), RawFlags: upRunning}
		}, matcher.Ignored, "Kata's own"},
		{"endpoint renamed tap9_kata", with(readyVeth, func(l *view.Link) { l.Name = "tap9_kata" }), matcher.Ignored, "Kata's own"},
		{"br0_kata", with(readyVeth, func(l *view.Link) { l.Name, l.Kind = "br0_kata", "bridge" }), matcher.Ignored, "Kata's own"},
		{"kind tuntap", with(readyVeth, func(l *view.Link) { l.Kind = "tuntap" }), matcher.Ignored, `kind "tuntap"`},
		{"kind macvtap", with(readyVeth, func(l *view.Link) { l.Kind = "macvtap" }), matcher.Ignored, `kind "macvtap"`},
		{"kind ifb", with(readyVeth, func(l *view.Link) { l.Kind = "ifb" }), matcher.Ignored, `kind "ifb"`},
		{"kind bridge", with(readyVeth, func(l *view.Link) { l.Kind = "bridge" }), matcher.Ignored, `kind "bridge"`},
		{"kind device", with(readyVeth, func(l *view.Link) { l.Kind = "device" }), matcher.Ignored, `kind "device"`},
		{"kind empty", with(readyVeth, func(l *view.Link) { l.Kind = "" }), matcher.Ignored, `kind ""`},
		{"no MAC", with(readyVeth, func(l *view.Link) { l.MAC = nil }), matcher.Ignored, "no Ethernet MAC"},
		{"8-byte MAC", with(readyVeth, func(l *view.Link) { l.MAC = make(net.HardwareAddr, 8) }), matcher.Ignored, "no Ethernet MAC"},
		{"peer in the same netns", with(readyVeth, func(l *view.Link) {
			l.LinkNetNSID = -1
			l.Peer = &view.Peer{State: view.PeerSameNetNS, Found: true, Kind: "veth", PointsBack: true}
		}), matcher.Ignored, "sandbox netns itself"},
		{"peer in a foreign netns (path known)", with(readyVeth, func(l *view.Link) {
			l.Peer = &view.Peer{State: view.PeerForeignNetNS, NetNS: "/run/netns/other"}
		}), matcher.Ignored, "/run/netns/other is not dockerd's"},
		{"peer in a foreign netns (unidentified)", with(readyVeth, func(l *view.Link) {
			l.LinkNetNSID = 4
			l.Peer = &view.Peer{State: view.PeerForeignNetNS}
		}), matcher.Ignored, "netns id 4 is not dockerd's"},
		{"peer error", with(readyVeth, func(l *view.Link) {
			l.Peer = &view.Peer{State: view.PeerError, Err: "EPERM"}
		}), matcher.Ignored, "unreadable: EPERM"},
		{"peer state out of range", with(readyVeth, func(l *view.Link) { l.Peer.State = view.PeerState(42) }), matcher.Ignored, "peer state unknown"},
		{"peer not found", with(readyVeth, func(l *view.Link) { l.Peer.Found = false }), matcher.Ignored, "not found"},
		{"peer not a veth", with(readyVeth, func(l *view.Link) { l.Peer.Kind = "bridge" }), matcher.Ignored, "not a veth"},
		{"peer does not point back", with(readyVeth, func(l *view.Link) { l.Peer.PointsBack = false }), matcher.Ignored, "does not point back"},
		{"peer on no bridge (final: netmon stopped re-reading)", with(readyVeth, func(l *view.Link) { l.Peer.MasterIndex, l.Peer.MasterKind = 0, "" }), matcher.Ignored, "on no bridge"},
		// Final verdicts stay final even while netmon re-reads.
		{"peer not a veth, rechecking", with(readyVeth, func(l *view.Link) { l.Peer.Kind, l.Peer.Rechecking = "bridge", true }), matcher.Ignored, "not a veth"},
		{"peer master is a bond", with(readyVeth, func(l *view.Link) { l.Peer.MasterKind = "bond" }), matcher.Ignored, "not a bridge"},
		{"macvlan parent in a foreign netns", with(readyMacvlan, func(l *view.Link) {
			l.Peer = &view.Peer{State: view.PeerForeignNetNS, NetNS: "/run/netns/x"}
		}), matcher.Ignored, "not dockerd's"},
		{"macvlan parent not found", with(readyMacvlan, func(l *view.Link) { l.Peer.Found = false }), matcher.Ignored, "not found"},
		// A netns Docker owns (overlay) holds veth peers on a bridge,
		// never a macvlan parent, and the same checks as in dockerd's
		// apply there.
		{"macvlan parent in a Docker-owned netns", with(readyMacvlan, func(l *view.Link) {
			l.Peer.Home, l.Peer.NetNS = view.HomeDockerOwned, "/run/docker/netns/1-z94n0wz9xl"
		}), matcher.Ignored, "Docker-owned netns"},
		{"overlay peer not found", with(readyOverlay, func(l *view.Link) { l.Peer.Found = false }), matcher.Ignored, "not found in docker-owned netns /run/docker/netns/1-z94n0wz9xl"},
		{"overlay peer not a veth", with(readyOverlay, func(l *view.Link) { l.Peer.Kind = "vxlan" }), matcher.Ignored, "not a veth"},
		{"overlay peer does not point back", with(readyOverlay, func(l *view.Link) { l.Peer.PointsBack = false }), matcher.Ignored, "does not point back"},
		{"overlay peer on no bridge", with(readyOverlay, func(l *view.Link) { l.Peer.MasterIndex, l.Peer.MasterKind = 0, "" }), matcher.Ignored, "on no bridge"},
		{"overlay peer enslaved to a bond", with(readyOverlay, func(l *view.Link) { l.Peer.MasterKind = "bond" }), matcher.Ignored, "not a bridge"},
		{"ipvlan (kind not handled)", with(readyMacvlan, func(l *view.Link) { l.Kind = "ipvlan" }), matcher.Ignored, `kind "ipvlan"`},
	})
}

func TestClassifyPendingAndReady(t *testing.T) {
	runClassify(t, []classifyCase{
		{"ready veth", readyVeth, matcher.Ready, "ready"},
		{"names never decide: ready veth1234", with(readyVeth, func(l *view.Link) { l.Name = "veth1234" }), matcher.Ready, "ready"},
		{"names never decide: custom ifname", with(readyVeth, func(l *view.Link) { l.Name = "kata" }), matcher.Ready, "ready"},
		{"ready without IFF_LOWER_UP in RawFlags", with(readyVeth, func(l *view.Link) { l.RawFlags = view.FlagUp | view.FlagRunning }), matcher.Ready, "ready"},
		{"IPv6-only global address", with(readyVeth, func(l *view.Link) {
			l.Addrs = []view.Addr{addr("fe80::42:acff:fe12:2/64"), addr("2001:db8::2/64")}
		}), matcher.Ready, "ready"},
		{"link-local plus global", with(readyVeth, func(l *view.Link) {
			l.Addrs = []view.Addr{addr("169.254.3.4/16"), addr("172.18.0.2/16")}
		}), matcher.Ready, "ready"},
		{"only link-local addresses", with(readyVeth, func(l *view.Link) {
			l.Addrs = []view.Addr{addr("fe80::42:acff:fe12:2/64"), addr("169.254.3.4/16")}
		}), matcher.Pending, "no address"},
		{"no addresses", with(readyVeth, func(l *view.Link) { l.Addrs = nil }), matcher.Pending, "no address"},
		{"invalid prefix only", with(readyVeth, func(l *view.Link) { l.Addrs = []view.Addr{{}} }), matcher.Pending, "no address"},
		{"down", with(readyVeth, func(l *view.Link) { l.RawFlags = 0 }), matcher.Pending, "down"},
		{"up, not running", with(readyVeth, func(l *view.Link) { l.RawFlags = view.FlagUp }), matcher.Pending, "not running"},
		{"ParentIndex 0", with(readyVeth, func(l *view.Link) { l.ParentIndex = 0 }), matcher.Pending, "peer not tied yet"},
		{"nil peer", with(readyVeth, func(l *view.Link) { l.Peer = nil }), matcher.Pending, "peer not tied yet"},
		{"peer untied (netns id unknown yet)", with(readyVeth, func(l *view.Link) {
			l.Peer = &view.Peer{State: view.PeerUntied}
		}), matcher.Pending, "peer not tied yet"},
		// The host end is enslaved to its bridge a moment after the
		// sandbox end is ready: pending while netmon re-reads it.
		{"peer on no bridge yet (rechecking)", with(readyVeth, func(l *view.Link) {
			l.Peer.MasterIndex, l.Peer.MasterKind, l.Peer.Rechecking = 0, "", true
		}), matcher.Pending, "on no bridge yet"},
		{"peer error, rechecking", with(readyVeth, func(l *view.Link) {
			l.Peer = &view.Peer{State: view.PeerError, Err: "EMFILE", Rechecking: true}
		}), matcher.Pending, "unreadable: EMFILE"},
		// netmon searches Docker's netns directory again for an id not
		// found there yet (a bind mount made after the link arrived).
		{"peer in a foreign netns, rechecking", with(readyVeth, func(l *view.Link) {
			l.LinkNetNSID = 4
			l.Peer = &view.Peer{State: view.PeerForeignNetNS, Rechecking: true}
		}), matcher.Pending, "netns id 4 is not dockerd's"},
		{"overlay endpoint ready (peer on br0 in the network's netns)", readyOverlay, matcher.Ready, "ready"},
		{"overlay peer on no bridge yet (rechecking)", with(readyOverlay, func(l *view.Link) {
			l.Peer.MasterIndex, l.Peer.MasterKind, l.Peer.Rechecking = 0, "", true
		}), matcher.Pending, "on no bridge yet"},
		{"overlay peer unreadable, rechecking", with(readyOverlay, func(l *view.Link) {
			l.Peer = &view.Peer{State: view.PeerError, Home: view.HomeDockerOwned, NetNS: l.Peer.NetNS, Err: "EMFILE", Rechecking: true}
		}), matcher.Pending, "unreadable: EMFILE"},
		{"veth peer in a scanned netns (watch command)", with(readyVeth, func(l *view.Link) { l.Peer.Home = view.HomeScanned }), matcher.Ready, "ready"},
		{"macvlan ready, parent any kind, no point-back", readyMacvlan, matcher.Ready, "ready"},
		{"macvlan parent is a bridge", with(readyMacvlan, func(l *view.Link) { l.Peer.Kind = "bridge" }), matcher.Ready, "ready"},
		{"macvlan untied", with(readyMacvlan, func(l *view.Link) { l.ParentIndex, l.Peer = 0, nil }), matcher.Pending, "peer not tied yet"},
		{"macvlan down", with(readyMacvlan, func(l *view.Link) { l.RawFlags = 0 }), matcher.Pending, "down"},
	})
}

// TestClassifyDocker29Sequence replays, for one ifindex, the link states a
// watcher in the sandbox netns sees while Docker 29's bridge driver sets an
// endpoint up (notes: "What a watcher in the sandbox netns sees").
func TestClassifyDocker29Sequence(t *testing.T) {
	steps := []struct {
		name       string
		apply      func(*view.Link)
		want       matcher.State
		wantReason string
	}{
		{"1 NEWLINK vethXXXX down, untied", func(l *view.Link) {}, matcher.Pending, "peer not tied yet"},
		{"1b custom MTU before the rename", func(l *view.Link) { l.MTU = 1450 }, matcher.Pending, "peer not tied yet"},
		{"2+3 NEWNSID, rename to eth0 with IFLA_LINK + netnsid", func(l *view.Link) {
			l.Name = "eth0"
			l.ParentIndex, l.LinkNetNSID = 57, 0
			l.Peer = goodPeer()
		}, matcher.Pending, "down"},
		{"4 Docker's MAC", func(l *view.Link) { l.MAC = mustMAC(dockerMAC) }, matcher.Pending, "down"},
		{"5 NEWADDR", func(l *view.Link) { l.Addrs = append(l.Addrs, addr("172.18.0.2/16")) }, matcher.Pending, "down"},
		{"5b NEWADDR IPv6 nodad", func(l *view.Link) {
			l.Addrs = append(l.Addrs, view.Addr{Prefix: netip.MustParsePrefix("fd00::2/64"), Flags: 0x2})
		}, matcher.Pending, "down"},
		{"6 UP, not RUNNING yet", func(l *view.Link) { l.RawFlags |= view.FlagUp; l.OperState = "unknown" }, matcher.Pending, "not running"},
		{"7 RUNNING", func(l *view.Link) {
			l.RawFlags |= view.FlagRunning | view.FlagLowerUp
			l.OperState = "up"
			l.Addrs = append(l.Addrs, addr("fe80::1/64"))
		}, matcher.Ready, "ready"},
		{"8 default route: link unchanged", func(l *view.Link) {}, matcher.Ready, "ready"},
	}
	l := &view.Link{Index: 7, Name: "veth9f3e2a1", Kind: "veth", MAC: mustMAC("9a:0c:11:22:33:44"), MTU: 1500,
		OperState: "down", LinkNetNSID: -1}
	for _, s := range steps {
		s.apply(l)
		got := matcher.Classify(l)
		if got.State != s.want || !strings.Contains(got.Reason, s.wantReason) {
			t.Fatalf("step %s: Classify = %v (%q), want %v (reason containing %q)", s.name, got.State, got.Reason, s.want, s.wantReason)
		}
	}
}

func TestEndpointsOrderedByIfindex(t *testing.T) {
	lo := &view.Link{Index: 1, Name: "lo", Kind: "device", RawFlags: view.FlagLoopback | view.FlagUp}
	eth0 := readyVeth()
	eth0.Index = 12
	eth1 := readyVeth()
	eth1.Index, eth1.Name, eth1.RawFlags = 5, "eth1", 0
	tap := &view.Link{Index: 30, Name: "tap0_kata", Kind: "tuntap", MAC: mustMAC("b6:1f:00:00:00:01")}
	s := &view.Snapshot{Links: map[int]*view.Link{30: tap, 12: eth0, 1: lo, 5: eth1}}

	type short struct {
		Index int
		Name  string
		State matcher.State
	}
	var got []short
	for _, d := range matcher.Endpoints(s) {
		got = append(got, short{d.Index, d.Name, d.State})
	}
	want := []short{{1, "lo", matcher.Ignored}, {5, "eth1", matcher.Pending}, {12, "eth0", matcher.Ready}, {30, "tap0_kata", matcher.Ignored}}
	if !slices.Equal(got, want) {
		t.Errorf("Endpoints = %v, want %v", got, want)
	}
	if got := matcher.Endpoints(&view.Snapshot{}); len(got) != 0 {
		t.Errorf("Endpoints(empty) = %v, want none", got)
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[matcher.State]string{matcher.Ignored: "ignored", matcher.Pending: "pending", matcher.Ready: "ready", 9: "unknown"} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestGone(t *testing.T) {
	attached := matcher.GuestNIC{Index: 7, Name: "eth0", MAC: dockerMAC, Addrs: matcher.RoutableAddrs(readyVeth())}
	snap := func(links ...*view.Link) *view.Snapshot {
		s := &view.Snapshot{Links: map[int]*view.Link{}}
		for _, l := range links {
			s.Links[l.Index] = l
		}
		return s
	}
	tests := []struct {
		name       string
		snap       *view.Snapshot
		want       bool
		wantReason string
	}{
		{"still ready", snap(readyVeth()), false, ""},
		{"deleted (DELLINK, moved out)", snap(), true, "deleted"},
		{"MAC changed", snap(with(readyVeth, func(l *view.Link) { l.MAC = mustMAC("02:42:ac:12:00:03") })()), true, "MAC changed to 02:42:ac:12:00:03"},
		{"MAC removed", snap(with(readyVeth, func(l *view.Link) { l.MAC = nil })()), true, "MAC changed"},
		{"disconnect step 1: down (not gone yet)", snap(with(readyVeth, func(l *view.Link) { l.RawFlags = 0 })()), false, ""},
		{"disconnect step 2: down, renamed to vethXXXX", snap(with(readyVeth, func(l *view.Link) {
			l.RawFlags, l.Name = 0, "veth9f3e2a1"
		})()), true, `renamed to "veth9f3e2a1"`},
		{"disconnect step 3: DELADDR too", snap(with(readyVeth, func(l *view.Link) {
			l.RawFlags, l.Name, l.Addrs = 0, "veth9f3e2a1", nil
		})()), true, "renamed"},
		{"merely down and addresses gone", snap(with(readyVeth, func(l *view.Link) { l.RawFlags, l.Addrs = 0, nil })()), false, ""},
		{"up, not running (carrier lost)", snap(with(readyVeth, func(l *view.Link) { l.RawFlags = view.FlagUp })()), false, ""},
		{"up and renamed", snap(with(readyVeth, func(l *view.Link) { l.Name = "eth5" })()), false, ""},
		{"peer facts now unreadable", snap(with(readyVeth, func(l *view.Link) {
			l.Peer = &view.Peer{State: view.PeerError, Err: "EBADF"}
		})()), false, ""},
		{"name re-appears on another ifindex", snap(with(readyVeth, func(l *view.Link) { l.Index = 8; l.MAC = mustMAC("02:42:ac:12:00:09") })()), true, "deleted"},
		{"same MAC and name on another ifindex", snap(with(readyVeth, func(l *view.Link) { l.Index = 8 })()), true, "deleted"},
		{"deleted and re-created on the same ifindex, same MAC and name", snap(with(readyVeth, func(l *view.Link) { l.Incarnation = 2 })()), true, "re-created"},
		{"an address added while ready", snap(with(readyVeth, func(l *view.Link) { l.Addrs = append(l.Addrs, addr("10.9.0.2/24")) })()), true, "addresses changed"},
		{"the address replaced while ready", snap(with(readyVeth, func(l *view.Link) { l.Addrs = []view.Addr{addr("172.18.0.9/16")} })()), true, "addresses changed"},
		{"a link-local address added", snap(with(readyVeth, func(l *view.Link) { l.Addrs = append(l.Addrs, addr("fe80::9/64")) })()), false, ""},
		{"addresses stripped by Kata's macvtap (link re-MACed)", snap(with(readyVeth, func(l *view.Link) { l.Addrs = nil })()), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := matcher.Gone(attached, tt.snap)
			if got != tt.want || !strings.Contains(why, tt.wantReason) || (!got && why != "") {
				t.Errorf("Gone = %v (%q), want %v (reason containing %q)", got, why, tt.want, tt.wantReason)
			}
		})
	}
}

// With Kata's macvtap model the guest's MAC lives on Kata's macvtap and the
// link carries a MAC Kata chose (LinkMAC): a MAC change of the link is
// nothing to the guest, while the other reasons still hold.
func TestGoneMacvtap(t *testing.T) {
	l := readyVeth()
	n := matcher.GuestNIC{Index: 7, Name: "eth0", MAC: "02:42:ac:12:00:99", LinkMAC: l.MAC.String(), Addrs: matcher.RoutableAddrs(l)}
	snap := &view.Snapshot{Links: map[int]*view.Link{7: l}}
	if gone, why := matcher.Gone(n, snap); gone {
		t.Fatalf("Gone with Kata's MAC on the link: %s", why)
	}
	l.MAC = mustMAC("02:42:ac:12:00:55")
	if gone, why := matcher.Gone(n, snap); gone {
		t.Fatalf("Gone after the link's MAC changed: %s", why)
	}
	delete(snap.Links, 7)
	if gone, _ := matcher.Gone(n, snap); !gone {
		t.Fatal("not gone once the link left")
	}
}

// route builds a route the tests would keep, then lets mod break it.
func route(dst, gw string, link int, mod ...func(*view.Route)) view.Route {
	p := netip.MustParsePrefix(dst)
	r := view.Route{Family: view.FamilyV4, Dst: p, LinkIndex: link, Table: view.TableMain, Protocol: 4 /* static */, Type: 1}
	if p.Addr().Is6() {
		r.Family = view.FamilyV6
	}
	if gw != "" {
		r.Gateway = netip.MustParseAddr(gw)
	}
	for _, m := range mod {
		m(&r)
	}
	return r
}

func TestRoutesFilters(t *testing.T) {
	devices := map[int][]netip.Prefix{7: {netip.MustParsePrefix("172.18.0.2/16")}, 8: {netip.MustParsePrefix("172.19.0.2/16")}}
	tests := []struct {
		name string
		r    view.Route
		keep bool
	}{
		{"IPv4 default (0.0.0.0/0, proto boot)", route("0.0.0.0/0", "172.18.0.1", 7, func(r *view.Route) { r.Protocol = 3 }), true},
		{"IPv6 default via link-local gateway", route("::/0", "fe80::1", 7), true},
		{"static subnet route", route("10.10.0.0/16", "172.19.0.254", 8), true},
		{"type unset (0)", route("10.10.0.0/16", "", 7, func(r *view.Route) { r.Type = 0 }), true},
		{"other table (local)", route("10.10.0.0/16", "", 7, func(r *view.Route) { r.Table = 255 }), false},
		{"table unset", route("10.10.0.0/16", "", 7, func(r *view.Route) { r.Table = 0 }), false},
		{"proto kernel", route("172.18.0.0/16", "", 7, func(r *view.Route) { r.Protocol = view.RouteProtoKernel }), false},
		{"link not in devices", route("0.0.0.0/0", "172.19.0.1", 9), false},
		{"no link", route("0.0.0.0/0", "172.19.0.1", 0), false},
		{"IPv4 multicast", route("224.0.0.0/4", "", 7), false},
		{"IPv6 multicast", route("ff00::/8", "", 7), false},
		{"IPv6 fe80::/64", route("fe80::/64", "", 7, func(r *view.Route) { r.Protocol = 9 }), false},
		{"IPv4 169.254.0.0/16", route("169.254.0.0/16", "", 7), false},
		{"invalid Dst", view.Route{Family: view.FamilyV4, LinkIndex: 7, Table: view.TableMain, Type: 1}, false},
		{"type blackhole", route("10.0.0.0/8", "", 7, func(r *view.Route) { r.Type = 6 }), false},
		{"type local", route("10.0.0.1/32", "", 7, func(r *view.Route) { r.Type = 2 }), false},
		{"type broadcast", route("10.0.0.255/32", "", 7, func(r *view.Route) { r.Type = 3 }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := matcher.Routes(&view.Snapshot{Routes: []view.Route{tt.r}}, devices)
			var want []view.Route
			if tt.keep {
				want = []view.Route{tt.r}
			}
			if !slices.Equal(got, want) {
				t.Errorf("Routes(%+v) = %+v, want %+v", tt.r, got, want)
			}
		})
	}
}

// TestRoutesMeaning: what the agent would install with another meaning is
// left out with a reason, never pushed changed (issue: an IPv4 route via an
// IPv6 gateway became on-link, multipath was dropped silently, two metrics
// were both pushed without one, a source-specific default became
// unconditional).
func TestRoutesMeaning(t *testing.T) {
	devices := map[int][]netip.Prefix{7: {netip.MustParsePrefix("172.18.0.2/16"), netip.MustParsePrefix("fd00::2/64")},
		8: {netip.MustParsePrefix("172.19.0.2/16")}}
	tests := []struct {
		name     string
		in       []view.Route
		keep     []int // indexes into in
		skip     []int
		shadowed []int // of skip
		reason   string
	}{
		{"IPv4 via an IPv6 gateway (RTA_VIA)",
			[]view.Route{route("0.0.0.0/0", "", 7, func(r *view.Route) { r.Via = netip.MustParseAddr("fe80::1") })},
			nil, []int{0}, nil, "other address family"},
		{"multipath with two hops",
			[]view.Route{route("0.0.0.0/0", "172.18.0.1", 7, func(r *view.Route) { r.Hops = 2 })},
			nil, []int{0}, nil, "multipath route with 2 next hops"},
		{"multipath with one hop is a plain route",
			[]view.Route{route("0.0.0.0/0", "172.18.0.1", 7, func(r *view.Route) { r.Hops = 1 })},
			[]int{0}, nil, nil, ""},
		{"nexthop object",
			[]view.Route{route("10.9.0.0/16", "", 7, func(r *view.Route) { r.NHID = 12 })},
			nil, []int{0}, nil, "nexthop object 12"},
		{"two defaults, metrics 100 and 200: the kernel's",
			[]view.Route{route("0.0.0.0/0", "172.19.0.1", 8, func(r *view.Route) { r.Priority = 200 }),
				route("0.0.0.0/0", "172.18.0.1", 7, func(r *view.Route) { r.Priority = 100 })},
			[]int{1}, []int{0}, []int{0}, "lower metric 100"},
		{"two defaults with one metric: neither",
			[]view.Route{route("0.0.0.0/0", "172.19.0.1", 8), route("0.0.0.0/0", "172.18.0.1", 7)},
			nil, []int{0, 1}, nil, "share metric 0"},
		{"IPv6 source-specific default stays source-specific",
			[]view.Route{route("::/0", "fe80::1", 7, func(r *view.Route) { r.SrcPrefix = netip.MustParsePrefix("2001:db8::/64") }),
				route("::/0", "fe80::2", 7)},
			[]int{0, 1}, nil, nil, ""},
		{"IPv4 source-specific",
			[]view.Route{route("0.0.0.0/0", "172.18.0.1", 7, func(r *view.Route) { r.SrcPrefix = netip.MustParsePrefix("172.18.0.0/16") })},
			nil, []int{0}, nil, "source-specific IPv4"},
		{"gateway on no subnet of the NIC",
			[]view.Route{route("0.0.0.0/0", "10.99.0.1", 7)},
			nil, []int{0}, nil, "on no subnet"},
		{"gateway on the NIC's subnet by an on-link route",
			[]view.Route{route("0.0.0.0/0", "10.99.0.1", 7), route("10.99.0.0/24", "", 7)},
			[]int{0, 1}, nil, nil, ""},
		{"gateway with onlink",
			[]view.Route{route("0.0.0.0/0", "10.99.0.1", 7, func(r *view.Route) { r.Flags = view.RouteFlagOnLink })},
			[]int{0}, nil, nil, ""},
		{"IPv6 gateway in the NIC's subnet",
			[]view.Route{route("fd01::/64", "fd00::1", 7)},
			[]int{0}, nil, nil, ""},
		{"gateway on another NIC's subnet",
			[]view.Route{route("10.5.0.0/16", "172.19.0.1", 7)},
			nil, []int{0}, nil, "on no subnet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keep, skipped := matcher.Routes(&view.Snapshot{Routes: tt.in}, devices)
			var wantKeep []view.Route
			for _, i := range tt.keep {
				wantKeep = append(wantKeep, tt.in[i])
			}
			got := slices.Clone(keep)
			slices.SortFunc(got, func(a, b view.Route) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
			slices.SortFunc(wantKeep, func(a, b view.Route) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
			if !slices.Equal(got, wantKeep) {
				t.Errorf("kept %+v, want %+v", keep, wantKeep)
			}
			if len(skipped) != len(tt.skip) {
				t.Fatalf("skipped %+v, want %d", skipped, len(tt.skip))
			}
			for _, i := range tt.skip {
				j := slices.IndexFunc(skipped, func(s matcher.SkippedRoute) bool { return s.Route == tt.in[i] })
				if j < 0 {
					t.Fatalf("route %d not among the skipped %+v", i, skipped)
				}
				if !strings.Contains(skipped[j].Reason, tt.reason) {
					t.Errorf("reason %q, want it to say %q", skipped[j].Reason, tt.reason)
				}
				if skipped[j].Shadowed != slices.Contains(tt.shadowed, i) {
					t.Errorf("route %d Shadowed = %v", i, skipped[j].Shadowed)
				}
			}
		})
	}
}

func TestRoutesOrder(t *testing.T) {
	devices := map[int][]netip.Prefix{7: {netip.MustParsePrefix("172.18.0.2/16"), netip.MustParsePrefix("fd00::2/64")},
		8: {netip.MustParsePrefix("172.19.0.2/16")}}
	def4 := route("0.0.0.0/0", "172.18.0.1", 7, func(r *view.Route) { r.Protocol = 3 })
	def6 := route("::/0", "fd00::1", 7)
	net10 := route("10.10.0.0/16", "172.18.0.254", 7)
	net10b := route("10.10.0.0/24", "172.18.0.254", 7)
	net11 := route("10.11.0.0/16", "172.19.0.254", 8)
	net192 := route("192.168.5.0/24", "", 8)
	v6net := route("fd01::/64", "fd00::254", 7)
	kernel := route("172.18.0.0/16", "", 7, func(r *view.Route) { r.Protocol = view.RouteProtoKernel })
	in := []view.Route{def6, def4, kernel, net192, v6net, net11, net10b, net10}
	// Family, then non-default first (the guest needs the gateway's subnet
	// first), then destination.
	want := []view.Route{net10, net10b, net11, net192, def4, v6net, def6}

	orig := slices.Clone(in)
	got, _ := matcher.Routes(&view.Snapshot{Routes: in}, devices)
	if !slices.Equal(got, want) {
		t.Fatalf("Routes =\n%v\nwant\n%v", got, want)
	}
	if !slices.Equal(in, orig) {
		t.Errorf("Routes modified the snapshot's routes")
	}
	// Every rotation and the reversal of the input give the same output.
	for i := range in {
		rot := append(slices.Clone(in[i:]), in[:i]...)
		if got, _ := matcher.Routes(&view.Snapshot{Routes: rot}, devices); !slices.Equal(got, want) {
			t.Errorf("rotation %d: Routes =\n%v\nwant\n%v", i, got, want)
		}
		slices.Reverse(rot)
		if got, _ := matcher.Routes(&view.Snapshot{Routes: rot}, devices); !slices.Equal(got, want) {
			t.Errorf("reversed rotation %d: Routes =\n%v\nwant\n%v", i, got, want)
		}
	}
	if got, skipped := matcher.Routes(&view.Snapshot{Routes: in}, nil); got != nil || skipped != nil {
		t.Errorf("Routes with no devices = %v, %v; want nil", got, skipped)
	}
}
