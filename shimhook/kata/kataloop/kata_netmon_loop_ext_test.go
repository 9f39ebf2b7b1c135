// Kata in the loop for kata-netmon: this file belongs to kata-netmon
// (shimhook/kata/kataloop), not to Kata. build.sh copies it into the
// virtcontainers directory of a patched copy of Kata's runtime and runs it
// there with -tags kata_netmon and the adapter's fix flags.
//
// Each test drives Kata's real *Sandbox (kata_netmon_loop_test.go) with
// kata-netmon as Kata's shim starts it: the NetworkMonitorFactory of
// shimhook/kata, called before the sandbox starts, running the real
// reconciler on a real netns where links arrive the way Docker 29 makes
// them. It asserts what a user would see: each endpoint's MAC and addresses
// in the guest exactly once, no existing guest NIC re-MACed or renamed,
// every veth Docker still has up, nothing of Kata (tap, tc filter, macvtap)
// left after a disconnect. On a tree without the PCI-path fix it asserts
// the adapter's safety instead: no AddInterface while Kata has an
// endpoint, the refusal counted, the networks present at start attached by
// Kata's own RescanNetwork.

//go:build kata_netmon

package virtcontainers_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"

	containerdshim "github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/oci"
	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"
	pbTypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	katanetmon "github.com/kata-netmon/kata-netmon/shimhook/kata"
	"github.com/kata-netmon/kata-netmon/shimhook/katarules"
)

const loopWait = 20 * time.Second

var loopModels = []struct {
	name    string
	macvtap bool
}{{"tcfilter", false}, {"macvtap", true}}

// patched reports whether the tree has the PCI-path fix (the adapter's
// flag, set by build.sh from its probe).
func patched() bool { return katanetmon.TreeFixes().PCIPath }

// rescans is how many times the adapter must have run Kata's
// RescanNetwork to attach the first network: once without the PCI-path fix
// and with tcfilter (katarules.NewSandbox), never otherwise.
func (e *loopEnv) rescans() int {
	if patched() || e.macvtap {
		return 0
	}
	return 1
}

// kataCalls is Kata's real sandbox, as the factory gets it, with each
// network call recorded and serialised with the test's reads of Kata's
// endpoint list (Kata does not lock it).
type kataCalls struct {
	*vc.Sandbox

	mu       sync.Mutex // held during every call below and every read of Kata's state
	adds     []int      // Kata's endpoint count at each AddInterface
	rescans  int
	changeMu sync.Mutex
	changed  chan struct{} // closed and replaced after every call
}

func (k *kataCalls) done() {
	k.changeMu.Lock()
	close(k.changed)
	k.changed = make(chan struct{})
	k.changeMu.Unlock()
}

func (k *kataCalls) Changed() <-chan struct{} {
	k.changeMu.Lock()
	defer k.changeMu.Unlock()
	return k.changed
}

func (k *kataCalls) AddInterface(ctx context.Context, inf *pbTypes.Interface) (*pbTypes.Interface, error) {
	k.mu.Lock()
	defer k.done()
	defer k.mu.Unlock()
	k.adds = append(k.adds, len(vc.NetmonEndpoints(k.Sandbox)))
	return k.Sandbox.AddInterface(ctx, inf)
}

func (k *kataCalls) RemoveInterface(ctx context.Context, inf *pbTypes.Interface) (*pbTypes.Interface, error) {
	k.mu.Lock()
	defer k.done()
	defer k.mu.Unlock()
	return k.Sandbox.RemoveInterface(ctx, inf)
}

func (k *kataCalls) ListInterfaces(ctx context.Context) ([]*pbTypes.Interface, error) {
	k.mu.Lock()
	defer k.done()
	defer k.mu.Unlock()
	return k.Sandbox.ListInterfaces(ctx)
}

func (k *kataCalls) UpdateRoutes(ctx context.Context, routes []*pbTypes.Route) ([]*pbTypes.Route, error) {
	k.mu.Lock()
	defer k.done()
	defer k.mu.Unlock()
	return k.Sandbox.UpdateRoutes(ctx, routes)
}

func (k *kataCalls) rescanCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.rescans
}

func (k *kataCalls) RescanNetwork(ctx context.Context) error {
	k.mu.Lock()
	defer k.done()
	defer k.mu.Unlock()
	k.rescans++
	return k.Sandbox.RescanNetwork(ctx)
}

