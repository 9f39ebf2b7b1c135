//go:build linux

package guest

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/e2e/internal/shimcfg"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// TestMonitorRoutes: the monitor's routes as Kata's agent takes them (the
// controls are TestAgentRules' RouteFlags and RouteSource), replayed in a
// lab on patched katasim.
//   - R65: a route of a link without carrier carries RTNH_F_LINKDOWN,
//     which IPv4 refuses on add: the monitor sends no status flags, so a
//     route added while the carrier is off still reaches the guest;
//   - R66: the agent makes a bare Source a source prefix (RTA_SRC): the
//     monitor does not send the preferred source, so the guest's route is
//     not source-specific (it has no preferred source either: the agent
//     would take one only as "ip/0").
func TestMonitorRoutes(t *testing.T) {
	l := newLab(t, 0)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	sb := l.sim(t, katasim.Options{})
	e := l.endpoint(t, "eth0")
	e.AddDefaultRoute(l.gateway())
	mon := startLabMonitor(t, l, sb.Port())
	if got := mon.m.NICNames(); len(got) != 1 {
		t.Fatalf("monitor attached %v", got)
	}
	waitGuestRoute := func(t *testing.T, what string, ok func(*guestproto.KernelRoute) bool) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		defer wcancel()
		if _, err := l.vm.Agent.WaitRoutes(wctx, 20*time.Millisecond, func(rs []*guestproto.KernelRoute) error {
			for _, r := range rs {
				if r.Table == 254 && ok(r) {
					return nil
				}
			}
			return fmt.Errorf("no %s in the guest", what)
		}); err != nil {
			calls := sb.CallsOf("UpdateRoutes")
			for _, r := range calls[len(calls)-1].Arg.([]*hotplug.Route) {
				t.Logf("last UpdateRoutes: %+v", *r)
			}
			t.Fatalf("%v; the monitor logged:\n%s", err, mon.log.Dump(logrus.WarnLevel))
		}
	}
	waitGuestRoute(t, "default route", func(r *guestproto.KernelRoute) bool { return r.Default() && r.Gateway == l.gateway() })

	t.Run("Source", func(t *testing.T) {
		ip := net.ParseIP(e.IP)
		_, dst, _ := net.ParseCIDR("10.81.0.0/24")
		must(t, l.Sandbox.RouteAdd(&netlink.Route{LinkIndex: e.Index, Dst: dst, Src: ip, Scope: unix.RT_SCOPE_LINK, Protocol: unix.RTPROT_BOOT}))
		waitGuestRoute(t, "10.81.0.0/24, not source-specific", func(r *guestproto.KernelRoute) bool {
			return r.Dst == "10.81.0.0/24" && r.Src == ""
		})
	})

	t.Run("LinkDown", func(t *testing.T) {
		// The host end down: eth0 loses its carrier, its routes get
		// RTNH_F_LINKDOWN; a route added now carries it too.
		host, err := l.Dockerd.LinkByIndex(e.HostIndex)
		must(t, err)
		updates := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		defer close(done)
		must(t, netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{Namespace: &l.SandboxNS, ErrorCallback: func(error) {}}))
		must(t, l.Dockerd.LinkSetDown(host))
		// The carrier goes off asynchronously (linkwatch); the kernel
		// flags the link's routes in the same step.
		for lost := false; !lost; {
			select {
			case u := <-updates:
				lost = int(u.Index) == e.Index && u.Flags&unix.IFF_RUNNING == 0
			case <-ctx.Done():
				t.Fatal("eth0 never lost its carrier")
			}
		}
		_, dst, _ := net.ParseCIDR("10.80.0.0/24")
		must(t, l.Sandbox.RouteAdd(&netlink.Route{LinkIndex: e.Index, Dst: dst, Gw: net.ParseIP(l.gateway()), Protocol: unix.RTPROT_BOOT}))
		rs, err := l.Sandbox.RouteList(l.link(t, e.Index), netlink.FAMILY_V4)
		must(t, err)
		for _, r := range rs {
			if r.Dst != nil && r.Dst.String() == "10.80.0.0/24" && r.Flags&unix.RTNH_F_LINKDOWN == 0 {
				t.Fatalf("route %v has no RTNH_F_LINKDOWN: the test does not test", r)
			}
		}
		waitGuestRoute(t, "10.80.0.0/24", func(r *guestproto.KernelRoute) bool { return r.Dst == "10.80.0.0/24" && r.Gateway == l.gateway() })
		must(t, l.Dockerd.LinkSetUp(host))
	})
	mon.log.NoErrors(t)
}

// TestMonitorNetNSNotCreated (R2, R40): Kata's unplug does nothing in a
// netns it did not create (the OCI spec names one: --net=container:X,
// Kubernetes); the monitor does not monitor such a sandbox at all.
func TestMonitorNetNSNotCreated(t *testing.T) {
	l := newLab(t, 0)
	sb := l.sim(t, katasim.Options{Kata: katasim.AsShipped, NetNSNotCreated: true})
	l.endpoint(t, "eth0")
	mon := startMonitorWith(t, func(log *logrus.Entry) shimhook.Config {
		cfg := shimcfg.Docker(netmontest.RandName(), sb.Port(), l.SandboxPath, l.DockerdPath)
		cfg.HypervisorPID = l.vm.Pid
		cfg.Log = log
		cfg.Spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: l.SandboxPath}}
		return cfg
	})
	if mon.m != nil || mon.notMonitored == nil {
		t.Fatalf("shimhook.Start monitored a sandbox whose netns the spec names")
	}
	t.Logf("Start said: %v", mon.notMonitored)
	for _, c := range sb.Calls() {
		if c.Method != "Capabilities" {
			t.Errorf("the sandbox was called: %s", c.Method)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if ls := l.links(ctx, t); len(ls) != 1 {
		t.Errorf("guest has %s", describeLinks(ls))
	}
}
