//go:build linux

// Package dockerguest puts a real QEMU guest behind a real Docker container,
// for the e2e tests, benchmarks and demo that need both: with runc, a
// container's netns receives exactly the netlink sequence a Kata sandbox
// netns receives, so the container's netns plays the sandbox netns, and the
// guest boots inside it, with no NIC, as Kata's QEMU runs in the sandbox
// netns. katasim (or any hotplug.Sandbox) then hot-plugs Docker's endpoints
// into the guest; traffic from dockerd's netns to an endpoint's address
// reaches the guest, not the container.
//
// It also holds the checks those users share, on the guest's kernel state
// (not Kata's view of it): a guest NIC against docker inspect (CheckNIC),
// the guest's IPv4 default route (DefaultRouteIs), and reachability proved
// by a token only the guest knows (Reach).
package dockerguest

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/shimcfg"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// Sandbox is a running busybox container with a guest booted in its netns.
type Sandbox struct {
	Env       *dockerenv.Env
	Container string // name
	ID        string // full id
	Pid       int    // the container's init, in the machine's pid namespace
	NetNS     string // /proc/<Pid>/ns/net
	VM        *guest.VM

	closeOnce sync.Once
}

// Run runs a busybox container on the networks (at least one; several are
// all configured before the container starts, as `docker run --network a
// --network b` does), then boots a guest with no NIC in its netns: the
// Docker 28+ order, where Docker has configured the container's
// interfaces before the shim's Start. Close (also run on t's cleanup)
// stops the guest first, then removes the container.
func Run(t testing.TB, env *dockerenv.Env, img string, networks ...string) *Sandbox {
	t.Helper()
	return RunWith(t, env, img, guest.Options{}, networks...)
}

// RunWith is Run with options for the guest (its netns is the container's).
func RunWith(t testing.TB, env *dockerenv.Env, img string, opts guest.Options, networks ...string) *Sandbox {
	t.Helper()
	if len(networks) == 0 {
		t.Fatal("dockerguest.Run: no network")
	}
	s := &Sandbox{Env: env, Container: dockerenv.UniqueName("knm-sbx")}
	start := time.Now()
	args := []string{"run", "--detach", "--name", s.Container}
	for _, n := range networks {
		args = append(args, "--network", n)
	}
	s.ID = env.MustDocker(t, append(args, img, "sleep", "3600")...)
	t.Cleanup(func() { s.Close(t) })
	s.Pid = env.ContainerPid(t, s.Container)
	s.NetNS = fmt.Sprintf("/proc/%d/ns/net", s.Pid)
	t.Logf("docker run %s on %v: %v (pid %d)", s.Container, networks, time.Since(start).Round(time.Millisecond), s.Pid)
	opts.NetNS = s.NetNS
	s.VM = guest.Boot(t, opts)
	return s
}

