//go:build linux

package docker

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
)

// The VM side: the guest Kata would have after the events a sandbox logged
// (an in-process monitor's FakeSandbox, or the watch command's JSON lines),
// checked against Docker.

// guestModel is the guest after a sequence of events, with Kata's semantics:
// interfaces by MAC; routes added or replaced by (family, dest), removed only
// with their NIC.
type guestModel struct {
	events   []hotplugtest.Event
	ifs      map[string]hotplugtest.Event // by MAC: the attach event
	routes   map[string]hotplugtest.EventRoute
	last     []hotplugtest.EventRoute // the last routes event
	attaches map[string]int           // by MAC, over the whole log
	detaches int
	bad      []string // invariant violations
}

func modelOf(evs []hotplugtest.Event) *guestModel {
	g := &guestModel{events: evs, ifs: map[string]hotplugtest.Event{}, routes: map[string]hotplugtest.EventRoute{}, attaches: map[string]int{}}
	for i, e := range evs {
		switch e.Op {
		case "attach":
			g.attaches[e.MAC]++
			if _, ok := g.ifs[e.MAC]; ok {
				g.bad = append(g.bad, fmt.Sprintf("event %d: attach of %s while the guest has it", i, e.MAC))
			}
			if g.nameOf("", e.Name) != "" {
				g.bad = append(g.bad, fmt.Sprintf("event %d: attach of %s as %q, a name the guest uses", i, e.MAC, e.Name))
			}
			for _, a := range e.Addresses {
				p, err := netip.ParsePrefix(a)
				if err != nil || p.Addr().IsLinkLocalUnicast() {
					g.bad = append(g.bad, fmt.Sprintf("event %d: attach %s with address %q (link-local or invalid)", i, e.Name, a))
				}
			}
			g.ifs[e.MAC] = e
		case "detach":
			g.detaches++
			if _, ok := g.ifs[e.MAC]; !ok {
				g.bad = append(g.bad, fmt.Sprintf("event %d: detach of %s, which the guest lacks", i, e.MAC))
			}
			delete(g.ifs, e.MAC)
			for k, r := range g.routes {
				if r.Device == e.Name {
					delete(g.routes, k)
				}
			}
		case "routes":
			g.last = e.Routes
			for _, r := range e.Routes {
				if g.nameOf("", r.Device) == "" {
					g.bad = append(g.bad, fmt.Sprintf("event %d: route %+v names a device the guest lacks", i, r))
				}
				if p, err := netip.ParsePrefix(r.Dest); r.Dest != "default" && (err != nil || p.Addr().IsLinkLocalUnicast()) {
					g.bad = append(g.bad, fmt.Sprintf("event %d: route %+v: link-local or invalid destination", i, r))
				}
				g.routes[routeFamily(r)+"|"+r.Dest] = r
			}
		default:
			g.bad = append(g.bad, fmt.Sprintf("event %d: unknown op %q", i, e.Op))
		}
	}
	return g
}

// routeFamily is "4" or "6", from the destination or else the gateway;
// "?" for a default route without a gateway.
func routeFamily(r hotplugtest.EventRoute) string {
	var a netip.Addr
	if p, err := netip.ParsePrefix(r.Dest); err == nil {
		a = p.Addr()
	} else if a, err = netip.ParseAddr(r.Gateway); err != nil {
		return "?"
	}
	return family(a)
}

func family(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "4"
	}
	return "6"
}

// nameOf returns the guest name of the interface with mac (or, with mac "",
// name itself if some interface has it); "" when none.
func (g *guestModel) nameOf(mac, name string) string {
	if mac != "" {
		return g.ifs[mac].Name
	}
	for _, e := range g.ifs {
		if e.Name == name {
			return name
		}
	}
	return ""
}

