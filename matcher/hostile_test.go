package matcher_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/matcher"
)

// This file fuzzes what FuzzClassify, FuzzRoutes and FuzzSequence do not
// reach: the conversions to Kata's types (hotplug.InterfaceFromLink,
// hotplug.RouteFromView) and the real reconciler fed random link,
// address and route sequences, checked on what reaches the sandbox.

// checkInterface states what Kata's AddInterface may receive for l.
func checkInterface(t *testing.T, l *view.Link, inf *hotplug.Interface) {
	t.Helper()
	if inf.Name != l.Name || inf.Device != l.Name || inf.Type != l.Kind || inf.HwAddr != l.MAC.String() || inf.RawFlags != l.RawFlags {
		t.Fatalf("InterfaceFromLink(%+v) = %+v: identity not carried over", l, inf)
	}
	var want []view.Addr
	for _, a := range l.Addrs {
		if a.Prefix.IsValid() && !linkLocalSpec(a.Prefix.Addr()) {
			want = append(want, a)
		}
	}
	if len(inf.IPAddresses) != len(want) {
		t.Fatalf("InterfaceFromLink: %d addresses from %v, want %d", len(inf.IPAddresses), l.Addrs, len(want))
	}
	for i, ip := range inf.IPAddresses {
		checkIPAddress(t, ip)
		a, _ := netip.ParseAddr(ip.Address)
		mask, _ := strconv.Atoi(ip.Mask)
		w := want[i].Prefix
		if a != w.Addr() || mask != w.Bits() {
			t.Fatalf("address %d: %s/%s, want %s", i, ip.Address, ip.Mask, w)
		}
	}
}

// checkIPAddress: what the agent parses as "%s/%s" must parse, and it is
// never link-local (the guest's kernel makes its own).
func checkIPAddress(t *testing.T, ip *hotplug.IPAddress) {
	t.Helper()
	a, err := netip.ParseAddr(ip.Address)
	if err != nil || a.Zone() != "" {
		t.Fatalf("address %q does not parse: %v", ip.Address, err)
	}
	mask, err := strconv.Atoi(ip.Mask)
	if err != nil || mask < 0 || mask > 128 || ip.Mask != strconv.Itoa(mask) {
		t.Fatalf("mask %q is not a prefix length 0..128", ip.Mask)
	}
	// An IPv4-mapped IPv6 address stays IPv6 (family and form agree).
	if (ip.Family == hotplug.FamilyV4) != a.Is4() || (ip.Family != hotplug.FamilyV4 && ip.Family != hotplug.FamilyV6) {
		t.Fatalf("address %q with family %d", ip.Address, ip.Family)
	}
	if a.Is4() && mask > 32 {
		t.Fatalf("IPv4 address %q with mask %d", ip.Address, mask)
	}
	if linkLocalSpec(a) {
		t.Fatalf("link-local address %q sent to the agent", ip.Address)
	}
	if _, err := netip.ParsePrefix(ip.Address + "/" + ip.Mask); err != nil {
		t.Fatalf("agent would fail on %q: %v", ip.Address+"/"+ip.Mask, err)
	}
}

