//go:build linux

package docker

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestMonitor runs the monitor against a real Docker 29 daemon: every
// container's netns gets the netlink sequence a Kata sandbox netns gets, and
// every check compares the guest the monitor's sandbox ended up with (the
// events an in-memory FakeSandbox logged, or the watch command's JSON lines,
// replayed into a guestModel) with what `docker inspect` says about the
// container and its networks. One daemon
// serves all subtests; every network and container has a unique name.
func TestMonitor(t *testing.T) {
	begin := time.Now()
	d := startDaemon(t)
	t.Cleanup(func() { t.Logf("TestMonitor total: %v", time.Since(begin).Round(time.Millisecond)) })

	// docker run on a user-defined bridge: eth0 with Docker's MAC, address,
	// prefix and MTU, and the default route via the network's gateway.
	t.Run("Run", func(t *testing.T) {
		net1 := d.network(t)
		ctr, pid := d.run(t, "--network", net1)
		m := startInProcess(t, d, pid)
		wants := d.wants(t, ctr)
		names := kernelNames(t, pid)
		w := only(t, wants)
		if names[w.mac] != "eth0" {
			t.Fatalf("the only endpoint %s is %q in the container, want eth0", w, names[w.mac])
		}
		m.waitFor(t, "eth0 attached, default route", func(g *guestModel) error { return g.settled(wants, names) })
		g := m.checkClean(t)
		attachedOnce(t, g, wants)
	})

	// docker network connect / disconnect while the container runs, and a
	// connect with a fixed --ip.
	t.Run("ConnectDisconnect", func(t *testing.T) {
		net1, net2 := d.network(t), d.network(t)
		sub3 := d.subnet4()
		net3 := d.network(t, "--subnet", sub3.String())
		ctr, pid := d.run(t, "--network", net1)
		m := startInProcess(t, d, pid)
		wants1 := d.wants(t, ctr)
		w1 := only(t, wants1)
		m.waitFor(t, "eth0 attached", func(g *guestModel) error { return g.settled(wants1, nil) })

		mark := m.mark()
		d.MustDocker(t, "network", "connect", net2, ctr)
		wants2 := d.wants(t, ctr)
		w2 := addedEndpoint(t, wants1, wants2)
		names := kernelNames(t, pid)
		// Equal priorities: Docker moves the default route to net2 if its
		// name sorts first (settled checks that).
		gw := gatewayEndpoint(wants2, false)
		m.waitFor(t, fmt.Sprintf("connect: eth1 attached, routes pushed again (default via %s)", gw.network), func(g *guestModel) error {
			if err := g.settled(wants2, names); err != nil {
				return err
			}
			return routesPushedAfter(g, mark, "attach", w2.mac)
		})
		if names[w2.mac] == names[w1.mac] || names[w2.mac] == "" {
			t.Fatalf("kernel names %v: want a second interface for %s", names, w2)
		}

		mark = m.mark()
		d.MustDocker(t, "network", "disconnect", net2, ctr)
		wants3 := d.wants(t, ctr)
		if len(wants3) != 1 || wants3[w1.mac] == nil {
			t.Fatalf("after disconnect docker inspect lists %v, want only %s", wants3, w1)
		}
		m.waitFor(t, "disconnect: eth1 detached, routes pushed again", func(g *guestModel) error {
			if err := g.settled(wants3, nil); err != nil {
				return err
			}
			if err := g.checkDefault(w1.gw4, w1.mac); err != nil {
				return err
			}
			return routesPushedAfter(g, mark, "detach", w2.mac)
		})

		// --ip: an address Docker would not have picked.
		ip := netip.AddrFrom4([4]byte(append(sub3.Addr().AsSlice()[:3:3], 77)))
		d.MustDocker(t, "network", "connect", "--ip", ip.String(), net3, ctr)
		wants4 := d.wants(t, ctr)
		w4 := addedEndpoint(t, wants3, wants4)
		if want := netip.PrefixFrom(ip, sub3.Bits()).String(); !slices.Contains(w4.addrs, want) {
			t.Fatalf("docker inspect after connect --ip %v: %s, want address %s", ip, w4, want)
		}
		m.waitFor(t, "connect --ip: attached with that address", func(g *guestModel) error {
			return g.settled(wants4, kernelNames(t, pid))
		})
		g := m.checkClean(t)
		if g.attaches[w2.mac] != 1 || g.attaches[w4.mac] != 1 || g.detaches != 1 {
			t.Errorf("attaches %v, %d detaches; want each MAC attached once and one detach\n%s", g.attaches, g.detaches, formatEvents(g.events))
		}
	})

	// --gw-priority on connect moves the default route to the new network,
	// and back on disconnect.
	t.Run("GwPriority", func(t *testing.T) {
		net1, net2 := d.network(t), d.network(t)
		ctr, pid := d.run(t, "--network", net1)
		m := startInProcess(t, d, pid)
		wants1 := d.wants(t, ctr)
		w1 := only(t, wants1)
		m.waitFor(t, "eth0 attached", func(g *guestModel) error { return g.settled(wants1, nil) })

		const prio = 10
		mark := m.mark()
		d.MustDocker(t, "network", "connect", "--gw-priority", fmt.Sprint(prio), net2, ctr)
		wants2 := d.wants(t, ctr)
		w2 := addedEndpoint(t, wants1, wants2)
		if w2.prio != prio {
			t.Fatalf("docker inspect reports GwPriority %d for %s, want %d: this Docker does not support --gw-priority", w2.prio, w2.network, prio)
		}
		names := kernelNames(t, pid)
		g := m.waitFor(t, "connect --gw-priority: default via the new gateway on the new device", func(g *guestModel) error {
			if err := g.settled(wants2, names); err != nil {
				return err
			}
			if err := g.checkDefault(w2.gw4, w2.mac); err != nil {
				return err
			}
			return routesPushedAfter(g, mark, "attach", w2.mac)
		})
		t.Logf("routes after connect --gw-priority: %+v", g.last)

		mark = m.mark()
		d.MustDocker(t, "network", "disconnect", net2, ctr)
		wants3 := d.wants(t, ctr)
		m.waitFor(t, "disconnect: default back via the first gateway", func(g *guestModel) error {
			if err := g.settled(wants3, nil); err != nil {
				return err
			}
			if err := g.checkDefault(w1.gw4, w1.mac); err != nil {
				return err
			}
			return routesPushedAfter(g, mark, "detach", w2.mac)
		})
		m.checkClean(t)
	})

	// A dual-stack network: the IPv6 address and IPv6 default route reach
	// the VM, the kernel's link-local addresses do not (checkClean).
	t.Run("DualStack", func(t *testing.T) {
		sub4, sub6 := d.subnet4(), randomSubnet6()
		net := d.network(t, "--ipv6", "--subnet", sub4.String(), "--subnet", sub6.String())
		ctr, pid := d.run(t, "--network", net)
		m := startInProcess(t, d, pid)
		wants := d.wants(t, ctr)
		w := only(t, wants)
		if !w.gw6.IsValid() || len(w.addrs) != 2 {
			t.Fatalf("docker inspect of a dual-stack endpoint: %s; want an IPv4 and an IPv6 address and an IPv6 gateway", w)
		}
		names := kernelNames(t, pid)
		g := m.waitFor(t, "IPv4 and IPv6 addresses and default routes", func(g *guestModel) error {
			if err := g.settled(wants, names); err != nil {
				return err
			}
			return g.checkDefault(w.gw6, w.mac)
		})
		if !hasLinkLocal6(t, pid, names[w.mac]) {
			t.Errorf("%s has no IPv6 link-local address in the container: the link-local filter was not exercised", names[w.mac])
		}
		t.Logf("attach %+v; routes %+v", g.ifs[w.mac], g.last)
		m.checkClean(t)
	})

	// A network with its own MTU, and a MAC given with --mac-address.
	t.Run("MTUAndMAC", func(t *testing.T) {
		const mtu = 1400
		net := d.network(t, "--opt", fmt.Sprintf("com.docker.network.driver.mtu=%d", mtu))
		mac := netmontest.RandMAC().String()
		ctr, pid := d.run(t, "--network", net, "--mac-address", mac)
		m := startInProcess(t, d, pid)
		wants := d.wants(t, ctr)
		w := only(t, wants)
		if w.mac != mac || w.mtu != mtu {
			t.Fatalf("docker inspect: %s; want MAC %s and MTU %d", w, mac, mtu)
		}
		m.waitFor(t, "attached with the given MAC and the network's MTU", func(g *guestModel) error {
			return g.settled(wants, kernelNames(t, pid))
		})
		m.checkClean(t)
	})

	// Three networks before start: the monitor started right after `docker
	// start` returns sees all three, and attaches each exactly once.
	t.Run("ThreeNetworksAtStart", func(t *testing.T) {
		n1, n2 := d.network(t), d.network(t, "--opt", "com.docker.network.driver.mtu=1400")
		n3 := d.network(t, "--subnet", d.subnet4().String())
		ctr := d.create(t, "--network", n1)
		d.MustDocker(t, "network", "connect", n2, ctr)
		d.MustDocker(t, "network", "connect", n3, ctr)
		d.MustDocker(t, "start", ctr)
		pid := d.ContainerPid(t, ctr)
		m := startInProcess(t, d, pid)
		// Sync returned: nothing may be pending, so all three are in.
		wants := d.wants(t, ctr)
		names := kernelNames(t, pid)
		if len(wants) != 3 {
			t.Fatalf("docker inspect lists %d networks, want 3: %v", len(wants), wants)
		}
		if err := modelOf(m.Events()).checkAttached(wants, names); err != nil {
			t.Fatalf("right after Sync: %v\n%s", err, formatEvents(m.Events()))
		}
		g := m.waitFor(t, "default route", func(g *guestModel) error { return g.settled(wants, names) })
		attachedOnce(t, g, wants)
		var order []string
		for mac, w := range wants {
			order = append(order, fmt.Sprintf("%s=%s", names[mac], w.network))
		}
		sort.Strings(order)
		t.Logf("interfaces: %v; default %+v", order, g.routes["4|default"])
		m.checkClean(t)
	})

	// Two containers at once, each with its own monitor (one in process,
	// one through shimhook with Docker's real bundle and spec): each sees
	// only its own endpoints, also when one of them changes.
	t.Run("TwoContainers", func(t *testing.T) {
		netA, netB := d.network(t), d.network(t)
		c1, pid1 := d.run(t, "--network", netA)
		c2, pid2 := d.run(t, "--network", netA)
		d.MustDocker(t, "network", "connect", netB, c2)
		m1 := startInProcess(t, d, pid1)
		m2 := startShimhook(t, d, c2, pid2)
		wants1, wants2 := d.wants(t, c1), d.wants(t, c2)
		m1.waitFor(t, "c1's endpoint", func(g *guestModel) error { return g.settled(wants1, kernelNames(t, pid1)) })
		m2.waitFor(t, "c2's endpoints", func(g *guestModel) error { return g.settled(wants2, kernelNames(t, pid2)) })

		d.MustDocker(t, "network", "connect", netB, c1)
		wants1 = d.wants(t, c1)
		m1.waitFor(t, "c1 connected to netB", func(g *guestModel) error { return g.settled(wants1, kernelNames(t, pid1)) })
		m2.waitFor(t, "c2 unchanged", func(g *guestModel) error { return g.settled(wants2, nil) })
		for _, x := range []struct {
			m          *monitor
			own, other map[string]*expectedNIC
		}{{m1, wants1, wants2}, {m2, wants2, wants1}} {
			g := x.m.checkClean(t)
			for mac := range g.attaches {
				if x.own[mac] == nil {
					t.Errorf("%s attached %s, which is not its container's (the other's: %v)", x.m.name, mac, x.other[mac] != nil)
				}
			}
		}
	})

	// 20 rapid connect/disconnect rounds, from two goroutines at once on
	// two networks so that endpoints come and go interleaved and names are
	// reused (every other round takes the gateway), then a last connect of
	// each: the calls end in Docker's state.
	t.Run("RapidConnectDisconnect", func(t *testing.T) {
		netA, netB, netC := d.network(t), d.network(t), d.network(t)
		ctr, pid := d.run(t, "--network", netA)
		m := startInProcess(t, d, pid)
		wants := d.wants(t, ctr)
		m.waitFor(t, "eth0 attached", func(g *guestModel) error { return g.settled(wants, nil) })
		const rounds = 10 // per network
		start := time.Now()
		errs := make(chan error, 2)
		for _, net := range []string{netB, netC} {
			go func() {
				errs <- func() error {
					ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
					defer cancel()
					for i := range rounds + 1 {
						args := []string{"network", "connect"}
						if i%2 == 1 || i == rounds {
							args = append(args, "--gw-priority", fmt.Sprint(10+i))
						}
						if _, err := d.Docker(ctx, append(args, net, ctr)...); err != nil {
							return err
						}
						if i == rounds {
							return nil // the last connect stays
						}
						if _, err := d.Docker(ctx, "network", "disconnect", net, ctr); err != nil {
							return err
						}
					}
					return nil
				}()
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("2x%d connect/disconnect rounds and a last connect, concurrently: %v", rounds, time.Since(start).Round(time.Millisecond))
		final := d.wants(t, ctr)
		names := kernelNames(t, pid)
		g := m.waitFor(t, "Docker's final state", func(g *guestModel) error { return g.settled(final, names) })
		var attaches int
		for _, n := range g.attaches {
			attaches += n
		}
		routes := 0
		for _, e := range g.events {
			if e.Op == "routes" {
				routes++
			}
		}
		t.Logf("%d events: %d attaches (%d MACs), %d detaches, %d route pushes; final routes %+v",
			len(g.events), attaches, len(g.attaches), g.detaches, routes, g.last)
		m.checkClean(t)
	})

	// The production arrangement: the monitor runs in dockerd's own netns
	// and takes "its own netns" as dockerd's, without scanning. Only a
	// separate process can be in another netns, so this runs the watch
	// command under nsenter and reads its JSON lines.
	t.Run("WatchInDockerdNetNS", func(t *testing.T) {
		net1, net2 := d.network(t), d.network(t)
		ctr, pid := d.run(t, "--network", net1)
		w := startWatch(t, d.NetNSPath(), pid, "--dockerd-netns", "self")
		wants1 := d.wants(t, ctr)
		m := w.monitor
		m.waitFor(t, "eth0 attached", func(g *guestModel) error { return g.settled(wants1, kernelNames(t, pid)) })

		d.MustDocker(t, "network", "connect", net2, ctr)
		wants2 := d.wants(t, ctr)
		w2 := addedEndpoint(t, wants1, wants2)
		m.waitFor(t, "eth1 attached", func(g *guestModel) error { return g.settled(wants2, kernelNames(t, pid)) })
		mark := m.mark()
		d.MustDocker(t, "network", "disconnect", net2, ctr)
		m.waitFor(t, "eth1 detached", func(g *guestModel) error {
			if err := g.settled(wants1, nil); err != nil {
				return err
			}
			return routesPushedAfter(g, mark, "detach", w2.mac)
		})
		n := m.mark()
		if err := w.proc.Terminate(15 * time.Second); err != nil {
			t.Fatalf("SIGTERM: %v", err)
		}
		if got := m.mark(); got != n {
			t.Errorf("%d events after SIGTERM, want none:\n%s", got-n, formatEvents(m.Events()[n:]))
		}
		checkWatchLog(t, w, "first reconcile done")
		m.checkClean(t)
	})

	// --pid: the watch command stops by itself, cleanly, when the
	// container's process exits.
	t.Run("WatchStopsWhenContainerExits", func(t *testing.T) {
		net1 := d.network(t)
		ctr, pid := d.run(t, "--network", net1)
		w := startWatch(t, d.NetNSPath(), pid, "--dockerd-netns", "self")
		wants := d.wants(t, ctr)
		w.waitFor(t, "eth0 attached", func(g *guestModel) error { return g.settled(wants, nil) })
		d.MustDocker(t, "kill", ctr)
		if err := w.proc.Wait(15 * time.Second); err != nil {
			t.Fatalf("after docker kill: %v", err)
		}
		checkWatchLog(t, w, "process exited; stopping")
		w.checkClean(t)
	})
}
