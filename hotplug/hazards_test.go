package hotplug_test

// Tests of the sandbox hazards the reconciler steers around (Capabilities'
// hazard fields, ErrRefused) and of the calls it no longer makes.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// The guest is listed at start (to adopt what a runtime's own scan or an
// earlier monitor plugged) and after a failed attach of that MAC, not before
// every attach.
func TestListOnlyWhenNeeded(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback(), hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
	h := newHarness(t, sb, src)
	if got, want := h.opsDuring(func() { h.reconcile() }), ops(opList, opAdd); !slices.Equal(got, want) {
		t.Fatalf("first pass: calls %v, want %v", got, want)
	}
	src.Update(func(s *view.Snapshot) { s.Links[8] = hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24") })
	if got, want := h.opsDuring(func() { h.reconcile() }), ops(opAdd); !slices.Equal(got, want) {
		t.Fatalf("connect: calls %v, want %v", got, want)
	}
	// A failed attach of eth2 makes its retry look first.
	var fail = true
	sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		if fail {
			fail = false
			return nil, errInjected
		}
		return sb.GuestAddInterface(inf)
	}
	src.Update(func(s *view.Snapshot) { s.Links[9] = hotplugtest.Endpoint(9, "eth2", macC, "10.3.0.2/24") })
	if got, want := h.opsDuring(func() { h.reconcile() }), ops(opAdd); !slices.Equal(got, want) {
		t.Fatalf("failing connect: calls %v, want %v", got, want)
	}
	h.clock.Advance(time.Second)
	if got, want := h.opsDuring(func() { h.reconcile() }), ops(opList, opAdd); !slices.Equal(got, want) {
		t.Fatalf("retry: calls %v, want %v", got, want)
	}
	if got := sb.GuestMACs(); !slices.Equal(got, []string{macA, macB, macC}) {
		t.Errorf("guest MACs %v", got)
	}
}

// A sandbox that tears down links by name (Kata 4.1 as shipped) must not be
// asked to unplug a NIC while a link holds its attach-time name: that link
// would be switched off. Without the hazard the unplug goes at once.
func TestDetachByNameWaitsForTheName(t *testing.T) {
	for _, byName := range []bool{true, false} {
		t.Run(fmt.Sprintf("DetachByName=%v", byName), func(t *testing.T) {
			sb := &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, DetachByName: byName}}
			h, src := twoEndpoints(t, sb)
			// docker network disconnect + connect: eth1 goes down and is
			// renamed away, and the new endpoint takes the name eth1
			// before the monitor unplugs the old NIC.
			src.Update(func(s *view.Snapshot) {
				s.Links[8].Name, s.Links[8].RawFlags = "veth1a2b3c4", 0
				dropRoutesVia(s, 8)
				s.Links[9] = hotplugtest.Endpoint(9, "eth1", macC, "10.9.0.2/24")
			})
			st := h.reconcile()
			if !byName {
				// The old NIC goes, then the new one comes.
				if got := macsOf(sb, opRemove); !slices.Equal(got, []string{macB}) {
					t.Fatalf("RemoveInterface MACs %v, want [%s]", got, macB)
				}
				if got := sb.GuestMACs(); !slices.Equal(got, []string{macA, macC}) {
					t.Fatalf("guest MACs %v", got)
				}
				return
			}
			if n := len(sb.CallsOf(opRemove)) + len(sb.CallsOf(opAdd)); n != 2 {
				t.Fatalf("calls %v: want no RemoveInterface while eth1 is held, and no second AddInterface", sb.Ops())
			}
			if !slices.Contains(st.Pending, "eth1") {
				t.Errorf("status %+v, want the new eth1 pending (the guest still has an eth1)", st)
			}
			h.wantLogged(logrus.WarnLevel, "not detaching yet", logrus.Fields{"ifname": "eth1", "mac": macB, "holder_ifindex": 9})
			h.reconcile()
			if n := h.count(logrus.WarnLevel, "not detaching yet"); n != 1 {
				t.Errorf("warned %d times, want once", n)
			}
			// The new endpoint is renamed eth2 (Docker picks names freely
			// with the ifname option): the name is free, the old NIC goes,
			// and the new endpoint comes under its new name.
			src.Update(func(s *view.Snapshot) { s.Links[9].Name = "eth2" })
			h.reconcile()
			if got := macsOf(sb, opRemove); !slices.Equal(got, []string{macB}) {
				t.Fatalf("RemoveInterface MACs %v, want [%s]", got, macB)
			}
			if got := sb.GuestMACs(); !slices.Equal(got, []string{macA, macC}) {
				t.Errorf("guest MACs %v, want eth0 and the new endpoint", got)
			}
		})
	}
}

