package hotplug_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/matcher"
)

var errInjected = errors.New("injected failure")

// model drives random snapshot mutations and sandbox failures.
type model struct {
	t     *testing.T
	h     *harness
	src   *hotplugtest.FakeSource
	sb    *hotplugtest.FakeSandbox
	steps []string // what happened, for the failure message

	mu      sync.Mutex // guards rng, failing and hung: the fakes use them from call goroutines
	rng     *rand.Rand
	failing bool
	hangs   bool            // some calls hang until the model releases them
	hung    []chan struct{} // calls hanging now

	nextIndex int
	nextMAC   int
	everReady map[string]bool // MACs of links that were ready in some snapshot
}

func (m *model) chance(p float64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failing && m.rng.Float64() < p
}

// maybeHang blocks a call until the model releases it, now and then.
func (m *model) maybeHang() {
	m.mu.Lock()
	if !m.hangs || !m.failing || m.rng.Float64() >= 0.02 {
		m.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	m.hung = append(m.hung, ch)
	m.mu.Unlock()
	<-ch
}

// release lets every hanging call return.
func (m *model) release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ch := range m.hung {
		close(ch)
	}
	m.hung = nil
}

func (m *model) intn(n int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rng.IntN(n)
}

func (m *model) logf(format string, args ...any) {
	m.steps = append(m.steps, fmt.Sprintf(format, args...))
}

// arm installs failure injection on every sandbox call and on the by-name
// lookup (a lagging view, before or after a call).
func (m *model) arm() {
	sb := m.sb
	sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		m.maybeHang()
		switch {
		case m.chance(0.2):
			return nil, errInjected
		case m.chance(0.15): // half success: plugged, then an error
			if _, err := sb.GuestAddInterface(inf); err != nil {
				return nil, err
			}
			return nil, errInjected
		}
		return sb.GuestAddInterface(inf)
	}
	sb.RemoveInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		m.maybeHang()
		switch {
		case m.chance(0.2):
			return nil, errInjected
		case m.chance(0.1): // removed, then an error
			_, _ = sb.GuestRemoveInterface(inf)
			return nil, errInjected
		}
		return sb.GuestRemoveInterface(inf)
	}
	sb.ListInterfacesFn = func(ctx context.Context) ([]*hotplug.Interface, error) {
		m.maybeHang()
		if m.chance(0.1) {
			return nil, errInjected
		}
		return sb.GuestInterfaces(), nil
	}
	sb.UpdateRoutesFn = func(ctx context.Context, rs []*hotplug.Route) ([]*hotplug.Route, error) {
		m.maybeHang()
		if m.chance(0.2) {
			return nil, errInjected
		}
		return sb.GuestUpdateRoutes(rs)
	}
	m.src.LinkByNameFn = func(name string) (*view.Link, error) {
		if m.chance(0.08) {
			return &view.Link{Index: 999, Name: name, MAC: hotplugtest.MAC("02:ff:ff:ff:ff:ff"), RawFlags: hotplugtest.UpRunning}, nil
		}
		if l := m.src.Snapshot().LinkByName(name); l != nil {
			return l.Clone(), nil
		}
		return nil, nil
	}
}

func (m *model) newMAC() string {
	m.nextMAC++
	return fmt.Sprintf("5e:1f:00:00:%02x:%02x", m.nextMAC>>8, m.nextMAC&0xff)
}

// freeEth returns the lowest ethN not taken, as Docker picks it.
func freeEth(s *view.Snapshot) string {
	for n := 0; ; n++ {
		if name := fmt.Sprintf("eth%d", n); s.LinkByName(name) == nil {
			return name
		}
	}
}

