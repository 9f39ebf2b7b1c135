//go:build linux

package guest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerguest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
)

// TestDocker runs the real monitor through shimhook.Start, the way a
// Kata shim would, against a real Docker 29 and a real QEMU guest behind a
// container (dockerguest): katasim hot-plugs Docker's veths into the guest
// with Kata 4.1's tc mirred plumbing, and traffic from dockerd's netns to
// the container's address reaches the guest, not the container.
//
// One Docker environment serves every subtest; each top-level scenario has
// one container and one guest (guests run one at a time on the machine).
func TestDocker(t *testing.T) {
	begin := time.Now()
	env := dockerenv.Start(t)
	img := env.ImportBusybox(t)
	net1 := env.MustCreateNetwork(t, "knm-gd-a")
	net2 := env.MustCreateNetwork(t, "knm-gd-b")
	net3 := env.MustCreateNetwork(t, "knm-gd-c")
	t.Logf("docker env, image and networks ready in %v", time.Since(begin).Round(time.Millisecond))
	t.Cleanup(func() { t.Logf("TestDocker took %v", time.Since(begin).Round(time.Millisecond)) })

	t.Run("RunConnectDisconnect", func(t *testing.T) { runConnectDisconnect(t, env, img, net1, net2) })
	t.Run("HotplugRefusedUnplugRefused", func(t *testing.T) { refused(t, env, img, net1, net2, net3) })
}

