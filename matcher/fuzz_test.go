package matcher_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/kata-netmon/kata-netmon/matcher"
)

// kinds the fuzzers pick from: the real ones and strings that must not pass
// for them.
var fuzzKinds = []string{"veth", "macvlan", "tuntap", "macvtap", "ifb", "bridge", "device", "ipvlan", "vxlan",
	"", "VETH", "veth ", " macvlan", "veth\x00", "macvlan2", "bond"}

// fuzzAddrs decodes addresses from b: each starts with a control byte (bit 0:
// IPv6; bit 1: an invalid prefix; bits 2-3: a prefix forced link-local,
// 4in6-mapped or left as read), then 4 or 16 address bytes.
func fuzzAddrs(b []byte) []view.Addr {
	var out []view.Addr
	for len(b) > 0 && len(out) < 8 {
		c := b[0]
		b = b[1:]
		n := 4
		if c&1 != 0 {
			n = 16
		}
		var raw [16]byte
		copy(raw[:n], b)
		b = b[min(n, len(b)):]
		var a netip.Addr
		if n == 4 {
			a = netip.AddrFrom4([4]byte(raw[:4]))
		} else {
			a = netip.AddrFrom16(raw)
		}
		switch (c >> 2) & 3 {
		case 1: // force link-local
			if n == 4 {
				raw[0], raw[1] = 169, 254
				a = netip.AddrFrom4([4]byte(raw[:4]))
			} else {
				raw[0], raw[1] = 0xfe, 0x80|raw[1]&0x3f
				a = netip.AddrFrom16(raw)
			}
		case 2: // 4in6-mapped
			a = netip.AddrFrom16(a.As16())
		}
		bits := int(c>>4) * a.BitLen() / 15
		p := netip.PrefixFrom(a, bits)
		if c&2 != 0 {
			p = netip.Prefix{}
		}
		out = append(out, view.Addr{Prefix: p, Scope: int(c >> 6)})
	}
	return out
}

// linkLocalSpec is the spec's link-local test, written without
// netip.Addr.IsLinkLocalUnicast: 169.254/16 and fe80::/10, 4in6 unmapped.
func linkLocalSpec(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return b[0] == 169 && b[1] == 254
	}
	b := a.As16()
	return b[0] == 0xfe && b[1]&0xc0 == 0x80
}

// classifySpec is an independent statement of what Classify must decide.
func classifySpec(l *view.Link) matcher.State {
	if l.RawFlags&view.FlagLoopback != 0 || l.Name == "lo" || strings.HasSuffix(l.Name, "_kata") ||
		(l.Kind != "veth" && l.Kind != "macvlan") || len(l.MAC) != 6 {
		return matcher.Ignored
	}
	p := l.Peer
	if l.ParentIndex == 0 || p == nil || p.State == view.PeerUntied {
		return matcher.Pending
	}
	if p.State != view.PeerResolved || !p.Found {
		return matcher.Ignored
	}
	if l.Kind == "veth" && (p.Kind != "veth" || !p.PointsBack || p.MasterIndex == 0 || p.MasterKind != "bridge") {
		return matcher.Ignored
	}
	routable := false
	for _, a := range l.Addrs {
		routable = routable || (a.Prefix.IsValid() && !linkLocalSpec(a.Prefix.Addr()))
	}
	if l.RawFlags&view.FlagUp != 0 && l.RawFlags&view.FlagRunning != 0 && routable {
		return matcher.Ready
	}
	return matcher.Pending
}

func cloneLink(l *view.Link) *view.Link {
	c := *l
	c.MAC = slices.Clone(l.MAC)
	c.Addrs = slices.Clone(l.Addrs)
	if l.Peer != nil {
		p := *l.Peer
		c.Peer = &p
	}
	return &c
}

