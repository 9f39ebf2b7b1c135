//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/internal/recording"
)

// TestDockerMonitor runs the monitor against a real Docker 29 daemon: every
// container's netns gets the netlink sequence a Kata sandbox netns gets, and
// every check compares the calls a recording sandbox received with what
// `docker inspect` says about the container and its networks. One daemon
// serves all subtests; every network and container has a unique name.
func TestDockerMonitor(t *testing.T) {
	begin := time.Now()
	d := dkStartDocker(t)
	t.Cleanup(func() { t.Logf("TestDockerMonitor total: %v", time.Since(begin).Round(time.Millisecond)) })

	// docker run on a user-defined bridge: eth0 with Docker's MAC, address,
	// prefix and MTU, and the default route via the network's gateway.
	t.Run("Run", func(t *testing.T) {
		net1 := d.network(t)
		ctr, pid := d.run(t, "--network", net1)
		m := dkStartMonitor(t, d, pid)
		wants := d.wants(t, ctr)
		names := dkKernelNames(t, pid)
		w := dkOnly(t, wants)
		if names[w.mac] != "eth0" {
			t.Fatalf("the only endpoint %s is %q in the container, want eth0", w, names[w.mac])
		}
		m.waitFor(t, "eth0 attached, default route", func(g *dkGuest) error { return g.settled(wants, names) })
		g := m.checkClean(t)
		dkOnce(t, g, wants)
	})

	// docker network connect / disconnect while the container runs, and a
	// connect with a fixed --ip.
	t.Run("ConnectDisconnect", func(t *testing.T) {
		net1, net2 := d.network(t), d.network(t)
		sub3 := d.subnet4()
		net3 := d.network(t, "--subnet", sub3.String())
		ctr, pid := d.run(t, "--network", net1)
		m := dkStartMonitor(t, d, pid)
		wants1 := d.wants(t, ctr)
		w1 := dkOnly(t, wants1)
		m.waitFor(t, "eth0 attached", func(g *dkGuest) error { return g.settled(wants1, nil) })

		mark := m.mark()
		d.MustDocker(t, "network", "connect", net2, ctr)
		wants2 := d.wants(t, ctr)
		w2 := dkNew(t, wants1, wants2)
		names := dkKernelNames(t, pid)
		// Equal priorities: Docker moves the default route to net2 if its
		// name sorts first (settled checks that).
		gw := dkGatewayEndpoint(wants2, false)
		m.waitFor(t, fmt.Sprintf("connect: eth1 attached, routes pushed again (default via %s)", gw.network), func(g *dkGuest) error {
			if err := g.settled(wants2, names); err != nil {
				return err
			}
			return dkRoutesAfter(g, mark, "attach", w2.mac)
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
		m.waitFor(t, "disconnect: eth1 detached, routes pushed again", func(g *dkGuest) error {
			if err := g.settled(wants3, nil); err != nil {
				return err
			}
			if err := g.checkDefault(w1.gw4, w1.mac); err != nil {
				return err
			}
			return dkRoutesAfter(g, mark, "detach", w2.mac)
		})

		// --ip: an address Docker would not have picked.
		ip := netip.AddrFrom4([4]byte(append(sub3.Addr().AsSlice()[:3:3], 77)))
		d.MustDocker(t, "network", "connect", "--ip", ip.String(), net3, ctr)
		wants4 := d.wants(t, ctr)
		w4 := dkNew(t, wants3, wants4)
		if want := netip.PrefixFrom(ip, sub3.Bits()).String(); !slices.Contains(w4.addrs, want) {
			t.Fatalf("docker inspect after connect --ip %v: %s, want address %s", ip, w4, want)
		}
		m.waitFor(t, "connect --ip: attached with that address", func(g *dkGuest) error {
			return g.settled(wants4, dkKernelNames(t, pid))
		})
		g := m.checkClean(t)
		if g.attaches[w2.mac] != 1 || g.attaches[w4.mac] != 1 || g.detaches != 1 {
			t.Errorf("attaches %v, %d detaches; want each MAC attached once and one detach\n%s", g.attaches, g.detaches, dkFormat(g.events))
		}
	})

	// --gw-priority on connect moves the default route to the new network,
	// and back on disconnect.
	t.Run("GwPriority", func(t *testing.T) {
		net1, net2 := d.network(t), d.network(t)
		ctr, pid := d.run(t, "--network", net1)
		m := dkStartMonitor(t, d, pid)
		wants1 := d.wants(t, ctr)
		w1 := dkOnly(t, wants1)
		m.waitFor(t, "eth0 attached", func(g *dkGuest) error { return g.settled(wants1, nil) })

		const prio = 10
		mark := m.mark()
		d.MustDocker(t, "network", "connect", "--gw-priority", fmt.Sprint(prio), net2, ctr)
		wants2 := d.wants(t, ctr)
		w2 := dkNew(t, wants1, wants2)
		if w2.prio != prio {
			t.Fatalf("docker inspect reports GwPriority %d for %s, want %d: this Docker does not support --gw-priority", w2.prio, w2.network, prio)
		}
		names := dkKernelNames(t, pid)
		g := m.waitFor(t, "connect --gw-priority: default via the new gateway on the new device", func(g *dkGuest) error {
			if err := g.settled(wants2, names); err != nil {
				return err
			}
			if err := g.checkDefault(w2.gw4, w2.mac); err != nil {
				return err
			}
			return dkRoutesAfter(g, mark, "attach", w2.mac)
		})
		t.Logf("routes after connect --gw-priority: %+v", g.last)

		mark = m.mark()
		d.MustDocker(t, "network", "disconnect", net2, ctr)
		wants3 := d.wants(t, ctr)
		m.waitFor(t, "disconnect: default back via the first gateway", func(g *dkGuest) error {
			if err := g.settled(wants3, nil); err != nil {
				return err
			}
			if err := g.checkDefault(w1.gw4, w1.mac); err != nil {
				return err
			}
			return dkRoutesAfter(g, mark, "detach", w2.mac)
		})
		m.checkClean(t)
	})

	// A dual-stack network: the IPv6 address and IPv6 default route reach
	// the VM, the kernel's link-local addresses do not (checkClean).
	t.Run("DualStack", func(t *testing.T) {
		sub4, sub6 := d.subnet4(), dkSubnet6()
		net := d.network(t, "--ipv6", "--subnet", sub4.String(), "--subnet", sub6.String())
		ctr, pid := d.run(t, "--network", net)
		m := dkStartMonitor(t, d, pid)
		wants := d.wants(t, ctr)
		w := dkOnly(t, wants)
		if !w.gw6.IsValid() || len(w.addrs) != 2 {
			t.Fatalf("docker inspect of a dual-stack endpoint: %s; want an IPv4 and an IPv6 address and an IPv6 gateway", w)
		}
		names := dkKernelNames(t, pid)
		g := m.waitFor(t, "IPv4 and IPv6 addresses and default routes", func(g *dkGuest) error {
			if err := g.settled(wants, names); err != nil {
				return err
			}
			return g.checkDefault(w.gw6, w.mac)
		})
		if !dkKernelHasLinkLocal6(t, pid, names[w.mac]) {
			t.Errorf("%s has no IPv6 link-local address in the container: the link-local filter was not exercised", names[w.mac])
		}
		t.Logf("attach %+v; routes %+v", g.ifs[w.mac], g.last)
		m.checkClean(t)
	})

	// A network with its own MTU, and a MAC given with --mac-address.
	t.Run("MTUAndMAC", func(t *testing.T) {
		const mtu = 1400
		net := d.network(t, "--opt", fmt.Sprintf("com.docker.network.driver.mtu=%d", mtu))
		mac := dkRandomMAC()
		ctr, pid := d.run(t, "--network", net, "--mac-address", mac)
		m := dkStartMonitor(t, d, pid)
		wants := d.wants(t, ctr)
		w := dkOnly(t, wants)
		if w.mac != mac || w.mtu != mtu {
			t.Fatalf("docker inspect: %s; want MAC %s and MTU %d", w, mac, mtu)
		}
		m.waitFor(t, "attached with the given MAC and the network's MTU", func(g *dkGuest) error {
			return g.settled(wants, dkKernelNames(t, pid))
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
		m := dkStartMonitor(t, d, pid)
		// Sync returned: nothing may be pending, so all three are in.
		wants := d.wants(t, ctr)
		names := dkKernelNames(t, pid)
		if len(wants) != 3 {
			t.Fatalf("docker inspect lists %d networks, want 3: %v", len(wants), wants)
		}
		if err := dkReplay(m.Events()).checkAttached(wants, names); err != nil {
			t.Fatalf("right after Sync: %v\n%s", err, dkFormat(m.Events()))
		}
		g := m.waitFor(t, "default route", func(g *dkGuest) error { return g.settled(wants, names) })
		dkOnce(t, g, wants)
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
		m1 := dkStartMonitor(t, d, pid1)
		m2 := dkStartShimhook(t, d, c2, pid2)
		wants1, wants2 := d.wants(t, c1), d.wants(t, c2)
		m1.waitFor(t, "c1's endpoint", func(g *dkGuest) error { return g.settled(wants1, dkKernelNames(t, pid1)) })
		m2.waitFor(t, "c2's endpoints", func(g *dkGuest) error { return g.settled(wants2, dkKernelNames(t, pid2)) })

		d.MustDocker(t, "network", "connect", netB, c1)
		wants1 = d.wants(t, c1)
		m1.waitFor(t, "c1 connected to netB", func(g *dkGuest) error { return g.settled(wants1, dkKernelNames(t, pid1)) })
		m2.waitFor(t, "c2 unchanged", func(g *dkGuest) error { return g.settled(wants2, nil) })
		for _, x := range []struct {
			m          *dkMon
			own, other map[string]*dkWant
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
		m := dkStartMonitor(t, d, pid)
		wants := d.wants(t, ctr)
		m.waitFor(t, "eth0 attached", func(g *dkGuest) error { return g.settled(wants, nil) })
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
		names := dkKernelNames(t, pid)
		g := m.waitFor(t, "Docker's final state", func(g *dkGuest) error { return g.settled(final, names) })
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
		w := dkStartWatch(t, d.NetNSPath(), pid, "--dockerd-netns", "self")
		wants1 := d.wants(t, ctr)
		m := w.dkMon
		m.waitFor(t, "eth0 attached", func(g *dkGuest) error { return g.settled(wants1, dkKernelNames(t, pid)) })

		d.MustDocker(t, "network", "connect", net2, ctr)
		wants2 := d.wants(t, ctr)
		w2 := dkNew(t, wants1, wants2)
		m.waitFor(t, "eth1 attached", func(g *dkGuest) error { return g.settled(wants2, dkKernelNames(t, pid)) })
		mark := m.mark()
		d.MustDocker(t, "network", "disconnect", net2, ctr)
		m.waitFor(t, "eth1 detached", func(g *dkGuest) error {
			if err := g.settled(wants1, nil); err != nil {
				return err
			}
			return dkRoutesAfter(g, mark, "detach", w2.mac)
		})
		n := m.mark()
		if err := w.terminate(15 * time.Second); err != nil {
			t.Fatalf("SIGTERM: %v", err)
		}
		if got := m.mark(); got != n {
			t.Errorf("%d events after SIGTERM, want none:\n%s", got-n, dkFormat(m.Events()[n:]))
		}
		dkCheckWatchLog(t, w, "first reconcile done")
		m.checkClean(t)
	})

	// --pid: the watch command stops by itself, cleanly, when the
	// container's process exits.
	t.Run("WatchStopsWhenContainerExits", func(t *testing.T) {
		net1 := d.network(t)
		ctr, pid := d.run(t, "--network", net1)
		w := dkStartWatch(t, d.NetNSPath(), pid, "--dockerd-netns", "self")
		wants := d.wants(t, ctr)
		w.waitFor(t, "eth0 attached", func(g *dkGuest) error { return g.settled(wants, nil) })
		d.MustDocker(t, "kill", ctr)
		if err := w.wait(15 * time.Second); err != nil {
			t.Fatalf("after docker kill: %v", err)
		}
		dkCheckWatchLog(t, w, "process exited; stopping")
		w.checkClean(t)
	})
}

// dkCheckWatchLog checks the watch command's log: it must contain want,
// log no error, and never scan for netns (--dockerd-netns self accepts
// only its own).
func dkCheckWatchLog(t *testing.T, w *dkWatchBinary, want string) {
	t.Helper()
	log := w.stderr.String()
	if !strings.Contains(log, want) {
		t.Errorf("%s: log lacks %q", w.name, want)
	}
	for _, bad := range []string{"level=error", "level=fatal", "scanned netns", "kata-netmon: "} {
		if strings.Contains(log, bad) {
			t.Errorf("%s: log contains %q", w.name, bad)
		}
	}
	if t.Failed() {
		t.Logf("%s: log:\n%s", w.name, log)
	}
}

// dkOnly returns the only endpoint of wants.
func dkOnly(t *testing.T, wants map[string]*dkWant) *dkWant {
	t.Helper()
	if len(wants) != 1 {
		t.Fatalf("docker inspect lists %d endpoints, want 1: %v", len(wants), wants)
	}
	for _, w := range wants {
		return w
	}
	return nil
}

// dkNew returns the one endpoint of after that before lacks.
func dkNew(t *testing.T, before, after map[string]*dkWant) *dkWant {
	t.Helper()
	var out []*dkWant
	for mac, w := range after {
		if before[mac] == nil {
			out = append(out, w)
		}
	}
	if len(out) != 1 || len(after) != len(before)+1 {
		t.Fatalf("docker inspect: before %v, after %v: want exactly one new endpoint", before, after)
	}
	return out[0]
}

// dkOnce checks that every endpoint was attached exactly once and nothing
// was detached.
func dkOnce(t *testing.T, g *dkGuest, wants map[string]*dkWant) {
	t.Helper()
	for mac, w := range wants {
		if g.attaches[mac] != 1 {
			t.Errorf("%s attached %d times, want once", w, g.attaches[mac])
		}
	}
	if len(g.attaches) != len(wants) || g.detaches != 0 {
		t.Errorf("attaches %v and %d detaches; want exactly %d attaches and none\n%s", g.attaches, g.detaches, len(wants), dkFormat(g.events))
	}
}

// dkRoutesAfter checks that, among the events from index from on, an op
// ("attach" or "detach") of mac is followed by a routes event: the full
// route set is pushed again after each change of interfaces.
func dkRoutesAfter(g *dkGuest, from int, op, mac string) error {
	evs := g.after(from)
	i := slices.IndexFunc(evs, func(e recording.Event) bool { return e.Op == op && e.MAC == mac })
	if i < 0 {
		return fmt.Errorf("no %s of %s since event %d", op, mac, from)
	}
	if !slices.ContainsFunc(evs[i+1:], func(e recording.Event) bool { return e.Op == "routes" }) {
		return fmt.Errorf("no routes event after the %s of %s (event %d)", op, mac, from+i)
	}
	return nil
}
