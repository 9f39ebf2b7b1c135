//go:build linux

package docker

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
)

// TestEnv proves the private Docker environment: a container on a
// user-defined bridge network has eth0 with the MAC and IP docker inspect
// reports; connecting a second network adds eth1, disconnecting removes it.
func TestEnv(t *testing.T) {
	begin := time.Now()
	env := dockerenv.Start(t)
	t.Logf("env start: %v", time.Since(begin).Round(time.Millisecond))

	step := time.Now()
	img := env.ImportBusybox(t)
	t.Logf("busybox import: %v", time.Since(step).Round(time.Millisecond))

	net1 := env.MustCreateNetwork(t, "knm-net")
	const mtu2 = 1400
	net2 := env.MustCreateNetwork(t, "knm-net", "--opt", fmt.Sprintf("%s=%d", dockerenv.MTUOption, mtu2))

	n1 := env.MustInspectNetwork(t, net1)
	if len(n1.Subnets()) == 0 || !n1.IPAM.Config[0].Gateway.IsValid() {
		t.Fatalf("network %s: no subnet/gateway in IPAM config %+v", net1, n1.IPAM.Config)
	}
	n2 := env.MustInspectNetwork(t, net2)
	if got, ok, err := n2.MTU(); err != nil || !ok || got != mtu2 {
		t.Fatalf("network %s: MTU() = %d, %v, %v; want %d", net2, got, ok, err, mtu2)
	}

	// The bridges live in dockerd's netns, not in the machine's.
	br1 := "br-" + n1.ID[:12]
	assertLinkIn(t, env.NetNSPath(), br1, true)
	assertLinkIn(t, "/proc/self/ns/net", br1, false)

	ctr := dockerenv.UniqueName("knm-ctr")
	step = time.Now()
	env.MustDocker(t, "run", "--detach", "--name", ctr, "--network", net1, img, "sleep", "3600")
	t.Logf("docker run: %v", time.Since(step).Round(time.Millisecond))

	pid := env.ContainerPid(t, ctr)
	ns, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	w := watchLinks(t, ns)

	c := env.MustInspectContainer(t, ctr)
	ep1 := c.NetworkSettings.Networks[net1]
	if ep1 == nil {
		t.Fatalf("container %s: no endpoint on %s: %+v", ctr, net1, c.NetworkSettings.Networks)
	}
	t.Logf("eth0 per docker inspect: mac %s ip %v gw %v gwprio %d", ep1.MacAddress, ep1.IPv4Prefix(), ep1.Gateway, ep1.GwPriority)
	w.waitFor(t, 10*time.Second, "eth0 configured", func() error {
		if err := checkLink(h, "eth0", ep1, 0); err != nil {
			return err
		}
		return checkDefaultRoute(h, ep1.Gateway)
	})

	t.Log("--- docker network connect")
	step = time.Now()
	env.MustDocker(t, "network", "connect", net2, ctr)
	t.Logf("docker network connect: %v", time.Since(step).Round(time.Millisecond))
	ep2 := env.MustInspectContainer(t, ctr).NetworkSettings.Networks[net2]
	if ep2 == nil {
		t.Fatalf("container %s: no endpoint on %s after connect", ctr, net2)
	}
	w.waitFor(t, 10*time.Second, "eth1 configured", func() error {
		return checkLink(h, "eth1", ep2, mtu2)
	})

	t.Log("--- docker network disconnect")
	step = time.Now()
	env.MustDocker(t, "network", "disconnect", net2, ctr)
	t.Logf("docker network disconnect: %v", time.Since(step).Round(time.Millisecond))
	w.waitFor(t, 10*time.Second, "eth1 gone", func() error {
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().Name == "eth1" || l.Attrs().HardwareAddr.String() == ep2.MacAddress {
				return fmt.Errorf("link %d %s (%s) still present", l.Attrs().Index, l.Attrs().Name, l.Attrs().HardwareAddr)
			}
		}
		return nil
	})
	// eth0 is untouched.
	if err := checkLink(h, "eth0", ep1, 0); err != nil {
		t.Fatalf("after disconnect: %v", err)
	}
	if _, ok := env.MustInspectContainer(t, ctr).NetworkSettings.Networks[net2]; ok {
		t.Fatalf("docker inspect still lists %s after disconnect", net2)
	}
}