// With DetachByName, a MAC change of an attached link leaves its NIC in
// place: unplugging it would set the link (Docker's, still in use) down.
func TestDetachByNameKeepsNICOfReMACedLink(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, DetachByName: true}}
	h, src := twoEndpoints(t, sb)
	src.Update(func(s *view.Snapshot) { s.Links[8].MAC = hotplugtest.MAC(macC) })
	for range 3 {
		h.reconcile()
	}
	if got := sb.Ops(); slices.Contains(got, opRemove) || len(sb.CallsOf(opAdd)) != 2 {
		t.Fatalf("calls %v: want neither an unplug nor a new plug", got)
	}
	h.wantLogged(logrus.WarnLevel, "not detaching yet", logrus.Fields{"ifname": "eth1", "holder_ifindex": 8})
}

// Kata's macvtap model gives the link a new MAC during AddInterface. With
// ReMACsLink that is the sandbox at work, not another link: the NIC stays,
// and the link's new MAC does not make it gone. Without it, the reconciler
// takes the link for a different one and undoes the attach (the control:
// the hazard bites).
func TestReMACsLink(t *testing.T) {
	const kataMAC = "86:11:22:33:44:55" // tapNetworkPair's random VirtIface MAC
	for _, remacs := range []bool{true, false} {
		t.Run(fmt.Sprintf("ReMACsLink=%v", remacs), func(t *testing.T) {
			src := hotplugtest.NewFakeSource(hotplugtest.Loopback(), hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
			sb := &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, ReMACsLink: remacs}}
			sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
				got, err := sb.GuestAddInterface(inf)
				src.Update(func(s *view.Snapshot) { s.Links[7].MAC, s.Links[7].Addrs = hotplugtest.MAC(kataMAC), nil })
				return got, err
			}
			h := newHarness(t, sb, src)
			st := h.reconcile()
			if !remacs {
				if got := macsOf(sb, opRemove); !slices.Equal(got, []string{macA}) || len(st.NICs) != 0 {
					t.Fatalf("RemoveInterface MACs %v, NICs %v: want the attach undone", got, st.NICs)
				}
				return
			}
			if len(st.NICs) != 1 || st.NICs[0].MAC != macA || st.NICs[0].LinkMAC != kataMAC || !st.Settled() {
				t.Fatalf("status %+v, want eth0 attached as %s with link MAC %s", st, macA, kataMAC)
			}
			for range 3 {
				h.reconcile()
			}
			if got := sb.Ops(); slices.Contains(got, opRemove) || len(sb.CallsOf(opAdd)) != 1 {
				t.Errorf("calls %v, want one AddInterface and no unplug", got)
			}
			// Docker's disconnect still unplugs it.
			src.Update(func(s *view.Snapshot) { delete(s.Links, 7) })
			h.reconcile()
			if got := macsOf(sb, opRemove); !slices.Equal(got, []string{macA}) {
				t.Errorf("RemoveInterface MACs %v after the link left, want [%s]", got, macA)
			}
		})
	}
}

