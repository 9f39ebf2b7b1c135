//go:build linux

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/internal/recording"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// dkTimeout bounds every wait for the monitor to reach a state. Generous:
// CI runs under -race on two cores.
const dkTimeout = 30 * time.Second

// dkCaps is a QEMU-like sandbox: hot-plug and hot-unplug.
var dkCaps = hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true}

// ---------------------------------------------------------------------------
// Docker side: what Docker says a container's endpoints are.

// dkDocker is one private Docker daemon shared by the subtests of a test.
type dkDocker struct {
	*dockerenv.Env
	img string

	mu     sync.Mutex
	subnet int // last 10.77.<n>.0/24 handed out by subnet4
}

func dkStartDocker(t *testing.T, opts ...dockerenv.Option) *dkDocker {
	t.Helper()
	begin := time.Now()
	env := dockerenv.Start(t, opts...)
	d := &dkDocker{Env: env, img: env.ImportBusybox(t)}
	t.Logf("docker env + busybox image: %v", time.Since(begin).Round(time.Millisecond))
	return d
}

// subnet4 returns an IPv4 /24 no other network of this daemon uses (Docker's
// default pools are 172.17-31/16 and 192.168/20).
func (d *dkDocker) subnet4() netip.Prefix {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.subnet++
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(d.subnet), 0}), 24)
}

// dkSubnet6 returns a random ULA /64 (fd00::/8 + 40 random bits + subnet 0).
func dkSubnet6() netip.Prefix {
	var b [16]byte
	b[0] = 0xfd
	if _, err := rand.Read(b[1:6]); err != nil {
		panic(err)
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), 64)
}

// dkRandomMAC returns a random locally administered unicast MAC.
func dkRandomMAC() string {
	b := make(net.HardwareAddr, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[0] = b[0]&^0x01 | 0x02
	return b.String()
}

// network creates a bridge network with a unique name and removes it at
// the end of the test (after its containers: cleanups run last-in first-out).
func (d *dkDocker) network(t *testing.T, args ...string) string {
	t.Helper()
	name := dockerenv.UniqueName("knm-dk")
	d.MustDocker(t, append(append([]string{"network", "create", "--driver", "bridge"}, args...), name)...)
	t.Cleanup(func() { d.cleanupDocker(t, "network", "rm", name) })
	return name
}

// create runs `docker create` (args before the image) and removes the
// container at the end of the test.
func (d *dkDocker) create(t *testing.T, args ...string) string {
	t.Helper()
	name := dockerenv.UniqueName("knm-dk")
	d.MustDocker(t, append(append([]string{"create", "--name", name}, args...), d.img, "sleep", "3600")...)
	t.Cleanup(func() { d.cleanupDocker(t, "rm", "--force", name) })
	return name
}

// run runs a detached container and returns its name and pid.
func (d *dkDocker) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	name := dockerenv.UniqueName("knm-dk")
	step := time.Now()
	d.MustDocker(t, append(append([]string{"run", "--detach", "--name", name}, args...), d.img, "sleep", "3600")...)
	t.Cleanup(func() { d.cleanupDocker(t, "rm", "--force", name) })
	pid := d.ContainerPid(t, name)
	t.Logf("docker run %s (pid %d): %v", strings.Join(args, " "), pid, time.Since(step).Round(time.Millisecond))
	return name, pid
}

// cleanupDocker runs a docker command from a cleanup (t.Context is done by
// then). Failures are only logged: the environment's own teardown removes
// everything anyway.
func (d *dkDocker) cleanupDocker(t *testing.T, args ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.Docker(ctx, args...); err != nil {
		t.Logf("cleanup: %v", err)
	}
}

// dkWant is what Docker says one endpoint must look like in the VM.
type dkWant struct {
	network  string
	mac      string   // lower case
	addrs    []string // IPv4 and global IPv6 address/prefix, sorted
	mtu      int
	gw4      netip.Addr
	gw6      netip.Addr
	prio     int
	internal bool
}