// checkLink checks that the netns has a veth named name carrying
// ep's MAC and IPv4 address, up and running (RUNNING is set asynchronously
// after UP), with the given MTU when mtu > 0.
func checkLink(h *netlink.Handle, name string, ep *dockerenv.Endpoint, mtu int) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	a := l.Attrs()
	if l.Type() != "veth" {
		return fmt.Errorf("%s: type %q, want veth", name, l.Type())
	}
	if a.HardwareAddr.String() != ep.MacAddress {
		return fmt.Errorf("%s: MAC %s, docker inspect says %s", name, a.HardwareAddr, ep.MacAddress)
	}
	if a.Flags&net.FlagUp == 0 || a.RawFlags&unix.IFF_RUNNING == 0 {
		return fmt.Errorf("%s: flags %v (raw %#x), want up and running", name, a.Flags, a.RawFlags)
	}
	if mtu > 0 && a.MTU != mtu {
		return fmt.Errorf("%s: MTU %d, want %d", name, a.MTU, mtu)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	want := ep.IPv4Prefix()
	var got []netip.Prefix
	for _, ad := range addrs {
		ip, _ := netip.AddrFromSlice(ad.IP)
		ones, _ := ad.Mask.Size()
		got = append(got, netip.PrefixFrom(ip.Unmap(), ones))
	}
	if !slices.Contains(got, want) {
		return fmt.Errorf("%s: IPv4 addresses %v, docker inspect says %v", name, got, want)
	}
	return nil
}

// checkDefaultRoute checks for an IPv4 default route via gw. netlink v1.3.1
// reports a default route with Dst 0.0.0.0/0 (or nil in older versions).
func checkDefaultRoute(h *netlink.Handle, gw netip.Addr) error {
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if g, ok := netip.AddrFromSlice(r.Gw); ok && g.Unmap() == gw {
			return nil
		}
	}
	return fmt.Errorf("no default route via %v in %v", gw, routes)
}

// assertLinkIn checks whether the netns at nsPath has a link named name.
func assertLinkIn(t *testing.T, nsPath, name string, want bool) {
	t.Helper()
	withHandleAt(t, nsPath, func(h *netlink.Handle) {
		_, err := h.LinkByName(name)
		var nf netlink.LinkNotFoundError
		switch {
		case want && err != nil:
			t.Fatalf("link %s not found in %s: %v", name, nsPath, err)
		case !want && err == nil:
			t.Fatalf("link %s unexpectedly present in %s", name, nsPath)
		case !want && !errors.As(err, &nf):
			t.Fatalf("looking up %s in %s: %v", name, nsPath, err)
		}
	})
}

// linkWatcher receives link and address events of one netns, so a test can
// wait for a state on a deadline without polling: it re-checks after every
// event. It logs the events it sees (the sequence Docker produces).
type linkWatcher struct {
	links chan netlink.LinkUpdate
	addrs chan netlink.AddrUpdate
	errs  chan error
}

func watchLinks(t *testing.T, ns netns.NsHandle) *linkWatcher {
	t.Helper()
	w := &linkWatcher{
		links: make(chan netlink.LinkUpdate, 256),
		addrs: make(chan netlink.AddrUpdate, 256),
		errs:  make(chan error, 16),
	}
	done := make(chan struct{})
	onErr := func(err error) {
		select {
		case w.errs <- err:
		default:
		}
	}
	if err := netlink.LinkSubscribeWithOptions(w.links, done, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: onErr}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrSubscribeWithOptions(w.addrs, done, netlink.AddrSubscribeOptions{Namespace: &ns, ErrorCallback: onErr}); err != nil {
		close(done)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(done)
		// Drain until the library closes the channels, so its goroutines exit.
		deadline := time.After(5 * time.Second)
		for w.links != nil || w.addrs != nil {
			select {
			case _, ok := <-w.links:
				if !ok {
					w.links = nil
				}
			case _, ok := <-w.addrs:
				if !ok {
					w.addrs = nil
				}
			case <-deadline:
				t.Errorf("netlink subscriptions did not close within 5s")
				return
			}
		}
	})
	return w
}

// waitFor returns once check returns nil, re-checking after each event;
// it fails the test with check's last error at the deadline.
func (w *linkWatcher) waitFor(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	start := time.Now()
	for {
		err := check()
		if err == nil {
			t.Logf("%s after %v", what, time.Since(start).Round(time.Microsecond))
			return
		}
		select {
		case u := <-w.links:
			a := u.Attrs()
			t.Logf("  event %s link %d %s kind=%s mac=%s flags=%v link=%d netnsid=%d mtu=%d", msgType(u.Header.Type), a.Index, a.Name, u.Type(), a.HardwareAddr, a.Flags, a.ParentIndex, a.NetNsID, a.MTU)
		case u := <-w.addrs:
			op := "DELADDR"
			if u.NewAddr {
				op = "NEWADDR"
			}
			t.Logf("  event %s %v on link %d", op, &u.LinkAddress, u.LinkIndex)
		case err := <-w.errs:
			t.Logf("  netlink error callback (not fatal): %v", err)
		case <-deadline.C:
			t.Fatalf("%s: not reached within %v: %v", what, timeout, err)
		}
	}
}

func msgType(t uint16) string {
	switch t {
	case unix.RTM_NEWLINK:
		return "NEWLINK"
	case unix.RTM_DELLINK:
		return "DELLINK"
	}
	return fmt.Sprint(t)
}