// checkRoute states what the agent's UpdateRoutes may receive for r (a
// route matcher.Routes kept).
func checkRoute(t *testing.T, r view.Route, out *hotplug.Route, device string) {
	t.Helper()
	if out.Device != device {
		t.Fatalf("route %+v: device %q, want %q", r, out.Device, device)
	}
	if (out.Dest == "") != (r.Dst.Bits() == 0) {
		t.Fatalf("route to %s: Dest %q (empty must mean default, and only then)", r.Dst, out.Dest)
	}
	if out.Dest != "" {
		p, err := netip.ParsePrefix(out.Dest)
		if err != nil || p != p.Masked() || p.Bits() != r.Dst.Bits() || p.Bits() < 1 || p.Bits() > 128 {
			t.Fatalf("route to %s: Dest %q is not the masked prefix", r.Dst, out.Dest)
		}
		if linkLocalSpec(p.Addr()) || p.Addr().IsMulticast() {
			t.Fatalf("route to a link-local or multicast %q pushed", out.Dest)
		}
		if p.Addr().Is4() != (out.Family == hotplug.FamilyV4) {
			t.Fatalf("route Dest %q with family %d", out.Dest, out.Family)
		}
	}
	if (out.Family == hotplug.FamilyV6) != (r.Family == view.FamilyV6) {
		t.Fatalf("route family %d for %d", out.Family, r.Family)
	}
	for i, s := range []string{out.Gateway, out.Source} {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			t.Fatalf("route %+v: address %q does not parse", out, s)
		}
		// An address of the route's own family (all netmon reads) keeps
		// it: an IPv6 route never carries an IPv4-looking gateway, which
		// the agent would refuse (and with it the whole call).
		in := []netip.Addr{r.Gateway, r.Src}[i]
		if in.Is4() == (r.Family == view.FamilyV4) && a.Is4() != (out.Family == hotplug.FamilyV4) {
			t.Fatalf("route %+v (family %d): address %q is of the other family", out, out.Family, s)
		}
	}
	if (out.Gateway == "") == r.Gateway.IsValid() {
		t.Fatalf("route via %v: Gateway %q", r.Gateway, out.Gateway)
	}
}

