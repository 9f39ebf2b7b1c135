//go:build linux

package guest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

// models are the four runtimes katasim plays.
var models = []katasim.Options{
	{Kata: katasim.Patched, Model: katasim.TCFilter},
	{Kata: katasim.Patched, Model: katasim.MacVTap},
	{Kata: katasim.AsShipped, Model: katasim.TCFilter},
	{Kata: katasim.AsShipped, Model: katasim.MacVTap},
}

// TestModel drives katasim alone (no monitor, no Docker) through the rows
// of docs/kata-model.md that work as intended in each of the four runtimes:
// attach (the link found by name, its MAC given to QEMU, the request
// echoed with the PCI path Kata announces), the internetworking model's
// plumbing, traffic from the dockerd netns to the guest, routes, and the
// unplug in its order with what it does to the link.
func TestModel(t *testing.T) {
	for _, o := range models {
		t.Run(o.Kata.String()+"/"+o.Model.String(), func(t *testing.T) { testModel(t, o) })
	}
}

func testModel(t *testing.T, opts katasim.Options) {
	l := newLab(t, 0)
	sb := l.sim(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	shipped, macvtap := opts.Kata == katasim.AsShipped, opts.Model == katasim.MacVTap

	want := hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, DetachByName: shipped, ReMACsLink: macvtap}
	if got := sb.Capabilities(); got != want {
		t.Fatalf("Capabilities() = %+v, want %+v", got, want)
	}

	// As shipped, only the first NIC is configured correctly (a second
	// one is TestShippedSecondNIC's).
	eps := []*endpoint{l.endpoint(t, "eth0")}
	if !shipped {
		eps = append(eps, l.endpoint(t, "eth1"))
	}
	for i, e := range eps {
		inf := interfaceOf(t, l.Sandbox, e.Index)
		res, err := sb.AddInterface(ctx, inf)
		if err != nil {
			t.Fatalf("AddInterface(%s): %v", e.Name, err)
		}
		calls := sb.CallsOf("AddInterface")
		t.Logf("AddInterface(%s) took %v: %s", e.Name, calls[len(calls)-1].Took.Round(time.Millisecond), calls[len(calls)-1].PhasesString())
		kep := sb.Endpoints()[i]
		// The request comes back, with the PCI path of the NIC just
		// plugged (the first one's, as shipped: the same here).
		if res == nil || res.Name != e.Name || res.HwAddr != e.MAC || res.DevicePath != kep.PCIPath || inf.DevicePath != kep.PCIPath {
			t.Fatalf("AddInterface(%s) = %+v (request DevicePath %q), want the request echoed with DevicePath %q", e.Name, res, inf.DevicePath, kep.PCIPath)
		}
		if kep.HwAddr != e.MAC || kep.TapName != "tap"+string(rune('0'+i))+"_kata" || kep.NetdevID != "br"+string(rune('0'+i))+"_kata" {
			t.Errorf("endpoint %+v, want MAC %s, tap%d_kata, br%d_kata", kep, e.MAC, i, i)
		}
		checkPlumbing(t, l, e, kep, macvtap)
	}
	ls, err := l.vm.Agent.WaitLinks(ctx, 20*time.Millisecond, func(ls []*guestproto.Link) error {
		for _, e := range eps {
			if err := checkGuestNIC(ls, e.Name, e.MAC, e.IP); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %s", describeLinks(ls))
	for i, e := range eps {
		l.reach(ctx, t, e.IP, 8080+i)
	}

	t.Run("Routes", func(t *testing.T) {
		if _, err := sb.UpdateRoutes(ctx, []*hotplug.Route{{Gateway: l.gateway(), Device: "eth0"}}); err != nil {
			t.Fatal(err)
		}
		rs, err := l.vm.Agent.KernelRoutes(ctx)
		must(t, err)
		if !hasKernelRoute(rs, "0.0.0.0/0", l.gateway(), "eth0") {
			t.Errorf("guest routes %+v: no default via %s dev eth0", rs, l.gateway())
		}
		// Kata's list_routes rewrites the destination of a gateway route.
		lr, err := sb.ListRoutes(ctx)
		must(t, err)
		if !slices.ContainsFunc(lr, func(r *hotplug.Route) bool { return r.Dest == "0.0.0.0" && r.Gateway == l.gateway() }) {
			t.Errorf("ListRoutes %+v: want the default route as Dest 0.0.0.0", lr)
		}
		if got, err := sb.UpdateRoutes(ctx, nil); got != nil || err != nil {
			t.Errorf("UpdateRoutes(nil) = %v, %v; want nil, nil", got, err)
		}
	})

	t.Run("Unplug", func(t *testing.T) {
		keps := sb.Endpoints()
		for i, e := range eps {
			res, err := sb.RemoveInterface(ctx, &hotplug.Interface{Name: e.Name, HwAddr: e.MAC})
			if res != nil || err != nil {
				t.Fatalf("RemoveInterface(%s) = %+v, %v; want nil, nil", e.Name, res, err)
			}
			rm := sb.CallsOf("RemoveInterface")
			c := rm[len(rm)-1]
			t.Logf("RemoveInterface(%s) took %v: %s", e.Name, c.Took.Round(time.Millisecond), c.PhasesString())
			if c.Swallowed != nil {
				t.Errorf("RemoveInterface(%s): Kata logged %v", e.Name, c.Swallowed)
			}
			// Shipped: the host side first, then QEMU; patched: QEMU first.
			first := c.Phases[0].Name
			if hostFirst := first != "device_del+DEVICE_DELETED"; hostFirst != shipped {
				t.Errorf("RemoveInterface(%s) phases %s: host side first = %v, want %v", e.Name, c.PhasesString(), hostFirst, shipped)
			}
			if _, err := l.Sandbox.LinkByName(keps[i].TapName); err == nil {
				t.Errorf("%s still exists", keps[i].TapName)
			}
			k := l.link(t, e.Index)
			if up := k.Attrs().Flags&1 != 0; up == shipped {
				t.Errorf("%s is up = %v after the unplug, want %v (as shipped Kata sets it down)", e.Name, up, !shipped)
			}
			if macvtap && (k.Attrs().HardwareAddr.String() != e.MAC || !slices.Contains(addrsOf(t, l.Sandbox, e.Index), e.IP+"/24")) {
				t.Errorf("%s has MAC %s and addresses %v after the unplug, want its own %s and %s back", e.Name, k.Attrs().HardwareAddr, addrsOf(t, l.Sandbox, e.Index), e.MAC, e.IP)
			}
			if mirred(t, l.Sandbox, e.Index) {
				t.Errorf("%s still redirects", e.Name)
			}
		}
		if res, err := sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: "02:00:00:00:00:99"}); res != nil || err != nil {
			t.Fatalf("RemoveInterface(unknown MAC) = %+v, %v; want nil, nil", res, err)
		}
		ls := l.links(ctx, t)
		if len(ls) != 1 || ls[0].Name != "lo" {
			t.Errorf("guest links after the unplug: %s, want lo only", describeLinks(ls))
		}
		if len(sb.Endpoints()) != 0 {
			t.Errorf("endpoints after the unplug: %+v", sb.Endpoints())
		}
		// Kata as shipped deletes the tap QEMU still uses (tcfilter: QEMU
		// complains as the device goes); patched, QEMU lets go first.
		err := l.vm.TapError()
		switch {
		case !shipped && err != nil:
			t.Error(err)
		case shipped && !macvtap && err == nil:
			t.Error("QEMU logged no tap error although Kata as shipped deleted the tap before the device")
		case err != nil:
			t.Logf("as expected of Kata as shipped: %v", err)
		}
	})
}

// checkPlumbing checks the host side of an attached endpoint: with
// tcfilter, mirred both ways and the link untouched; with macvtap, the
// container's MAC on the macvtap and a random one on the link, which has
// lost its addresses.
func checkPlumbing(t *testing.T, l *lab, e *endpoint, kep katasim.Endpoint, macvtap bool) {
	t.Helper()
	tap, err := l.Sandbox.LinkByName(kep.TapName)
	must(t, err)
	link := l.link(t, e.Index)
	if !macvtap {
		if _, ok := tap.(*netlink.Tuntap); !ok || !mirred(t, l.Sandbox, e.Index) || !mirred(t, l.Sandbox, tap.Attrs().Index) {
			t.Errorf("%s: want a tun tap %s and mirred redirects both ways (tap %T)", e.Name, kep.TapName, tap)
		}
		if link.Attrs().HardwareAddr.String() != e.MAC || len(addrsOf(t, l.Sandbox, e.Index)) == 0 {
			t.Errorf("%s: the tcfilter model changed the link: MAC %s, addresses %v", e.Name, link.Attrs().HardwareAddr, addrsOf(t, l.Sandbox, e.Index))
		}
		return
	}
	mv, ok := tap.(*netlink.Macvtap)
	if !ok || mv.Attrs().ParentIndex != e.Index || mv.Attrs().HardwareAddr.String() != e.MAC {
		t.Errorf("%s: want macvtap %s on ifindex %d with MAC %s, got %T %+v", e.Name, kep.TapName, e.Index, e.MAC, tap, tap.Attrs())
	}
	if got := link.Attrs().HardwareAddr.String(); got != kep.VirtMAC || got == e.MAC {
		t.Errorf("%s: link MAC %s, want Kata's random %s", e.Name, got, kep.VirtMAC)
	}
	if as := addrsOf(t, l.Sandbox, e.Index); len(as) != 0 {
		t.Errorf("%s: link still has %v, want its addresses moved to the guest", e.Name, as)
	}
}

// checkGuestNIC: the guest has exactly one link with mac, named name, up,
// with ip/24.
func checkGuestNIC(ls []*guestproto.Link, name, mac, ip string) error {
	n := 0
	for _, k := range ls {
		if k.MAC == mac {
			n++
		}
	}
	k := guest.FindLink(ls, mac)
	switch {
	case k == nil || n != 1:
		return fmt.Errorf("guest has %d links with MAC %s, want 1 (%s)", n, mac, describeLinks(ls))
	case k.Name != name || !k.Up() || !guest.LinkHasAddress(k, ip, 24):
		return fmt.Errorf("guest link with MAC %s: %s, want %s up with %s/24 (%s)", mac, k.Name, name, ip, describeLinks(ls))
	}
	return nil
}

func hasKernelRoute(rs []*guestproto.KernelRoute, dst, gw, dev string) bool {
	return slices.ContainsFunc(rs, func(r *guestproto.KernelRoute) bool {
		return r.Table == 254 && r.Dst == dst && r.Gateway == gw && r.Device == dev
	})
}