// macs returns the guest's MACs, sorted.
func (g *guestModel) macs() []string {
	var out []string
	for m := range g.ifs {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// checkAttached checks that the guest has exactly the endpoints Docker
// lists, each as Docker describes it, under the name the container's netns
// gives it now (names: nil skips that check).
func (g *guestModel) checkAttached(wants map[string]*expectedNIC, names map[string]string) error {
	var want []string
	for m := range wants {
		want = append(want, m)
	}
	sort.Strings(want)
	if got := g.macs(); !slices.Equal(got, want) {
		return fmt.Errorf("guest MACs %v, docker inspect says %v", got, want)
	}
	for mac, w := range wants {
		e := g.ifs[mac]
		addrs := slices.Sorted(slices.Values(e.Addresses))
		if !slices.Equal(addrs, w.addrs) {
			return fmt.Errorf("%s (%s): addresses %v, docker inspect says %v", e.Name, mac, addrs, w.addrs)
		}
		if int(e.MTU) != w.mtu {
			return fmt.Errorf("%s (%s): MTU %d, docker says %d", e.Name, mac, e.MTU, w.mtu)
		}
		if names != nil && e.Name != names[mac] {
			return fmt.Errorf("%s (%s): the container's netns calls it %q", e.Name, mac, names[mac])
		}
	}
	return nil
}

// checkDefault checks that both the last routes event and the guest's route
// table have the default route of gw's family via gw on the interface with mac.
func (g *guestModel) checkDefault(gw netip.Addr, mac string) error {
	dev := g.nameOf(mac, "")
	if dev == "" {
		return fmt.Errorf("default via %v: the guest has no interface with MAC %s", gw, mac)
	}
	want := hotplugtest.EventRoute{Dest: "default", Gateway: gw.String(), Device: dev}
	fam := family(gw)
	if got, ok := g.routes[fam+"|default"]; !ok || got != want {
		return fmt.Errorf("guest's IPv%s default route %+v (present %v), want %+v", fam, got, ok, want)
	}
	if !slices.Contains(g.last, want) {
		return fmt.Errorf("last routes event %+v lacks %+v", g.last, want)
	}
	return nil
}

// checkGateway checks each family's default route against Docker: via the
// gateway of the endpoint Docker picks for that family, on that endpoint's
// interface.
func (g *guestModel) checkGateway(wants map[string]*expectedNIC) error {
	for _, v6 := range []bool{false, true} {
		w := gatewayEndpoint(wants, v6)
		if w == nil {
			continue
		}
		gw := w.gw4
		if v6 {
			gw = w.gw6
		}
		if err := g.checkDefault(gw, w.mac); err != nil {
			return fmt.Errorf("gateway endpoint %s: %w", w.network, err)
		}
	}
	return nil
}

// gatewayEndpoint returns the endpoint Docker takes the IPv4 (or IPv6)
// default route from: the first, among those with a gateway of that family,
// in libnetwork's Endpoint.Less order (moby daemon/libnetwork/sandbox.go):
// higher GwPriority, then not internal, then gateways of both families
// before one, then network name. docker inspect does not say which it
// picked when priorities tie.
func gatewayEndpoint(wants map[string]*expectedNIC, v6 bool) *expectedNIC {
	var best *expectedNIC
	gws := func(w *expectedNIC) int {
		n := 0
		for _, gw := range []netip.Addr{w.gw4, w.gw6} {
			if gw.IsValid() {
				n++
			}
		}
		return n
	}
	less := func(a, b *expectedNIC) bool {
		switch {
		case a.prio != b.prio:
			return a.prio > b.prio
		case a.internal != b.internal:
			return b.internal
		case gws(a) != gws(b):
			return gws(a) > gws(b)
		}
		return a.network < b.network
	}
	for _, w := range wants {
		if (v6 && !w.gw6.IsValid()) || (!v6 && !w.gw4.IsValid()) {
			continue
		}
		if best == nil || less(w, best) {
			best = w
		}
	}
	return best
}

// settled checks the guest against Docker: the endpoints and the default routes.
func (g *guestModel) settled(wants map[string]*expectedNIC, names map[string]string) error {
	if err := g.checkAttached(wants, names); err != nil {
		return err
	}
	return g.checkGateway(wants)
}

// after returns the events from index i on.
func (g *guestModel) after(i int) []hotplugtest.Event { return g.events[min(i, len(g.events)):] }

func formatEvents(evs []hotplugtest.Event) string {
	var b strings.Builder
	for i, e := range evs {
		j, _ := json.Marshal(e)
		fmt.Fprintf(&b, "  %3d %s\n", i, j)
	}
	return b.String()
}

// checkWatchLog checks the watch command's log: it must contain want,
// log no error, and never scan for netns (--dockerd-netns self accepts
// only its own).
func checkWatchLog(t *testing.T, w *watchProcess, want string) {
	t.Helper()
	log := w.proc.Stderr.String()
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

// only returns the only endpoint of wants.
func only(t *testing.T, wants map[string]*expectedNIC) *expectedNIC {
	t.Helper()
	if len(wants) != 1 {
		t.Fatalf("docker inspect lists %d endpoints, want 1: %v", len(wants), wants)
	}
	for _, w := range wants {
		return w
	}
	return nil
}

// addedEndpoint returns the one endpoint of after that before lacks.
func addedEndpoint(t *testing.T, before, after map[string]*expectedNIC) *expectedNIC {
	t.Helper()
	var out []*expectedNIC
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

// attachedOnce checks that every endpoint was attached exactly once and nothing
// was detached.
func attachedOnce(t *testing.T, g *guestModel, wants map[string]*expectedNIC) {
	t.Helper()
	for mac, w := range wants {
		if g.attaches[mac] != 1 {
			t.Errorf("%s attached %d times, want once", w, g.attaches[mac])
		}
	}
	if len(g.attaches) != len(wants) || g.detaches != 0 {
		t.Errorf("attaches %v and %d detaches; want exactly %d attaches and none\n%s", g.attaches, g.detaches, len(wants), formatEvents(g.events))
	}
}

// routesPushedAfter checks that, among the events from index from on, an op
// ("attach" or "detach") of mac is followed by a routes event: the full
// route set is pushed again after each change of interfaces.
func routesPushedAfter(g *guestModel, from int, op, mac string) error {
	evs := g.after(from)
	i := slices.IndexFunc(evs, func(e hotplugtest.Event) bool { return e.Op == op && e.MAC == mac })
	if i < 0 {
		return fmt.Errorf("no %s of %s since event %d", op, mac, from)
	}
	if !slices.ContainsFunc(evs[i+1:], func(e hotplugtest.Event) bool { return e.Op == "routes" }) {
		return fmt.Errorf("no routes event after the %s of %s (event %d)", op, mac, from+i)
	}
	return nil
}
