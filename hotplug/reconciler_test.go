package hotplug_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/matcher"
)

func TestNew(t *testing.T) {
	caps := func(plug, unplug bool) *hotplug.Capabilities {
		return &hotplug.Capabilities{HotplugNIC: plug, HotUnplugNIC: unplug}
	}
	tests := []struct {
		name     string
		sandbox  bool
		source   bool
		caps     *hotplug.Capabilities
		wantErr  error // nil with wantFail: any error
		wantFail bool
		wantWarn bool
	}{
		{name: "QEMU: plug and unplug", sandbox: true, source: true, caps: caps(true, true)},
		{name: "Cloud Hypervisor: plug only", sandbox: true, source: true, caps: caps(true, false), wantWarn: true},
		{name: "Firecracker: no hotplug", sandbox: true, source: true, caps: caps(false, false), wantErr: hotplug.ErrNoHotplug, wantFail: true},
		{name: "unplug without plug is no hotplug", sandbox: true, source: true, caps: caps(false, true), wantErr: hotplug.ErrNoHotplug, wantFail: true},
		{name: "no sandbox", source: true, wantFail: true},
		{name: "no source", sandbox: true, caps: caps(true, true), wantFail: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logger, hook := newNullLogger()
			sb := &hotplugtest.FakeSandbox{Caps: tc.caps}
			cfg := hotplug.Config{Log: logger}
			if tc.sandbox {
				cfg.Sandbox = sb
			}
			if tc.source {
				cfg.Source = hotplugtest.NewFakeSource(hotplugtest.Loopback())
			}
			r, err := hotplug.New(cfg)
			switch {
			case tc.wantFail && err == nil:
				t.Fatalf("New succeeded, want an error")
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("New: %v, want %v", err, tc.wantErr)
			case !tc.wantFail && (err != nil || r == nil):
				t.Fatalf("New: %v", err)
			}
			warned := false
			for _, e := range hook.AllEntries() {
				warned = warned || (e.Level == logrus.WarnLevel && strings.Contains(e.Message, "hot-unplug"))
			}
			if warned != tc.wantWarn {
				t.Errorf("warned about hot-unplug: %v, want %v", warned, tc.wantWarn)
			}
			if calls := sb.Calls(); len(calls) != 0 {
				t.Errorf("New made sandbox calls: %v", sb.Ops())
			}
		})
	}
}

// recObserver records what the reconciler reports for metrics.
type recObserver struct {
	mu       sync.Mutex
	ops      []string
	errs     []error
	attached []int
	panics   []string
}

func (o *recObserver) SandboxCall(op string, _ time.Duration, err error) {
	o.mu.Lock()
	o.ops = append(o.ops, op)
	o.errs = append(o.errs, err)
	o.mu.Unlock()
}

func (o *recObserver) Panicked(where string) {
	o.mu.Lock()
	o.panics = append(o.panics, where)
	o.mu.Unlock()
}

func (o *recObserver) GuestNICs(n int) {
	o.mu.Lock()
	o.attached = append(o.attached, n)
	o.mu.Unlock()
}

func TestReadyEndpointAttachedOnce(t *testing.T) {
	eth0 := hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16", "fd00::2/64", "fe80::42:acff:fe12:2/64")
	sb := &hotplugtest.FakeSandbox{}
	obs := &recObserver{}
	h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Loopback(), eth0),
		func(c *hotplug.Config) { c.Observer = obs })

	for i := range 10 {
		st := h.reconcile()
		want := []matcher.GuestNIC{{Index: 7, Name: "eth0", MAC: macA, Addrs: prefixes("172.18.0.2/16", "fd00::2/64")}}
		if !reflect.DeepEqual(st.NICs, want) || !st.Settled() || !st.NextRetry.IsZero() {
			t.Fatalf("pass %d: status %+v, want attached %v, settled, no retry", i, st, want)
		}
	}
	if got, want := sb.Ops(), ops(opList, opAdd); !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	got := sb.CallsOf(opAdd)[0].Interface
	want := &hotplug.Interface{
		Device: "eth0", Name: "eth0", Mtu: 1500, HwAddr: macA, Type: "veth", RawFlags: hotplugtest.UpRunning,
		IPAddresses: []*hotplug.IPAddress{
			{Family: hotplug.FamilyV4, Address: "172.18.0.2", Mask: "16"},
			{Family: hotplug.FamilyV6, Address: "fd00::2", Mask: "64"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("AddInterface(%s), want %s", fmtInterface(got), fmtInterface(want))
	}
	if got := h.r.NICs(); len(got) != 1 || got[0].MAC != macA {
		t.Errorf("NICs() = %v", got)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if !slices.Equal(obs.ops, ops(opList, opAdd)) || !slices.Equal(obs.attached, []int{1}) {
		t.Errorf("observer saw calls %v and attached counts %v", obs.ops, obs.attached)
	}
}

func TestNotReadyNeverAttached(t *testing.T) {
	tests := []struct {
		name        string
		mutate      func(l *view.Link)
		wantPending bool // else ignored
	}{
		{name: "down", mutate: func(l *view.Link) { hotplugtest.SetDown(l) }, wantPending: true},
		{name: "up, not running yet", mutate: func(l *view.Link) { l.RawFlags = view.FlagUp }, wantPending: true},
		{name: "no address yet", mutate: func(l *view.Link) { l.Addrs = nil }, wantPending: true},
		{name: "only link-local addresses", mutate: func(l *view.Link) {
			l.Addrs = []view.Addr{hotplugtest.Addr("fe80::1/64"), hotplugtest.Addr("169.254.1.1/16")}
		}, wantPending: true},
		{name: "peer not tied yet (just moved in)", mutate: func(l *view.Link) {
			l.Name, l.ParentIndex, l.LinkNetNSID, l.Peer = "veth1a2b3c4", 0, -1, nil
		}, wantPending: true},
		{name: "peer state untied", mutate: func(l *view.Link) { l.Peer.State = view.PeerUntied }, wantPending: true},
		{name: "peer on no bridge", mutate: func(l *view.Link) { l.Peer.MasterIndex = 0 }},
		{name: "peer in a foreign netns", mutate: func(l *view.Link) { l.Peer.State = view.PeerForeignNetNS }},
		{name: "Kata's own tap", mutate: func(l *view.Link) { l.Name, l.Kind = "tap0_kata", "tuntap" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")
			tc.mutate(l)
			sb := &hotplugtest.FakeSandbox{}
			h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Loopback(), l))
			for range 3 {
				st := h.reconcile()
				var wantPending []string
				if tc.wantPending {
					wantPending = []string{l.Name}
				}
				if !slices.Equal(st.Pending, wantPending) || len(st.NICs) != 0 || len(st.Failed) != 0 {
					t.Fatalf("status %+v, want pending %v and nothing attached", st, wantPending)
				}
				if st.Settled() == tc.wantPending {
					t.Errorf("Settled() = %v with pending %v", st.Settled(), st.Pending)
				}
			}
			if calls := sb.Ops(); len(calls) != 0 {
				t.Errorf("sandbox calls %v, want none", calls)
			}
		})
	}
}

