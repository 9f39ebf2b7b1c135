//go:build linux

package guest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

// TestAgentRules: the rows of docs/kata-model.md that Kata's agent decides
// alone (the runtime passes them through), each shown biting a naive
// client, on one guest with one NIC attached by patched katasim.
func TestAgentRules(t *testing.T) {
	l := newLab(t, 0)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	sb := l.sim(t, katasim.Options{})
	eth0 := l.endpoint(t, "eth0")
	if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth0.Index)); err != nil {
		t.Fatal(err)
	}
	routes := func(t *testing.T) []*guestproto.KernelRoute {
		rs, err := l.vm.Agent.KernelRoutes(ctx)
		must(t, err)
		return rs
	}

	// R68: ListInterfaces has the MACs in uppercase and the address
	// families inverted; RemoveInterface compares MACs as strings.
	t.Run("ListInterfacesView", func(t *testing.T) {
		infs, err := sb.ListInterfaces(ctx)
		must(t, err)
		i := slices.IndexFunc(infs, func(inf *hotplug.Interface) bool { return inf.Name == "eth0" })
		if i < 0 {
			t.Fatalf("ListInterfaces %+v: no eth0", infs)
		}
		got := infs[i]
		if got.HwAddr != strings.ToUpper(eth0.MAC) || len(got.IPAddresses) == 0 || got.IPAddresses[0].Family != hotplug.FamilyV6 || got.Type != "" || got.DevicePath != "" {
			t.Errorf("ListInterfaces eth0 = %+v %+v, want MAC %s uppercase, IPv4 reported as v6, no Type or DevicePath", got, got.IPAddresses, eth0.MAC)
		}
		// A naive client removes with the listed MAC: nothing happens.
		if res, err := sb.RemoveInterface(ctx, &hotplug.Interface{Name: "eth0", HwAddr: got.HwAddr}); res != nil || err != nil {
			t.Fatalf("RemoveInterface = %v, %v", res, err)
		}
		if guest.FindLink(l.links(ctx, t), eth0.MAC) == nil || len(sb.Endpoints()) != 1 {
			t.Error("RemoveInterface with the uppercase MAC removed the NIC")
		}
	})

	// R63, R64: routes without a gateway go first (the default route
	// below is accepted although its gateway is only reachable through
	// the route after it); a route with the same destination replaces
	// the old one; nothing is ever deleted.
	t.Run("RouteOrderReplaceNoDelete", func(t *testing.T) {
		if _, err := sb.UpdateRoutes(ctx, []*hotplug.Route{
			{Gateway: "10.55.0.1", Device: "eth0"},
			{Dest: "10.55.0.0/24", Device: "eth0", Scope: 253},
		}); err != nil {
			t.Fatalf("UpdateRoutes(default via 10.55.0.1, 10.55.0.0/24 scope link): %v", err)
		}
		if _, err := sb.UpdateRoutes(ctx, []*hotplug.Route{{Gateway: l.gateway(), Device: "eth0"}}); err != nil {
			t.Fatal(err)
		}
		rs := routes(t)
		var defaults []string
		for _, r := range rs {
			if r.Table == 254 && r.Dst == "0.0.0.0/0" {
				defaults = append(defaults, r.Gateway)
			}
		}
		if !slices.Equal(defaults, []string{l.gateway()}) {
			t.Errorf("default routes via %v, want the second replacing the first", defaults)
		}
		if !hasKernelRoute(rs, "10.55.0.0/24", "", "eth0") {
			t.Error("10.55.0.0/24 is gone: the agent never deletes a route")
		}
	})

	// R65: flags go to the kernel as given; IPv4 refuses LINKDOWN (what a
	// route of a link without carrier carries) and the call stops there,
	// the routes before it staying.
	t.Run("RouteFlags", func(t *testing.T) {
		_, err := sb.UpdateRoutes(ctx, []*hotplug.Route{
			{Dest: "10.56.0.0/24", Device: "eth0", Scope: 253},
			{Dest: "10.57.0.0/24", Device: "eth0", Scope: 253, Flags: 0x10},
			{Dest: "10.58.0.0/24", Device: "eth0", Scope: 253},
		})
		if err == nil || !strings.Contains(err.Error(), "Invalid argument") {
			t.Fatalf("UpdateRoutes with RTNH_F_LINKDOWN: %v, want EINVAL", err)
		}
		t.Logf("UpdateRoutes with RTNH_F_LINKDOWN: %v", err)
		rs := routes(t)
		if !hasKernelRoute(rs, "10.56.0.0/24", "", "eth0") || hasKernelRoute(rs, "10.58.0.0/24", "", "eth0") {
			t.Errorf("want the route before the refused one added and the one after it not: %+v", rs)
		}
	})

	// R66: a bare Source becomes RTA_SRC, a source-specific route (IPv4
	// takes and drops it: no preferred source); only "ip/0" becomes the
	// preferred source.
	t.Run("RouteSource", func(t *testing.T) {
		if _, err := sb.UpdateRoutes(ctx, []*hotplug.Route{
			{Dest: "10.60.0.0/24", Device: "eth0", Scope: 253, Source: eth0.IP},
			{Dest: "10.61.0.0/24", Device: "eth0", Scope: 253, Source: eth0.IP + "/0"},
		}); err != nil {
			t.Fatal(err)
		}
		for _, r := range routes(t) {
			switch r.Dst {
			case "10.60.0.0/24":
				if r.PrefSrc != "" {
					t.Errorf("bare Source: route %+v has a preferred source", r)
				}
			case "10.61.0.0/24":
				if r.PrefSrc != eth0.IP {
					t.Errorf("Source ip/0: route %+v, want preferred source %s", r, eth0.IP)
				}
			}
		}
	})

	// R63 (device by name): a route naming a device the guest lacks fails
	// the call with the kernel's ENODEV, not "Link not found".
	t.Run("RouteMissingDevice", func(t *testing.T) {
		_, err := sb.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "10.62.0.0/24", Device: "eth9"}})
		if err == nil || !strings.Contains(err.Error(), "No such device (os error 19)") {
			t.Fatalf("UpdateRoutes via eth9: %v", err)
		}
		t.Logf("UpdateRoutes via eth9: %v", err)
	})

	// R44: UpdateRoutes(nil) asks the agent nothing; [] asks and adds
	// nothing.
	t.Run("UpdateRoutesNil", func(t *testing.T) {
		if got, err := sb.UpdateRoutes(ctx, nil); got != nil || err != nil {
			t.Errorf("UpdateRoutes(nil) = %v, %v", got, err)
		}
		got, err := sb.UpdateRoutes(ctx, []*hotplug.Route{})
		if err != nil || len(got) == 0 {
			t.Errorf("UpdateRoutes([]) = %v, %v; want the guest's routes", got, err)
		}
	})

	// R67: ListRoutes rewrites every gateway route's destination.
	t.Run("ListRoutesView", func(t *testing.T) {
		lr, err := sb.ListRoutes(ctx)
		must(t, err)
		for _, r := range lr {
			if r.Gateway != "" && r.Dest != "0.0.0.0" {
				t.Errorf("gateway route %+v: Dest %q, want 0.0.0.0", r, r.Dest)
			}
		}
	})

	// R56: agent 4.1 gives a MAC no link has to the link NAMED like the
	// request (re-MAC, then configure); a name no link has fails with the
	// kernel's ENODEV, which the runtime does not retry (its retry is for
	// "Link not found"). Reached only with no DevicePath, which katasim
	// never sends: the agent is asked directly.
	t.Run("ByNameFallback", func(t *testing.T) {
		const mac = "02:ab:cd:00:00:01"
		_, _, err := l.vm.Agent.UpdateInterface(ctx, &guestproto.Interface{Name: "eth0", HwAddr: mac, Mtu: 1500,
			IPAddresses: []*guestproto.IPAddress{{Address: "10.201.0.99", Mask: "24"}}}, 0)
		must(t, err)
		k := guest.LinkNamed(l.links(ctx, t), "eth0")
		if k == nil || k.MAC != mac || !guest.LinkHasAddress(k, "10.201.0.99", 24) || !guest.LinkHasAddress(k, eth0.IP, 24) {
			t.Errorf("eth0 = %+v, want it re-MACed to %s with the new address next to the old", k, mac)
		}
		_, _, err = l.vm.Agent.UpdateInterface(ctx, &guestproto.Interface{Name: "eth7", HwAddr: "02:ab:cd:00:00:02", Mtu: 1500}, 0)
		if err == nil || !strings.Contains(err.Error(), "No such device") || strings.Contains(err.Error(), "Link not found") {
			t.Errorf("update_interface for a MAC and a name the guest lacks: %v", err)
		}
		t.Logf("update_interface for a MAC and a name the guest lacks: %v", err)
	})
}