// loopEnv is one sandbox: Kata's netns and dockerd's beside it, one bridge
// per Docker network, the loop sandbox, and the monitor once started.
type loopEnv struct {
	t *testing.T
	netmontest.Pair
	macvtap bool
	loop    *vc.NetmonLoop
	kata    *kataCalls
	reg     *prometheus.Registry
	mon     containerdshim.NetworkMonitor
	nets    map[int]string // network number -> bridge
}

func newLoopEnv(t *testing.T, macvtap bool) *loopEnv {
	t.Helper()
	e := &loopEnv{t: t, Pair: netmontest.NewPair(t), macvtap: macvtap, reg: prometheus.NewRegistry(), nets: map[int]string{}}
	e.loop = vc.NewNetmonLoop(t, vc.NetmonLoopOptions{NetNSPath: e.SandboxPath, MacVtap: macvtap})
	e.kata = &kataCalls{Sandbox: e.loop.Sandbox, changed: make(chan struct{})}
	return e
}

// dockerEP is a Docker endpoint in the sandbox netns.
type dockerEP struct {
	*netmontest.Endpoint
	mac  net.HardwareAddr
	cidr string
	gw   string
}

// connect makes an endpoint on network n the way Docker 29 does (sandbox
// end created in the sandbox netns, renamed, MAC, address, up, and the
// default route when gw).
func (e *loopEnv) connect(n int, name string, gw bool) *dockerEP {
	e.t.Helper()
	br, ok := e.nets[n]
	if !ok {
		b := netmontest.AddBridge(e.t, e.Dockerd)
		netmontest.AddAddr(e.t, e.Dockerd, b.Index, fmt.Sprintf("172.%d.0.1/24", 40+n))
		br = b.Name
		e.nets[n] = br
	}
	ep := &dockerEP{Endpoint: netmontest.VethPeerInNetNS(e.t, e.DockerdNS, e.SandboxNS, br), mac: netmontest.RandMAC(),
		cidr: fmt.Sprintf("172.%d.0.2/24", 40+n)}
	g := ""
	if gw {
		g, ep.gw = fmt.Sprintf("172.%d.0.1", 40+n), fmt.Sprintf("172.%d.0.1", 40+n)
	}
	ep.Configure(name, ep.mac.String(), ep.cidr, g)
	return ep
}

// disconnect is Docker's disconnect: down, renamed back to vethXXXXXXX
// (addresses go with the move), moved out to dockerd's netns.
func (e *loopEnv) disconnect(ep *dockerEP) {
	e.t.Helper()
	l, err := ep.Sandbox.LinkByIndex(ep.Index)
	if err != nil {
		e.t.Fatalf("look up %s: %v", ep.Name, err)
	}
	if err := ep.Sandbox.LinkSetDown(l); err != nil {
		e.t.Fatalf("%s down: %v", ep.Name, err)
	}
	ep.Rename("veth" + netmontest.RandName()[4:11])
	ep.MoveTo(e.DockerdNS)
}

// start calls the factory as Kata's startContainer does, before the
// sandbox starts.
func (e *loopEnv) start() {
	e.t.Helper()
	model := vc.NetXConnectTCFilterModel
	if e.macvtap {
		model = vc.NetXConnectMacVtapModel
	}
	id := e.loop.Sandbox.ID()
	env := map[string]string{
		katarules.EnvDockerdNetNS: e.DockerdPath,
		katarules.EnvReadyTimeout: "15s",
		katarules.EnvCallTimeout:  "15s",
		katarules.EnvLogLevel:     "debug",
	}
	f := katanetmon.NewFactory(katanetmon.Options{Registerer: e.reg, Getenv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }})
	m, err := f(context.Background(), containerdshim.NetworkMonitorConfig{
		Sandbox:       e.kata,
		RuntimeConfig: &oci.RuntimeConfig{HypervisorType: vc.QemuHypervisor, InterNetworkModel: model},
		Namespace:     "moby",
		ContainerID:   id,
		Bundle:        "/run/containerd/io.containerd.runtime.v2.task/moby/" + id,
		Spec:          &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}},
		Logger:        netmontest.Log(e.t),
	})
	if err != nil || m == nil {
		e.t.Fatalf("the factory returned %v, %v; want a monitor", m, err)
	}
	e.mon = m
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), loopWait)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			e.t.Errorf("Stop: %v", err)
		}
	})
}