func TestAdoptsWhatTheSandboxHas(t *testing.T) {
	eth0 := hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback(), eth0)
	src.Update(func(s *view.Snapshot) { s.Routes = []view.Route{hotplugtest.DefaultRoute("172.18.0.1", 7)} })
	sb := &hotplugtest.FakeSandbox{}
	// Attached before the monitor started (Kata's own rescan), with the
	// agent's upper-case spelling.
	if _, err := sb.GuestAddInterface(&hotplug.Interface{Name: "eth0", HwAddr: strings.ToUpper(macA)}); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, sb, src)
	st := h.reconcile()
	if got, want := sb.Ops(), ops(opList, opRoutes); !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v (adopted, no AddInterface)", got, want)
	}
	if want := []matcher.GuestNIC{{Index: 7, Name: "eth0", MAC: macA, Addrs: prefixes("172.18.0.2/16")}}; !reflect.DeepEqual(st.NICs, want) || !st.Settled() {
		t.Errorf("status %+v, want attached %v", st, want)
	}
	if r := sb.CallsOf(opRoutes)[0].Routes; len(r) != 1 || r[0].Device != "eth0" || r[0].Dest != "" {
		t.Errorf("routes %+v", r)
	}
	h.wantLogged(logrus.InfoLevel, "adopted")
	if n := len(h.opsDuring(func() { h.reconcile() })); n != 0 {
		t.Errorf("a second pass made %d calls", n)
	}
}

// The view still says eth1 is ifindex 8, but the kernel has given the name
// to ifindex 9 already (disconnect + connect): Kata would plug the wrong link.
func TestStaleViewBeforeCall(t *testing.T) {
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback(), hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24"))
	src.LinkByNameFn = func(name string) (*view.Link, error) {
		return hotplugtest.KernelLink(9, macC), nil
	}
	sb := &hotplugtest.FakeSandbox{}
	h := newHarness(t, sb, src)
	st := h.reconcile()
	if n := len(sb.CallsOf(opAdd)); n != 0 {
		t.Fatalf("AddInterface called %d times on a stale view", n)
	}
	if !slices.Equal(st.Pending, []string{"eth1"}) || len(st.Failed) != 0 || !st.NextRetry.IsZero() {
		t.Fatalf("status %+v, want eth1 pending, no retry", st)
	}

	// The view catches up: 8 was moved out, 9 is eth1.
	src.LinkByNameFn = nil
	src.Update(func(s *view.Snapshot) {
		delete(s.Links, 8)
		s.Links[9] = hotplugtest.Endpoint(9, "eth1", macC, "10.2.0.2/24")
	})
	st = h.reconcile()
	if got := macsOf(sb, opAdd); !slices.Equal(got, []string{macC}) {
		t.Fatalf("AddInterface MACs %v, want [%s]", got, macC)
	}
	if want := []matcher.GuestNIC{{Index: 9, Name: "eth1", MAC: macC, Addrs: prefixes("10.2.0.2/24")}}; !reflect.DeepEqual(st.NICs, want) || !st.Settled() {
		t.Errorf("status %+v, want %v attached", st, want)
	}
}

// The name moves to another link while AddInterface runs: Kata may have
// plugged that one, so the reconciler unplugs the MAC Kata reports.
func TestNameChangesDuringCall(t *testing.T) {
	tests := []struct {
		name        string
		kataReturns string // MAC in Kata's reply; "" for a nil reply
		wantRemove  string
	}{
		{name: "Kata plugged the link that took the name", kataReturns: strings.ToUpper(macC), wantRemove: macC},
		{name: "Kata returned no interface", kataReturns: "", wantRemove: macB},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24"))
			var moved atomic.Bool
			src.LinkByNameFn = func(name string) (*view.Link, error) {
				if moved.Load() {
					return hotplugtest.KernelLink(9, macC), nil
				}
				return hotplugtest.KernelLink(8, macB), nil
			}
			sb := &hotplugtest.FakeSandbox{}
			var adds atomic.Int32
			sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
				if adds.Add(1) > 1 {
					return sb.GuestAddInterface(inf)
				}
				moved.Store(true) // the rename lands while Kata works
				plugged := &hotplug.Interface{Name: inf.Name, HwAddr: macB}
				if tc.kataReturns != "" {
					plugged.HwAddr = tc.kataReturns
				}
				if _, err := sb.GuestAddInterface(plugged); err != nil {
					return nil, err
				}
				if tc.kataReturns == "" {
					return nil, nil
				}
				return plugged, nil
			}
			h := newHarness(t, sb, src)
			st := h.reconcile()
			if got, want := sb.Ops(), ops(opList, opAdd, opRemove); !slices.Equal(got, want) {
				t.Fatalf("calls %v, want %v", got, want)
			}
			if got := macsOf(sb, opRemove); !slices.Equal(got, []string{tc.wantRemove}) {
				t.Errorf("RemoveInterface MACs %v, want [%s]", got, tc.wantRemove)
			}
			if got := sb.GuestMACs(); len(got) != 0 {
				t.Errorf("guest keeps %v", got)
			}
			if len(st.NICs) != 0 || !slices.Equal(st.Failed, []string{"eth1"}) || !st.NextRetry.Equal(h.clock.Now().Add(time.Millisecond)) {
				t.Fatalf("status %+v, want eth1 failed, retry in 1ms", st)
			}
			h.wantLogged(logrus.WarnLevel, "changed during AddInterface")

			// Not due yet: nothing.
			if got := h.opsDuring(func() { h.reconcile() }); len(got) != 0 {
				t.Fatalf("calls before the retry is due: %v", got)
			}
			// The name means eth1 (8) again; the retry attaches it.
			moved.Store(false)
			h.clock.Advance(time.Millisecond)
			// The undo took the NIC out again: nothing to look for first.
			if got, want := h.opsDuring(func() { st = h.reconcile() }), ops(opAdd); !slices.Equal(got, want) {
				t.Fatalf("retry calls %v, want %v", got, want)
			}
			if want := []matcher.GuestNIC{{Index: 8, Name: "eth1", MAC: macB, Addrs: prefixes("10.1.0.2/24")}}; !reflect.DeepEqual(st.NICs, want) || !st.Settled() {
				t.Errorf("status %+v, want %v", st, want)
			}
			if got := sb.GuestMACs(); !slices.Equal(got, []string{macB}) {
				t.Errorf("guest MACs %v", got)
			}
		})
	}
}

