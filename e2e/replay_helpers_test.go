//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/internal/recording"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// replayTimeout bounds every wait of the replay tests.
const replayTimeout = 10 * time.Second

// replayEnv is a "dockerd" netns (where the bridges and the host ends of
// the endpoints live) and a "sandbox" netns (Kata's, where Docker moves the
// container ends), both fresh and uniquely named.
type replayEnv struct {
	netmontest.Pair
}

// replayNewEnv makes the two netns. Every goroutine a test starts after this
// must be gone once its cleanups have run (goleak, checked last).
func replayNewEnv(t *testing.T) *replayEnv {
	t.Helper()
	netmontest.RequireRoot(t)
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // registered first: runs last
	e := &replayEnv{}
	e.Pair = netmontest.NewPair(t)
	return e
}

// replayNet is a Docker bridge network: a bridge in the dockerd netns that
// carries the gateway addresses.
type replayNet struct {
	Bridge  string
	Subnet  netip.Prefix // IPv4
	GW      netip.Addr
	Subnet6 netip.Prefix // invalid when the network is IPv4 only
	GW6     netip.Addr
}

// replayNetwork creates a network on subnet ("172.30.1.0/24"), with
// subnet6 ("fd30:1::/64") too unless it is "". The gateway is host 1.
func (e *replayEnv) replayNetwork(t *testing.T, subnet, subnet6 string) replayNet {
	t.Helper()
	br := netmontest.AddBridge(t, e.Dockerd)
	n := replayNet{Bridge: br.Name, Subnet: netip.MustParsePrefix(subnet)}
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
func (n replayNet) Host(h int) []string {
	out := []string{replayNth(n.Subnet, h).String()}
	if n.Subnet6.IsValid() {
		out = append(out, replayNth(n.Subnet6, h).String())
	}
	return out
}

func replayNth(p netip.Prefix, h int) netip.Prefix {
	a := p.Masked().Addr()
	for range h {
		a = a.Next()
	}
	return netip.PrefixFrom(a, p.Bits())
}

// replayEP is one Docker endpoint being replayed.
type replayEP struct {
	*netmontest.Endpoint
	TmpName string // the vethXXXXXXX name it arrived with
	MAC     net.HardwareAddr
	Addrs   []string
}

// replayVeth is steps 1-3 up to the move: a veth created in the dockerd
// netns with its peer directly in the sandbox under vethXXXXXXX (no
// IFLA_LINK yet), the host end enslaved to the network's bridge and up.
// mtu > 0 is a custom network MTU: set on both ends before the rename, as
// Docker does (one more NEWLINK before the rename).
func (e *replayEnv) replayVeth(t *testing.T, n replayNet, mtu int) *replayEP {
	t.Helper()
	ep := &replayEP{Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, n.Bridge)}
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
func (ep *replayEP) configure(t *testing.T, name string, addrs ...string) {
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

// replayDockerEndpoint is a whole `docker run`/`connect` endpoint: veth,
// configure, and the default route via the network's gateway(s) when gw.
func (e *replayEnv) replayDockerEndpoint(t *testing.T, n replayNet, name string, host, mtu int, gw bool) *replayEP {
	t.Helper()
	ep := e.replayVeth(t, n, mtu)
	ep.configure(t, name, n.Host(host)...)
	if gw {
		ep.AddDefaultRoute(n.GW.String())
		if n.GW6.IsValid() {
			ep.AddDefaultRoute(n.GW6.String())
		}
	}
	return ep
}

// replayDefaultRoute finds the sandbox's main-table default route of family
// through ifindex dev, as the kernel reports it.
func (e *replayEnv) replayKernelDefault(t *testing.T, family, dev int) *netlink.Route {
	t.Helper()
	rs, err := e.Sandbox.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: dev},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	for i := range rs {
		if rs[i].Dst == nil || replayOnes(rs[i].Dst) == 0 {
			return &rs[i]
		}
	}
	return nil
}

func replayOnes(n *net.IPNet) int { o, _ := n.Mask.Size(); return o }

// replayKernelLink reads a link of the sandbox as the kernel reports it now:
// MAC, MTU and its non-link-local addresses as CIDRs, sorted.
func (e *replayEnv) replayKernelLink(t *testing.T, name string) (mac string, mtu int, addrs []string) {
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

// replayCheckAttach compares an attach event with what the kernel reports
// for the link now, and that with what the test configured.
func (e *replayEnv) replayCheckAttach(t *testing.T, ev recording.Event, name string, wantMAC net.HardwareAddr, wantAddrs []string, wantMTU int) {
	t.Helper()
	mac, mtu, addrs := e.replayKernelLink(t, name)
	got := slices.Sorted(slices.Values(ev.Addresses))
	if ev.Op != "attach" || ev.Name != name || ev.MAC != mac || ev.MTU != uint64(mtu) || !slices.Equal(got, addrs) {
		t.Errorf("attach event %+v; the kernel says name %s mac %s mtu %d addresses %v", ev, name, mac, mtu, addrs)
	}
	want := slices.Sorted(slices.Values(wantAddrs))
	if mac != wantMAC.String() || mtu != wantMTU || !slices.Equal(addrs, want) {
		t.Errorf("kernel: %s has mac %s mtu %d addresses %v; configured %s, %d, %v", name, mac, mtu, addrs, wantMAC, wantMTU, want)
	}
}

// replayRecorder is a RecordingSandbox (a dry-run sandbox with Kata's
// semantics) whose event log can be waited on.
type replayRecorder struct {
	*recording.Sandbox
	mu sync.Mutex
	ch chan struct{} // closed and replaced on every event
}

func replayNewRecorder() *replayRecorder {
	r := &replayRecorder{ch: make(chan struct{})}
	r.Sandbox = &recording.Sandbox{
		Caps: hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true},
		// Called with the sandbox's lock held: only pokes waiters.
		OnEvent: func(recording.Event) {
			r.mu.Lock()
			close(r.ch)
			r.ch = make(chan struct{})
			r.mu.Unlock()
		},
	}
	return r
}

// wait waits until cond holds for the event log and returns the log.
func (r *replayRecorder) wait(t *testing.T, what string, cond func([]recording.Event) bool) []recording.Event {
	t.Helper()
	deadline := time.NewTimer(replayTimeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ch := r.ch
		r.mu.Unlock()
		evs := r.Events()
		if cond(evs) {
			return evs
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; events: %s", replayTimeout, what, replayEvents(evs))
		}
	}
}

// waitEvent waits for an event matching match after the first skip events
// and returns it with its position.
func (r *replayRecorder) waitEvent(t *testing.T, what string, skip int, match func(recording.Event) bool) (recording.Event, int) {
	t.Helper()
	evs := r.wait(t, what, func(evs []recording.Event) bool {
		return len(evs) > skip && slices.ContainsFunc(evs[skip:], match)
	})
	i := skip + slices.IndexFunc(evs[skip:], match)
	return evs[i], i
}

// guestMACs returns the MACs the recording sandbox's guest has, sorted.
func (r *replayRecorder) guestMACs() []string {
	var out []string
	for _, g := range r.Guest() {
		out = append(out, strings.ToLower(g.HwAddr))
	}
	sort.Strings(out)
	return out
}

func replayEvents(evs []recording.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %+v", e)
	}
	return b.String()
}