// linkState is a link of the sandbox netns.
type linkState struct {
	name    string
	index   int
	kind    string
	mac     string
	up      bool
	ingress bool
	filters int
}

// loopState is everything a check looks at, read with no Kata call running.
type loopState struct {
	guest  []vc.NetmonNIC
	routes []*pbTypes.Route
	eps    []vc.NetmonEndpoint
	links  []linkState
	adds   []int
}

func (e *loopEnv) state() loopState {
	e.t.Helper()
	e.kata.mu.Lock()
	defer e.kata.mu.Unlock()
	st := loopState{guest: e.loop.Guest.NICs(), routes: e.loop.Guest.Routes(), eps: vc.NetmonEndpoints(e.loop.Sandbox), adds: slices.Clone(e.kata.adds)}
	links, err := e.Sandbox.LinkList()
	if err != nil {
		e.t.Fatalf("list the sandbox netns: %v", err)
	}
	for _, l := range links {
		a := l.Attrs()
		ls := linkState{name: a.Name, index: a.Index, kind: l.Type(), mac: a.HardwareAddr.String(), up: a.Flags&net.FlagUp != 0}
		if qs, err := e.Sandbox.QdiscList(l); err == nil {
			for _, q := range qs {
				if _, ok := q.(*netlink.Ingress); ok {
					ls.ingress = true
				}
			}
		}
		if fs, err := e.Sandbox.FilterList(l, netlink.MakeHandle(0xffff, 0)); err == nil {
			ls.filters = len(fs)
		}
		st.links = append(st.links, ls)
	}
	return st
}

// waitFor waits until check(state) returns "", re-checking after each
// Kata call and guest change (and, for what changes without either, such
// as a counter, at least every 100 ms), and fails after loopWait with the
// last answer.
func (e *loopEnv) waitFor(what string, check func(loopState) string) loopState {
	e.t.Helper()
	deadline := time.NewTimer(loopWait)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		kc, gc := e.kata.Changed(), e.loop.Guest.Changed()
		st := e.state()
		why := check(st)
		if why == "" {
			return st
		}
		select {
		case <-kc:
		case <-gc:
		case <-tick.C:
		case <-deadline.C:
			e.t.Fatalf("timed out after %v waiting for %s: %s\nguest log: %s", loopWait, what, why, strings.Join(e.loop.Guest.Log(), "\n  "))
			return st
		}
	}
}

// settled checks the user's view with exactly eps attached: each one's MAC
// and address in the guest once, under its name and up, Kata's endpoints
// those, one tap (or macvtap) each and nothing else of Kata's, every
// Docker link of the netns up, and (gw) the default route in the guest.
func (e *loopEnv) settled(eps []*dockerEP, gw *dockerEP) func(loopState) string {
	return func(st loopState) string {
		if len(st.guest) != len(eps) {
			return fmt.Sprintf("guest has %d NICs %+v, want %d", len(st.guest), st.guest, len(eps))
		}
		for _, ep := range eps {
			n := 0
			for _, g := range st.guest {
				if g.MAC != ep.mac.String() {
					continue
				}
				n++
				if g.Name != ep.Name || !g.Up || !slices.Contains(g.Addrs, ep.cidr) {
					return fmt.Sprintf("guest NIC %+v, want %s up with %s", g, ep.Name, ep.cidr)
				}
			}
			if n != 1 {
				return fmt.Sprintf("guest has %s's MAC %s on %d NICs, want 1", ep.Name, ep.mac, n)
			}
		}
		var want, got []string
		for _, ep := range eps {
			want = append(want, ep.mac.String())
		}
		taps := map[string]bool{}
		for _, k := range st.eps {
			got = append(got, k.MAC)
			taps[k.Tap] = true
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			return fmt.Sprintf("Kata's endpoints %v, want %v", got, want)
		}
		kataLinks := 0
		for _, l := range st.links {
			switch {
			case l.kind == "tuntap" || l.kind == "macvtap":
				kataLinks++
				if !taps[l.name] {
					return fmt.Sprintf("%s %s is no endpoint's (left behind?)", l.kind, l.name)
				}
			case l.kind == "veth":
				if !l.up {
					return fmt.Sprintf("Docker's %s (ifindex %d) is down", l.name, l.index)
				}
				attached := slices.ContainsFunc(eps, func(ep *dockerEP) bool { return ep.Index == l.index })
				if !e.macvtap && attached != (l.ingress && l.filters > 0) {
					return fmt.Sprintf("%s: attached %v but ingress qdisc %v, %d filters", l.name, attached, l.ingress, l.filters)
				}
				if e.macvtap && (l.ingress || l.filters > 0) {
					return fmt.Sprintf("%s has tc (macvtap model)", l.name)
				}
			}
		}
		if kataLinks != len(eps) {
			return fmt.Sprintf("%d taps/macvtaps in the netns, want %d", kataLinks, len(eps))
		}
		if gw != nil && !slices.ContainsFunc(st.routes, func(r *pbTypes.Route) bool {
			return r.Dest == "" && r.Gateway == gw.gw && r.Device == gw.Name
		}) {
			return fmt.Sprintf("no default route via %s dev %s in the guest: %v", gw.gw, gw.Name, st.routes)
		}
		return ""
	}
}