func TestAttachFailureBacksOff(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{
		AddInterfaceFn: func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) {
			return nil, errors.New("QMP device_add: Duplicate ID 'virtio-net-0'")
		},
	}
	h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")))
	for i, backoff := range []time.Duration{1, 2, 4, 8, 8, 8} {
		backoff *= time.Millisecond
		var st hotplug.Status
		// Every retry checks the sandbox first.
		if got, want := h.opsDuring(func() { st = h.reconcile() }), ops(opList, opAdd); !slices.Equal(got, want) {
			t.Fatalf("attempt %d: calls %v, want %v", i+1, got, want)
		}
		if !slices.Equal(st.Failed, []string{"eth0"}) || len(st.Pending) != 0 || st.Settled() {
			t.Fatalf("attempt %d: status %+v, want eth0 failed", i+1, st)
		}
		if want := h.clock.Now().Add(backoff); !st.NextRetry.Equal(want) {
			t.Fatalf("attempt %d: NextRetry in %v, want %v", i+1, st.NextRetry.Sub(h.clock.Now()), backoff)
		}
		// Not due, not even a nanosecond early.
		h.clock.Set(st.NextRetry.Add(-1))
		if got := h.opsDuring(func() { st = h.reconcile() }); len(got) != 0 {
			t.Fatalf("attempt %d: calls %v before the retry was due", i+1, got)
		}
		if !slices.Equal(st.Failed, []string{"eth0"}) {
			t.Fatalf("attempt %d: status %+v between retries", i+1, st)
		}
		h.clock.Set(st.NextRetry)
	}
	h.wantLogged(logrus.ErrorLevel, "attach failed", logrus.Fields{"ifname": "eth0", "ifindex": 7, "mac": macA, "attempt": 6})
}

// AddInterface fails after the NIC reached the guest: the retry finds it
// there and adopts it rather than plugging a second NIC.
func TestAttachHalfSuccessAdopted(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		if len(sb.CallsOf(opAdd)) > 1 {
			t.Error("AddInterface called again after a half success")
		}
		if _, err := sb.GuestAddInterface(inf); err != nil {
			return nil, err
		}
		return nil, errors.New("update interface in guest: timed out")
	}
	h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")))
	st := h.reconcile()
	if !slices.Equal(st.Failed, []string{"eth0"}) || st.NextRetry.IsZero() {
		t.Fatalf("status %+v, want eth0 failed", st)
	}
	h.clock.Set(st.NextRetry)
	if got, want := h.opsDuring(func() { st = h.reconcile() }), ops(opList); !slices.Equal(got, want) {
		t.Fatalf("retry calls %v, want %v", got, want)
	}
	if want := []matcher.GuestNIC{{Index: 7, Name: "eth0", MAC: macA, Addrs: prefixes("172.18.0.2/16")}}; !reflect.DeepEqual(st.NICs, want) || !st.Settled() || !st.NextRetry.IsZero() {
		t.Errorf("status %+v, want %v, settled", st, want)
	}
	if got := sb.GuestMACs(); !slices.Equal(got, []string{macA}) {
		t.Errorf("guest MACs %v, want one %s", got, macA)
	}
}

// A retry that is no longer actionable (the link went down after its
// attach failed; a detach failed and the link came back) must not keep a
// retry time: Run would wake every millisecond for nothing.
func TestNoRetryScheduledForIdleFailures(t *testing.T) {
	t.Run("attach failed, then the link went down", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{
			AddInterfaceFn: func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) {
				return nil, errors.New("boom")
			},
		}
		src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
		h := newHarness(t, sb, src)
		if st := h.reconcile(); st.NextRetry.IsZero() {
			t.Fatalf("status %+v, want a retry", st)
		}
		src.Update(func(s *view.Snapshot) { hotplugtest.SetDown(s.Links[7]) })
		h.clock.Advance(time.Hour)
		st := h.reconcile()
		if !st.NextRetry.IsZero() || !slices.Equal(st.Pending, []string{"eth0"}) {
			t.Errorf("status %+v: want eth0 pending and no retry time", st)
		}
	})
	t.Run("detach failed, then the link came back", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{}
		src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
		h := newHarness(t, sb, src)
		h.reconcile()
		sb.RemoveInterfaceFn = func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) {
			return nil, errors.New("boom")
		}
		src.Update(func(s *view.Snapshot) { hotplugtest.SetDown(s.Links[7]).Name = "veth1234567" })
		if st := h.reconcile(); st.NextRetry.IsZero() || len(st.NICs) != 1 {
			t.Fatalf("status %+v, want eth0 still attached and a retry", st)
		}
		src.Update(func(s *view.Snapshot) { hotplugtest.SetUp(s.Links[7]).Name = "eth0" })
		h.clock.Advance(time.Hour)
		st := h.reconcile()
		if !st.NextRetry.IsZero() || len(st.NICs) != 1 {
			t.Errorf("status %+v: want eth0 attached and no retry time", st)
		}
	})
}

// twoEndpoints: eth0 (gateway endpoint, default route) and eth1 (a second
// network with a static route), both attached and routed.
func twoEndpoints(t *testing.T, sb *hotplugtest.FakeSandbox, cfg ...func(*hotplug.Config)) (*harness, *hotplugtest.FakeSource) {
	t.Helper()
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback(),
		hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"),
		hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24"))
	src.Update(func(s *view.Snapshot) {
		s.Routes = []view.Route{
			hotplugtest.KernelRoute("172.18.0.0/16", 7),
			hotplugtest.KernelRoute("10.1.0.0/24", 8),
			hotplugtest.DefaultRoute("172.18.0.1", 7),
			hotplugtest.StaticRoute("10.2.0.0/16", "10.1.0.1", 8),
		}
	})
	h := newHarness(t, sb, src, cfg...)
	st := h.reconcile()
	if len(st.NICs) != 2 || len(sb.CallsOf(opRoutes)) != 1 {
		t.Fatalf("setup: status %+v, calls %v", st, sb.Ops())
	}
	return h, src
}

// dropRoutesVia removes the routes through dev, as the kernel does when the
// link goes down or leaves.
func dropRoutesVia(s *view.Snapshot, dev int) {
	s.Routes = slices.DeleteFunc(s.Routes, func(r view.Route) bool { return r.LinkIndex == dev })
}