func FuzzClassify(f *testing.F) {
	v4 := []byte{0x80, 172, 18, 0, 2}
	ll := []byte{0x85, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x84, 0, 0, 3, 4}
	v6 := []byte{0x81, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}
	mac := []byte{2, 0x42, 0xac, 0x12, 0, 2}
	all := upRunning
	// flags, kind, name, mac, parent, nsid, peer state (6: nil), found, peer kind, points back, master, master kind, addrs
	f.Add(all, uint8(0), "eth0", mac, int32(57), int8(0), uint8(3), true, uint8(0), true, int8(3), uint8(3), v4)
	f.Add(all, uint8(0), "veth1234", mac, int32(57), int8(0), uint8(3), true, uint8(0), true, int8(3), uint8(3), v6)
	f.Add(all, uint8(0), "eth0", mac, int32(57), int8(0), uint8(3), true, uint8(0), true, int8(3), uint8(3), ll)
	f.Add(all, uint8(1), "eth1", mac, int32(2), int8(0), uint8(3), true, uint8(6), false, int8(0), uint8(0), v4)
	f.Add(all, uint8(0), "tap9_kata", mac, int32(57), int8(0), uint8(3), true, uint8(0), true, int8(3), uint8(3), v4)
	f.Add(all|view.FlagLoopback, uint8(6), "lo", []byte{0, 0, 0, 0, 0, 0}, int32(0), int8(-1), uint8(6), false, uint8(0), false, int8(0), uint8(0), []byte{0x80, 127, 0, 0, 1})
	f.Add(uint32(0), uint8(0), "veth9f3e2a1", mac, int32(0), int8(-1), uint8(6), false, uint8(0), false, int8(0), uint8(0), []byte(nil))
	f.Add(view.FlagUp, uint8(0), "eth0", mac, int32(57), int8(0), uint8(4), true, uint8(0), true, int8(3), uint8(3), v4)
	f.Add(all, uint8(0), "eth0", mac, int32(57), int8(1), uint8(5), true, uint8(0), true, int8(3), uint8(3), v4)
	f.Fuzz(func(t *testing.T, flags uint32, kindSel uint8, name string, mac []byte, parent int32, nsid int8,
		peerSel uint8, found bool, peerKindSel uint8, pointsBack bool, master int8, masterKindSel uint8, addrBytes []byte) {
		l := &view.Link{
			Index:       int(parent&0xff) + 1,
			Name:        name,
			Kind:        fuzzKinds[int(kindSel)%len(fuzzKinds)],
			MAC:         net.HardwareAddr(mac),
			RawFlags:    flags,
			ParentIndex: int(parent),
			LinkNetNSID: int(nsid),
			Addrs:       fuzzAddrs(addrBytes),
		}
		if ps := peerSel % 7; ps != 6 { // 5: a state out of range
			l.Peer = &view.Peer{
				State:       view.PeerState(ps),
				Found:       found,
				Name:        "p" + name,
				Kind:        fuzzKinds[int(peerKindSel)%len(fuzzKinds)],
				PointsBack:  pointsBack,
				MasterIndex: int(master),
				MasterKind:  fuzzKinds[int(masterKindSel)%len(fuzzKinds)],
			}
		}
		before := cloneLink(l)
		got := matcher.Classify(l)
		if !reflect.DeepEqual(l, before) {
			t.Fatalf("Classify modified its link: %+v -> %+v", before, l)
		}
		if got.Index != l.Index || got.Name != l.Name || got.Kind != l.Kind || got.Reason == "" {
			t.Fatalf("Classify = %+v: identity or reason missing", got)
		}
		if want := classifySpec(l); got.State != want {
			t.Fatalf("Classify(%+v, peer %+v) = %v (%q), spec says %v", l, l.Peer, got.State, got.Reason, want)
		}
		if got.State == matcher.Ready {
			p := l.Peer
			switch {
			case l.Kind != "veth" && l.Kind != "macvlan":
				t.Fatalf("ready %q", l.Kind)
			case !l.Up() || !l.Running():
				t.Fatalf("ready but flags %#x", l.RawFlags)
			case l.RawFlags&view.FlagLoopback != 0 || l.Name == "lo" || strings.HasSuffix(l.Name, "_kata"):
				t.Fatalf("ready loopback or Kata link %q", l.Name)
			case p == nil || p.State != view.PeerResolved || !p.Found || l.ParentIndex == 0:
				t.Fatalf("ready with peer %+v, parent %d", p, l.ParentIndex)
			case l.Kind == "veth" && (!p.PointsBack || p.MasterKind != "bridge" || p.MasterIndex == 0):
				t.Fatalf("ready veth with peer %+v", p)
			case !slices.ContainsFunc(l.Addrs, func(a view.Addr) bool { return a.Prefix.IsValid() && !a.LinkLocal() }):
				t.Fatalf("ready with addresses %v", l.Addrs)
			}
		}
		// Names never decide, except lo and Kata's suffix.
		if l.Name != "lo" && !strings.HasSuffix(l.Name, "_kata") {
			for _, n := range []string{"eth0", "veth1234", ""} {
				r := cloneLink(l)
				r.Name = n
				if d := matcher.Classify(r); d.State != got.State {
					t.Fatalf("renaming %q to %q changed %v to %v", l.Name, n, got.State, d.State)
				}
			}
		}
	})
}