// Close stops the guest and removes the container (errors fail t). It is
// idempotent: a benchmark that runs one sandbox per round closes each
// before the next (one guest runs at a time).
func (s *Sandbox) Close(t testing.TB) {
	s.closeOnce.Do(func() {
		if s.VM != nil {
			s.VM.Stop()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := s.Env.Docker(ctx, "rm", "--force", s.Container); err != nil {
			t.Errorf("remove container %s: %v", s.Container, err)
		}
	})
}

// Endpoint returns the container's configured endpoint on network per
// docker inspect, failing t when there is none.
func (s *Sandbox) Endpoint(t testing.TB, network string) *dockerenv.Endpoint {
	t.Helper()
	c := s.Env.MustInspectContainer(t, s.Container)
	ep := c.NetworkSettings.Networks[network]
	if ep == nil || ep.MacAddress == "" || !ep.IPAddress.IsValid() {
		t.Fatalf("container %s: no configured endpoint on %s: %+v", s.Container, network, c.NetworkSettings.Networks)
	}
	return ep
}

// ShimConfig is what a Kata shim passes to shimhook.Start for this sandbox
// (shimcfg.Docker): the sandbox netns, the hypervisor's pid and dockerd's
// netns as the peer netns.
func (s *Sandbox) ShimConfig(sb hotplug.Sandbox, log *logrus.Entry) shimhook.Config {
	cfg := shimcfg.Docker(s.ID[:12], sb, s.NetNS, s.Env.NetNSPath())
	cfg.HypervisorPID = s.VM.Pid
	cfg.Log = log
	return cfg
}

// Reach serves a fresh random token in the guest on port and reads it from
// dockerd's netns at ip:port, and returns how long the read took. Only the
// guest knows the token and nothing listens in the sandbox netns, so an
// answer proves the packets went bridge -> veth -> tc mirred -> tap ->
// guest and back.
func (s *Sandbox) Reach(ctx context.Context, t testing.TB, ip string, port int) time.Duration {
	t.Helper()
	token := netmontest.RandName()
	if err := s.VM.Agent.ServeToken(ctx, port, token); err != nil {
		t.Fatalf("guest ServeToken: %v", err)
	}
	addr := net.JoinHostPort(ip, fmt.Sprint(port))
	start := time.Now()
	got, err := guest.ReadToken(ctx, s.Env.NetNSPath(), addr, 2*time.Second, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("from dockerd's netns: %v", err)
	}
	if got != token {
		t.Fatalf("token from %s = %q, want the guest's %q", addr, got, token)
	}
	took := time.Since(start)
	t.Logf("guest answered at %s from dockerd's netns in %v", addr, took.Round(100*time.Microsecond))
	return took
}

// CheckNIC checks that the guest has a NIC with the endpoint's MAC, named
// name, UP, carrying the endpoint's IPv4 address and prefix length, and
// that no other link has that MAC (Kata's agent re-MACs the netdev it finds
// at the PCI path it was told, when one sits right under it). It reads the
// guest's kernel, not Kata's view.
func CheckNIC(links []*guestproto.Link, name string, ep *dockerenv.Endpoint) error {
	l := guest.FindLink(links, ep.MacAddress)
	switch {
	case l == nil:
		return fmt.Errorf("no guest NIC with MAC %s (guest has %s)", ep.MacAddress, Describe(links))
	case l.Name != name:
		return fmt.Errorf("guest NIC with MAC %s is %q, want %q (guest has %s)", ep.MacAddress, l.Name, name, Describe(links))
	case !l.Up():
		return fmt.Errorf("guest %s is down (guest has %s)", name, Describe(links))
	case !guest.LinkHasAddress(l, ep.IPAddress.String(), ep.IPPrefixLen):
		return fmt.Errorf("guest %s lacks %v (guest has %s)", name, ep.IPv4Prefix(), Describe(links))
	}
	for _, o := range links {
		if o != l && strings.EqualFold(o.MAC, ep.MacAddress) {
			return fmt.Errorf("guest %s has %s's MAC %s too (guest has %s)", o.Name, name, ep.MacAddress, Describe(links))
		}
	}
	return nil
}

// Describe renders the guest's links: name, MAC (but lo's), DOWN when not
// up, and IPv4 addresses.
func Describe(links []*guestproto.Link) string {
	var parts []string
	for _, l := range links {
		s := l.Name
		if l.Name != "lo" {
			s += " " + l.MAC
		}
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

// DefaultRouteIs returns an Agent.WaitRoutes predicate: the guest's main
// table has exactly one IPv4 default route, via gw on dev.
func DefaultRouteIs(gw, dev string) func([]*guestproto.KernelRoute) error {
	want := fmt.Sprintf("via %s dev %s", gw, dev)
	return func(rs []*guestproto.KernelRoute) error {
		var got []string
		for _, r := range rs {
			if r.Family == guestproto.FamilyV4 && r.Table == 254 && r.Default() {
				got = append(got, fmt.Sprintf("via %s dev %s", r.Gateway, r.Device))
			}
		}
		sort.Strings(got)
		if len(got) != 1 || got[0] != want {
			return fmt.Errorf("guest IPv4 default routes %q, want [%q]", got, want)
		}
		return nil
	}
}