func FuzzInterfaceFromLink(f *testing.F) {
	f.Add("eth0", uint8(0), []byte{2, 0x42, 0xac, 0x12, 0, 2}, 1500, upRunning, []byte{0x80, 172, 18, 0, 2, 0x81, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
	f.Add("eth1", uint8(1), []byte{2, 0, 0, 0, 0, 1}, 9000, uint32(0), []byte{0x84, 0, 0, 0, 0, 0x85, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add("x", uint8(2), []byte(nil), 0, uint32(0), []byte{0x8a, 10, 0, 0, 1, 0xf9, 1, 2, 3, 4, 0x02, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, name string, kindSel uint8, mac []byte, mtu int, flags uint32, addrBytes []byte) {
		l := &view.Link{Index: 7, Name: name, Kind: fuzzKinds[int(kindSel)%len(fuzzKinds)], MAC: net.HardwareAddr(mac),
			MTU: mtu, RawFlags: flags, Addrs: fuzzAddrs(addrBytes)}
		checkInterface(t, l, hotplug.InterfaceFromLink(l))
	})
}

func FuzzRouteFromView(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 254 % 6, 1, 1}, "eth0")
	f.Add([]byte{1, 3, 4, 64, 2, 0, 5, 2}, "eth1")
	f.Add([]byte{9, 1, 2, 24, 1, 0, 1, 0, 8, 9, 9, 33, 1, 0, 1, 3}, "eth0")
	f.Fuzz(func(t *testing.T, b []byte, device string) {
		routes := fuzzRoutes(b)
		devices := map[int][]netip.Prefix{1: nil, 2: nil}
		kept, _ := matcher.Routes(&view.Snapshot{Routes: routes}, devices)
		for _, r := range kept {
			checkRoute(t, r, hotplug.RouteFromView(r, device), device)
		}
		// Any valid route converts without panicking, and Dest is empty
		// exactly for a default route.
		for _, r := range routes {
			if !r.Dst.IsValid() {
				continue // netmon never makes one; matcher.Routes drops it
			}
			out := hotplug.RouteFromView(r, device)
			if (out.Dest == "") != r.Default() {
				t.Fatalf("route to %s: Dest %q", r.Dst, out.Dest)
			}
		}
	})
}

// reconWorld is the fuzzed netns: up to four links (slots) and routes.
type reconWorld struct {
	t      *testing.T
	links  map[int]*view.Link
	slots  [4]int
	next   int
	routes []view.Route

	src *hotplugtest.FakeSource
	sb  *hotplugtest.FakeSandbox
	rec *hotplug.Reconciler

	mu        sync.Mutex
	failNext  bool     // the next sandbox call fails
	routeErrs []string // UpdateRoutes calls the fake sandbox refused
	seen      int      // calls already checked
	added     map[string]bool
}

var reconNames = []string{"eth0", "eth1", "eth2", "vethA", "tap0_kata", "eth0"}

func (w *reconWorld) nameFree(n string) bool {
	for _, l := range w.links {
		if l.Name == n {
			return false
		}
	}
	return true
}

func (w *reconWorld) dropRoutes(idx int) {
	w.routes = slices.DeleteFunc(w.routes, func(r view.Route) bool { return r.LinkIndex == idx })
}

func (w *reconWorld) apply(op, slot, arg byte) {
	idx := w.slots[slot%4]
	l := w.links[idx]
	if op%12 == 0 {
		if l == nil { // Docker's first NEWLINK: vethXXXXXXX, down, untied
			w.next++
			idx = w.next
			w.slots[slot%4] = idx
			w.links[idx] = &view.Link{Index: idx, Name: fmt.Sprintf("veth%07x", idx), Kind: []string{"veth", "macvlan"}[arg%2],
				MAC: seqMAC(arg / 2), MTU: 1500, LinkNetNSID: -1}
		}
		return
	}
	if op%12 == 11 {
		w.mu.Lock()
		w.failNext = arg%4 == 0
		w.mu.Unlock()
		w.pass()
		return
	}
	if l == nil {
		return
	}
	switch op % 12 {
	case 1: // tied, with peer facts good or not
		good := hotplugtest.Endpoint(idx, l.Name, "02:00:00:00:00:01")
		l.ParentIndex, l.LinkNetNSID, l.Peer = good.ParentIndex, 0, good.Peer
		switch arg % 5 {
		case 1:
			l.Peer = &view.Peer{State: view.PeerForeignNetNS}
		case 2:
			l.LinkNetNSID, l.Peer = -1, &view.Peer{State: view.PeerSameNetNS}
		case 3:
			l.Peer.MasterIndex, l.Peer.MasterKind = 0, ""
		}
	case 2:
		if n := reconNames[int(arg)%len(reconNames)]; w.nameFree(n) {
			l.Name = n
		}
	case 3:
		l.RawFlags |= hotplugtest.UpRunning
	case 4:
		l.RawFlags &^= hotplugtest.UpRunning
		l.Addrs = slices.DeleteFunc(l.Addrs, func(a view.Addr) bool { return a.Prefix.Addr().Is6() })
		w.dropRoutes(idx)
	case 5:
		a := []string{"172.18.0.%d/16", "2001:db8::%x/64", "fe80::%x/64", "169.254.0.%d/16", "::ffff:10.0.0.%d/120", "10.%d.0.1/32"}[arg%6]
		l.Addrs = append(l.Addrs, hotplugtest.Addr(fmt.Sprintf(a, arg/6+1)))
	case 6:
		if len(l.Addrs) > 0 {
			i := int(arg) % len(l.Addrs)
			l.Addrs = slices.Delete(l.Addrs, i, i+1)
		}
	case 7:
		l.MAC = seqMAC(arg)
	case 8:
		delete(w.links, idx)
		w.slots[slot%4] = 0
		w.dropRoutes(idx)
	case 9:
		var r view.Route
		switch arg % 6 {
		case 0:
			r = hotplugtest.DefaultRoute("172.18.0.1", idx)
		case 1:
			r = hotplugtest.DefaultRoute("fe80::1", idx)
		case 2:
			r = hotplugtest.StaticRoute(fmt.Sprintf("10.%d.0.0/16", arg), "172.18.0.1", idx)
		case 3:
			r = hotplugtest.StaticRoute("fe80::/64", "", idx)
		case 4:
			r = hotplugtest.StaticRoute("ff00::/8", "", idx)
		case 5:
			r = hotplugtest.KernelRoute("172.18.0.0/16", idx)
		}
		w.routes = append(w.routes, r)
	case 10:
		w.routes = nil
	}
}

func (w *reconWorld) snapshot() *view.Snapshot {
	s := &view.Snapshot{Links: map[int]*view.Link{}, Routes: slices.Clone(w.routes)}
	for i, l := range w.links {
		s.Links[i] = l.Clone()
	}
	return s
}

// pass runs one real reconcile over the current world and checks what
// reached the sandbox.
func (w *reconWorld) pass() {
	t := w.t
	snap := w.snapshot()
	w.src.Set(snap.Clone())
	w.mu.Lock()
	failed := w.failNext
	w.mu.Unlock()
	if _, err := w.rec.Reconcile(context.Background()); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	var ready []*view.Link
	for _, d := range matcher.Endpoints(snap) {
		if d.State == matcher.Ready {
			ready = append(ready, snap.Links[d.Index])
		}
	}
	calls := w.sb.Calls()
	for _, c := range calls[w.seen:] {
		switch c.Op {
		case hotplugtest.OpAddInterface:
			i := slices.IndexFunc(ready, func(l *view.Link) bool { return l.MAC.String() == c.MAC() && l.Name == c.Interface.Name })
			if i < 0 {
				t.Fatalf("AddInterface(%+v) for a link that is not ready", c.Interface)
			}
			l := ready[i]
			checkInterface(t, l, c.Interface)
			w.added[c.MAC()] = true
		case hotplugtest.OpRemoveInterface:
			if !w.added[c.MAC()] {
				t.Fatalf("RemoveInterface(%s) of a MAC never attached", c.MAC())
			}
		case hotplugtest.OpUpdateRoutes:
			for _, r := range c.Routes {
				if r.Device == "" {
					t.Fatalf("route %+v without a device", r)
				}
				if r.Dest != "" {
					p, err := netip.ParsePrefix(r.Dest)
					if err != nil || linkLocalSpec(p.Addr()) || p.Addr().IsMulticast() || p.Bits() == 0 {
						t.Fatalf("route Dest %q pushed", r.Dest)
					}
				}
			}
		}
	}
	w.seen = len(calls)
	if macs := w.sb.GuestMACs(); len(slices.Compact(slices.Clone(macs))) != len(macs) {
		t.Fatalf("a MAC is plugged twice: %v", macs)
	}
	w.mu.Lock()
	errs := w.routeErrs
	w.mu.Unlock()
	if len(errs) > 0 {
		t.Fatalf("UpdateRoutes named a device the guest lacks: %v", errs)
	}
	if failed {
		return
	}
	// Without injected failures, every ready endpoint is attached (or
	// its MAC is, through a link that carries it too).
	attached := map[string]bool{}
	for _, a := range w.rec.NICs() {
		attached[a.MAC] = true
	}
	for _, l := range ready {
		if !attached[l.MAC.String()] {
			t.Fatalf("ready %d %q (%s) not attached after a pass without failures; calls %v", l.Index, l.Name, l.MAC, w.sb.Ops())
		}
	}
}

var errInjected = errors.New("injected failure")

// FuzzReconcileSequence drives the real reconciler (FakeSource,
// FakeSandbox) with fuzzed link, address and route operations on up to four
// links, three bytes each (op, slot, argument; op 11 is a reconcile pass,
// with a sandbox failure injected when its argument is 0 mod 4). At every
// pass: an interface is attached at most once, a detach names only a MAC
// attached before, every AddInterface is for a ready link and carries only
// parseable, non-link-local addresses, every route pushed names a device
// the guest has and a parseable, non-link-local destination.
func FuzzReconcileSequence(f *testing.F) {
	f.Add(dockerRecon)
	f.Add(append(slices.Clone(dockerRecon), 9, 0, 1, 9, 0, 2, 9, 0, 3, 9, 0, 4, 11, 0, 1, 7, 0, 3, 11, 0, 1, 8, 0, 0, 11, 0, 1))
	f.Add([]byte{0, 0, 2, 1, 0, 0, 2, 0, 0, 5, 0, 0, 3, 0, 0, 11, 0, 0, 11, 0, 1, 0, 1, 2, 1, 1, 0, 2, 1, 1, 5, 1, 4, 3, 1, 0, 11, 0, 1})
	f.Add([]byte{0, 0, 3, 1, 0, 0, 5, 0, 2, 5, 0, 3, 3, 0, 0, 11, 0, 1, 5, 0, 4, 11, 0, 1, 4, 0, 0, 11, 0, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 3*150 {
			ops = ops[:3*150]
		}
		w := &reconWorld{t: t, links: map[int]*view.Link{1: hotplugtest.Loopback()}, next: 10, added: map[string]bool{}}
		w.sb = &hotplugtest.FakeSandbox{}
		fail := func() bool {
			w.mu.Lock()
			defer w.mu.Unlock()
			f := w.failNext
			w.failNext = false
			return f
		}
		w.sb.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
			if fail() {
				return nil, errInjected
			}
			return w.sb.GuestAddInterface(inf)
		}
		w.sb.UpdateRoutesFn = func(_ context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error) {
			out, err := w.sb.GuestUpdateRoutes(routes)
			if err != nil {
				w.mu.Lock()
				w.routeErrs = append(w.routeErrs, err.Error())
				w.mu.Unlock()
			}
			return out, err
		}
		w.src = hotplugtest.NewFakeSource(hotplugtest.Loopback())
		rec, err := hotplug.New(hotplug.Config{Sandbox: w.sb, Source: w.src, MinBackoff: time.Nanosecond, MaxBackoff: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		w.rec = rec
		for i := 0; i+2 < len(ops); i += 3 {
			w.apply(ops[i], ops[i+1], ops[i+2])
		}
		w.mu.Lock()
		w.failNext = false
		w.mu.Unlock()
		w.pass()
		if strings.Contains(strings.Join(w.sb.Ops(), ","), "AddInterface") && len(w.added) == 0 {
			t.Fatal("AddInterface calls unchecked")
		}
	})
}

// dockerRecon: an endpoint through Docker's steps (add, tie, rename to
// eth0, address, up), a default route, a pass; then disconnect (down,
// rename back, delete), a pass.
var dockerRecon = []byte{0, 0, 4, 1, 0, 0, 2, 0, 0, 5, 0, 0, 3, 0, 0, 9, 0, 0, 11, 0, 1,
	4, 0, 0, 2, 0, 3, 8, 0, 0, 11, 0, 1}

// TestReconcileSequenceAttaches makes sure FuzzReconcileSequence's checks
// are not vacuous: its Docker seed attaches, pushes the default route and
// detaches.
func TestReconcileSequenceAttaches(t *testing.T) {
	w := &reconWorld{t: t, links: map[int]*view.Link{1: hotplugtest.Loopback()}, next: 10, added: map[string]bool{}}
	w.sb = &hotplugtest.FakeSandbox{}
	w.src = hotplugtest.NewFakeSource(hotplugtest.Loopback())
	rec, err := hotplug.New(hotplug.Config{Sandbox: w.sb, Source: w.src, MinBackoff: time.Nanosecond, MaxBackoff: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	w.rec = rec
	for i := 0; i+2 < len(dockerRecon); i += 3 {
		w.apply(dockerRecon[i], dockerRecon[i+1], dockerRecon[i+2])
	}
	want := []string{hotplugtest.OpListInterfaces, hotplugtest.OpAddInterface, hotplugtest.OpUpdateRoutes, hotplugtest.OpRemoveInterface, hotplugtest.OpListInterfaces}
	if got := w.sb.Ops(); !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
	if r := w.sb.CallsOf(hotplugtest.OpUpdateRoutes); len(r) != 1 || len(r[0].Routes) != 1 || r[0].Routes[0].Dest != "" || r[0].Routes[0].Device != "eth0" {
		t.Errorf("routes pushed: %+v", r)
	}
}