// runConnectDisconnect: docker run, then the guest boots with no NIC,
// then Start (the Docker 28+ order); connect a second network that takes
// over the default gateway; disconnect it.
func runConnectDisconnect(t *testing.T, env *dockerenv.Env, img, net1, net2 string) {
	begin := time.Now()
	s := dockerguest.Run(t, env, img, net1)
	sb, err := katasim.New(s.VM, katasim.Options{NetNS: s.NetNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	ep0 := s.Endpoint(t, net1)
	t.Logf("docker inspect: eth0 mac %s ip %v gw %v", ep0.MacAddress, ep0.IPv4Prefix(), ep0.Gateway)

	// The monitor lives for the whole scenario, so it is started here, not
	// in a subtest; what the guest has right after Start is read at once
	// and checked below.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	infs, err := s.VM.Agent.Links(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(infs) != 1 || infs[0].Name != "lo" {
		t.Fatalf("guest booted with %s, want lo only", dockerguest.Describe(infs))
	}
	mon := startMonitor(t, s, sb)
	if mon.m == nil {
		t.Fatalf("shimhook.Start returned no monitor; it logged:\n%s", mon.log.Dump(logrus.DebugLevel))
	}
	// No waiting: the synchronous first reconcile must have given the guest
	// its network before Start returned, before any workload.
	infsAfter, ierr := s.VM.Agent.Links(ctx)
	routesAfter, rerr := s.VM.Agent.KernelRoutes(ctx)

	ok := t.Run("StartAttachesBeforeWorkload", func(t *testing.T) {
		if ierr != nil || rerr != nil {
			t.Fatal(ierr, rerr)
		}
		if err := dockerguest.CheckNIC(infsAfter, "eth0", ep0); err != nil {
			t.Fatalf("right after Start: %v", err)
		}
		if err := dockerguest.DefaultRouteIs(ep0.Gateway.String(), "eth0")(routesAfter); err != nil {
			t.Fatalf("right after Start: %v", err)
		}
		if got := mon.m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
			t.Errorf("monitor attached %v, want [eth0]", got)
		}
		if add := sb.CallsOf("AddInterface"); len(add) == 1 {
			t.Logf("AddInterface(eth0) took %v: %s", add[0].Took.Round(time.Millisecond), add[0].PhasesString())
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
	})
	if !ok {
		return
	}

	var ep1 *dockerenv.Endpoint
	ok = t.Run("ConnectTakesGateway", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		start := time.Now()
		env.MustDocker(t, "network", "connect", "--gw-priority", "10", net2, s.Container)
		connected := time.Since(start)
		ep1 = s.Endpoint(t, net2)
		if ep1.GwPriority != 10 {
			t.Errorf("docker inspect: gw-priority of %s is %d, want 10", net2, ep1.GwPriority)
		}
		t.Logf("docker network connect: %v; eth1 mac %s ip %v gw %v", connected.Round(time.Millisecond), ep1.MacAddress, ep1.IPv4Prefix(), ep1.Gateway)
		if _, err := s.VM.Agent.WaitLinks(ctx, 20*time.Millisecond, func(infs []*guestproto.Link) error {
			return dockerguest.CheckNIC(infs, "eth1", ep1)
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("guest has eth1 %v after %v", ep1.IPv4Prefix(), time.Since(start).Round(time.Millisecond))
		s.Reach(ctx, t, ep1.IPAddress.String(), 8080)
		if _, err := s.VM.Agent.WaitRoutes(ctx, 20*time.Millisecond, dockerguest.DefaultRouteIs(ep1.Gateway.String(), "eth1")); err != nil {
			t.Fatal(err)
		}
		t.Logf("guest default route follows the gateway endpoint: via %v dev eth1", ep1.Gateway)
	})
	if !ok {
		return
	}

	t.Run("Disconnect", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		start := time.Now()
		env.MustDocker(t, "network", "disconnect", net2, s.Container)
		t.Logf("docker network disconnect: %v", time.Since(start).Round(time.Millisecond))
		if _, err := s.VM.Agent.WaitLinks(ctx, 20*time.Millisecond, func(infs []*guestproto.Link) error {
			if inf := guest.FindLink(infs, ep1.MacAddress); inf != nil {
				return fmt.Errorf("guest still has %s (%s)", inf.Name, inf.MAC)
			}
			return dockerguest.CheckNIC(infs, "eth0", ep0)
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("guest's eth1 gone after %v", time.Since(start).Round(time.Millisecond))
		s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
		if _, err := s.VM.Agent.WaitRoutes(ctx, 20*time.Millisecond, dockerguest.DefaultRouteIs(ep0.Gateway.String(), "eth0")); err != nil {
			t.Fatal(err)
		}
		rm, err := sb.WaitCalls(ctx, "RemoveInterface", 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(rm) != 1 || rm[0].Err != nil || rm[0].Swallowed != nil {
			t.Fatalf("RemoveInterface calls = %+v, want one that detached cleanly", rm)
		}
		t.Logf("RemoveInterface(eth1) took %v: %s", rm[0].Took.Round(time.Millisecond), rm[0].PhasesString())
		// The monitor drops eth1 from its state after the call returns,
		// then logs it: wait for the line before reading the state.
		if _, err := mon.log.Wait(remaining(ctx), logrus.InfoLevel, "detached endpoint", 1); err != nil {
			t.Fatal(err)
		}
		if eps := sb.Endpoints(); len(eps) != 1 || eps[0].Name != "eth0" {
			t.Errorf("sandbox endpoints = %+v, want eth0 only", eps)
		}
		if got := mon.m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
			t.Errorf("monitor attached %v, want [eth0]", got)
		}
		if err := s.VM.TapError(); err != nil {
			t.Error(err)
		}
		mon.log.NoErrors(t)
	})
	t.Logf("scenario took %v", time.Since(begin).Round(time.Millisecond))
}

// refused: on one container and guest, a sandbox that cannot hot-plug
// (Firecracker) keeps the monitor from starting; then one that hot-plugs
// but cannot unplug (Cloud Hypervisor) runs it, and a disconnect leaves the
// monitor running and the guest working.
func refused(t *testing.T, env *dockerenv.Env, img, net1, net2, net3 string) {
	begin := time.Now()
	s := dockerguest.Run(t, env, img, net1)
	ep0 := s.Endpoint(t, net1)

	ok := t.Run("NoHotplug", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		fc, err := katasim.New(s.VM, katasim.Options{NetNS: s.NetNS, NoHotplug: true})
		if err != nil {
			t.Fatal(err)
		}
		defer fc.Close()
		mon := startMonitor(t, s, fc)
		if mon.m != nil {
			t.Fatal("shimhook.Start returned a monitor for a sandbox that cannot hot-plug NICs")
		}
		if err := mon.notMonitored; err == nil || !strings.Contains(err.Error(), "cannot hot-plug") {
			t.Errorf("Start did not say why it did not start: %v", err)
		} else {
			t.Logf("Start said: %q", err)
		}
		if calls := fc.Calls(); len(fc.CallsOf("AddInterface")) != 0 || len(fc.CallsOf("Capabilities")) == 0 {
			t.Errorf("sandbox calls: %+v, want Capabilities only", calls)
		}
		infs, err := s.VM.Agent.Links(ctx)
		if err != nil || len(infs) != 1 {
			t.Fatalf("guest interfaces %s, %v; want lo only", dockerguest.Describe(infs), err)
		}
	})
	if !ok {
		return
	}

	t.Run("NoUnplug", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		clh, err := katasim.New(s.VM, katasim.Options{NetNS: s.NetNS, NoUnplug: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { clh.Close() })
		mon := startMonitor(t, s, clh)
		if mon.m == nil {
			t.Fatalf("shimhook.Start returned no monitor; it logged:\n%s", mon.log.Dump(logrus.DebugLevel))
		}
		if mon.log.Find(logrus.WarnLevel, "cannot hot-unplug") == nil {
			t.Errorf("no warning that the hypervisor cannot hot-unplug; logged:\n%s", mon.log.Dump(logrus.DebugLevel))
		}
		infs, err := s.VM.Agent.Links(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := dockerguest.CheckNIC(infs, "eth0", ep0); err != nil {
			t.Fatalf("right after Start: %v", err)
		}

		env.MustDocker(t, "network", "connect", net2, s.Container)
		ep1 := s.Endpoint(t, net2)
		if _, err := s.VM.Agent.WaitLinks(ctx, 20*time.Millisecond, func(infs []*guestproto.Link) error {
			return dockerguest.CheckNIC(infs, "eth1", ep1)
		}); err != nil {
			t.Fatal(err)
		}
		s.Reach(ctx, t, ep1.IPAddress.String(), 8080)

		env.MustDocker(t, "network", "disconnect", net2, s.Container)
		es, err := mon.log.Wait(remaining(ctx), logrus.WarnLevel, "cannot hot-unplug NICs: the guest keeps", 1)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("monitor said: %q (ifname %v)", es[0].Message, es[0].Data["ifname"])
		// The guest keeps eth0 working; eth1 stays, without a backend.
		s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
		if got := mon.m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
			t.Errorf("monitor attached %v, want [eth0]", got)
		}
		if n := len(clh.CallsOf("RemoveInterface")); n != 0 {
			t.Errorf("%d RemoveInterface calls to a sandbox that cannot unplug", n)
		}

		// Still running: the next network is attached too. Docker names
		// it eth1 again; the guest's stranded eth1 is renamed out of the
		// way by the agent, as Kata's agent does.
		env.MustDocker(t, "network", "connect", net3, s.Container)
		ep3 := s.Endpoint(t, net3)
		if _, err := s.VM.Agent.WaitLinks(ctx, 20*time.Millisecond, func(infs []*guestproto.Link) error {
			return dockerguest.CheckNIC(infs, "eth1", ep3)
		}); err != nil {
			t.Fatal(err)
		}
		s.Reach(ctx, t, ep3.IPAddress.String(), 8080)
		s.Reach(ctx, t, ep0.IPAddress.String(), 8080)
		infs, _ = s.VM.Agent.Links(ctx)
		t.Logf("guest now has: %s", dockerguest.Describe(infs))
		mon.log.NoErrors(t)
		if err := s.VM.TapError(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("scenario took %v", time.Since(begin).Round(time.Millisecond))
}