func TestDetach(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(s *view.Snapshot)
		wantOps    []string
		wantRemove []string
		wantAdd    []string // AddInterface MACs after the setup's
		wantMACs   []string // attached afterwards
		wantRoutes []hotplug.Route
	}{
		{
			name:       "deleted or moved out",
			mutate:     func(s *view.Snapshot) { delete(s.Links, 8); dropRoutesVia(s, 8) },
			wantOps:    ops(opRemove, opList, opRoutes),
			wantRemove: []string{macB},
			wantMACs:   []string{macA},
			wantRoutes: []hotplug.Route{{Gateway: "172.18.0.1", Device: "eth0"}},
		},
		{
			name: "disconnect: down and renamed",
			mutate: func(s *view.Snapshot) {
				hotplugtest.SetDown(s.Links[8]).Name = "veth1a2b3c4"
				dropRoutesVia(s, 8)
			},
			wantOps:    ops(opRemove, opList, opRoutes),
			wantRemove: []string{macB},
			wantMACs:   []string{macA},
			wantRoutes: []hotplug.Route{{Gateway: "172.18.0.1", Device: "eth0"}},
		},
		{
			name:   "MAC changed: unplug the old NIC, plug the new",
			mutate: func(s *view.Snapshot) { s.Links[8].MAC = hotplugtest.MAC(macC) },
			// The list after the unplug checks it; the new MAC is plugged
			// without a list (nothing failed).
			wantOps:    ops(opRemove, opList, opAdd, opRoutes),
			wantRemove: []string{macB},
			wantAdd:    []string{macC},
			wantMACs:   []string{macA, macC},
			wantRoutes: []hotplug.Route{
				{Dest: "10.2.0.0/16", Gateway: "10.1.0.1", Device: "eth1"},
				{Gateway: "172.18.0.1", Device: "eth0"},
			},
		},
		{
			name:     "merely down",
			mutate:   func(s *view.Snapshot) { hotplugtest.SetDown(s.Links[8]) },
			wantMACs: []string{macA, macB},
		},
		{
			name:     "renamed while up",
			mutate:   func(s *view.Snapshot) { s.Links[8].Name = "eth9" },
			wantMACs: []string{macA, macB},
		},
		{
			name:     "peer facts unreadable (transient)",
			mutate:   func(s *view.Snapshot) { s.Links[8].Peer.State, s.Links[8].Peer.Err = view.PeerError, "EBUSY" },
			wantMACs: []string{macA, macB},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sb := &hotplugtest.FakeSandbox{}
			h, src := twoEndpoints(t, sb)
			addsBefore := len(sb.CallsOf(opAdd))
			src.Update(tc.mutate)
			var st hotplug.Status
			if got := h.opsDuring(func() { st = h.reconcile() }); !slices.Equal(got, tc.wantOps) {
				t.Fatalf("calls %v, want %v", got, tc.wantOps)
			}
			if got := macsOf(sb, opRemove); !slices.Equal(got, tc.wantRemove) {
				t.Errorf("RemoveInterface MACs %v, want %v", got, tc.wantRemove)
			}
			if got := macsOf(sb, opAdd)[addsBefore:]; !slices.Equal(got, tc.wantAdd) {
				t.Errorf("new AddInterface MACs %v, want %v", got, tc.wantAdd)
			}
			if got := attachedMACs(st.NICs); !slices.Equal(got, tc.wantMACs) {
				t.Errorf("attached %v, want %v", got, tc.wantMACs)
			}
			if got := sb.GuestMACs(); !slices.Equal(got, tc.wantMACs) {
				t.Errorf("guest MACs %v, want %v", got, tc.wantMACs)
			}
			if tc.wantRoutes != nil {
				calls := sb.CallsOf(opRoutes)
				if got := derefRoutes(calls[len(calls)-1].Routes); !reflect.DeepEqual(got, tc.wantRoutes) {
					t.Errorf("routes pushed after the detach %+v, want %+v", got, tc.wantRoutes)
				}
			}
			if len(tc.wantRemove) > 0 {
				h.wantLogged(logrus.InfoLevel, "detached endpoint")
			}
			if got := h.opsDuring(func() { h.reconcile() }); len(got) != 0 {
				t.Errorf("the next pass made calls %v", got)
			}
		})
	}
}

// Kata's RemoveInterface returns (nil, nil) even when it removed nothing
// (it forgot the endpoint): the reconciler checks the guest and says so.
func TestDetachUnverifiedWarns(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	h, src := twoEndpoints(t, sb)
	sb.RemoveInterfaceFn = func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) { return nil, nil }
	src.Update(func(s *view.Snapshot) { delete(s.Links, 8); dropRoutesVia(s, 8) })
	st := h.reconcile()
	h.wantLogged(logrus.WarnLevel, "still lists this MAC")
	if got := attachedMACs(st.NICs); !slices.Equal(got, []string{macA}) {
		t.Errorf("attached %v", got)
	}
}

func TestDetachFailureRetried(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	h, src := twoEndpoints(t, sb)
	var fails atomic.Int32
	fails.Store(2)
	sb.RemoveInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		if fails.Add(-1) >= 0 {
			return nil, errors.New("QMP device_del: timeout")
		}
		return sb.GuestRemoveInterface(inf)
	}
	src.Update(func(s *view.Snapshot) { delete(s.Links, 8); dropRoutesVia(s, 8) })
	for i, backoff := range []time.Duration{time.Millisecond, 2 * time.Millisecond} {
		st := h.reconcile()
		if got := attachedMACs(st.NICs); !slices.Equal(got, []string{macA, macB}) || !st.NextRetry.Equal(h.clock.Now().Add(backoff)) {
			t.Fatalf("attempt %d: status %+v, want eth1 still attached, retry in %v", i+1, st, backoff)
		}
		h.clock.Set(st.NextRetry)
	}
	h.wantLogged(logrus.ErrorLevel, "detach failed", logrus.Fields{"ifname": "eth1", "ifindex": 8, "mac": macB, "attempt": 2})
	st := h.reconcile()
	if got := attachedMACs(st.NICs); !slices.Equal(got, []string{macA}) || !st.NextRetry.IsZero() {
		t.Fatalf("status %+v, want eth1 detached", st)
	}
	if got := macsOf(sb, opRemove); !slices.Equal(got, []string{macB, macB, macB}) {
		t.Errorf("RemoveInterface MACs %v", got)
	}
}

// Cloud Hypervisor: no unplug. A disconnected endpoint's NIC stays in the
// guest; the monitor warns and carries on, and never plugs that MAC again.
func TestNoUnplugCapability(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{HotplugNIC: true}}
	h, src := twoEndpoints(t, sb)
	src.Update(func(s *view.Snapshot) {
		hotplugtest.SetDown(s.Links[8]).Name = "veth1a2b3c4"
		dropRoutesVia(s, 8)
	})
	st, err := h.r.Reconcile(context.Background())
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	h.wantLogged(logrus.WarnLevel, "cannot hot-unplug")
	if got := attachedMACs(st.NICs); !slices.Equal(got, []string{macA}) {
		t.Errorf("attached %v, want only eth0", got)
	}

	// The same link comes back: its MAC is still in the guest; plugging it
	// again would clash, adopting it would claim a NIC with a dead backend.
	src.Update(func(s *view.Snapshot) {
		hotplugtest.SetUp(s.Links[8]).Name = "eth1"
		s.Links[9] = hotplugtest.Endpoint(9, "eth2", macC, "10.3.0.2/24")
	})
	st = h.reconcile()
	st = h.reconcile()
	h.wantLogged(logrus.WarnLevel, "not attaching")
	if got := attachedMACs(st.NICs); !slices.Equal(got, []string{macA, macC}) {
		t.Errorf("attached %v, want eth0 and the new eth2", got)
	}
	if got := macsOf(sb, opAdd); !slices.Equal(got, []string{macA, macB, macC}) {
		t.Errorf("AddInterface MACs %v, want each once", got)
	}
	if n := len(sb.CallsOf(opRemove)); n != 0 {
		t.Errorf("%d RemoveInterface calls without the capability", n)
	}
	if len(st.Failed) != 0 || slices.Contains(st.Pending, "eth1") {
		t.Errorf("status %+v: the stranded endpoint is neither pending nor failed", st)
	}
}