func replayIsAttach(name, mac string) func(recording.Event) bool {
	return func(e recording.Event) bool { return e.Op == "attach" && e.Name == name && e.MAC == mac }
}

func replayIsDetach(mac string) func(recording.Event) bool {
	return func(e recording.Event) bool { return e.Op == "detach" && e.MAC == mac }
}

// replayLastRoutes returns the routes of the last "routes" event, sorted,
// and whether there was one.
func replayLastRoutes(evs []recording.Event) ([]recording.EventRoute, bool) {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Op == "routes" {
			return replaySortRoutes(evs[i].Routes), true
		}
	}
	return nil, false
}

func replaySortRoutes(rs []recording.EventRoute) []recording.EventRoute {
	out := slices.Clone(rs)
	slices.SortFunc(out, func(a, b recording.EventRoute) int {
		return strings.Compare(a.Dest+"|"+a.Gateway+"|"+a.Device, b.Dest+"|"+b.Gateway+"|"+b.Device)
	})
	return out
}

// replayLastRoutesAre is a wait condition: the last routes pushed are want.
func replayLastRoutesAre(want ...recording.EventRoute) func([]recording.Event) bool {
	want = replaySortRoutes(want)
	return func(evs []recording.Event) bool {
		got, ok := replayLastRoutes(evs)
		return ok && slices.Equal(got, want)
	}
}

// replayDefault is the route event a default route via gw through dev
// becomes.
func replayDefault(gw netip.Addr, dev string) recording.EventRoute {
	return recording.EventRoute{Dest: "default", Gateway: gw.String(), Device: dev}
}