// Right before AddInterface the link is read again: a link the view still
// shows up, but which is down now (a sandbox that sets links down by name
// may just have switched it off), is not attached.
func TestNotAttachedWhenDownNow(t *testing.T) {
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback(), hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
	src.LinkByNameFn = func(name string) (*view.Link, error) {
		l := hotplugtest.KernelLink(7, macA)
		l.RawFlags = 0
		return l, nil
	}
	sb := &hotplugtest.FakeSandbox{}
	h := newHarness(t, sb, src)
	st := h.reconcile()
	if len(sb.CallsOf(opAdd)) != 0 || !slices.Equal(st.Pending, []string{"eth0"}) || !st.NextRetry.IsZero() {
		t.Fatalf("calls %v, status %+v: want no AddInterface, eth0 pending until the next event", sb.Ops(), st)
	}
	src.LinkByNameFn = nil
	src.Update(func(*view.Snapshot) {})
	if st := h.reconcile(); len(st.NICs) != 1 {
		t.Fatalf("status %+v once the link is up again", st)
	}
}

// A refusal (ErrRefused) is reported once, counted, settles Sync (waiting
// would not change the answer), and is asked again only once a NIC leaves
// the guest: not on a timer.
func TestRefusedAttach(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	obs := &recObserver{}
	refuse := true
	sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		if refuse && inf.HwAddr == macB {
			return nil, fmt.Errorf("%w: a second NIC: build the fixed runtime", hotplug.ErrRefused)
		}
		return sb.GuestAddInterface(inf)
	}
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback(),
		hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"),
		hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24"))
	h := newHarness(t, sb, src, func(c *hotplug.Config) { c.Observer = obs })
	h.realClock()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	st, err := h.r.Sync(ctx)
	if err != nil || !slices.Equal(st.Refused, []string{"eth1"}) || len(st.NICs) != 1 || !st.NextRetry.IsZero() {
		t.Fatalf("Sync: %+v, %v; want settled with eth1 refused, no retry scheduled", st, err)
	}
	for range 3 {
		src.Update(func(*view.Snapshot) {})
		h.reconcile()
	}
	if n := len(sb.CallsOf(opAdd)); n != 2 {
		t.Fatalf("AddInterface called %d times, want 2 (eth0, and eth1 once)", n)
	}
	if n := h.count(logrus.ErrorLevel, "refused"); n != 1 {
		t.Errorf("refusal logged %d times, want once", n)
	}
	obs.mu.Lock()
	refusals := 0
	for _, err := range obs.errs {
		if errors.Is(err, hotplug.ErrRefused) {
			refusals++
		}
	}
	obs.mu.Unlock()
	if refusals != 1 {
		t.Errorf("observer saw %d refused calls, want 1", refusals)
	}
	// eth0 leaves: the sandbox is asked again, and now takes eth1.
	refuse = false
	src.Update(func(s *view.Snapshot) { delete(s.Links, 7) })
	if st := h.reconcile(); len(st.NICs) != 1 || st.NICs[0].MAC != macB || len(st.Refused) != 0 {
		t.Fatalf("status %+v, want eth1 attached once eth0 left", st)
	}
}

// A panic inside a sandbox call (Kata's AddInterface dereferences a nil
// endpoint for a "tuntap" link) fails that call; it does not take the
// process down, and it is reported.
func TestSandboxPanicFailsTheCall(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	panics := 1
	sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		if panics > 0 {
			panics--
			var ep *hotplug.Interface
			_ = ep.Name // nil dereference, as in Kata
		}
		return sb.GuestAddInterface(inf)
	}
	obs := &recObserver{}
	h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")),
		func(c *hotplug.Config) { c.Observer = obs })
	st := h.reconcile()
	if !slices.Equal(st.Failed, []string{"eth0"}) {
		t.Fatalf("status %+v, want eth0 failed", st)
	}
	h.wantLogged(logrus.ErrorLevel, "the sandbox panicked", logrus.Fields{"op": opAdd})
	obs.mu.Lock()
	if !slices.Equal(obs.panics, []string{"sandbox call"}) || !errors.Is(obs.errs[len(obs.errs)-1], hotplug.ErrSandboxPanicked) {
		t.Errorf("observed panics %v, errors %v", obs.panics, obs.errs)
	}
	obs.mu.Unlock()
	h.clock.Advance(time.Second)
	if st := h.reconcile(); len(st.NICs) != 1 {
		t.Fatalf("retry: status %+v", st)
	}
}