func derefRoutes(rs []*hotplug.Route) []hotplug.Route {
	out := make([]hotplug.Route, 0, len(rs))
	for _, r := range rs {
		out = append(out, *r)
	}
	return out
}

func TestRoutes(t *testing.T) {
	eth0 := hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16", "fd00::2/64")
	eth1 := hotplugtest.SetDown(hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24")) // pending
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback(), eth0, eth1)
	src.Update(func(s *view.Snapshot) {
		s.Routes = []view.Route{
			hotplugtest.DefaultRoute("fd00::1", 7),
			hotplugtest.DefaultRoute("172.18.0.1", 7),
			hotplugtest.KernelRoute("172.18.0.0/16", 7),
			hotplugtest.StaticRoute("10.5.0.0/16", "172.18.0.254", 7),
			hotplugtest.StaticRoute("10.9.0.0/16", "10.1.0.1", 8), // through the pending eth1
		}
	})
	sb := &hotplugtest.FakeSandbox{}
	h := newHarness(t, sb, src)
	if got, want := h.opsDuring(func() { h.reconcile() }), ops(opList, opAdd, opRoutes); !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	want := []hotplug.Route{
		{Dest: "10.5.0.0/16", Gateway: "172.18.0.254", Device: "eth0", Family: hotplug.FamilyV4},
		{Dest: "", Gateway: "172.18.0.1", Device: "eth0", Family: hotplug.FamilyV4},
		{Dest: "", Gateway: "fd00::1", Device: "eth0", Family: hotplug.FamilyV6},
	}
	if got := derefRoutes(sb.CallsOf(opRoutes)[0].Routes); !reflect.DeepEqual(got, want) {
		t.Fatalf("routes %+v\nwant %+v", got, want)
	}

	t.Run("unchanged routes are not pushed again", func(t *testing.T) {
		src.Update(func(s *view.Snapshot) { s.Resyncs++ })
		if got := h.opsDuring(func() { h.reconcile() }); len(got) != 0 {
			t.Errorf("calls %v", got)
		}
	})
	t.Run("a new default gateway is pushed", func(t *testing.T) {
		src.Update(func(s *view.Snapshot) { s.Routes[1] = hotplugtest.DefaultRoute("172.18.0.3", 7) })
		if got := h.opsDuring(func() { h.reconcile() }); !slices.Equal(got, ops(opRoutes)) {
			t.Fatalf("calls %v", got)
		}
		calls := sb.CallsOf(opRoutes)
		if got := calls[len(calls)-1].Routes[1]; got.Dest != "" || got.Gateway != "172.18.0.3" {
			t.Errorf("default route %+v", *got)
		}
		if got := sb.GuestRoutes(); len(got) != 3 {
			t.Errorf("guest routes %+v, want the default replaced", derefRoutes(got))
		}
	})
	t.Run("devices keep their attach names", func(t *testing.T) {
		src.Update(func(s *view.Snapshot) {
			s.Links[7].Name = "eth5" // renamed while up: not gone
			s.Routes[1] = hotplugtest.DefaultRoute("172.18.0.4", 7)
		})
		h.reconcile()
		calls := sb.CallsOf(opRoutes)
		for _, r := range calls[len(calls)-1].Routes {
			if r.Device != "eth0" {
				t.Errorf("route %+v names %q, the guest knows eth0", *r, r.Device)
			}
		}
	})
	for _, c := range sb.CallsOf(opRoutes) {
		for _, r := range c.Routes {
			if r.Device != "eth0" {
				t.Errorf("route through a device not attached: %+v", *r)
			}
		}
	}
}

func TestRoutesFailureRetried(t *testing.T) {
	var fails atomic.Int32
	fails.Store(2)
	sb := &hotplugtest.FakeSandbox{}
	sb.UpdateRoutesFn = func(ctx context.Context, rs []*hotplug.Route) ([]*hotplug.Route, error) {
		if fails.Add(-1) >= 0 {
			return nil, errors.New("update routes: EEXIST")
		}
		return sb.GuestUpdateRoutes(rs)
	}
	src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
	src.Update(func(s *view.Snapshot) { s.Routes = []view.Route{hotplugtest.DefaultRoute("172.18.0.1", 7)} })
	h := newHarness(t, sb, src)
	var st hotplug.Status
	if got := h.opsDuring(func() { st = h.reconcile() }); !slices.Equal(got, ops(opList, opAdd, opRoutes)) {
		t.Fatalf("calls %v", got)
	}
	for i, backoff := range []time.Duration{time.Millisecond, 2 * time.Millisecond} {
		if !st.NextRetry.Equal(h.clock.Now().Add(backoff)) {
			t.Fatalf("failure %d: NextRetry in %v, want %v", i+1, st.NextRetry.Sub(h.clock.Now()), backoff)
		}
		if got := h.opsDuring(func() { h.reconcile() }); len(got) != 0 {
			t.Fatalf("failure %d: calls %v before the retry is due", i+1, got)
		}
		h.clock.Set(st.NextRetry)
		if got := h.opsDuring(func() { st = h.reconcile() }); !slices.Equal(got, ops(opRoutes)) {
			t.Fatalf("retry %d: calls %v", i+1, got)
		}
	}
	h.wantLogged(logrus.ErrorLevel, "route update failed", logrus.Fields{"routes": 1, "attempt": 2})
	if !st.NextRetry.IsZero() || len(sb.GuestRoutes()) != 1 {
		t.Fatalf("status %+v, guest routes %v", st, sb.GuestRoutes())
	}
	if got := h.opsDuring(func() { h.reconcile() }); len(got) != 0 {
		t.Errorf("calls %v after success", got)
	}
}