// replayTee is the monitor as the reconciler's source, with its change
// notifications also broadcast to the test: Changed is meant for one
// consumer, and the reconciler is that one.
type replayTee struct {
	*netmon.Monitor
	rc   chan struct{} // the reconciler's, capacity 1
	mu   sync.Mutex
	bc   chan struct{} // closed and replaced on every change
	stop chan struct{}
	done chan struct{}
}

var _ hotplug.Source = (*replayTee)(nil)

func (s *replayTee) Changed() <-chan struct{} { return s.rc }

func (s *replayTee) run() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case <-s.Monitor.Changed():
			select {
			case s.rc <- struct{}{}:
			default:
			}
			s.mu.Lock()
			close(s.bc)
			s.bc = make(chan struct{})
			s.mu.Unlock()
		}
	}
}

// waitView waits until cond holds for the monitor's view.
func (s *replayTee) waitView(t *testing.T, timeout time.Duration, what string, cond func(*view.Snapshot) bool) *view.Snapshot {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ch := s.bc
		s.mu.Unlock()
		snap := s.Snapshot()
		if cond(snap) {
			return snap
		}
		select {
		case <-ch:
		case <-s.Done():
			t.Fatalf("monitor ended while waiting for %s: %v", what, s.Err())
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; generation %d, resyncs %d", timeout, what, snap.Generation, snap.Resyncs)
		}
	}
}

// replayLinkState is a waitView condition on the link named name.
func replayLinkState(name string, cond func(*view.Link) bool) func(*view.Snapshot) bool {
	return func(s *view.Snapshot) bool {
		l := s.LinkByName(name)
		return l != nil && cond(l)
	}
}

// replayMon is a running monitor and reconciler on the sandbox netns.
type replayMon struct {
	*replayTee
	rec *hotplug.Reconciler
}

// replayStart starts netmon on the sandbox netns (peers resolved in the
// dockerd netns) and a reconciler driving sb, as shimhook does after its
// first reconcile. Cleanup stops both and waits for every goroutine.
func (e *replayEnv) replayStart(t *testing.T, sb hotplug.Sandbox, mod func(*netmon.Config)) *replayMon {
	t.Helper()
	cfg := netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath, Log: netmontest.Log(t)}
	if mod != nil {
		mod(&cfg)
	}
	mon, err := netmon.New(cfg)
	if err != nil {
		t.Fatalf("netmon.New: %v", err)
	}
	t.Cleanup(func() { mon.Close() })
	tee := &replayTee{Monitor: mon, rc: make(chan struct{}, 1), bc: make(chan struct{}),
		stop: make(chan struct{}), done: make(chan struct{})}
	rec, err := hotplug.New(hotplug.Config{Sandbox: sb, Source: tee, Log: cfg.Log,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("hotplug.New: %v", err)
	}
	if err := mon.Start(context.Background()); err != nil {
		t.Fatalf("netmon Start: %v", err)
	}
	go tee.run()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- rec.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runDone:
			if err != nil {
				t.Errorf("reconciler: %v", err)
			}
		case <-time.After(replayTimeout):
			t.Errorf("reconciler still running %v after cancel", replayTimeout)
		}
		close(tee.stop)
		<-tee.done
	})
	return &replayMon{replayTee: tee, rec: rec}
}

// replayImplied reads the sandbox netns from scratch (a new monitor, its
// first list) and returns what a correct monitor must have done by now: the
// MACs of the ready Docker endpoints and the routes through them, as the
// recording sandbox reports routes.
func (e *replayEnv) replayImplied(t *testing.T) (macs []string, routes []recording.EventRoute) {
	t.Helper()
	macs, hrs := hotplugtest.Implied(t, e.SandboxPath, e.DockerdPath)
	for _, hr := range hrs {
		dest := hr.Dest
		if dest == "" {
			dest = "default"
		}
		routes = append(routes, recording.EventRoute{Dest: dest, Gateway: hr.Gateway, Device: hr.Device})
	}
	return macs, replaySortRoutes(routes)
}

// replayInNetNS runs fn on a thread switched into the netns at path
// (nsdo.Do), failing the test on an error.
func replayInNetNS(t *testing.T, path string, fn func() error) {
	t.Helper()
	if err := nsfs.DoPath(path, fn); err != nil {
		t.Fatal(err)
	}
}