// fuzzRoutes decodes 8 bytes per route.
func fuzzRoutes(b []byte) []view.Route {
	var out []view.Route
	for ; len(b) >= 8 && len(out) < 32; b = b[8:] {
		v6 := b[0]&1 != 0
		var a netip.Addr
		x, y := b[1], b[2]
		switch (b[0] >> 1) % 6 {
		case 0: // default
			a = netip.IPv4Unspecified()
			if v6 {
				a = netip.IPv6Unspecified()
			}
		case 1: // link-local
			a = netip.AddrFrom4([4]byte{169, 254, x, 0})
			if v6 {
				a = netip.AddrFrom16([16]byte{0xfe, 0x80, 14: x})
			}
		case 2: // multicast
			a = netip.AddrFrom4([4]byte{224 + x%16, 0, 0, y})
			if v6 {
				a = netip.AddrFrom16([16]byte{0xff, x, 15: y})
			}
		case 3: // invalid
		default: // ordinary, few distinct values so that ties happen
			a = netip.AddrFrom4([4]byte{10, x % 4, y % 2, 0})
			if v6 {
				a = netip.AddrFrom16([16]byte{0xfd, 0, x % 4, 15: y % 2})
			}
		}
		var dst netip.Prefix
		if a.IsValid() {
			bits := int(b[3]) % (a.BitLen() + 1)
			if (b[0]>>1)%6 == 0 {
				bits = 0
			}
			dst = netip.PrefixFrom(a, bits)
		}
		fam := view.FamilyV4
		if v6 {
			fam = view.FamilyV6
		}
		var gw netip.Addr
		switch b[7] % 4 {
		case 1:
			gw = netip.MustParseAddr("172.18.0.1")
		case 2:
			gw = netip.MustParseAddr("172.18.0.2")
		case 3:
			gw = netip.MustParseAddr("fe80::1")
		}
		table := []int{view.TableMain, view.TableMain, 255, 253, 0, int(b[5])}[b[5]%6]
		var via netip.Addr
		if b[0]&0x80 != 0 && !gw.IsValid() {
			via = netip.MustParseAddr("fe80::9")
		}
		var src netip.Prefix
		if b[1]&0x80 != 0 {
			src = netip.MustParsePrefix("2001:db8::/64")
		}
		nhid := 0
		if b[6]&0x80 != 0 {
			nhid = 7
		}
		out = append(out, view.Route{
			Via:       via,
			SrcPrefix: src,
			Hops:      int(b[4] >> 6),
			NHID:      nhid,
			Flags:     int(b[3]>>7) * view.RouteFlagOnLink,
			Family:    fam,
			Dst:       dst,
			Gateway:   gw,
			LinkIndex: int(b[4] % 6),
			Table:     table,
			Protocol:  int(b[5]>>3) % 6,
			Type:      int(b[6] % 4),
			Scope:     int(b[6]>>2) % 3 * 100,
			Priority:  int(b[7]>>2) % 3,
			MTU:       int(b[6]>>4) % 2 * 1400,
		})
	}
	return out
}

// considerSpec: a route through a guest NIC of the kinds the guest may get.
func considerSpec(r view.Route, devices map[int][]netip.Prefix) bool {
	_, dev := devices[r.LinkIndex]
	return dev && r.Table == view.TableMain && r.Protocol != view.RouteProtoKernel &&
		(r.Type == 0 || r.Type == 1) && r.Dst.IsValid() && !r.Dst.Addr().IsMulticast() &&
		(r.Dst.Bits() == 0 || !linkLocalSpec(r.Dst.Addr()))
}

// expressibleSpec: what the agent can install with its meaning.
func expressibleSpec(r view.Route) bool {
	return r.NHID == 0 && r.Hops <= 1 && !r.Via.IsValid() && (!r.SrcPrefix.IsValid() || r.Family == view.FamilyV6)
}