func TestDeadSandbox(t *testing.T) {
	// The sandbox (Kata's adapter) marks Kata's errors for a gone agent.
	dead := func(msg string) func() error {
		return func() error { return fmt.Errorf("%w: %s", hotplug.ErrSandboxDead, msg) }
	}
	tests := []struct {
		name string
		arm  func(sb *hotplugtest.FakeSandbox, fail func() error)
		msg  string
	}{
		{"AddInterface: Dead agent", func(sb *hotplugtest.FakeSandbox, fail func() error) {
			sb.AddInterfaceFn = func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) { return nil, fail() }
		}, "rpc error: code = Unavailable desc = Dead agent"},
		{"ListInterfaces: ttrpc closed", func(sb *hotplugtest.FakeSandbox, fail func() error) {
			sb.ListInterfacesFn = func(context.Context) ([]*hotplug.Interface, error) { return nil, fail() }
		}, "ttrpc: closed"},
		{"UpdateRoutes: Dead agent", func(sb *hotplugtest.FakeSandbox, fail func() error) {
			sb.UpdateRoutesFn = func(context.Context, []*hotplug.Route) ([]*hotplug.Route, error) { return nil, fail() }
		}, "Dead agent"},
		{"RemoveInterface: ttrpc closed", func(sb *hotplugtest.FakeSandbox, fail func() error) {
			sb.RemoveInterfaceFn = func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) { return nil, fail() }
		}, "ttrpc: closed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sb := &hotplugtest.FakeSandbox{}
			src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
			h := newHarness(t, sb, src)
			if strings.HasPrefix(tc.name, "RemoveInterface") {
				h.reconcile()
				src.Update(func(s *view.Snapshot) { delete(s.Links, 7) })
			}
			if strings.HasPrefix(tc.name, "UpdateRoutes") {
				src.Update(func(s *view.Snapshot) { s.Routes = []view.Route{hotplugtest.DefaultRoute("172.18.0.1", 7)} })
			}
			tc.arm(sb, dead(tc.msg))
			_, err := h.r.Reconcile(context.Background())
			if !errors.Is(err, hotplug.ErrSandboxDead) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Reconcile: %v, want ErrSandboxDead with %q", err, tc.msg)
			}
			h.clock.Advance(time.Hour)
			if got := h.opsDuring(func() {
				if _, err := h.r.Reconcile(context.Background()); !errors.Is(err, hotplug.ErrSandboxDead) {
					t.Errorf("second Reconcile: %v", err)
				}
			}); len(got) != 0 {
				t.Errorf("calls on a dead sandbox: %v", got)
			}
		})
	}
	t.Run("Run returns it", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{
			AddInterfaceFn: func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) {
				return nil, fmt.Errorf("%w: Dead agent", hotplug.ErrSandboxDead)
			},
		}
		h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")))
		h.realClock()
		if err := recvErr(t, h.run(context.Background())); !errors.Is(err, hotplug.ErrSandboxDead) {
			t.Errorf("Run: %v, want ErrSandboxDead", err)
		}
	})
}

// blockingAdd makes AddInterface of name block until release is closed, then
// plug the NIC: a QMP call that hangs and completes much later.
func blockingAdd(sb *hotplugtest.FakeSandbox, name string, release <-chan struct{}) {
	sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		if inf.Name == name {
			<-release
		}
		return sb.GuestAddInterface(inf)
	}
}

// releaseHung closes release and waits until the abandoned call has
// returned, so no goroutine outlives the test.
func releaseHung(t *testing.T, r *hotplug.Reconciler, release chan struct{}) {
	t.Helper()
	close(release)
	if hung := hotplug.HungCall(r); hung != nil {
		select {
		case <-hung:
		case <-time.After(waitLong):
			t.Fatal("the abandoned call did not return after its release")
		}
	}
}

func TestHungCall(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	release := make(chan struct{})
	blockingAdd(sb, "eth1", release)
	h, src := func() (*harness, *hotplugtest.FakeSource) {
		src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
		src.Update(func(s *view.Snapshot) { s.Routes = []view.Route{hotplugtest.DefaultRoute("172.18.0.1", 7)} })
		return newHarness(t, sb, src, func(c *hotplug.Config) { c.CallTimeout = 50 * time.Millisecond }), src
	}()
	h.reconcile() // eth0 attached, routes pushed

	src.Update(func(s *view.Snapshot) {
		s.Links[8] = hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24")
		s.Routes = append(s.Routes, hotplugtest.StaticRoute("10.2.0.0/16", "10.1.0.1", 8))
	})
	start := time.Now()
	st := h.reconcile()
	if d := time.Since(start); d > waitLong {
		t.Fatalf("Reconcile took %v with a hung call", d)
	}
	h.wantLogged(logrus.ErrorLevel, "abandoned")
	if hotplug.HungCall(h.r) == nil || !slices.Equal(st.Failed, []string{"eth1"}) {
		t.Fatalf("status %+v, want eth1 failed and a hung call", st)
	}

	// While it hangs: nothing at all reaches the sandbox, whatever changes
	// and however late it is.
	src.Update(func(s *view.Snapshot) { s.Routes[0] = hotplugtest.DefaultRoute("172.18.0.3", 7) })
	h.clock.Advance(time.Hour)
	for range 3 {
		if got := h.opsDuring(func() { st = h.reconcile() }); len(got) != 0 {
			t.Fatalf("calls while a call hangs: %v", got)
		}
	}
	if len(st.NICs) != 1 || slices.ContainsFunc(st.NICs, func(n matcher.GuestNIC) bool { return n.Index == 8 && n.MAC == macB }) {
		t.Errorf("status %+v while hung", st)
	}

	// It returns (the NIC was plugged after all): calls resume, the
	// reconciler finds the NIC and adopts it, then pushes the routes.
	releaseHung(t, h.r, release)
	if got, want := h.opsDuring(func() { st = h.reconcile() }), ops(opList, opRoutes); !slices.Equal(got, want) {
		t.Fatalf("calls after the release %v, want %v", got, want)
	}
	h.wantLogged(logrus.InfoLevel, "calls resume")
	if got := attachedMACs(st.NICs); !slices.Equal(got, []string{macA, macB}) || !st.Settled() {
		t.Errorf("status %+v", st)
	}
	if got := macsOf(sb, opAdd); !slices.Equal(got, []string{macA, macB}) {
		t.Errorf("AddInterface MACs %v, want each once", got)
	}
	calls := sb.CallsOf(opRoutes)
	if got := derefRoutes(calls[len(calls)-1].Routes); len(got) != 2 || got[1].Gateway != "172.18.0.3" {
		t.Errorf("routes after the release %+v", got)
	}
	if n := sb.MaxInFlight(); n != 1 {
		t.Errorf("%d sandbox calls ran at once", n)
	}
}

// An abandoned ListInterfaces that returns later must not race with the
// reconciler (run with -race).
func TestAbandonedListReturnsLate(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	var returned sync.WaitGroup
	returned.Add(1)
	sb.ListInterfacesFn = func(ctx context.Context) ([]*hotplug.Interface, error) {
		defer returned.Done()
		<-ctx.Done()
		time.Sleep(10 * time.Millisecond) // returns well after it was abandoned
		return sb.GuestInterfaces(), nil
	}
	h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")),
		func(c *hotplug.Config) { c.CallTimeout = 5 * time.Millisecond })
	st := h.reconcile()
	returned.Wait()
	if len(st.NICs) != 0 || len(sb.CallsOf(opAdd)) != 0 {
		t.Errorf("status %+v, calls %v", st, sb.Ops())
	}
	<-hotplug.HungCall(h.r)
}