// Kata 4.1 as shipped undoes an AddInterface whose agent call failed by
// hot-detaching the endpoint, which sets the link (looked up by name) down;
// its next attach would not set it up again. With DetachByName the
// reconciler sets it up again; without the hazard it leaves links alone.
func TestFailedAttachLinkUpAgain(t *testing.T) {
	for _, byName := range []bool{true, false} {
		t.Run(fmt.Sprintf("DetachByName=%v", byName), func(t *testing.T) {
			src := hotplugtest.NewFakeSource(hotplugtest.Loopback(), hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
			sb := &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, DetachByName: byName}}
			fail := true
			sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
				if fail {
					fail = false
					// Kata's rollback: removeTCFiltering sets the veth down.
					src.Update(func(s *view.Snapshot) { s.Links[7].RawFlags = 0 })
					return nil, errors.New("update interface: interface not available")
				}
				return sb.GuestAddInterface(inf)
			}
			h := newHarness(t, sb, src)
			h.reconcile()
			if !byName {
				if src.Ups() != 0 || src.Snapshot().Links[7].Up() {
					t.Fatalf("the link was set up (%d) without the hazard", src.Ups())
				}
				return
			}
			if src.Ups() != 1 {
				t.Fatalf("SetLinkUp called %d times, want 1", src.Ups())
			}
			h.wantLogged(logrus.WarnLevel, "set it up again", logrus.Fields{"ifname": "eth0"})
			h.clock.Advance(time.Second)
			if st := h.reconcile(); len(st.NICs) != 1 {
				t.Fatalf("retry: status %+v, want eth0 attached", st)
			}
		})
	}
}

// An AddInterface abandoned by the caller's context returns at that very
// moment with a result: the reconciler must not read what the abandoned
// call writes (the race detector checks).
func TestAbandonedAttachResultNotRead(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		<-ctx.Done()
		return inf.Clone(), ctx.Err()
	}
	h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")))
	h.realClock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	go func() {
		defer close(started)
		waitCalls(t, sb, opAdd, 1)
		cancel()
	}()
	st, _ := h.r.Reconcile(ctx)
	<-started
	if len(st.NICs) != 0 {
		t.Fatalf("status %+v: an abandoned attach counted as attached", st)
	}
	if hung := hotplug.HungCall(h.r); hung != nil {
		<-hung
	}
}

// The guest NIC got its addresses at plug time, and Kata has no call to
// change them (AddInterface again would attach a second NIC): a ready
// endpoint whose addresses change is plugged again with the new ones. With
// DetachByName the unplug would switch the link itself off, so it is not
// done (and said).
func TestAddressChangeReplugs(t *testing.T) {
	for _, byName := range []bool{false, true} {
		t.Run(fmt.Sprintf("DetachByName=%v", byName), func(t *testing.T) {
			sb := &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, DetachByName: byName}}
			h, src := twoEndpoints(t, sb)
			src.Update(func(s *view.Snapshot) { s.Links[8].Addrs = append(s.Links[8].Addrs, hotplugtest.Addr("10.1.0.9/24")) })
			st := h.reconcile()
			if byName {
				if n := len(sb.CallsOf(opRemove)); n != 0 {
					t.Fatalf("RemoveInterface called %d times with DetachByName", n)
				}
				h.wantLogged(logrus.WarnLevel, "not detaching yet", logrus.Fields{"ifname": "eth1"})
				return
			}
			if got := macsOf(sb, opRemove); !slices.Equal(got, []string{macB}) {
				t.Fatalf("RemoveInterface MACs %v, want [%s]", got, macB)
			}
			adds := sb.CallsOf(opAdd)
			last := adds[len(adds)-1].Interface
			var got []string
			for _, a := range last.IPAddresses {
				got = append(got, a.Address+"/"+a.Mask)
			}
			if last.HwAddr != macB || !slices.Equal(got, []string{"10.1.0.2/24", "10.1.0.9/24"}) {
				t.Fatalf("re-plug %+v with %v, want eth1 with both addresses", last, got)
			}
			if len(st.NICs) != 2 || !st.Settled() {
				t.Fatalf("status %+v", st)
			}
			h.wantLogged(logrus.InfoLevel, "detached endpoint", logrus.Fields{"ifname": "eth1"})
			// Nothing more while nothing changes.
			if got := h.opsDuring(func() { h.reconcile() }); len(got) != 0 {
				t.Errorf("calls %v after the re-plug", got)
			}
		})
	}
}