// keepSpec is matcher.Routes written the slow way: of the considered,
// expressible routes to one destination (and source prefix), the one with
// the lowest metric if no other shares it, and then only if its gateway is
// reachable: link-local IPv6, onlink, in a NIC address's subnet, or in a
// kept gateway-less route through the same NIC.
func keepSpec(in []view.Route, devices map[int][]netip.Prefix) []view.Route {
	var cands []view.Route
	for _, r := range in {
		if !considerSpec(r, devices) || !expressibleSpec(r) {
			continue
		}
		best, n := r.Priority, 0
		for _, o := range in {
			if considerSpec(o, devices) && expressibleSpec(o) && o.Family == r.Family &&
				o.Dst.Masked() == r.Dst.Masked() && o.SrcPrefix == r.SrcPrefix {
				switch {
				case o.Priority < best:
					best, n = o.Priority, 1
				case o.Priority == best:
					n++
				}
			}
		}
		if r.Priority == best && n == 1 {
			cands = append(cands, r)
		}
	}
	var out []view.Route
	for _, r := range cands {
		ok := !r.Gateway.IsValid() || r.Flags&view.RouteFlagOnLink != 0 || (r.Gateway.Is6() && r.Gateway.IsLinkLocalUnicast())
		for _, a := range devices[r.LinkIndex] {
			ok = ok || a.Masked().Contains(r.Gateway)
		}
		for _, o := range cands {
			ok = ok || (o.LinkIndex == r.LinkIndex && !o.Gateway.IsValid() && !o.SrcPrefix.IsValid() && o.Dst.Contains(r.Gateway))
		}
		if ok {
			out = append(out, r)
		}
	}
	return out
}

func FuzzRoutes(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 0, 1, 1, 9, 1, 0, 16, 1, 0, 1, 1, 9, 1, 0, 16, 1, 0, 1, 2, 1, 0, 0, 0, 1, 0, 1, 1}, uint8(0x06), uint64(1))
	f.Add([]byte{2, 0, 0, 64, 1, 0x10, 1, 0, 4, 0, 0, 8, 1, 0, 1, 0, 9, 3, 1, 16, 2, 0, 1, 4}, uint8(0xff), uint64(7))
	f.Add([]byte{}, uint8(0), uint64(0))
	f.Fuzz(func(t *testing.T, data []byte, devMask uint8, seed uint64) {
		in := fuzzRoutes(data)
		devices := map[int][]netip.Prefix{}
		for i := range 6 {
			if devMask&(1<<i) != 0 {
				devices[i] = []netip.Prefix{netip.MustParsePrefix("172.18.0.2/16")}
				if i%2 == 1 {
					devices[i] = nil // a NIC whose subnet holds no gateway
				}
			}
		}
		orig := slices.Clone(in)
		got, skipped := matcher.Routes(&view.Snapshot{Routes: in}, devices)
		if !slices.Equal(in, orig) {
			t.Fatal("Routes modified the snapshot")
		}
		kept := keepSpec(in, devices)
		for _, r := range got {
			if _, dev := devices[r.LinkIndex]; !dev || r.Table != view.TableMain || r.Protocol == view.RouteProtoKernel {
				t.Fatalf("kept %+v", r)
			}
		}
		// Every considered route is kept or skipped with a reason, once.
		var considered int
		for _, r := range in {
			if considerSpec(r, devices) {
				considered++
			}
		}
		if len(got)+len(skipped) != considered {
			t.Fatalf("%d kept + %d skipped, %d considered", len(got), len(skipped), considered)
		}
		for _, sk := range skipped {
			if sk.Reason == "" {
				t.Fatalf("skipped %+v without a reason", sk.Route)
			}
		}
		// Same multiset as the spec's filter.
		key := func(r view.Route) string { return fmt.Sprint(r) }
		count := func(rs []view.Route) map[string]int {
			m := map[string]int{}
			for _, r := range rs {
				m[key(r)]++
			}
			return m
		}
		if !maps.Equal(count(got), count(kept)) {
			t.Fatalf("Routes kept\n%v\nspec keeps\n%v", got, kept)
		}
		// Ordered: by family, non-default before default within a family.
		for i := 1; i < len(got); i++ {
			a, b := got[i-1], got[i]
			if a.Family > b.Family || (a.Family == b.Family && a.Default() && !b.Default()) {
				t.Fatalf("out of order at %d: %+v before %+v", i, a, b)
			}
		}
		// Deterministic: the order of the input does not matter.
		shuffled := slices.Clone(in)
		rand.New(rand.NewPCG(seed, 0)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if again, _ := matcher.Routes(&view.Snapshot{Routes: shuffled}, devices); !slices.Equal(again, got) {
			t.Fatalf("shuffled input gives\n%v\nnot\n%v", again, got)
		}
	})
}

