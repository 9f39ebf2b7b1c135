//go:build linux

package guest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerguest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

// TestDocker runs the real monitor through shimhook.Start, the way the Kata
// shim does, against a real Docker 29 and a real QEMU guest behind a
// container (dockerguest), on each of katasim's four runtimes, handed to
// the monitor as production hands it (katasim's Port: OneNIC without the
// PCI-path fix; DetachByName and ReMACsLink in Capabilities). Patched: run,
// connect, disconnect and three networks at start reach the guest over
// TCP. As shipped: the start-time networks come through Kata's own
// RescanNetwork, a connect is refused without touching eth0 or Docker's
// link, and a disconnect whose name is reused before the unplug leaves the
// new link alone.
//
// One Docker environment serves every subtest; each scenario has its own
// container and guest (guests run one at a time).
func TestDocker(t *testing.T) {
	begin := time.Now()
	env := dockerenv.Start(t)
	img := env.ImportBusybox(t)
	var nets []string
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		nets = append(nets, env.MustCreateNetwork(t, "knm-gd-"+n))
	}
	t.Logf("docker env, image and networks ready in %v", time.Since(begin).Round(time.Millisecond))
	t.Cleanup(func() { t.Logf("TestDocker took %v", time.Since(begin).Round(time.Millisecond)) })
	d := &dockerTest{env: env, img: img, nets: nets}

	for _, o := range models {
		t.Run(o.Kata.String()+"/"+o.Model.String(), func(t *testing.T) {
			if o.Kata == katasim.Patched {
				t.Run("RunConnectDisconnect", func(t *testing.T) { d.runConnectDisconnect(t, o) })
				t.Run("ThreeNetworksAtStart", func(t *testing.T) { d.threeAtStart(t, o) })
				if o.Model == katasim.MacVTap {
					t.Run("WithoutReMACsLink", func(t *testing.T) { d.withoutReMACsLink(t, o) })
				} else {
					t.Run("AgentFailure", func(t *testing.T) { d.agentFailure(t, o) })
					t.Run("NoFreeSlot", func(t *testing.T) { d.noFreeSlot(t, o) })
				}
				return
			}
			t.Run("ConnectRefusedNameReused", func(t *testing.T) { d.connectRefused(t, o) })
			if o.Model == katasim.TCFilter {
				t.Run("ThreeNetworksAtStart", func(t *testing.T) { d.threeAtStart(t, o) })
			}
		})
	}
	t.Run("HotplugRefusedUnplugRefused", func(t *testing.T) { d.refused(t) })
}

type dockerTest struct {
	env  *dockerenv.Env
	img  string
	nets []string
}

// scenario is one container with its guest, katasim on it and the monitor.
type scenario struct {
	*dockerguest.Sandbox
	sb  *katasim.Sandbox
	mon *shimMonitor
}

// run starts a container on networks with a guest, katasim with opts, and
// the monitor on port(sb) (sb.Port() when nil).
func (d *dockerTest) run(t *testing.T, opts katasim.Options, gopts guest.Options, port func(*katasim.Sandbox) hotplug.Sandbox, networks ...string) *scenario {
	t.Helper()
	s := &scenario{Sandbox: dockerguest.RunWith(t, d.env, d.img, gopts, networks...)}
	opts.NetNS = s.NetNS
	sb, err := katasim.New(s.VM, opts)
	must(t, err)
	t.Cleanup(func() { sb.Close() })
	s.sb = sb
	ls, err := s.VM.Agent.Links(t.Context())
	must(t, err)
	if len(ls) != 1 {
		t.Fatalf("guest booted with %s, want lo only", dockerguest.Describe(ls))
	}
	var p hotplug.Sandbox = sb.Port()
	if port != nil {
		p = port(sb)
	}
	s.mon = startMonitor(t, s.Sandbox, p)
	if s.mon.m == nil {
		t.Fatalf("shimhook.Start returned no monitor; it logged:\n%s", s.mon.log.Dump(logrus.DebugLevel))
	}
	t.Logf("%s: monitor running, %v attached", opts.Describe(), s.mon.m.NICNames())
	return s
}

// waitNIC waits until the guest has ep's NIC as name.
func (s *scenario) waitNIC(ctx context.Context, t *testing.T, name string, ep *dockerenv.Endpoint) {
	t.Helper()
	if _, err := s.VM.Agent.WaitLinks(ctx, 20*time.Millisecond, func(ls []*guestproto.Link) error {
		return dockerguest.CheckNIC(ls, name, ep)
	}); err != nil {
		t.Fatal(err)
	}
}

