//go:build linux

package replay

import (
	"errors"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
)

// TestDisconnect: `docker network disconnect` of the gateway
// endpoint eth1, Docker's way (down, renamed back to vethXXXXXXX, DELADDR,
// moved out to dockerd's netns) and by deletion. eth1 is detached once, eth0
// stays, Docker's new default via eth0 reaches the routes, and a new link
// that reuses the name eth1 is attached.
func TestDisconnect(t *testing.T) {
	tests := []struct {
		name       string
		disconnect func(t *testing.T, e *env, ep *endpoint)
	}{
		{"docker", func(t *testing.T, e *env, ep *endpoint) {
			l, err := ep.Sandbox.LinkByIndex(ep.Index)
			if err != nil {
				t.Fatal(err)
			}
			if err := ep.Sandbox.LinkSetDown(l); err != nil {
				t.Fatal(err)
			}
			ep.Rename(ep.TmpName)
			for _, a := range ep.Addrs {
				addr, _ := netlink.ParseAddr(a)
				// IPv6 addresses went with the down already.
				if err := ep.Sandbox.AddrDel(l, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
					t.Fatalf("delete %s: %v", a, err)
				}
			}
			ep.MoveTo(e.DockerdNS)
		}},
		{"deleted", func(t *testing.T, e *env, ep *endpoint) {
			if err := e.Sandbox.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: ep.Index}}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			n1 := e.newNetwork(t, "172.30.1.0/24", "")
			n2 := e.newNetwork(t, "172.30.2.0/24", "")
			fs, _ := e.startFake(t, nil)

			eth0 := e.newEndpoint(t, n1, "eth0", 2, 0, true)
			eth1 := e.newEndpoint(t, n2, "eth1", 2, 0, false)
			moveDefault(t, e, eth0, eth1, n2.GW)
			waitEvents(t, fs, "eth0 and eth1 attached, default via eth1", func(evs []hotplugtest.Event) bool {
				return len(fs.GuestMACs()) == 2 && lastRoutesAre(defaultVia(n2.GW, "eth1"))(evs)
			})

			tc.disconnect(t, e, eth1)
			_, at := waitEvent(t, fs, "detach eth1", 0, isDetach(eth1.MAC.String()))
			// Docker: NEWROUTE default via the remaining gateway.
			eth0.AddDefaultRoute(n1.GW.String())
			evs := waitEvents(t, fs, "default via eth0", lastRoutesAre(defaultVia(n1.GW, "eth0")))

			if got := fs.GuestMACs(); !slices.Equal(got, []string{eth0.MAC.String()}) {
				t.Errorf("guest MACs %v, want only eth0's %s", got, eth0.MAC)
			}
			if n := count(evs, "detach"); n != 1 {
				t.Errorf("%d detach events, want 1:%s", n, formatEvents(evs))
			}
			for _, ev := range evs[at+1:] {
				for _, r := range ev.Routes {
					if r.Device == "eth1" {
						t.Errorf("route through eth1 pushed after its detach: %+v", ev)
					}
				}
			}

			// Connect again: Docker reuses the name eth1 for a new link.
			again := e.newEndpoint(t, n2, "eth1", 3, 0, false)
			waitEvent(t, fs, "attach the new eth1", at+1, isAttach("eth1", again.MAC.String()))
			want := slices.Sorted(slices.Values([]string{eth0.MAC.String(), again.MAC.String()}))
			if got := fs.GuestMACs(); !slices.Equal(got, want) {
				t.Errorf("guest MACs %v, want %v", got, want)
			}
		})
	}
}
