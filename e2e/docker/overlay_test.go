//go:build linux

package docker

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// TestDockerOverlay runs the monitor, as the shim starts it, against
// containers on attachable overlay networks of a real single-node Docker 29
// swarm. The overlay driver puts the container's veth peer on bridge br0
// in the network's own netns, which dockerd bind-mounts as
// <exec-root>/netns/1-<network id> (moby daemon/libnetwork/drivers/overlay/
// ov_network.go: initSandbox, setupSubnetSandbox; joinleave.go: Join), and
// adds an endpoint on docker_gwbridge, a bridge network whose peer is in
// dockerd's netns, for the default route. Both must reach the VM.
func TestDockerOverlay(t *testing.T) {
	d := startDaemon(t)
	swarmInit(t, d)

	// docker run on an overlay network: eth0 (overlay, MTU 1450) and eth1
	// (docker_gwbridge) attached, the default route via docker_gwbridge.
	t.Run("Run", func(t *testing.T) {
		ov := overlayNetwork(t, d)
		ctr, pid := d.run(t, "--network", ov)
		m := startShimhook(t, d, ctr, pid)
		wants := overlayWants(t, d, ctr, pid)
		if len(wants) != 2 {
			t.Fatalf("want 2 endpoints (overlay and docker_gwbridge), have %v", wants)
		}
		names := kernelNames(t, pid)
		m.waitFor(t, "overlay and docker_gwbridge endpoints attached, default route", func(g *guestModel) error { return g.settled(wants, names) })
		g := m.checkClean(t)
		attachedOnce(t, g, wants)
	})

	// docker network connect / disconnect of a second overlay network while
	// the container runs: its peer is in another 1-<id> netns, created
	// when the network gets its first endpoint on this node.
	t.Run("ConnectDisconnect", func(t *testing.T) {
		ov1, ov2 := overlayNetwork(t, d), overlayNetwork(t, d)
		ctr, pid := d.run(t, "--network", ov1)
		m := startShimhook(t, d, ctr, pid)
		wants1 := overlayWants(t, d, ctr, pid)
		m.waitFor(t, "overlay and docker_gwbridge endpoints attached", func(g *guestModel) error { return g.settled(wants1, nil) })

		d.MustDocker(t, "network", "connect", ov2, ctr)
		wants2 := overlayWants(t, d, ctr, pid)
		w2 := addedEndpoint(t, wants1, wants2)
		names := kernelNames(t, pid)
		m.waitFor(t, fmt.Sprintf("connect: %s attached", w2.network), func(g *guestModel) error { return g.settled(wants2, names) })

		d.MustDocker(t, "network", "disconnect", ov2, ctr)
		wants3 := overlayWants(t, d, ctr, pid)
		if len(wants3) != 2 || wants3[w2.mac] != nil {
			t.Fatalf("after disconnect: endpoints %v, want the two of before", wants3)
		}
		m.waitFor(t, fmt.Sprintf("disconnect: %s detached", w2.network), func(g *guestModel) error { return g.settled(wants3, nil) })
		g := m.checkClean(t)
		if g.detaches != 1 {
			t.Errorf("%d detaches, want 1\n%s", g.detaches, formatEvents(g.events))
		}
	})

	// Control: without Docker's netns directory the overlay peer's netns is
	// foreign; the first reconcile attaches docker_gwbridge's endpoint only.
	t.Run("WithoutNetNSDir", func(t *testing.T) {
		ov := overlayNetwork(t, d)
		ctr, pid := d.run(t, "--network", ov)
		m := startShimhook(t, d, ctr, pid, func(s *shimhook.Settings) { s.DockerNetNSDir = "" })
		wants := overlayWants(t, d, ctr, pid)
		gw := gatewayEndpoint(wants, false)
		if gw == nil {
			t.Fatalf("no endpoint with an IPv4 gateway among %v", wants)
		}
		// A later connect to a bridge network, which the monitor reads
		// after everything before it (one socket, the kernel's order):
		// once the guest matches Docker's endpoints again, the overlay
		// endpoint was seen and left alone, not merely not reached yet.
		// The bridge network gives the container a gateway, so Docker
		// takes the docker_gwbridge endpoint away (moby
		// daemon/libnetwork/default_gateway.go: needDefaultGW,
		// clearDefaultGW): the guest ends with the bridge's endpoint
		// only, plus docker_gwbridge's if Docker still lists it.
		br := d.network(t)
		d.MustDocker(t, "network", "connect", br, ctr)
		c := d.MustInspectContainer(t, ctr)
		ep := c.NetworkSettings.Networks[br]
		if ep == nil || ep.MacAddress == "" {
			t.Fatalf("no endpoint on %s after connect: %+v", br, c.NetworkSettings.Networks)
		}
		want := []string{strings.ToLower(ep.MacAddress)}
		if gwb, ok := d.MustInspectNetwork(t, "docker_gwbridge").Containers[c.ID]; ok {
			want = append(want, strings.ToLower(gwb.MacAddress))
		}
		slices.Sort(want)
		m.waitFor(t, fmt.Sprintf("the guest has %v (the bridge's endpoint, docker_gwbridge's only if Docker kept it)", want), func(g *guestModel) error {
			if got := g.macs(); !slices.Equal(got, want) {
				return fmt.Errorf("guest MACs %v, want %v", got, want)
			}
			return nil
		})
		m.checkClean(t)
	})
}