// TestNetNSNotCreated (R40): when Kata did not create the netns, HotDetach
// as shipped does nothing at all, and RemoveInterface still returns (nil,
// nil): the guest keeps the NIC, the netns its tap and redirect, and Kata
// forgets the endpoint. Patched (planned), it unplugs.
func TestNetNSNotCreated(t *testing.T) {
	l := newLab(t, 0)
	for _, k := range []katasim.Kata{katasim.AsShipped, katasim.Patched} {
		t.Run(k.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			sb := l.sim(t, katasim.Options{Kata: k, NetNSNotCreated: true})
			e := l.endpoint(t, "eth0")
			if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, e.Index)); err != nil {
				t.Fatal(err)
			}
			if res, err := sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: e.MAC}); res != nil || err != nil {
				t.Fatalf("RemoveInterface = %v, %v", res, err)
			}
			shipped := k == katasim.AsShipped
			stays := guest.FindLink(l.links(ctx, t), e.MAC) != nil
			_, tapErr := l.Sandbox.LinkByName("tap0_kata")
			if stays != shipped || (tapErr == nil) != shipped || len(sb.Endpoints()) != 0 {
				t.Errorf("after RemoveInterface: guest NIC %v, tap0_kata %v, endpoints %d; want %v, %v, 0", stays, tapErr == nil, len(sb.Endpoints()), shipped, shipped)
			}
			forgetKata(ctx, t, l)
			l.disconnect(t, e)
		})
	}
}