func TestRunCancelledWhileCallHangs(t *testing.T) {
	h, sb, obs, release := hungAdd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := h.run(ctx)
	waitCalls(t, sb, opAdd, 1)
	cancel()
	start := time.Now()
	if err := recvErr(t, errc); err != nil {
		t.Errorf("Run: %v, want nil after cancel", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run took %v to return after cancel", d)
	}
	// Abandoned by the cancel, a minute before CallTimeout: logged and
	// counted as such, not as a call that outlived CallTimeout.
	wantAbandonedBy(t, h, obs, "still running when the monitor stopped", context.Canceled)
	releaseHung(t, h.r, release)
}

// A call still running when the caller's own deadline passes (Start's
// first reconcile, bounded by ReadyTimeout) is abandoned then, and the log
// and the outcome name that deadline, not CallTimeout.
func TestCallerDeadlineWhileCallHangs(t *testing.T) {
	h, _, obs, release := hungAdd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	st, _ := h.r.Reconcile(ctx)
	if hotplug.HungCall(h.r) == nil || !slices.Equal(st.Failed, []string{"eth0"}) {
		t.Fatalf("status %+v, want eth0 failed and a hung call", st)
	}
	wantAbandonedBy(t, h, obs, "still running when its caller's deadline passed", context.DeadlineExceeded)
	releaseHung(t, h.r, release)
}

// hungAdd: a reconciler (real clock, CallTimeout a minute) whose
// AddInterface of eth0 blocks until release is closed.
func hungAdd(t *testing.T) (*harness, *hotplugtest.FakeSandbox, *recObserver, chan struct{}) {
	sb := &hotplugtest.FakeSandbox{}
	release := make(chan struct{})
	blockingAdd(sb, "eth0", release)
	obs := &recObserver{}
	h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")),
		func(c *hotplug.Config) { c.CallTimeout, c.Observer = time.Minute, obs })
	h.realClock()
	return h, sb, obs, release
}

// wantAbandonedBy: the abandoned AddInterface was logged with msg (a
// warning, never the CallTimeout error) and observed with want.
func wantAbandonedBy(t *testing.T, h *harness, obs *recObserver, msg string, want error) {
	t.Helper()
	h.wantLogged(logrus.WarnLevel, msg, logrus.Fields{"op": opAdd})
	if h.logged(logrus.ErrorLevel, "did not return in time") {
		t.Error("the log blames CallTimeout, a minute away")
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if i := slices.Index(obs.ops, opAdd); i < 0 || !errors.Is(obs.errs[i], want) {
		t.Errorf("observed calls %v with errors %v, want AddInterface with %v", obs.ops, obs.errs, want)
	}
}

// While a call hangs, nothing can be done: Run must sleep until it returns,
// not wake on the (past) retry time every millisecond.
func TestRunDoesNotSpinWhileCallHangs(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	release := make(chan struct{})
	blockingAdd(sb, "eth0", release)
	src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"))
	h := newHarness(t, sb, src, func(c *hotplug.Config) {
		c.CallTimeout, c.MinBackoff, c.MaxBackoff = 5*time.Millisecond, time.Millisecond, 2*time.Millisecond
	})
	h.realClock()
	ctx, cancel := context.WithCancel(context.Background())
	errc := h.run(ctx)
	waitCalls(t, sb, opAdd, 1)
	waitFor(t, "the call to be abandoned", func() bool { return h.logged(logrus.ErrorLevel, "abandoned") })
	// Measuring an absence needs a window: count passes over 200 ms.
	time.Sleep(10 * time.Millisecond)
	before := src.Reads()
	time.Sleep(200 * time.Millisecond)
	if n := src.Reads() - before; n > 10 {
		t.Errorf("%d reconcile passes in 200ms while a call hangs", n)
	}
	close(release) // Run wakes on the call's return and adopts the NIC
	waitFor(t, "eth0 adopted", func() bool { return len(h.r.NICs()) == 1 })
	cancel()
	if err := recvErr(t, errc); err != nil {
		t.Errorf("Run: %v", err)
	}
	if got := macsOf(sb, opAdd); !slices.Equal(got, []string{macA}) {
		t.Errorf("AddInterface MACs %v", got)
	}
}

func TestSync(t *testing.T) {
	t.Run("no candidates: at once", func(t *testing.T) {
		bridge := &view.Link{Index: 3, Name: "br0", Kind: "bridge", MAC: hotplugtest.MAC(macD), RawFlags: hotplugtest.UpRunning}
		sb := &hotplugtest.FakeSandbox{}
		h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Loopback(), bridge))
		h.realClock()
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		start := time.Now()
		st, err := h.r.Sync(ctx)
		if err != nil || !st.Settled() || len(st.NICs) != 0 {
			t.Fatalf("Sync: %+v, %v", st, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Sync took %v with nothing to do", d)
		}
		if calls := sb.Ops(); len(calls) != 0 {
			t.Errorf("calls %v", calls)
		}
	})
	t.Run("pending endpoint becomes ready", func(t *testing.T) {
		src := hotplugtest.NewFakeSource(hotplugtest.Loopback(),
			hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"),
			hotplugtest.SetDown(hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24")))
		sb := &hotplugtest.FakeSandbox{}
		h := newHarness(t, sb, src)
		h.realClock()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			// After Sync has seen eth1 pending (eth0 attached), bring it up.
			if _, err := sb.WaitCalls(opAdd, 1, waitLong); err != nil {
				t.Error(err)
			}
			src.Update(func(s *view.Snapshot) { hotplugtest.SetUp(s.Links[8]) })
		}()
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		st, err := h.r.Sync(ctx)
		wg.Wait()
		if err != nil || !st.Settled() {
			t.Fatalf("Sync: %+v, %v", st, err)
		}
		if got := attachedMACs(st.NICs); !slices.Equal(got, []string{macA, macB}) {
			t.Errorf("attached %v", got)
		}
	})
	t.Run("deadline with a pending endpoint", func(t *testing.T) {
		src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(8, "eth1", macB))
		h := newHarness(t, &hotplugtest.FakeSandbox{}, src)
		h.realClock()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		st, err := h.r.Sync(ctx)
		if !errors.Is(err, hotplug.ErrNotSettled) || !strings.Contains(err.Error(), "eth1") {
			t.Fatalf("Sync: %v, want ErrNotSettled naming eth1", err)
		}
		if !slices.Equal(st.Pending, []string{"eth1"}) {
			t.Errorf("status %+v", st)
		}
	})
	t.Run("deadline with a failing attach", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{
			AddInterfaceFn: func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) {
				return nil, errors.New("boom")
			},
		}
		h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24")))
		h.realClock()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		st, err := h.r.Sync(ctx)
		if !errors.Is(err, hotplug.ErrNotSettled) || !strings.Contains(err.Error(), "eth1") || !slices.Equal(st.Failed, []string{"eth1"}) {
			t.Fatalf("Sync: %+v, %v; want ErrNotSettled with eth1 failed", st, err)
		}
		if n := len(sb.CallsOf(opAdd)); n < 2 {
			t.Errorf("%d attempts in 100ms with a 1ms backoff: Sync did not retry", n)
		}
	})
}