// swarmInit makes the daemon a single-node swarm manager, advertising an
// address on a veth pair of its own in dockerd's netns (a manager needs a
// non-loopback address; the netns has only lo and docker0 otherwise).
// 192.0.2.0/24 (TEST-NET-1) stays clear of Docker's address pools. The
// swarm is left at the end, after the test's containers and networks.
func swarmInit(t *testing.T, d *daemon) {
	t.Helper()
	a, b := dockerenv.UniqueName("knm-sw"), dockerenv.UniqueName("knm-sw")
	withHandleAt(t, d.NetNSPath(), func(h *netlink.Handle) {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}); err != nil {
			t.Fatalf("veth %s/%s in dockerd's netns: %v", a, b, err)
		}
		la, err := h.LinkByName(a)
		if err != nil {
			t.Fatal(err)
		}
		lb, err := h.LinkByName(b)
		if err != nil {
			t.Fatal(err)
		}
		addr, _ := netlink.ParseAddr("192.0.2.1/24")
		if err := h.AddrAdd(la, addr); err != nil {
			t.Fatalf("address on %s: %v", a, err)
		}
		for _, l := range []netlink.Link{la, lb} {
			if err := h.LinkSetUp(l); err != nil {
				t.Fatalf("%s up: %v", l.Attrs().Name, err)
			}
		}
	})
	// The pair lives and dies with dockerd's netns (the environment's
	// cleanup removes it).
	out, err := d.Docker(t.Context(), "swarm", "init", "--advertise-addr", "192.0.2.1", "--listen-addr", "192.0.2.1:2377")
	if err != nil {
		t.Fatalf("docker swarm init: %v\n%s", err, out)
	}
	t.Cleanup(func() { d.cleanupDocker(t, "swarm", "leave", "--force") })
}

// overlayNetwork creates an attachable overlay network with a unique name,
// removed at the end of the test.
func overlayNetwork(t *testing.T, d *daemon) string {
	t.Helper()
	name := dockerenv.UniqueName("knm-ov")
	d.MustDocker(t, "network", "create", "--driver", "overlay", "--attachable", name)
	t.Cleanup(func() { d.cleanupDocker(t, "network", "rm", name) })
	return name
}

// overlayWants returns the container's endpoints by MAC: those docker
// inspect lists for the container (its overlay networks) plus its endpoint
// on docker_gwbridge, which only `docker network inspect docker_gwbridge`
// shows. Overlay networks have no MTU option Docker reports (the driver
// takes 50 bytes off the host's for VXLAN), and docker inspect gives no
// gateway for an overlay endpoint: MTUs and the default route's gateway are
// taken from the container's netns, where Docker set them.
func overlayWants(t *testing.T, d *daemon, ctr string, pid int) map[string]*expectedNIC {
	t.Helper()
	c := d.MustInspectContainer(t, ctr)
	out := map[string]*expectedNIC{}
	for name, ep := range c.NetworkSettings.Networks {
		w := &expectedNIC{network: name, mac: strings.ToLower(ep.MacAddress), prio: ep.GwPriority}
		if p := ep.IPv4Prefix(); p.IsValid() {
			w.addrs = append(w.addrs, p.String())
		}
		out[w.mac] = w
	}
	gwb := d.MustInspectNetwork(t, "docker_gwbridge")
	ep, ok := gwb.Containers[c.ID]
	if !ok {
		t.Fatalf("docker_gwbridge lists no endpoint of %s: %+v", c.ID, gwb.Containers)
	}
	w := &expectedNIC{network: "docker_gwbridge", mac: strings.ToLower(ep.MacAddress), addrs: []string{ep.IPv4Address}}
	out[w.mac] = w

	withHandleAt(t, fmt.Sprintf("/proc/%d/ns/net", pid), func(h *netlink.Handle) {
		links, err := h.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		byIndex := map[int]string{}
		for _, l := range links {
			if a := l.Attrs(); out[a.HardwareAddr.String()] != nil {
				out[a.HardwareAddr.String()].mtu = a.MTU
				byIndex[a.Index] = a.HardwareAddr.String()
			}
		}
		for mac, w := range out {
			if w.mtu == 0 {
				t.Fatalf("endpoint %s: no link with MAC %s in the container", w, mac)
			}
		}
		routes, err := h.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw != nil {
				if w := out[byIndex[r.LinkIndex]]; w != nil {
					w.gw4, _ = netip.AddrFromSlice(r.Gw.To4())
				}
			}
		}
	})
	for _, w := range out {
		sort.Strings(w.addrs)
	}
	return out
}