func (w *dkWant) String() string {
	return fmt.Sprintf("%s{mac %s addrs %v mtu %d gw %v/%v prio %d}", w.network, w.mac, w.addrs, w.mtu, w.gw4, w.gw6, w.prio)
}

// wants returns the container's endpoints by MAC, from docker inspect of the
// container and of each of its networks.
func (d *dkDocker) wants(t *testing.T, ctr string) map[string]*dkWant {
	t.Helper()
	c := d.MustInspectContainer(t, ctr)
	out := map[string]*dkWant{}
	for name, ep := range c.NetworkSettings.Networks {
		mac, err := ep.HardwareAddr()
		if err != nil || len(mac) != 6 {
			t.Fatalf("container %s, network %s: docker inspect MAC %q: %v", ctr, name, ep.MacAddress, err)
		}
		n := d.MustInspectNetwork(t, ep.NetworkID)
		w := &dkWant{network: name, mac: mac.String(), gw4: ep.Gateway, gw6: ep.IPv6Gateway, prio: ep.GwPriority,
			internal: n.Internal, mtu: d.networkMTU(t, n)}
		for _, p := range []netip.Prefix{ep.IPv4Prefix(), ep.IPv6Prefix()} {
			if p.IsValid() {
				w.addrs = append(w.addrs, p.String())
			}
		}
		sort.Strings(w.addrs)
		if len(w.addrs) == 0 {
			t.Fatalf("container %s, network %s: docker inspect lists no address: %+v", ctr, name, ep)
		}
		out[w.mac] = w
	}
	return out
}

// networkMTU is the network's com.docker.network.driver.mtu option or, when
// it sets none, the MTU Docker gave its bridge (dockerd's default).
func (d *dkDocker) networkMTU(t *testing.T, n *dockerenv.Network) int {
	t.Helper()
	if mtu, ok, err := n.MTU(); err != nil {
		t.Fatal(err)
	} else if ok {
		return mtu
	}
	br := n.Options[dockerenv.BridgeNameOption]
	if br == "" {
		br = "br-" + n.ID[:12]
	}
	var mtu int
	dkInNetNS(t, d.NetNSPath(), func(h *netlink.Handle) {
		l, err := h.LinkByName(br)
		if err != nil {
			t.Fatalf("network %s: bridge %s in dockerd's netns: %v", n.Name, br, err)
		}
		mtu = l.Attrs().MTU
	})
	return mtu
}

// dkInNetNS runs fn with a netlink handle whose sockets are in the netns at path.
func dkInNetNS(t *testing.T, path string, fn func(h *netlink.Handle)) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open netns %s: %v", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", path, err)
	}
	defer h.Close()
	fn(h)
}

// dkKernelNames returns the container's links by MAC, as its netns has
// them now: the names the VM must use.
func dkKernelNames(t *testing.T, pid int) map[string]string {
	t.Helper()
	out := map[string]string{}
	dkInNetNS(t, fmt.Sprintf("/proc/%d/ns/net", pid), func(h *netlink.Handle) {
		links, err := h.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if a := l.Attrs(); len(a.HardwareAddr) == 6 && l.Type() == "veth" {
				out[a.HardwareAddr.String()] = a.Name
			}
		}
	})
	return out
}

// dkKernelHasLinkLocal6 reports whether the container's link named ifname
// carries an IPv6 link-local address (the kernel's own, which must not
// reach the VM).
func dkKernelHasLinkLocal6(t *testing.T, pid int, ifname string) bool {
	t.Helper()
	found := false
	dkInNetNS(t, fmt.Sprintf("/proc/%d/ns/net", pid), func(h *netlink.Handle) {
		l, err := h.LinkByName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			found = found || a.IP.IsLinkLocalUnicast()
		}
	})
	return found
}

// ---------------------------------------------------------------------------
// The VM side: the calls a recording sandbox received, replayed into the
// guest Kata would have.

