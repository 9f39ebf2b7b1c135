//go:build linux

package docker

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
)

// The Docker side: a private Docker 29 daemon, and what docker inspect says
// a container's endpoints must look like in the VM.

// daemon is one private Docker daemon shared by the subtests of a test.
type daemon struct {
	*dockerenv.Env
	img string

	mu     sync.Mutex
	subnet int // last 10.77.<n>.0/24 handed out by subnet4
}

func startDaemon(t *testing.T, opts ...dockerenv.Option) *daemon {
	t.Helper()
	begin := time.Now()
	env := dockerenv.Start(t, opts...)
	d := &daemon{Env: env, img: env.ImportBusybox(t)}
	t.Logf("docker env + busybox image: %v", time.Since(begin).Round(time.Millisecond))
	return d
}

// subnet4 returns an IPv4 /24 no other network of this daemon uses (Docker's
// default pools are 172.17-31/16 and 192.168/20).
func (d *daemon) subnet4() netip.Prefix {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.subnet++
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(d.subnet), 0}), 24)
}

// randomSubnet6 returns a random ULA /64 (fd00::/8 + 40 random bits + subnet 0).
func randomSubnet6() netip.Prefix {
	var b [16]byte
	b[0] = 0xfd
	if _, err := rand.Read(b[1:6]); err != nil {
		panic(err)
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), 64)
}

// network creates a bridge network with a unique name and removes it at
// the end of the test (after its containers: cleanups run last-in first-out).
func (d *daemon) network(t *testing.T, args ...string) string {
	t.Helper()
	name := d.MustCreateNetwork(t, "knm-dk", args...)
	t.Cleanup(func() { d.cleanupDocker(t, "network", "rm", name) })
	return name
}

// create runs `docker create` (args before the image) and removes the
// container at the end of the test.
func (d *daemon) create(t *testing.T, args ...string) string {
	t.Helper()
	name := dockerenv.UniqueName("knm-dk")
	d.MustDocker(t, append(append([]string{"create", "--name", name}, args...), d.img, "sleep", "3600")...)
	t.Cleanup(func() { d.cleanupDocker(t, "rm", "--force", name) })
	return name
}

// run runs a detached container and returns its name and pid.
func (d *daemon) run(t *testing.T, args ...string) (string, int) {
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
func (d *daemon) cleanupDocker(t *testing.T, args ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.Docker(ctx, args...); err != nil {
		t.Logf("cleanup: %v", err)
	}
}

// expectedNIC is what Docker says one endpoint must look like in the VM.
type expectedNIC struct {
	network  string
	mac      string   // lower case
	addrs    []string // IPv4 and global IPv6 address/prefix, sorted
	mtu      int
	gw4      netip.Addr
	gw6      netip.Addr
	prio     int
	internal bool
}

func (w *expectedNIC) String() string {
	return fmt.Sprintf("%s{mac %s addrs %v mtu %d gw %v/%v prio %d}", w.network, w.mac, w.addrs, w.mtu, w.gw4, w.gw6, w.prio)
}

// wants returns the container's endpoints by MAC, from docker inspect of the
// container and of each of its networks.
func (d *daemon) wants(t *testing.T, ctr string) map[string]*expectedNIC {
	t.Helper()
	c := d.MustInspectContainer(t, ctr)
	out := map[string]*expectedNIC{}
	for name, ep := range c.NetworkSettings.Networks {
		mac, err := ep.HardwareAddr()
		if err != nil || len(mac) != 6 {
			t.Fatalf("container %s, network %s: docker inspect MAC %q: %v", ctr, name, ep.MacAddress, err)
		}
		n := d.MustInspectNetwork(t, ep.NetworkID)
		w := &expectedNIC{network: name, mac: mac.String(), gw4: ep.Gateway, gw6: ep.IPv6Gateway, prio: ep.GwPriority,
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
func (d *daemon) networkMTU(t *testing.T, n *dockerenv.Network) int {
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
	withHandleAt(t, d.NetNSPath(), func(h *netlink.Handle) {
		l, err := h.LinkByName(br)
		if err != nil {
			t.Fatalf("network %s: bridge %s in dockerd's netns: %v", n.Name, br, err)
		}
		mtu = l.Attrs().MTU
	})
	return mtu
}

// withHandleAt runs fn with a netlink handle whose sockets are in the netns at path.
func withHandleAt(t *testing.T, path string, fn func(h *netlink.Handle)) {
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

// kernelNames returns the container's links by MAC, as its netns has
// them now: the names the VM must use.
func kernelNames(t *testing.T, pid int) map[string]string {
	t.Helper()
	out := map[string]string{}
	withHandleAt(t, fmt.Sprintf("/proc/%d/ns/net", pid), func(h *netlink.Handle) {
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

// hasLinkLocal6 reports whether the container's link named ifname
// carries an IPv6 link-local address (the kernel's own, which must not
// reach the VM).
func hasLinkLocal6(t *testing.T, pid int, ifname string) bool {
	t.Helper()
	found := false
	withHandleAt(t, fmt.Sprintf("/proc/%d/ns/net", pid), func(h *netlink.Handle) {
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