// world is a tiny sandbox netns that fuzzed operations change, and a model
// reconciler (detach what is Gone, then attach what is Ready, as
// hotplug.Reconciler does) run over its snapshots.
type world struct {
	t        *testing.T
	links    map[int]*view.Link // by ifindex
	slots    [4]int             // slot -> ifindex (0: empty)
	next     int                // next fresh ifindex (the kernel does not reuse them quickly)
	attached map[int]matcher.GuestNIC
	// moved records, per attached ifindex, whether since its attach the
	// link was deleted, renamed, or got another MAC: only those may
	// detach it.
	moved map[int]bool
	// events is the attach/detach log per ifindex.
	events map[int][]string
}

var seqNames = []string{"eth0", "eth1", "eth2", "vethA", "vethB", "tap0_kata", "lo", "x"}

func seqMAC(b byte) net.HardwareAddr {
	switch b % 8 {
	case 0:
		return nil
	case 1:
		return net.HardwareAddr{0x02, 0x42, 0xac, 0x12, 0, 0x2} // shared: two links may carry it
	default:
		return net.HardwareAddr{0x02, 0x42, 0xac, 0x12, 0, b}
	}
}

func (w *world) snapshot() *view.Snapshot {
	s := &view.Snapshot{Links: map[int]*view.Link{}}
	for i, l := range w.links {
		s.Links[i] = cloneLink(l)
	}
	return s
}

func (w *world) nameTaken(n string) bool {
	for _, l := range w.links {
		if l.Name == n {
			return true
		}
	}
	return false
}

func (w *world) apply(op, slot, arg byte) {
	idx := w.slots[slot%4]
	l := w.links[idx]
	if op%13 == 0 { // add: Docker's NEWLINK vethXXXX, down, untied
		if l == nil {
			w.next++
			idx = w.next
			n := fmt.Sprintf("veth%07x", idx)
			w.slots[slot%4] = idx
			w.links[idx] = &view.Link{Index: idx, Name: n, Kind: "veth", MAC: seqMAC(arg), MTU: 1500, LinkNetNSID: -1}
		}
		return
	}
	if l == nil {
		return
	}
	switch op % 13 {
	case 1: // tie: the rename's IFLA_LINK + netnsid, peer resolved
		l.ParentIndex, l.LinkNetNSID, l.Peer = 100+idx, 0, goodPeer()
		if arg%2 == 1 {
			l.Kind = "macvlan"
		}
	case 2: // rename (the kernel refuses a name in use)
		if n := seqNames[int(arg)%len(seqNames)]; !w.nameTaken(n) {
			if _, ok := w.attached[idx]; ok && n != l.Name {
				w.moved[idx] = true
			}
			l.Name = n
		}
	case 3:
		l.RawFlags |= view.FlagUp
	case 4: // down: RUNNING and IPv6 addresses go with it (keep_addr_on_down=0)
		l.RawFlags &^= view.FlagUp | view.FlagRunning | view.FlagLowerUp
		l.Addrs = slices.DeleteFunc(l.Addrs, func(a view.Addr) bool { return a.Prefix.Addr().Is6() })
	case 5: // linkwatch: RUNNING only while up
		if l.Up() {
			l.RawFlags |= view.FlagRunning | view.FlagLowerUp
		}
	case 6: // carrier lost
		l.RawFlags &^= view.FlagRunning | view.FlagLowerUp
	case 7:
		a := []string{"172.18.0.%d/16", "2001:db8::%x/64", "fe80::%x/64", "169.254.0.%d/16"}[arg%4]
		l.Addrs = append(l.Addrs, addr(fmt.Sprintf(a, arg/4+1)))
	case 8:
		if len(l.Addrs) > 0 {
			i := int(arg) % len(l.Addrs)
			l.Addrs = slices.Delete(l.Addrs, i, i+1)
		}
	case 9:
		m := seqMAC(arg)
		if _, ok := w.attached[idx]; ok && m.String() != l.MAC.String() {
			w.moved[idx] = true
		}
		l.MAC = m
	case 10: // DELLINK (destroyed or moved out)
		delete(w.links, idx)
		w.slots[slot%4] = 0
		if _, ok := w.attached[idx]; ok {
			w.moved[idx] = true
		}
	case 11:
		w.reconcile()
	case 12: // peer facts change
		switch arg % 5 {
		case 0:
			l.Peer = &view.Peer{State: view.PeerForeignNetNS}
		case 1:
			l.Peer = &view.Peer{State: view.PeerError, Err: "EBADF"}
		case 2:
			l.Peer = &view.Peer{State: view.PeerUntied}
		case 3:
			if l.Peer != nil {
				l.Peer.PointsBack = false
			}
		case 4:
			l.ParentIndex, l.Peer = 0, nil
		}
	}
}