// dkGuest is the guest after a sequence of events, with Kata's semantics:
// interfaces by MAC; routes added or replaced by (family, dest), removed only
// with their NIC.
type dkGuest struct {
	events   []recording.Event
	ifs      map[string]recording.Event // by MAC: the attach event
	routes   map[string]recording.EventRoute
	last     []recording.EventRoute // the last routes event
	attaches map[string]int         // by MAC, over the whole log
	detaches int
	bad      []string // invariant violations
}

func dkReplay(evs []recording.Event) *dkGuest {
	g := &dkGuest{events: evs, ifs: map[string]recording.Event{}, routes: map[string]recording.EventRoute{}, attaches: map[string]int{}}
	for i, e := range evs {
		switch e.Op {
		case "attach":
			g.attaches[e.MAC]++
			if _, ok := g.ifs[e.MAC]; ok {
				g.bad = append(g.bad, fmt.Sprintf("event %d: attach of %s while the guest has it", i, e.MAC))
			}
			if g.nameOf("", e.Name) != "" {
				g.bad = append(g.bad, fmt.Sprintf("event %d: attach of %s as %q, a name the guest uses", i, e.MAC, e.Name))
			}
			for _, a := range e.Addresses {
				p, err := netip.ParsePrefix(a)
				if err != nil || p.Addr().IsLinkLocalUnicast() {
					g.bad = append(g.bad, fmt.Sprintf("event %d: attach %s with address %q (link-local or invalid)", i, e.Name, a))
				}
			}
			g.ifs[e.MAC] = e
		case "detach":
			g.detaches++
			if _, ok := g.ifs[e.MAC]; !ok {
				g.bad = append(g.bad, fmt.Sprintf("event %d: detach of %s, which the guest lacks", i, e.MAC))
			}
			delete(g.ifs, e.MAC)
			for k, r := range g.routes {
				if r.Device == e.Name {
					delete(g.routes, k)
				}
			}
		case "routes":
			g.last = e.Routes
			for _, r := range e.Routes {
				if g.nameOf("", r.Device) == "" {
					g.bad = append(g.bad, fmt.Sprintf("event %d: route %+v names a device the guest lacks", i, r))
				}
				if p, err := netip.ParsePrefix(r.Dest); r.Dest != "default" && (err != nil || p.Addr().IsLinkLocalUnicast()) {
					g.bad = append(g.bad, fmt.Sprintf("event %d: route %+v: link-local or invalid destination", i, r))
				}
				g.routes[dkRouteFamily(r)+"|"+r.Dest] = r
			}
		default:
			g.bad = append(g.bad, fmt.Sprintf("event %d: unknown op %q", i, e.Op))
		}
	}
	return g
}

// dkRouteFamily is "4" or "6", from the destination or else the gateway;
// "?" for a default route without a gateway.
func dkRouteFamily(r recording.EventRoute) string {
	var a netip.Addr
	if p, err := netip.ParsePrefix(r.Dest); err == nil {
		a = p.Addr()
	} else if a, err = netip.ParseAddr(r.Gateway); err != nil {
		return "?"
	}
	return dkFamily(a)
}

func dkFamily(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "4"
	}
	return "6"
}

// nameOf returns the guest name of the interface with mac (or, with mac "",
// name itself if some interface has it); "" when none.
func (g *dkGuest) nameOf(mac, name string) string {
	if mac != "" {
		return g.ifs[mac].Name
	}
	for _, e := range g.ifs {
		if e.Name == name {
			return name
		}
	}
	return ""
}