// settle waits until exactly eps are attached and checks that no existing
// guest NIC was ever re-MACed or renamed.
func (e *loopEnv) settle(what string, eps []*dockerEP, gw *dockerEP) loopState {
	e.t.Helper()
	st := e.waitFor(what, e.settled(eps, gw))
	e.noViolation()
	if !patched() {
		for _, n := range st.adds {
			if n != 0 {
				e.t.Fatalf("the adapter called AddInterface while Kata had %d endpoints (adds %v)", n, st.adds)
			}
		}
	}
	return st
}

func (e *loopEnv) noViolation() {
	e.t.Helper()
	if v := e.loop.Guest.Violations(); len(v) > 0 {
		e.t.Fatalf("existing guest NICs were changed:\n  %s", strings.Join(v, "\n  "))
	}
}

// refused returns how many AddInterface calls were refused (the metric).
func (e *loopEnv) refused() float64 {
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "kata_netmon_sandbox_calls_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "op") == "AddInterface" && label(m, "outcome") == "refused" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// connectRefused connects ep on a tree without the PCI-path fix: the
// attach is refused (counted once more) and the guest keeps eps.
func (e *loopEnv) expectRefused(ep *dockerEP, eps []*dockerEP, gw *dockerEP, before float64) {
	e.t.Helper()
	e.waitFor("the attach of "+ep.Name+" refused", func(loopState) string {
		if e.refused() <= before {
			return "no refusal counted yet"
		}
		return ""
	})
	e.settle("the guest unchanged after the refusal", eps, gw)
}

func forModels(t *testing.T, fn func(t *testing.T, e *loopEnv)) {
	for _, m := range loopModels {
		t.Run(m.name, func(t *testing.T) { fn(t, newLoopEnv(t, m.macvtap)) })
	}
}

// docker run with one network: attached before the workload starts.
func TestNetmonLoopRun(t *testing.T) {
	forModels(t, func(t *testing.T, e *loopEnv) {
		eth0 := e.connect(0, "eth0", true)
		e.start()
		// The first reconcile is synchronous: attached when the factory
		// returns, without waiting.
		if why := e.settled([]*dockerEP{eth0}, eth0)(e.state()); why != "" {
			t.Fatalf("not attached when the factory returned: %s", why)
		}
		e.noViolation()
		if n := e.kata.rescanCount(); n != e.rescans() {
			t.Errorf("Kata's RescanNetwork ran %d times, want %d", n, e.rescans())
		}
	})
}

// docker network connect, then disconnect.
func TestNetmonLoopConnectDisconnect(t *testing.T) {
	forModels(t, func(t *testing.T, e *loopEnv) {
		eth0 := e.connect(0, "eth0", true)
		e.start()
		e.settle("run", []*dockerEP{eth0}, eth0)
		before := e.refused()
		eth1 := e.connect(1, "eth1", false)
		if patched() {
			e.settle("connect", []*dockerEP{eth0, eth1}, eth0)
		} else {
			e.expectRefused(eth1, []*dockerEP{eth0}, eth0, before)
		}
		e.disconnect(eth1)
		e.settle("disconnect", []*dockerEP{eth0}, eth0)
	})
}

// docker run --network a --network b --network c: three networks, all
// configured before Start.
func TestNetmonLoopThreeAtStart(t *testing.T) {
	forModels(t, func(t *testing.T, e *loopEnv) {
		eps := []*dockerEP{e.connect(0, "eth0", true), e.connect(1, "eth1", false), e.connect(2, "eth2", false)}
		e.start()
		if !patched() && e.macvtap {
			// No RescanNetwork with macvtap: the first network is
			// attached, the others refused.
			if n := e.refused(); n != 2 {
				t.Errorf("%v attaches refused, want 2", n)
			}
			eps = eps[:1]
		}
		e.settle("three networks at start", eps, eps[0])
		if n := e.kata.rescanCount(); n != e.rescans() {
			t.Errorf("Kata's RescanNetwork ran %d times, want %d", n, e.rescans())
		}
	})
}

// 20 rounds of connect and disconnect beside a network that stays.
func TestNetmonLoopRounds(t *testing.T) {
	forModels(t, func(t *testing.T, e *loopEnv) {
		eth0 := e.connect(0, "eth0", true)
		e.start()
		e.settle("run", []*dockerEP{eth0}, eth0)
		for i := 0; i < 20; i++ {
			before := e.refused()
			ep := e.connect(1+i%3, "eth1", false)
			if patched() {
				e.settle(fmt.Sprintf("round %d: connect", i), []*dockerEP{eth0, ep}, eth0)
			} else {
				e.expectRefused(ep, []*dockerEP{eth0}, eth0, before)
			}
			e.disconnect(ep)
			e.settle(fmt.Sprintf("round %d: disconnect", i), []*dockerEP{eth0}, eth0)
		}
	})
}

// An attached link's MAC changes (ip link set eth1 address ...): the
// guest ends with one NIC for it and the link stays up. With tcfilter the
// NIC is plugged again with the new MAC. With macvtap the veth's MAC is
// Kata's own random one (tapNetworkPair; Docker's is on the macvtap, and so
// is the guest's traffic): a change of it is nothing to the guest, and the
// NIC is left alone.
func TestNetmonLoopMACChanged(t *testing.T) {
	forModels(t, func(t *testing.T, e *loopEnv) {
		eps := []*dockerEP{e.connect(0, "eth0", patched())}
		gw := eps[0]
		if patched() {
			eps = append(eps, e.connect(1, "eth1", false))
		} else {
			gw = nil // one network only: see above
		}
		e.start()
		e.settle("run", eps, gw)
		ep := eps[len(eps)-1]
		orig := ep.mac.String()
		mac := netmontest.RandMAC()
		ep.SetMAC(mac.String())
		if !e.macvtap {
			ep.mac = mac
			e.settle("the new MAC attached, the old one gone", eps, gw)
			return
		}
		// A later connect, which the monitor sees after the MAC change
		// (one socket, the kernel's order): once it is handled, so was
		// the MAC change.
		before := e.refused()
		later := e.connect(2, "eth2", false)
		if patched() {
			e.settle("a later connect attached, the NIC with Docker's MAC untouched", append(eps, later), gw)
		} else {
			e.expectRefused(later, eps, gw, before)
		}
		if p := e.loop.HV.Plugs(); slices.ContainsFunc(p, func(s string) bool { return strings.HasPrefix(s, "-"+orig) }) {
			t.Fatalf("the NIC was unplugged for a MAC change of Kata's macvtap parent: plugs %v", p)
		}
	})
}

// A name is reused while a detach is pending: the disconnected link's
// RemoveInterface is held in the hypervisor until Docker has given its name
// to the next network's link; Kata's teardown must leave that link alone.
func TestNetmonLoopNameReused(t *testing.T) {
	forModels(t, func(t *testing.T, e *loopEnv) {
		base := []*dockerEP{e.connect(0, "eth0", true)}
		name, net := "eth0", 3
		if patched() {
			base = append(base, e.connect(1, "eth1", false))
			name = "eth1"
		}
		e.start()
		e.settle("run", base, base[0])
		old := base[len(base)-1]
		entered := make(chan struct{})
		release := make(chan struct{})
		var once sync.Once
		e.loop.HV.SetBeforeUnplug(func(mac string) {
			if mac != old.mac.String() {
				return
			}
			once.Do(func() { close(entered) })
			<-release
		})
		e.disconnect(old)
		select {
		case <-entered:
		case <-time.After(loopWait):
			t.Fatalf("the detach of %s never reached the hypervisor", old.mac)
		}
		cur := e.connect(net, name, name == "eth0")
		close(release)
		e.loop.HV.SetBeforeUnplug(nil)
		want := append(slices.Clone(base[:len(base)-1]), cur)
		gw := want[0]
		e.settle("the reused name attached", want, gw)
	})
}