// reconcile is one pass of the model reconciler, then the invariants that
// hold after any pass.
func (w *world) reconcile() {
	t := w.t
	s := w.snapshot()
	before := maps.Clone(w.attached)
	w.pass(s)

	// A second pass over the same snapshot does nothing: attach and Gone
	// agree (no flapping).
	if w.pass(s) {
		t.Fatalf("second pass over the same snapshot acted again; attached %v", w.attached)
	}
	ready := map[int]bool{}
	for _, d := range matcher.Endpoints(s) {
		if d.State == matcher.Ready {
			ready[d.Index] = true
			if _, ok := w.attached[d.Index]; !ok {
				t.Fatalf("ready %d (%s) not attached after a pass", d.Index, d.Name)
			}
		}
	}
	// attached == ready ∪ (attached before this pass and still there with
	// its MAC, and up or still under its attach name). A link that merely
	// went down, lost its address or carrier, or was renamed while up
	// stays attached, so "attached == ready" is not an invariant.
	for i, a := range w.attached {
		l := s.Links[i]
		if l == nil || l.MAC.String() != a.MAC || (!l.Up() && l.Name != a.Name) {
			t.Fatalf("attached %+v but link is %+v", a, l)
		}
		if _, was := before[i]; !ready[i] && !was {
			t.Fatalf("attached %+v, neither ready nor attached before", a)
		}
	}
}

// pass detaches what is Gone, then attaches what is Ready; it reports whether
// it did anything.
func (w *world) pass(s *view.Snapshot) bool {
	t := w.t
	acted := false
	for _, i := range slices.Sorted(maps.Keys(w.attached)) {
		a := w.attached[i]
		if gone, why := matcher.Gone(a, s); gone {
			if why == "" {
				t.Fatalf("Gone(%+v) without a reason", a)
			}
			// The one detach of a link that did not move: a ready link
			// whose addresses are no longer those its NIC was given.
			readdressed := false
			if l := s.Links[i]; l != nil && matcher.Classify(l).State == matcher.Ready {
				readdressed = !reflect.DeepEqual(matcher.RoutableAddrs(l), a.Addrs)
			}
			if !w.moved[i] && !readdressed {
				t.Fatalf("detach %+v (%s), but since its attach it was not deleted, renamed, re-MACed or readdressed", a, why)
			}
			w.detach(i)
			acted = true
		}
	}
	for _, d := range matcher.Endpoints(s) {
		if d.State != matcher.Ready {
			continue
		}
		if _, ok := w.attached[d.Index]; ok {
			continue
		}
		l := s.Links[d.Index]
		a := matcher.GuestNIC{Index: l.Index, Name: l.Name, MAC: l.MAC.String(), Addrs: matcher.RoutableAddrs(l)}
		w.attach(a)
		acted = true
		if gone, why := matcher.Gone(a, s); gone {
			t.Fatalf("just attached %+v is gone: %s", a, why)
		}
	}
	return acted
}

func (w *world) attach(a matcher.GuestNIC) {
	ev := w.events[a.Index]
	if len(ev) > 0 && ev[len(ev)-1] == "attach" {
		w.t.Fatalf("ifindex %d attached twice: %v", a.Index, ev)
	}
	w.events[a.Index] = append(ev, "attach")
	w.attached[a.Index] = a
	w.moved[a.Index] = false
}

func (w *world) detach(i int) {
	ev := w.events[i]
	if len(ev) == 0 || ev[len(ev)-1] != "attach" {
		w.t.Fatalf("detach of ifindex %d that is not attached: %v", i, ev)
	}
	w.events[i] = append(ev, "detach")
	delete(w.attached, i)
}