// macs returns the guest's MACs, sorted.
func (g *dkGuest) macs() []string {
	var out []string
	for m := range g.ifs {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// checkAttached checks that the guest has exactly the endpoints Docker
// lists, each as Docker describes it, under the name the container's netns
// gives it now (names: nil skips that check).
func (g *dkGuest) checkAttached(wants map[string]*dkWant, names map[string]string) error {
	var want []string
	for m := range wants {
		want = append(want, m)
	}
	sort.Strings(want)
	if got := g.macs(); !slices.Equal(got, want) {
		return fmt.Errorf("guest MACs %v, docker inspect says %v", got, want)
	}
	for mac, w := range wants {
		e := g.ifs[mac]
		addrs := slices.Sorted(slices.Values(e.Addresses))
		if !slices.Equal(addrs, w.addrs) {
			return fmt.Errorf("%s (%s): addresses %v, docker inspect says %v", e.Name, mac, addrs, w.addrs)
		}
		if int(e.MTU) != w.mtu {
			return fmt.Errorf("%s (%s): MTU %d, docker says %d", e.Name, mac, e.MTU, w.mtu)
		}
		if names != nil && e.Name != names[mac] {
			return fmt.Errorf("%s (%s): the container's netns calls it %q", e.Name, mac, names[mac])
		}
	}
	return nil
}

// checkDefault checks that both the last routes event and the guest's route
// table have the default route of gw's family via gw on the interface with mac.
func (g *dkGuest) checkDefault(gw netip.Addr, mac string) error {
	dev := g.nameOf(mac, "")
	if dev == "" {
		return fmt.Errorf("default via %v: the guest has no interface with MAC %s", gw, mac)
	}
	want := recording.EventRoute{Dest: "default", Gateway: gw.String(), Device: dev}
	fam := dkFamily(gw)
	if got, ok := g.routes[fam+"|default"]; !ok || got != want {
		return fmt.Errorf("guest's IPv%s default route %+v (present %v), want %+v", fam, got, ok, want)
	}
	if !slices.Contains(g.last, want) {
		return fmt.Errorf("last routes event %+v lacks %+v", g.last, want)
	}
	return nil
}

// checkGateway checks each family's default route against Docker: via the
// gateway of the endpoint Docker picks for that family, on that endpoint's
// interface.
func (g *dkGuest) checkGateway(wants map[string]*dkWant) error {
	for _, v6 := range []bool{false, true} {
		w := dkGatewayEndpoint(wants, v6)
		if w == nil {
			continue
		}
		gw := w.gw4
		if v6 {
			gw = w.gw6
		}
		if err := g.checkDefault(gw, w.mac); err != nil {
			return fmt.Errorf("gateway endpoint %s: %w", w.network, err)
		}
	}
	return nil
}

// dkGatewayEndpoint returns the endpoint Docker takes the IPv4 (or IPv6)
// default route from: the first, among those with a gateway of that family,
// in libnetwork's Endpoint.Less order (moby daemon/libnetwork/sandbox.go):
// higher GwPriority, then not internal, then gateways of both families
// before one, then network name. docker inspect does not say which it
// picked when priorities tie.
func dkGatewayEndpoint(wants map[string]*dkWant, v6 bool) *dkWant {
	var best *dkWant
	gws := func(w *dkWant) int {
		n := 0
		for _, gw := range []netip.Addr{w.gw4, w.gw6} {
			if gw.IsValid() {
				n++
			}
		}
		return n
	}
	less := func(a, b *dkWant) bool {
		switch {
		case a.prio != b.prio:
			return a.prio > b.prio
		case a.internal != b.internal:
			return b.internal
		case gws(a) != gws(b):
			return gws(a) > gws(b)
		}
		return a.network < b.network
	}
	for _, w := range wants {
		if (v6 && !w.gw6.IsValid()) || (!v6 && !w.gw4.IsValid()) {
			continue
		}
		if best == nil || less(w, best) {
			best = w
		}
	}
	return best
}

// settled checks the guest against Docker: the endpoints and the default routes.
func (g *dkGuest) settled(wants map[string]*dkWant, names map[string]string) error {
	if err := g.checkAttached(wants, names); err != nil {
		return err
	}
	return g.checkGateway(wants)
}

// after returns the events from index i on.
func (g *dkGuest) after(i int) []recording.Event { return g.events[min(i, len(g.events)):] }

func dkFormat(evs []recording.Event) string {
	var b strings.Builder
	for i, e := range evs {
		j, _ := json.Marshal(e)
		fmt.Fprintf(&b, "  %3d %s\n", i, j)
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Monitors: in-process (netmon + hotplug, or shimhook), or the watch binary.

// dkMon collects the events of one monitor and lets a test wait for states.
type dkMon struct {
	name string

	mu     sync.Mutex
	events []recording.Event
	notify chan struct{} // capacity 1: "events changed"
	ended  chan struct{} // closed when the monitor ended on its own; nil if it cannot

	sb   *recording.Sandbox // nil for the watch binary
	stop func() error       // idempotent
	logs *netmontest.SyncBuffer
}

func newDkMon(name string) *dkMon {
	return &dkMon{name: name, notify: make(chan struct{}, 1), logs: &netmontest.SyncBuffer{}}
}

func (m *dkMon) add(e recording.Event) {
	m.mu.Lock()
	m.events = append(m.events, e)
	m.mu.Unlock()
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// Events returns a copy of the events so far.
func (m *dkMon) Events() []recording.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.events)
}

// mark returns the number of events so far, for checks on what follows.
func (m *dkMon) mark() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.events)
}

// waitFor re-checks after every event until check passes, and fails the test
// with check's last error at the deadline. It returns the guest that passed.
func (m *dkMon) waitFor(t *testing.T, what string, check func(g *dkGuest) error) *dkGuest {
	t.Helper()
	deadline := time.NewTimer(dkTimeout)
	defer deadline.Stop()
	start := time.Now()
	ended := m.ended
	for {
		g := dkReplay(m.Events())
		err := check(g)
		if err == nil {
			t.Logf("%s: %s after %v (%d events)", m.name, what, time.Since(start).Round(time.Millisecond), len(g.events))
			return g
		}
		select {
		case <-m.notify:
		case <-ended:
			ended = nil // one more look at the final events, then wait for the deadline
			select {
			case m.notify <- struct{}{}:
			default:
			}
			t.Logf("%s: the monitor ended on its own", m.name)
		case <-deadline.C:
			t.Fatalf("%s: %s: not within %v: %v\nevents:\n%s", m.name, what, dkTimeout, err, dkFormat(g.events))
		}
	}
}

// checkClean fails the test on any invariant violation in the events, and
// checks the recording sandbox's own guest against the replay.
func (m *dkMon) checkClean(t *testing.T) *dkGuest {
	t.Helper()
	g := dkReplay(m.Events())
	if len(g.bad) > 0 {
		t.Errorf("%s: the calls break Kata's rules:\n  %s\nevents:\n%s", m.name, strings.Join(g.bad, "\n  "), dkFormat(g.events))
	}
	if m.sb != nil {
		var got []string
		for _, inf := range m.sb.Guest() {
			got = append(got, strings.ToLower(inf.HwAddr))
		}
		sort.Strings(got)
		if want := g.macs(); !slices.Equal(got, want) {
			t.Errorf("%s: RecordingSandbox.Guest() MACs %v, replayed events give %v", m.name, got, want)
		}
	}
	return g
}

// dumpOnFailure prints the monitor's logs if the test failed (or always,
// with KNM_DK_LOGS set). Registered before the monitor's stop, so it runs
// after it.
func (m *dkMon) dumpOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("KNM_DK_LOGS") != "" {
			t.Logf("%s: monitor log:\n%s", m.name, m.logs.String())
		}
	})
}