func TestRun(t *testing.T) {
	t.Run("reacts to changes, ends on cancel", func(t *testing.T) {
		src := hotplugtest.NewFakeSource(hotplugtest.Loopback())
		sb := &hotplugtest.FakeSandbox{}
		h := newHarness(t, sb, src)
		h.realClock()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := h.run(ctx)
		src.Update(func(s *view.Snapshot) { s.Links[7] = hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16") })
		waitCalls(t, sb, opAdd, 1)
		src.Update(func(s *view.Snapshot) {
			s.Links[8] = hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24")
			s.Routes = []view.Route{hotplugtest.DefaultRoute("172.18.0.1", 7)}
		})
		waitCalls(t, sb, opAdd, 2)
		waitCalls(t, sb, opRoutes, 1)
		waitFor(t, "two attached", func() bool { return len(h.r.NICs()) == 2 })
		cancel()
		if err := recvErr(t, errc); err != nil {
			t.Errorf("Run: %v", err)
		}
		if got := macsOf(sb, opAdd); !slices.Equal(got, []string{macA, macB}) {
			t.Errorf("AddInterface MACs %v", got)
		}
	})
	t.Run("ends when the source ends", func(t *testing.T) {
		src := hotplugtest.NewFakeSource(hotplugtest.Loopback())
		h := newHarness(t, &hotplugtest.FakeSandbox{}, src)
		h.realClock()
		errc := h.run(context.Background())
		src.Close()
		if err := recvErr(t, errc); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Run("retries on its own when a retry is due", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{}
		var fails atomic.Int32
		fails.Store(1)
		sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
			if fails.Add(-1) >= 0 {
				return nil, errors.New("boom")
			}
			return sb.GuestAddInterface(inf)
		}
		h := newHarness(t, sb, hotplugtest.NewFakeSource(hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16")))
		h.realClock()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := h.run(ctx)
		waitCalls(t, sb, opAdd, 2)
		waitFor(t, "eth0 attached", func() bool { return len(h.r.NICs()) == 1 })
		cancel()
		if err := recvErr(t, errc); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// An attach that failed may still have plugged the NIC. If the link leaves
// before the retry (disconnect right after connect), nothing would ever
// adopt or unplug it: the reconciler checks the guest and unplugs it.
func TestFailedAttachLeftoverUnplugged(t *testing.T) {
	tests := []struct {
		name       string
		plugged    bool // the failed AddInterface plugged the NIC anyway
		unplug     bool
		wantOps    []string
		wantRemove []string
		wantGuest  []string
	}{
		{name: "half success, then the link left", plugged: true, unplug: true,
			wantOps: ops(opList, opRemove), wantRemove: []string{macB}},
		{name: "clean failure, then the link left", unplug: true, wantOps: ops(opList)},
		{name: "half success without hot-unplug", plugged: true,
			wantOps: nil, wantGuest: []string{macB}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sb := &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: tc.unplug}}
			sb.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
				if tc.plugged {
					if _, err := sb.GuestAddInterface(inf); err != nil {
						return nil, err
					}
				}
				return nil, errors.New("hotplug: timed out")
			}
			src := hotplugtest.NewFakeSource(hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24"))
			h := newHarness(t, sb, src)
			if st := h.reconcile(); !slices.Equal(st.Failed, []string{"eth1"}) {
				t.Fatalf("status %+v, want eth1 failed", st)
			}
			src.Update(func(s *view.Snapshot) { delete(s.Links, 8) })
			var st hotplug.Status
			if got := h.opsDuring(func() { st = h.reconcile() }); !slices.Equal(got, tc.wantOps) {
				t.Fatalf("calls %v, want %v", got, tc.wantOps)
			}
			if got := macsOf(sb, opRemove); !slices.Equal(got, tc.wantRemove) {
				t.Errorf("RemoveInterface MACs %v, want %v", got, tc.wantRemove)
			}
			if got := sb.GuestMACs(); !slices.Equal(got, tc.wantGuest) && len(got)+len(tc.wantGuest) > 0 {
				t.Errorf("guest MACs %v, want %v", got, tc.wantGuest)
			}
			if !tc.unplug {
				h.wantLogged(logrus.WarnLevel, "cannot hot-unplug it")
			}
			if !st.Settled() || !st.NextRetry.IsZero() {
				t.Errorf("status %+v", st)
			}
			h.clock.Advance(time.Hour)
			if got := h.opsDuring(func() { h.reconcile() }); len(got) != 0 {
				t.Errorf("the next pass made calls %v", got)
			}
		})
	}
}

// docker network disconnect + connect reuse the name: while the old eth1's
// detach keeps failing, the new eth1 is not attached (the guest would get two
// NICs named eth1); it is, once the old one is gone.
func TestNameReusedWhileDetachFails(t *testing.T) {
	sb := &hotplugtest.FakeSandbox{}
	h, src := twoEndpoints(t, sb)
	var unplugOK atomic.Bool
	sb.RemoveInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		if !unplugOK.Load() {
			return nil, errors.New("QMP device_del: timeout")
		}
		return sb.GuestRemoveInterface(inf)
	}
	src.Update(func(s *view.Snapshot) {
		delete(s.Links, 8)
		dropRoutesVia(s, 8)
		s.Links[9] = hotplugtest.Endpoint(9, "eth1", macC, "10.2.0.2/24")
	})
	st := h.reconcile()
	if got := macsOf(sb, opAdd); slices.Contains(got, macC) {
		t.Fatalf("new eth1 attached while the old eth1 is still in the guest: AddInterface MACs %v", got)
	}
	if !slices.Contains(st.Pending, "eth1") {
		t.Fatalf("status %+v: want the new eth1 pending", st)
	}
	unplugOK.Store(true)
	h.clock.Set(st.NextRetry)
	st = h.reconcile()
	if got := attachedMACs(st.NICs); !slices.Equal(got, []string{macA, macC}) {
		t.Fatalf("attached %v, want eth0 and the new eth1", got)
	}
	if got := sb.GuestMACs(); slices.Contains(got, macB) || !slices.Contains(got, macC) {
		t.Fatalf("guest MACs %v", got)
	}
}
