package netmon_test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// ipIn runs `ip -n ns args...` and returns its combined output and error.
func ipIn(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func mustIP(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := ipIn(ns, args...); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// nexthopRefused reports an `ip nexthop add` failure that means the
// kernel has no nexthop objects (before Linux 5.3, or built without), as
// opposed to a mistake of the test.
func nexthopRefused(out string) bool {
	for _, s := range []string{"Operation not supported", "Object \"nexthop\" is unknown"} {
		if strings.Contains(out, s) {
			return true
		}
	}
	return false
}

// routeShape is one route the test creates: what the view must hold, and
// what the guest gets after matcher.Routes and hotplug.RouteFromView:
// guest (the route as the agent receives it), or a SkippedRoute whose
// reason contains skip (shadowed: left out because the kernel does not use
// it either).
type routeShape struct {
	name     string
	want     view.Route // Family, Dst, SrcPrefix, Priority find it; then every field below is compared
	guest    *hotplug.Route
	skip     string
	shadowed bool
	nexthop  bool // needs nexthop objects
}

// TestRouteShapes: every route shape of issue 13, made with `ip` in a real
// netns, some before Start (read by the first dump) and some after (read
// as events); the view netmon builds holds each with Gateway, Via,
// SrcPrefix, Hops, NHID, metric and flags, a fresh list agrees, and the
// view through matcher.Routes and hotplug.RouteFromView gives the guest
// what Kata's agent can apply with the route's meaning.
//
// What the agent can apply is read in kata-containers 7c6ba40c54,
// src/agent/src/netlink.rs, Handle::update_routes (line 509): it builds
// each route in the family of route.family, parsing route.gateway with
// Ipv4Addr::from_str (line 637) or Ipv6Addr::from_str (line 593) and the
// destination with Ipv4Network/Ipv6Network::from_str (lines 612, 568), and
// returns at the first error. An IPv4 route via inet6 fe80::1 is therefore
// inexpressible: sent as IPv4 its gateway does not parse, sent as IPv6 its
// destination does not, and either error fails the whole update (the
// routes after it are not installed). It is skipped with a reason (a
// warning in the reconciler), never sent. The agent takes route.source as
// a source prefix when its length is not 0 (lines 580-584), which is what
// an IPv6 source-specific default needs, and route.flags as rtm_flags:
// only onlink is sent, the kernel setting linkdown itself.
func TestRouteShapes(t *testing.T) {
	e := newEnv(t)
	ns := filepath.Base(e.SandboxPath)
	addIfb := func() netlink.Link {
		t.Helper()
		name := netmontest.RandName()
		if err := e.Sandbox.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatalf("add ifb %s: %v", name, err)
		}
		l, err := e.Sandbox.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		linkUp(t, e.Sandbox, l)
		return l
	}
	a, b := addIfb(), addIfb()
	// c has no carrier: a veth up whose peer is down. Routes through it
	// get RTNH_F_LINKDOWN from the kernel (fib_check_nh, fib6_nh_init).
	c, _ := vethPair(t, e.Sandbox)
	linkUp(t, e.Sandbox, c)
	netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, "192.0.2.2/24")
	netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, "2001:db8::2/64")
	netmontest.AddAddr(t, e.Sandbox, b.Attrs().Index, "198.51.100.2/24")
	an, bn, cn := a.Attrs().Name, b.Attrs().Name, c.Attrs().Name
	ai, bi, ci := a.Attrs().Index, b.Attrs().Index, c.Attrs().Index

	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	rt := func(dst string, idx int, f func(*view.Route)) view.Route {
		r := view.Route{Dst: pfx(dst), LinkIndex: idx, Family: view.FamilyV4}
		if r.Dst.Addr().Is6() {
			r.Family = view.FamilyV6
		}
		if f != nil {
			f(&r)
		}
		return r
	}
	const nhV4, nhV6, nhGroup = 7301, 7302, 7303
	shapes := []routeShape{
		{name: "IPv4 via inet6 (RTA_VIA)",
			want: rt("10.71.0.0/16", ai, func(r *view.Route) { r.Via = addr("fe80::1") }),
			skip: "RTA_VIA"},
		{name: "two-hop multipath",
			want: rt("10.72.0.0/16", ai, func(r *view.Route) { r.Gateway, r.Hops = addr("192.0.2.1"), 2 }),
			skip: "multipath route with 2 next hops"},
		{name: "IPv4 nexthop object", nexthop: true,
			want: rt("10.73.0.0/16", ai, func(r *view.Route) { r.Gateway, r.NHID = addr("192.0.2.1"), nhV4 }),
			skip: fmt.Sprintf("nexthop object %d", nhV4)},
		{name: "IPv6 nexthop group of one (a one-hop RTA_MULTIPATH)", nexthop: true,
			want: rt("2001:db8:73::/48", ai, func(r *view.Route) {
				r.Gateway, r.NHID, r.Hops, r.Priority = addr("fe80::1"), nhGroup, 1, 1024
			}),
			skip: fmt.Sprintf("nexthop object %d", nhGroup)},
		{name: "IPv6 source-specific default",
			want: rt("::/0", ai, func(r *view.Route) {
				r.Gateway, r.SrcPrefix, r.Priority = addr("fe80::1"), pfx("2001:db8::/64"), 1024
			}),
			guest: &hotplug.Route{Gateway: "fe80::1", Device: an, Source: "2001:db8::/64", Family: hotplug.FamilyV6, Metric: 1024}},
		{name: "default, metric 100",
			want:  rt("0.0.0.0/0", ai, func(r *view.Route) { r.Gateway, r.Priority = addr("192.0.2.1"), 100 }),
			guest: &hotplug.Route{Gateway: "192.0.2.1", Device: an, Family: hotplug.FamilyV4, Metric: 100}},
		{name: "default, metric 200",
			want: rt("0.0.0.0/0", bi, func(r *view.Route) { r.Gateway, r.Priority = addr("198.51.100.1"), 200 }),
			skip: "lower metric 100", shadowed: true},
		{name: "link without carrier (linkdown)",
			want:  rt("10.75.0.0/16", ci, func(r *view.Route) { r.Flags, r.Scope = unix.RTNH_F_LINKDOWN, unix.RT_SCOPE_LINK }),
			guest: &hotplug.Route{Dest: "10.75.0.0/16", Device: cn, Family: hotplug.FamilyV4, Scope: unix.RT_SCOPE_LINK}},
		{name: "onlink gateway",
			want: rt("10.76.0.0/16", ai, func(r *view.Route) { r.Gateway, r.Flags = addr("203.0.113.1"), unix.RTNH_F_ONLINK }),
			guest: &hotplug.Route{Dest: "10.76.0.0/16", Gateway: "203.0.113.1", Device: an, Family: hotplug.FamilyV4,
				Flags: unix.RTNH_F_ONLINK}},
	}

	// Before Start, read by the first dump: RTA_VIA, RTA_MULTIPATH and a
	// nexthop object.
	mustIP(t, ns, "route", "add", "10.71.0.0/16", "via", "inet6", "fe80::1", "dev", an)
	mustIP(t, ns, "route", "add", "10.72.0.0/16", "nexthop", "via", "192.0.2.1", "dev", an, "nexthop", "via", "198.51.100.1", "dev", bn)
	var refused string
	if out, err := ipIn(ns, "nexthop", "add", "id", fmt.Sprint(nhV4), "via", "192.0.2.1", "dev", an); err != nil {
		if !nexthopRefused(out) {
			t.Fatalf("ip nexthop add: %v: %s", err, out)
		}
		refused = out
		t.Logf("the kernel refuses nexthop objects (%s): their shapes are not checked", out)
	} else {
		mustIP(t, ns, "route", "add", "10.73.0.0/16", "nhid", fmt.Sprint(nhV4))
	}
	m := e.start(t, nil)
	// After Start, read as events.
	if refused == "" {
		mustIP(t, ns, "nexthop", "add", "id", fmt.Sprint(nhV6), "via", "fe80::1", "dev", an)
		mustIP(t, ns, "nexthop", "add", "id", fmt.Sprint(nhGroup), "group", fmt.Sprint(nhV6))
		mustIP(t, ns, "-6", "route", "add", "2001:db8:73::/48", "nhid", fmt.Sprint(nhGroup))
	}
	mustIP(t, ns, "-6", "route", "add", "default", "from", "2001:db8::/64", "via", "fe80::1", "dev", an)
	mustIP(t, ns, "route", "add", "default", "via", "192.0.2.1", "dev", an, "metric", "100")
	mustIP(t, ns, "route", "add", "default", "via", "198.51.100.1", "dev", bn, "metric", "200")
	mustIP(t, ns, "route", "add", "10.75.0.0/16", "dev", cn)
	mustIP(t, ns, "route", "add", "10.76.0.0/16", "via", "203.0.113.1", "dev", an, "onlink")

	find := func(s *view.Snapshot, w view.Route) *view.Route {
		return findRoute(s, func(r view.Route) bool {
			return r.Family == w.Family && r.Dst == w.Dst && r.SrcPrefix == w.SrcPrefix && r.Priority == w.Priority &&
				r.Table == view.TableMain
		})
	}
	var present []routeShape
	for _, sh := range shapes {
		if sh.nexthop && refused != "" {
			continue
		}
		present = append(present, sh)
	}
	snap := waitView(t, m, "every route shape in the view", func(s *view.Snapshot) bool {
		for _, sh := range present {
			if find(s, sh.want) == nil {
				return false
			}
		}
		return true
	})
	waitFresh(t, m) // the dump decodes them as the events did

	// The view.
	const flags = unix.RTNH_F_ONLINK | unix.RTNH_F_LINKDOWN | unix.RTNH_F_DEAD
	for _, sh := range present {
		t.Run("view/"+sh.name, func(t *testing.T) {
			got := find(snap, sh.want)
			w := sh.want
			if got.LinkIndex != w.LinkIndex || got.Gateway != w.Gateway || got.Via != w.Via || got.Hops != w.Hops ||
				got.NHID != w.NHID || got.Flags&flags != w.Flags || got.Protocol != unix.RTPROT_BOOT ||
				(w.Scope != 0 && got.Scope != w.Scope) {
				t.Errorf("\n got %+v\nwant %+v (flags compared under %#x)", *got, w, flags)
			}
		})
	}
	if refused != "" {
		t.Run("view/nexthop objects", func(t *testing.T) {
			t.Skipf("the kernel refuses nexthop objects: %s", refused)
		})
	}

	// What the guest gets: its NICs are a, b and c, with their addresses.
	nics := map[int][]netip.Prefix{}
	names := map[int]string{}
	for _, idx := range []int{ai, bi, ci} {
		l := snap.Links[idx]
		names[idx] = l.Name
		nics[idx] = []netip.Prefix{}
		for _, a := range l.Addrs {
			nics[idx] = append(nics[idx], a.Prefix)
		}
	}
	keep, skipped := matcher.Routes(snap, nics)
	guest := map[string]*hotplug.Route{}
	for _, r := range keep {
		g := hotplug.RouteFromView(r, names[r.LinkIndex])
		key := fmt.Sprintf("%s from %s metric %d", r.Dst, r.SrcPrefix, r.Priority)
		guest[key] = g
		t.Logf("guest gets %s: %+v", key, *g)
	}
	for _, sk := range skipped {
		t.Logf("skipped %s metric %d (shadowed %v): %s", sk.Route.Dst, sk.Route.Priority, sk.Shadowed, sk.Reason)
	}
	for _, sh := range present {
		t.Run("guest/"+sh.name, func(t *testing.T) {
			key := fmt.Sprintf("%s from %s metric %d", sh.want.Dst, sh.want.SrcPrefix, sh.want.Priority)
			got := guest[key]
			delete(guest, key)
			if sh.guest != nil {
				if got == nil || *got != *sh.guest {
					t.Errorf("guest route %v, want %+v", got, *sh.guest)
				}
				return
			}
			if got != nil {
				t.Errorf("guest gets %+v, want it skipped (%s)", *got, sh.skip)
			}
			for _, sk := range skipped {
				if sk.Route.Dst == sh.want.Dst && sk.Route.SrcPrefix == sh.want.SrcPrefix && sk.Route.Priority == sh.want.Priority {
					if !strings.Contains(sk.Reason, sh.skip) || sk.Shadowed != sh.shadowed {
						t.Errorf("skipped (shadowed %v): %s; want a reason with %q, shadowed %v", sk.Shadowed, sk.Reason, sh.skip, sh.shadowed)
					}
					return
				}
			}
			t.Errorf("neither sent nor skipped with a reason: left out silently")
		})
	}
	// Nothing else reaches the guest (the kernel's prefix routes, fe80::/64,
	// and the other tables are not the guest's to get).
	for key, g := range guest {
		t.Errorf("the guest also gets %s: %+v", key, *g)
	}
}