// A route set the guest keeps refusing is pushed maxRouteAttempts (5) times,
// then not again until the set changes: no retry forever.
func TestRoutesGiveUpUntilChanged(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	sb.UpdateRoutesFn = func(ctx context.Context, rs []*hotplug.Route) ([]*hotplug.Route, error) {
		return nil, errors.New("Failed to add IP v4 route: ENETUNREACH")
	}
	src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
	src.Update(func(s *view.Snapshot) { s.Routes = []view.Route{hotplugtest.DefaultRoute("172.18.0.1", 7)} })
	h := newHarness(t, sb, src)
	var st hotplug.Status
	for range 10 {
		st = h.reconcile()
		h.clock.Advance(time.Minute)
	}
	if n := len(sb.CallsOf(opRoutes)); n != 5 {
		t.Fatalf("UpdateRoutes called %d times, want 5", n)
	}
	if st.RoutesFailed || !st.NextRetry.IsZero() || !st.Settled() {
		t.Errorf("status %+v: want given up (settled, nothing scheduled)", st)
	}
	h.wantLogged(logrus.ErrorLevel, "not retried until the routes change", logrus.Fields{"attempt": 5})
	// A new route: the set changed, pushed again.
	src.Update(func(s *view.Snapshot) {
		s.Routes = append(s.Routes, hotplugtest.StaticRoute("10.9.0.0/16", "172.18.0.254", 7))
	})
	h.reconcile()
	if n := len(sb.CallsOf(opRoutes)); n != 6 {
		t.Errorf("UpdateRoutes called %d times after the change, want 6", n)
	}
}

// Routes the agent would install with another meaning are left out, each
// warned once, and the rest is pushed.
func TestRoutesLeftOutLoudly(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
	via := hotplugtest.StaticRoute("10.8.0.0/16", "", 7)
	via.Via = netip.MustParseAddr("fe80::1")
	multi := hotplugtest.StaticRoute("10.9.0.0/16", "172.18.0.9", 7)
	multi.Hops = 2
	src.Update(func(s *view.Snapshot) { s.Routes = []view.Route{hotplugtest.DefaultRoute("172.18.0.1", 7), via, multi} })
	h := newHarness(t, sb, src)
	h.reconcile()
	h.reconcile()
	routes := sb.CallsOf(opRoutes)
	if len(routes) != 1 || len(routes[0].Routes) != 1 || routes[0].Routes[0].Gateway != "172.18.0.1" {
		t.Fatalf("UpdateRoutes calls %+v, want one with the default route only", routes)
	}
	if n := h.count(logrus.WarnLevel, "route left out of the guest"); n != 2 {
		t.Errorf("%d warnings about left-out routes, want 2 (once each)", n)
	}
	h.wantLogged(logrus.WarnLevel, "route left out", logrus.Fields{"dst": "10.8.0.0/16"})
	h.wantLogged(logrus.WarnLevel, "route left out", logrus.Fields{"dst": "10.9.0.0/16"})
}