// containerLink reads a link of the container's netns by name.
func (s *scenario) containerLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	ns, err := netns.GetFromPath(s.NetNS)
	must(t, err)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	must(t, err)
	defer h.Close()
	l, err := h.LinkByName(name)
	must(t, err)
	return l
}

// ifname is the container's interface on network (docker inspect does not
// say it: the link with the endpoint's MAC; in the macvtap model Kata gave
// the link a random MAC, so the macvtap's parent).
func (s *scenario) ifname(t *testing.T, ep *dockerenv.Endpoint) string {
	t.Helper()
	ns, err := netns.GetFromPath(s.NetNS)
	must(t, err)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	must(t, err)
	defer h.Close()
	links, err := h.LinkList()
	must(t, err)
	for _, l := range links {
		if !strings.EqualFold(l.Attrs().HardwareAddr.String(), ep.MacAddress) {
			continue
		}
		if mv, ok := l.(*netlink.Macvtap); ok {
			p, err := h.LinkByIndex(mv.Attrs().ParentIndex)
			must(t, err)
			return p.Attrs().Name
		}
		return l.Attrs().Name
	}
	t.Fatalf("no link of the container has MAC %s", ep.MacAddress)
	return ""
}

// runConnectDisconnect: docker run, the guest booted with no NIC, then
// Start (the Docker 28+ order): eth0 attached before Start returns; a
// second network connected with --gw-priority takes the default route;
// (tcfilter) a restarted monitor adopts both NICs from Kata's list
// (uppercase MACs) without attaching; the disconnect unplugs eth1.
func (d *dockerTest) runConnectDisconnect(t *testing.T, opts katasim.Options) {
	s := d.run(t, opts, guest.Options{}, nil, d.nets[0])
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ep0 := s.Endpoint(t, d.nets[0])
	// No waiting: the first reconcile gave the guest its network before
	// Start returned, before any workload.
	ls, err := s.VM.Agent.Links(ctx)
	must(t, err)
	if err := dockerguest.CheckNIC(ls, "eth0", ep0); err != nil {
		t.Fatalf("right after Start: %v", err)
	}
	if add := s.sb.CallsOf("AddInterface"); len(add) == 1 {
		t.Logf("AddInterface(eth0) took %v: %s", add[0].Took.Round(time.Millisecond), add[0].PhasesString())
	}
	s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
	if _, err := s.VM.Agent.WaitRoutes(ctx, 20*time.Millisecond, dockerguest.DefaultRouteIs(ep0.Gateway.String(), "eth0")); err != nil {
		t.Error(err)
	}

	// In the macvtap model a connect that moves the default route fails
	// in Docker itself (TestDockerMacvtapGateway): connect without.
	gw := opts.Model == katasim.TCFilter
	start := time.Now()
	if gw {
		d.env.MustDocker(t, "network", "connect", "--gw-priority", "10", d.nets[1], s.Container)
	} else {
		d.env.MustDocker(t, "network", "connect", d.nets[1], s.Container)
	}
	ep1 := s.Endpoint(t, d.nets[1])
	s.waitNIC(ctx, t, "eth1", ep1)
	t.Logf("guest has eth1 %v %v after connect", ep1.IPv4Prefix(), time.Since(start).Round(time.Millisecond))
	s.Reach(ctx, t, ep1.IPAddress.String(), 8080)
	s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
	if gw {
		if _, err := s.VM.Agent.WaitRoutes(ctx, 20*time.Millisecond, dockerguest.DefaultRouteIs(ep1.Gateway.String(), "eth1")); err != nil {
			t.Error(err)
		}
	}

	if opts.Model == katasim.TCFilter {
		// A restarted monitor adopts what the guest has: Kata lists the
		// MACs in uppercase; it must neither attach again nor detach.
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		must(t, s.mon.m.Stop(sctx))
		scancel()
		adds := len(s.sb.CallsOf("AddInterface"))
		s.mon = startMonitor(t, s.Sandbox, s.sb.Port())
		if got := s.mon.m.NICNames(); !slices.Equal(got, []string{"eth0", "eth1"}) || len(s.sb.CallsOf("AddInterface")) != adds {
			t.Fatalf("restarted monitor: attached %v with %d more AddInterface calls, want eth0 and eth1 adopted", got, len(s.sb.CallsOf("AddInterface"))-adds)
		}
		if s.mon.log.Find(logrus.InfoLevel, "adopted") == nil {
			t.Error("the restarted monitor did not log the adoption")
		}
	}

	start = time.Now()
	d.env.MustDocker(t, "network", "disconnect", d.nets[1], s.Container)
	if _, err := s.VM.Agent.WaitLinks(ctx, 20*time.Millisecond, func(ls []*guestproto.Link) error {
		if k := guest.FindLink(ls, ep1.MacAddress); k != nil {
			return fmt.Errorf("guest still has %s", k.Name)
		}
		return dockerguest.CheckNIC(ls, "eth0", ep0)
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest's eth1 gone %v after disconnect", time.Since(start).Round(time.Millisecond))
	rm, err := s.sb.WaitCalls(ctx, "RemoveInterface", 1)
	must(t, err)
	// With macvtap, the macvtap went with its link when Docker deleted the
	// veth: patched Kata logs that it could not find it (0002 tolerates a
	// link that left, not its macvtap), after the device was removed.
	if sw := rm[0].Swallowed; rm[0].Err != nil || (sw != nil && !(opts.Model == katasim.MacVTap && strings.Contains(sw.Error(), "Could not get TAP interface"))) {
		t.Fatalf("RemoveInterface: %+v, want a clean detach", rm[0])
	}
	t.Logf("RemoveInterface(eth1) took %v: %s", rm[0].Took.Round(time.Millisecond), rm[0].PhasesString())
	s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
	if _, err := s.VM.Agent.WaitRoutes(ctx, 20*time.Millisecond, dockerguest.DefaultRouteIs(ep0.Gateway.String(), "eth0")); err != nil {
		t.Error(err)
	}
	if _, err := s.mon.log.Wait(remaining(ctx), logrus.InfoLevel, "detached endpoint", 1); err != nil {
		t.Fatal(err)
	}
	if got := s.mon.m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
		t.Errorf("monitor attached %v, want [eth0]", got)
	}
	// With macvtap, Docker deleting the veth took the macvtap with it
	// before any unplug: QEMU's queue reads "Link has been severed".
	if err := s.VM.TapError(); err != nil && !(opts.Model == katasim.MacVTap && onlySevered(err)) {
		t.Error(err)
	}
	s.mon.log.NoErrors(t)
}

// onlySevered reports whether every line of a TapError after the first is
// the macvtap-gone complaint.
func onlySevered(err error) bool {
	lines := strings.Split(err.Error(), "\n")[1:]
	for _, l := range lines {
		if !strings.Contains(l, "Link has been severed") {
			return false
		}
	}
	return len(lines) > 0
}

// threeAtStart: docker run with three networks; Start attaches all three
// (as shipped: through Kata's RescanNetwork, one scan, each NIC told its own
// PCI path) and each answers over TCP. Patched tcfilter goes on: the
// network behind eth0 is disconnected, two more are connected (Docker names
// them eth0 and eth3): the tap index rule would give the second one the
// first one's live tap; with the fix all four answer.
func (d *dockerTest) threeAtStart(t *testing.T, opts katasim.Options) {
	s := d.run(t, opts, guest.Options{}, nil, d.nets[0], d.nets[1], d.nets[2])
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	eps := map[string]*dockerenv.Endpoint{}
	for _, n := range d.nets[:3] {
		ep := s.Endpoint(t, n)
		eps[s.ifname(t, ep)] = ep
	}
	ls, err := s.VM.Agent.Links(ctx)
	must(t, err)
	for name, ep := range eps {
		if err := dockerguest.CheckNIC(ls, name, ep); err != nil {
			t.Fatalf("right after Start: %v", err)
		}
	}
	if got := s.mon.m.NICNames(); len(got) != 3 {
		t.Fatalf("monitor attached %v, want three NICs", got)
	}
	if opts.Kata == katasim.AsShipped {
		if n, a := len(s.sb.CallsOf("RescanNetwork")), len(s.sb.CallsOf("AddInterface")); n != 1 || a != 0 {
			t.Errorf("%d RescanNetwork and %d AddInterface calls, want the networks attached by one RescanNetwork", n, a)
		}
	}
	for name, ep := range eps {
		t.Logf("%s: %s %v", name, ep.MacAddress, ep.IPv4Prefix())
		s.Reach(ctx, t, ep.IPAddress.String(), 8080)
	}
	if opts.Kata == katasim.AsShipped || opts.Model != katasim.TCFilter {
		s.mon.log.NoErrors(t)
		return
	}

	var net0 string
	for _, n := range d.nets[:3] {
		if s.ifname(t, s.Endpoint(t, n)) == "eth0" {
			net0 = n
		}
	}
	d.env.MustDocker(t, "network", "disconnect", net0, s.Container)
	if _, err := s.mon.log.Wait(remaining(ctx), logrus.InfoLevel, "detached endpoint", 1); err != nil {
		t.Fatal(err)
	}
	delete(eps, "eth0")
	for _, n := range d.nets[3:5] {
		d.env.MustDocker(t, "network", "connect", n, s.Container)
		ep := s.Endpoint(t, n)
		name := s.ifname(t, ep)
		eps[name] = ep
		s.waitNIC(ctx, t, name, ep)
		t.Logf("connected %s as %s", n, name)
	}
	t.Logf("taps: %v", tapNames(s.sb.Endpoints()))
	for name, ep := range eps {
		t.Logf("%s: %s %v", name, ep.MacAddress, ep.IPv4Prefix())
		s.Reach(ctx, t, ep.IPAddress.String(), 8080)
	}
	s.mon.log.NoErrors(t)
}

// connectRefused (as shipped): eth0 comes through Kata's RescanNetwork;
// a connect is refused by OneNIC with the fix named, before Kata is asked:
// eth0 keeps its MAC, addresses and traffic, Docker's new link stays up.
// Then the name: eth0's network is disconnected and its unplug held back
// (the gate fails it) until a connect has given the name eth0 to a new
// link; the monitor then waits (DetachByName) instead of letting Kata set
// the new link down (in the macvtap model, also write the old MAC and
// addresses on it).
func (d *dockerTest) connectRefused(t *testing.T, opts katasim.Options) {
	var gate *gatedRemove
	s := d.run(t, opts, guest.Options{}, func(sb *katasim.Sandbox) hotplug.Sandbox {
		gate = newGatedRemove(sb.Port())
		return gate
	}, d.nets[0])
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ep0 := s.Endpoint(t, d.nets[0])
	ls, err := s.VM.Agent.Links(ctx)
	must(t, err)
	if err := dockerguest.CheckNIC(ls, "eth0", ep0); err != nil {
		t.Fatalf("right after Start: %v", err)
	}
	if n, a := len(s.sb.CallsOf("RescanNetwork")), len(s.sb.CallsOf("AddInterface")); n != 1 || a != 0 {
		t.Errorf("%d RescanNetwork and %d AddInterface calls: want eth0 attached by Kata's RescanNetwork", n, a)
	}
	s.Reach(ctx, t, ep0.IPAddress.String(), 8080)

	d.env.MustDocker(t, "network", "connect", d.nets[1], s.Container)
	ep1 := s.Endpoint(t, d.nets[1])
	es, err := s.mon.log.Wait(remaining(ctx), logrus.ErrorLevel, "attach refused", 1)
	must(t, err)
	msg := fmt.Sprint(es[0].Data[logrus.ErrorKey])
	t.Logf("monitor: %s: %s", es[0].Message, msg)
	if !strings.Contains(msg, "0001") || !strings.Contains(msg, hotplug.ErrRefused.Error()) {
		t.Errorf("the refusal does not name the fix: %s", msg)
	}
	ls, err = s.VM.Agent.Links(ctx)
	must(t, err)
	if err := dockerguest.CheckNIC(ls, "eth0", ep0); err != nil {
		t.Errorf("after the refused connect: %v", err)
	}
	if guest.FindLink(ls, ep1.MacAddress) != nil || len(s.sb.CallsOf("AddInterface")) != 0 {
		t.Errorf("Kata was asked for eth1: guest %s", dockerguest.Describe(ls))
	}
	if l := s.containerLink(t, "eth1"); l.Attrs().Flags&1 == 0 {
		t.Error("Docker's eth1 is down")
	}
	s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
	d.env.MustDocker(t, "network", "disconnect", d.nets[1], s.Container)

	// The name: eth0's unplug fails until a new link holds the name.
	d.env.MustDocker(t, "network", "disconnect", d.nets[0], s.Container)
	select {
	case <-gate.failed:
	case <-ctx.Done():
		t.Fatal("the monitor never tried to unplug eth0")
	}
	d.env.MustDocker(t, "network", "connect", d.nets[2], s.Container)
	ep2 := s.Endpoint(t, d.nets[2])
	if name := s.ifname(t, ep2); name != "eth0" {
		t.Fatalf("Docker named the new link %s, want eth0", name)
	}
	gate.open()
	if _, err := s.mon.log.Wait(remaining(ctx), logrus.WarnLevel, "not detaching yet", 1); err != nil {
		t.Fatal(err)
	}
	l := s.containerLink(t, "eth0")
	if l.Attrs().Flags&1 == 0 || !strings.EqualFold(l.Attrs().HardwareAddr.String(), ep2.MacAddress) {
		t.Errorf("the new eth0 is up %v with MAC %s, want up with %s", l.Attrs().Flags&1 != 0, l.Attrs().HardwareAddr, ep2.MacAddress)
	}
	if n := len(s.sb.CallsOf("RemoveInterface")); n != 0 {
		t.Errorf("Kata was asked to remove eth0 %d times while a new link held its name", n)
	}
	// The only errors: the refusals and the gate's failures.
	for _, e := range s.mon.log.Entries(logrus.ErrorLevel, "") {
		if !strings.Contains(e.Message, "refused") && !errors.Is(asError(e), errGate) {
			t.Errorf("monitor logged %q %s", e.Message, e.Data)
		}
	}
}

// withoutReMACsLink (control, patched macvtap): a monitor that does not
// know Kata's macvtap model gives the link a new MAC reads the attach as
// having plugged the wrong link and undoes it, again and again: the
// endpoint never stays attached. (runConnectDisconnect is the monitor
// that knows.)
func (d *dockerTest) withoutReMACsLink(t *testing.T, opts katasim.Options) {
	s := d.run(t, opts, guest.Options{}, func(sb *katasim.Sandbox) hotplug.Sandbox {
		return capsOverride{Sandbox: sb.Port(), change: func(c *hotplug.Capabilities) { c.ReMACsLink = false }}
	}, d.nets[0])
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	rm, err := s.sb.WaitCalls(ctx, "RemoveInterface", 2)
	if err != nil {
		t.Fatalf("the attach was not undone twice: %v", err)
	}
	t.Logf("the monitor undid the attach %d times (%d AddInterface): %v", len(rm), len(s.sb.CallsOf("AddInterface")), rm[0].Arg)
	if e := s.mon.log.Find(logrus.WarnLevel, "undoing and retrying"); e == nil {
		t.Error("the monitor did not say it undid the attach")
	}
}

// agentFailure (patched tcfilter): the agent fails the first attach (the
// request carries MTU 0, which the guest's kernel refuses); Kata's rollback
// leaves Docker's link up; the monitor retries and eth0 answers.
func (d *dockerTest) agentFailure(t *testing.T, opts katasim.Options) {
	s := d.run(t, opts, guest.Options{}, func(sb *katasim.Sandbox) hotplug.Sandbox {
		return &mtuZeroOnce{Sandbox: sb.Port()}
	}, d.nets[0])
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ep0 := s.Endpoint(t, d.nets[0])
	s.waitNIC(ctx, t, "eth0", ep0)
	adds := s.sb.CallsOf("AddInterface")
	if len(adds) < 2 || adds[0].Err == nil {
		t.Fatalf("AddInterface calls %d (first error %v): want a failed one, then the retry", len(adds), adds[0].Err)
	}
	t.Logf("first AddInterface: %v", adds[0].Err)
	if l := s.containerLink(t, "eth0"); l.Attrs().Flags&1 == 0 {
		t.Error("Docker's eth0 is down")
	}
	if s.mon.log.Find(logrus.WarnLevel, "set it up again") != nil {
		t.Error("the monitor had to set the link up again: patched Kata set it down")
	}
	s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
}

// noFreeSlot (patched tcfilter): a guest with two slots and three networks
// at start: the third hot-plug fails in QEMU; patched Kata keeps the two
// others (as shipped it would forget them) and undoes the third's tap. A
// disconnect frees a slot and the third is attached.
func (d *dockerTest) noFreeSlot(t *testing.T, opts katasim.Options) {
	s := d.run(t, opts, guest.Options{RootPorts: 2}, nil, d.nets[0], d.nets[1], d.nets[2])
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if got := s.mon.m.NICNames(); len(got) != 2 {
		t.Fatalf("monitor attached %v, want two NICs (two slots)", got)
	}
	if len(s.sb.Endpoints()) != 2 {
		t.Fatalf("Kata has %v, want the two attached endpoints", tapNames(s.sb.Endpoints()))
	}
	var waiting string
	for _, n := range d.nets[:3] {
		ep := s.Endpoint(t, n)
		name := s.ifname(t, ep)
		if !slices.Contains(s.mon.m.NICNames(), name) {
			waiting = n
			continue
		}
		s.Reach(ctx, t, ep.IPAddress.String(), 8080)
	}
	first := d.nets[0]
	if first == waiting {
		first = d.nets[1]
	}
	d.env.MustDocker(t, "network", "disconnect", first, s.Container)
	ep := s.Endpoint(t, waiting)
	s.waitNIC(ctx, t, s.ifname(t, ep), ep)
	s.Reach(ctx, t, ep.IPAddress.String(), 8080)
}

// refused: on one container and guest, a sandbox that cannot hot-plug
// (Firecracker) keeps the monitor from starting; then one that hot-plugs
// but cannot unplug (Cloud Hypervisor) runs it, and a disconnect leaves the
// monitor running and the guest working.
func (d *dockerTest) refused(t *testing.T) {
	s := dockerguest.Run(t, d.env, d.img, d.nets[0])
	ep0 := s.Endpoint(t, d.nets[0])
	ok := t.Run("NoHotplug", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		fc, err := katasim.New(s.VM, katasim.Options{NetNS: s.NetNS, NoHotplug: true})
		must(t, err)
		defer fc.Close()
		mon := startMonitor(t, s, fc.Port())
		if mon.m != nil {
			t.Fatal("shimhook.Start returned a monitor for a sandbox that cannot hot-plug NICs")
		}
		if err := mon.notMonitored; err == nil || !strings.Contains(err.Error(), "cannot hot-plug") {
			t.Errorf("Start did not say why it did not start: %v", err)
		} else {
			t.Logf("Start said: %q", err)
		}
		if len(fc.CallsOf("AddInterface")) != 0 || len(fc.CallsOf("Capabilities")) == 0 {
			t.Errorf("sandbox calls: %+v, want Capabilities only", fc.Calls())
		}
		if ls, err := s.VM.Agent.Links(ctx); err != nil || len(ls) != 1 {
			t.Fatalf("guest links %s, %v; want lo only", dockerguest.Describe(ls), err)
		}
	})
	if !ok {
		return
	}
	t.Run("NoUnplug", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		clh, err := katasim.New(s.VM, katasim.Options{NetNS: s.NetNS, NoUnplug: true})
		must(t, err)
		t.Cleanup(func() { clh.Close() })
		mon := startMonitor(t, s, clh.Port())
		if mon.m == nil {
			t.Fatalf("shimhook.Start returned no monitor; it logged:\n%s", mon.log.Dump(logrus.DebugLevel))
		}
		if mon.log.Find(logrus.WarnLevel, "cannot hot-unplug") == nil {
			t.Errorf("no warning that the hypervisor cannot hot-unplug; logged:\n%s", mon.log.Dump(logrus.DebugLevel))
		}
		sc := &scenario{Sandbox: s, sb: clh, mon: mon}
		sc.waitNIC(ctx, t, "eth0", ep0)

		d.env.MustDocker(t, "network", "connect", d.nets[1], s.Container)
		ep1 := s.Endpoint(t, d.nets[1])
		sc.waitNIC(ctx, t, "eth1", ep1)
		s.Reach(ctx, t, ep1.IPAddress.String(), 8080)

		d.env.MustDocker(t, "network", "disconnect", d.nets[1], s.Container)
		es, err := mon.log.Wait(remaining(ctx), logrus.WarnLevel, "cannot hot-unplug NICs: the guest keeps", 1)
		must(t, err)
		t.Logf("monitor said: %q (ifname %v)", es[0].Message, es[0].Data["ifname"])
		s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
		if got := mon.m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
			t.Errorf("monitor attached %v, want [eth0]", got)
		}
		if n := len(clh.CallsOf("RemoveInterface")); n != 0 {
			t.Errorf("%d RemoveInterface calls to a sandbox that cannot unplug", n)
		}
		// Still running: the next network is attached too. Docker names
		// it eth1 again; the agent swaps the guest's stranded eth1 out of
		// the way through eth1_temp (it ends up UP under the new NIC's
		// kernel name).
		d.env.MustDocker(t, "network", "connect", d.nets[2], s.Container)
		ep2 := s.Endpoint(t, d.nets[2])
		sc.waitNIC(ctx, t, "eth1", ep2)
		s.Reach(ctx, t, ep2.IPAddress.String(), 8080)
		s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
		ls, _ := s.VM.Agent.Links(ctx)
		t.Logf("guest now has: %s", dockerguest.Describe(ls))
		mon.log.NoErrors(t)
	})
}