func (m *dkMon) logger(t *testing.T) *logrus.Entry {
	l := logrus.New()
	l.Out = m.logs
	l.Level = logrus.DebugLevel
	return logrus.NewEntry(l).WithField("test", t.Name())
}

// dkStartMonitor runs what cmd/kata-netmon's watch does, in process: a
// monitor on the container's netns with dockerd's netns as the only accepted
// peer netns (no scan, as in the shim), a reconciler with a recording
// sandbox, Sync, then Run until the test ends.
func dkStartMonitor(t *testing.T, d *dkDocker, pid int) *dkMon {
	t.Helper()
	m := newDkMon(fmt.Sprintf("monitor(pid %d)", pid))
	m.dumpOnFailure(t)
	log := m.logger(t)
	m.sb = &recording.Sandbox{Caps: dkCaps, OnEvent: m.add}
	mon, err := netmon.New(netmon.Config{NetNSPath: fmt.Sprintf("/proc/%d/ns/net", pid), DockerdNetNS: d.NetNSPath(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := hotplug.New(hotplug.Config{Sandbox: m.sb, Source: mon, Log: log})
	if err != nil {
		mon.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	running := false
	var once sync.Once
	var stopErr error
	m.stop = func() error {
		once.Do(func() {
			cancel()
			if running {
				select {
				case err := <-runDone:
					if err != nil {
						stopErr = fmt.Errorf("Run: %w", err)
					}
				case <-time.After(10 * time.Second):
					stopErr = fmt.Errorf("Run did not return within 10s of cancel")
				}
			}
			mon.Close()
			if err := mon.Err(); err != nil && stopErr == nil {
				stopErr = fmt.Errorf("netmon: %w", err)
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := m.stop(); err != nil {
			t.Errorf("%s: stop: %v", m.name, err)
		}
	})
	if err := mon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sctx, scancel := context.WithTimeout(ctx, dkTimeout)
	st, err := rec.Sync(sctx)
	scancel()
	if err != nil {
		t.Fatalf("%s: Sync: %v", m.name, err)
	}
	t.Logf("%s: Sync attached %d in %v", m.name, len(st.NICs), time.Since(start).Round(time.Millisecond))
	running = true
	go func() { runDone <- rec.Run(ctx) }()
	return m
}

// dkStartShimhook starts the monitor as the shim would: shimhook.Start with
// the container's real containerd bundle and OCI spec (namespace left empty,
// so the bundle path must show it is Docker's), the sandbox's netns by
// process (as /proc/<hypervisor pid>/ns/net) and that process's exit watched.
// Peers are accepted in dockerd's netns and its netns directory; mods, if
// any, change the settings after that.
func dkStartShimhook(t *testing.T, d *dkDocker, ctr string, pid int, mods ...func(*shimhook.Settings)) *dkMon {
	t.Helper()
	c := d.MustInspectContainer(t, ctr)
	bundles, _ := filepath.Glob(filepath.Join(d.Dir(), "containerd", "state", "io.containerd.runtime.v2.task", "*", c.ID))
	if len(bundles) != 1 {
		t.Fatalf("containerd bundle of %s under %s: found %v", c.ID, d.Dir(), bundles)
	}
	raw, err := os.ReadFile(filepath.Join(bundles[0], "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatalf("%s/config.json: %v", bundles[0], err)
	}
	if ok, why := shimhook.IsDocker(shimhook.Config{BundlePath: bundles[0], Spec: &spec, Settings: shimhook.DefaultSettings()}); !ok {
		t.Fatalf("shimhook.IsDocker on Docker's own bundle %s: false: %s", bundles[0], why)
	}

	m := newDkMon(fmt.Sprintf("shimhook(pid %d)", pid))
	m.dumpOnFailure(t)
	m.sb = &recording.Sandbox{Caps: dkCaps, OnEvent: m.add}
	settings := shimhook.DefaultSettings()
	settings.DockerdNetNS = d.NetNSPath()
	settings.ReadyTimeout = dkTimeout
	settings.FailStartOnAttachError = true
	settings.DockerNetNSDir = d.NetNSDir()
	for _, mod := range mods {
		mod(&settings)
	}
	ctx, cancel := context.WithTimeout(t.Context(), dkTimeout+10*time.Second)
	defer cancel()
	start := time.Now()
	sm, err := shimhook.Start(ctx, shimhook.Config{
		SandboxID: c.ID, BundlePath: bundles[0], Spec: &spec, Sandbox: m.sb,
		HypervisorPID: pid, Settings: settings, Log: m.logger(t),
	})
	if err != nil {
		t.Fatalf("shimhook.Start: %v", err)
	}
	if sm == nil {
		t.Fatalf("shimhook.Start did not monitor container %s; log:\n%s", ctr, m.logs.String())
	}
	t.Logf("%s: shimhook.Start attached %v in %v", m.name, sm.NICNames(), time.Since(start).Round(time.Millisecond))
	m.stop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return sm.Stop(ctx)
	}
	t.Cleanup(func() {
		if err := m.stop(); err != nil {
			t.Errorf("%s: Stop: %v", m.name, err)
		}
	})
	return m
}

// dkWatchBinary is a running `kata-netmon watch` process.
type dkWatchBinary struct {
	*dkMon
	cmd    *exec.Cmd
	done   chan struct{} // closed once reaped
	err    error         // Wait's result, valid after done
	stderr *netmontest.SyncBuffer
}

// dkStartWatch runs `nsenter --net=<nsPath> kata-netmon watch --pid PID
// --json args...` and feeds its JSON lines into a dkMon. nsenter execs the
// binary in place, so the process is kata-netmon itself.
func dkStartWatch(t *testing.T, nsPath string, pid int, args ...string) *dkWatchBinary {
	t.Helper()
	bin := buildWatch(t)
	w := &dkWatchBinary{dkMon: newDkMon(fmt.Sprintf("watch(pid %d)", pid)), done: make(chan struct{}), stderr: &netmontest.SyncBuffer{}}
	w.logs = w.stderr
	w.ended = w.done
	w.dumpOnFailure(t)
	argv := append([]string{"--net=" + nsPath, "--", bin, "watch", "--pid", fmt.Sprint(pid), "--json", "--log-level", "debug"}, args...)
	w.cmd = exec.Command("nsenter", argv...)
	w.cmd.Stderr = w.stderr
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig follows the thread that forked: start and reap from one
	// goroutine locked to its thread, so the Go runtime cannot retire that
	// thread (and kill the child) while the process runs.
	started := make(chan error, 1)
	lines := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := w.cmd.Start(); err != nil {
			started <- err
			close(w.done)
			return
		}
		started <- nil
		<-lines // stdout drained (Wait closes the pipe)
		w.err = w.cmd.Wait()
		close(w.done)
	}()
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e recording.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				fmt.Fprintf(w.stderr, "test: stdout line %q: %v\n", sc.Text(), err)
				e = recording.Event{Op: "unparsable: " + sc.Text()}
			}
			w.add(e)
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	if err := <-started; err != nil {
		t.Fatalf("start %v: %v", w.cmd.Args, err)
	}
	t.Logf("%s: started %s", w.name, strings.Join(w.cmd.Args, " "))
	w.stop = func() error { return w.terminate(10 * time.Second) }
	t.Cleanup(func() {
		select {
		case <-w.done:
			return
		default:
		}
		_ = w.cmd.Process.Kill()
		<-w.done
	})
	return w
}

// terminate sends SIGTERM and waits for a clean exit (status 0).
func (w *dkWatchBinary) terminate(timeout time.Duration) error {
	select {
	case <-w.done:
		return fmt.Errorf("exited before SIGTERM: %v", w.err)
	default:
	}
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	return w.wait(timeout)
}

// wait waits for the process to exit on its own and checks status 0.
func (w *dkWatchBinary) wait(timeout time.Duration) error {
	select {
	case <-w.done:
	case <-time.After(timeout):
		return fmt.Errorf("still running %v later", timeout)
	}
	if w.err != nil {
		return fmt.Errorf("exit: %v; stderr:\n%s", w.err, w.stderr.String())
	}
	return nil
}