// pick returns a random endpoint index of s, or 0.
func (m *model) pick(s *view.Snapshot) int {
	var idx []int
	for i := range s.Links {
		if i != 1 {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return 0
	}
	slices.Sort(idx)
	return idx[m.intn(len(idx))]
}

func (m *model) mutate() {
	op := m.intn(8)
	m.src.Update(func(s *view.Snapshot) {
		switch op {
		case 0, 1: // docker network connect: a ready endpoint
			m.nextIndex++
			l := hotplugtest.Endpoint(m.nextIndex, freeEth(s), m.newMAC(), fmt.Sprintf("10.%d.0.2/24", m.nextIndex))
			s.Links[l.Index] = l
			m.logf("add ready %d %s %s", l.Index, l.Name, l.MAC)
		case 2: // an endpoint on its way
			m.nextIndex++
			l := hotplugtest.Endpoint(m.nextIndex, freeEth(s), m.newMAC(), fmt.Sprintf("10.%d.0.2/24", m.nextIndex))
			switch m.intn(3) {
			case 0:
				hotplugtest.SetDown(l)
			case 1:
				l.Addrs = nil
			default:
				l.Name, l.ParentIndex, l.Peer = fmt.Sprintf("veth%07x", l.Index), 0, nil
			}
			s.Links[l.Index] = l
			m.logf("add pending %d %s %s", l.Index, l.Name, l.MAC)
		case 3: // finish configuring
			// A disconnected endpoint (renamed back to veth*) only ever
			// leaves: Docker never brings it back.
			if i := m.pick(s); i != 0 && !(m.everReady[s.Links[i].MAC.String()] && strings.HasPrefix(s.Links[i].Name, "veth")) {
				l := s.Links[i]
				hotplugtest.SetUp(l)
				if len(l.Addrs) == 0 {
					l.Addrs = []view.Addr{hotplugtest.Addr(fmt.Sprintf("10.%d.0.2/24", i))}
				}
				if l.Peer == nil {
					fresh := hotplugtest.Endpoint(i, l.Name, l.MAC.String())
					l.ParentIndex, l.Peer = fresh.ParentIndex, fresh.Peer
				}
				if strings.HasPrefix(l.Name, "veth") {
					l.Name = freeEth(s)
				}
				m.logf("make ready %d %s", i, l.Name)
			}
		case 4: // taken down or address removed, same name
			if i := m.pick(s); i != 0 {
				if m.intn(2) == 0 {
					hotplugtest.SetDown(s.Links[i])
				} else {
					s.Links[i].Addrs = nil
				}
				m.logf("make pending %d", i)
			}
		case 5: // moved out
			if i := m.pick(s); i != 0 {
				delete(s.Links, i)
				dropRoutesVia(s, i)
				m.logf("delete %d", i)
			}
		case 6: // docker network disconnect, first steps
			if i := m.pick(s); i != 0 {
				hotplugtest.SetDown(s.Links[i]).Name = fmt.Sprintf("veth%07x", i)
				dropRoutesVia(s, i)
				m.logf("down+rename %d", i)
			}
		case 7: // routes change
			s.Routes = nil
			if i := m.pick(s); i != 0 {
				s.Routes = append(s.Routes, hotplugtest.DefaultRoute(fmt.Sprintf("10.%d.0.1", i), i))
			}
			if i := m.pick(s); i != 0 {
				s.Routes = append(s.Routes, hotplugtest.StaticRoute(fmt.Sprintf("192.168.%d.0/24", m.intn(4)), "", i))
			}
			m.logf("routes %d", len(s.Routes))
		}
		for _, l := range s.Links {
			if matcher.Classify(l).State == matcher.Ready {
				m.everReady[l.MAC.String()] = true
			}
		}
	})
}

// check holds at every step, failures or not.
func (m *model) check(when string) {
	t := m.t
	t.Helper()
	macs := m.sb.GuestMACs()
	if c := slices.Compact(slices.Clone(macs)); len(c) != len(macs) {
		t.Fatalf("%s: a MAC is plugged twice: %v\nsteps:\n%s", when, macs, strings.Join(m.steps, "\n"))
	}
	added := map[string]bool{}
	for _, c := range m.sb.CallsOf(opAdd) {
		if !m.everReady[c.MAC()] {
			t.Fatalf("%s: AddInterface(%s) for a link that was never ready\nsteps:\n%s", when, c.MAC(), strings.Join(m.steps, "\n"))
		}
		added[c.MAC()] = true
	}
	for _, c := range m.sb.CallsOf(opRemove) {
		if !added[c.MAC()] {
			t.Fatalf("%s: RemoveInterface(%s) for a MAC never attached\nsteps:\n%s", when, c.MAC(), strings.Join(m.steps, "\n"))
		}
	}
	if n := m.sb.MaxInFlight(); n > 1 {
		t.Fatalf("%s: %d sandbox calls at once", when, n)
	}
}

func TestReconcileInvariants(t *testing.T) {
	seeds, steps := 100, 60
	if testing.Short() {
		seeds = 20
	}
	for seed := range seeds {
		unplug := seed%4 != 3 // every fourth: Cloud Hypervisor
		hangs := seed%5 == 1  // every fifth: calls hang and get abandoned
		t.Run(fmt.Sprintf("seed=%d/unplug=%v/hangs=%v", seed, unplug, hangs), func(t *testing.T) {
			runModel(t, uint64(seed), steps, unplug, hangs)
		})
	}
}

func runModel(t *testing.T, seed uint64, steps int, unplug, hangs bool) {
	sb := &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: unplug}}
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback())
	m := &model{
		t: t, src: src, sb: sb,
		rng:       rand.New(rand.NewPCG(seed, 0x6b617461)),
		failing:   true,
		hangs:     hangs,
		nextIndex: 10,
		everReady: map[string]bool{},
	}
	m.arm()
	m.h = newHarness(t, sb, src, func(c *hotplug.Config) {
		c.MaxBackoff = 4 * time.Millisecond
		if hangs {
			c.CallTimeout = 20 * time.Millisecond
		}
	})
	t.Cleanup(m.release)
	for i := range steps {
		if m.intn(2) == 0 {
			m.release()
		}
		for range 1 + m.intn(2) {
			m.mutate()
		}
		m.h.clock.Advance(time.Duration(m.intn(4)) * time.Millisecond)
		if _, err := m.h.r.Reconcile(context.Background()); err != nil {
			t.Fatalf("step %d: Reconcile: %v", i, err)
		}
		m.check(fmt.Sprintf("step %d", i))
	}

	// Failures stop; endpoints that were attached at some point and are not
	// ready now are moved out (Docker finishes what it started). Endpoints
	// never ready stay, pending.
	m.mu.Lock()
	m.failing = false
	m.mu.Unlock()
	m.release()
	if hung := hotplug.HungCall(m.h.r); hung != nil {
		<-hung
	}
	src.Update(func(s *view.Snapshot) {
		for i, l := range s.Links {
			if i != 1 && matcher.Classify(l).State != matcher.Ready && m.everReady[l.MAC.String()] {
				delete(s.Links, i)
				dropRoutesVia(s, i)
				m.logf("final: delete %d", i)
			}
		}
	})
	m.h.clock.Advance(time.Hour)
	st, err := m.h.r.Reconcile(context.Background())
	if err != nil {
		t.Fatalf("final Reconcile: %v", err)
	}
	m.check("final")
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\nsteps:\n%s", append(args, strings.Join(m.steps, "\n"))...)
	}

	snap := src.Snapshot()
	var ready []string
	for _, l := range snap.Links {
		if matcher.Classify(l).State == matcher.Ready {
			ready = append(ready, l.MAC.String())
		}
	}
	slices.Sort(ready)
	guest := m.sb.GuestMACs()
	if unplug {
		if !slices.Equal(guest, ready) {
			fail("guest MACs %v, want the ready endpoints' %v", guest, ready)
		}
	} else {
		for _, mac := range ready {
			if !slices.Contains(guest, mac) {
				fail("ready %s not in the guest %v", mac, guest)
			}
		}
		if n := len(sb.CallsOf(opRemove)); n != 0 {
			fail("%d RemoveInterface calls without the capability", n)
		}
	}
	var attached []string
	for _, a := range st.NICs {
		attached = append(attached, a.MAC)
	}
	slices.Sort(attached)
	switch {
	case unplug && !slices.Equal(attached, ready):
		fail("attached %v, want %v", attached, ready)
	case !unplug:
		// An endpoint that came back after it was stranded stays
		// unattached (its NIC is in the guest with a dead backend).
		for _, mac := range attached {
			if !slices.Contains(ready, mac) {
				fail("attached %s is not ready", mac)
			}
		}
	}
	if len(st.Failed) != 0 || !st.NextRetry.IsZero() {
		fail("final status %+v: failures left", st)
	}

	// Every route through an attached device is in the guest, under the
	// device's attach name.
	devs, names := map[int][]netip.Prefix{}, map[int]string{}
	for _, a := range st.NICs {
		devs[a.Index], names[a.Index] = a.Addrs, a.Name
	}
	guestRoutes := map[hotplug.Route]bool{}
	for _, r := range sb.GuestRoutes() {
		guestRoutes[*r] = true
	}
	keep, _ := matcher.Routes(snap, devs)
	for _, r := range keep {
		if want := hotplug.RouteFromView(r, names[r.LinkIndex]); !guestRoutes[*want] {
			fail("route %+v missing in the guest %v", *want, sb.GuestRoutes())
		}
	}

	// Settled: another pass does nothing.
	if got := m.h.opsDuring(func() { m.h.reconcile() }); len(got) != 0 {
		fail("a pass after convergence made calls %v", got)
	}
}