// Docker 29 connect: add, tie (rename eth0), MAC, addr, up, running; then
// disconnect: down, rename back, DELADDR, DELLINK.
var dockerSeq = []byte{
	0, 0, 5, 11, 0, 0, 1, 0, 0, 2, 0, 0, 11, 0, 0, 9, 0, 2, 7, 0, 0, 11, 0, 0, 3, 0, 0, 11, 0, 0, 5, 0, 0, 11, 0, 0,
	4, 0, 0, 11, 0, 0, 2, 0, 3, 11, 0, 0, 8, 0, 0, 10, 0, 0, 11, 0, 0,
}

// FuzzSequence replays fuzzed netlink-like operations on up to four links
// (three bytes each: op, slot, argument; op 11 runs the model reconciler, so
// several changes may land between two passes as when netmon coalesces) and
// checks the model reconciler's invariants at every pass and at the end.
func FuzzSequence(f *testing.F) {
	f.Add(dockerSeq)
	// Same, every step coalesced into one pass; then a second endpoint.
	f.Add([]byte{0, 0, 5, 1, 0, 0, 2, 0, 0, 9, 0, 2, 7, 0, 0, 3, 0, 0, 5, 0, 0, 11, 0, 0,
		0, 1, 6, 1, 1, 0, 2, 1, 1, 9, 1, 3, 7, 1, 4, 3, 1, 0, 5, 1, 0, 11, 0, 0, 4, 0, 0, 3, 0, 0, 11, 0, 0})
	// Flap: down/up, carrier loss, address loss, rename while up.
	f.Add([]byte{0, 0, 5, 1, 0, 0, 7, 0, 0, 3, 0, 0, 5, 0, 0, 11, 0, 0, 4, 0, 0, 11, 0, 0, 3, 0, 0, 5, 0, 0, 7, 0, 0,
		11, 0, 0, 6, 0, 0, 11, 0, 0, 8, 0, 0, 11, 0, 0, 2, 0, 7, 11, 0, 0, 4, 0, 0, 11, 0, 0})
	// Macvlan, peer facts failing after attach, MAC change.
	f.Add([]byte{0, 2, 3, 1, 2, 1, 7, 2, 0, 3, 2, 0, 5, 2, 0, 11, 0, 0, 12, 2, 1, 11, 0, 0, 9, 2, 4, 11, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 3*200 {
			ops = ops[:3*200]
		}
		w := runSequence(t, ops)
		if _, ok := w.attached[1]; ok {
			t.Fatal("lo attached")
		}
	})
}

func runSequence(t *testing.T, ops []byte) *world {
	w := &world{t: t, links: map[int]*view.Link{}, attached: map[int]matcher.GuestNIC{},
		moved: map[int]bool{}, events: map[int][]string{}, next: 1}
	w.links[1] = &view.Link{Index: 1, Name: "lo", Kind: "device", RawFlags: view.FlagLoopback | view.FlagUp | view.FlagRunning,
		MAC: make(net.HardwareAddr, 6), Addrs: []view.Addr{addr("127.0.0.1/8")}}
	for i := 0; i+2 < len(ops); i += 3 {
		w.apply(ops[i], ops[i+1], ops[i+2])
	}
	w.reconcile()
	return w
}

// TestSequenceDockerConnectDisconnect checks that the model really attaches
// and detaches on Docker's sequence, so FuzzSequence's invariants are not
// vacuous.
func TestSequenceDockerConnectDisconnect(t *testing.T) {
	w := runSequence(t, dockerSeq)
	if got, want := w.events[2], []string{"attach", "detach"}; !slices.Equal(got, want) {
		t.Errorf("events for ifindex 2 = %v, want %v", got, want)
	}
	// Stop before the disconnect: attached under eth0 with Docker's MAC.
	w = runSequence(t, dockerSeq[:3*12])
	if got, want := w.attached, map[int]matcher.GuestNIC{2: {Index: 2, Name: "eth0", MAC: "02:42:ac:12:00:02",
		Addrs: []netip.Prefix{netip.MustParsePrefix("172.18.0.1/16")}}}; !reflect.DeepEqual(got, want) {
		t.Errorf("attached = %v, want %v", got, want)
	}
}
