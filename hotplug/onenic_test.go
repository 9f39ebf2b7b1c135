package hotplug_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

const oneNICWhy = "this runtime announces the first NIC's PCI path: install the fixed one"

// rescanSandbox is a FakeSandbox that is also a hotplug.Rescanner: its rescan
// plugs every interface of links (as Kata's RescanNetwork attaches every
// configured link of the netns).
type rescanSandbox struct {
	*hotplugtest.FakeSandbox
	links  []*hotplug.Interface
	scans  int
	noScan bool // the rescan finds nothing (Kata already has an endpoint)
}

func (r *rescanSandbox) RescanNetwork(ctx context.Context) error {
	r.scans++
	if r.noScan {
		return nil
	}
	for _, inf := range r.links {
		if _, err := r.GuestAddInterface(inf); err != nil {
			return err
		}
	}
	return nil
}

func eth(name, mac string) *hotplug.Interface {
	return &hotplug.Interface{Name: name, Device: name, HwAddr: mac, Type: "veth"}
}

func TestOneNIC(t *testing.T) {
	ctx := context.Background()
	t.Run("first NIC goes through", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{}
		got, err := hotplug.OneNIC(sb, oneNICWhy).AddInterface(ctx, eth("eth0", macA))
		if err != nil || got == nil || got.HwAddr != macA || len(sb.CallsOf(opAdd)) != 1 {
			t.Fatalf("AddInterface: %+v, %v; calls %v", got, err, sb.Ops())
		}
	})
	t.Run("second NIC refused without calling", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{}
		o := hotplug.OneNIC(sb, oneNICWhy)
		if _, err := o.AddInterface(ctx, eth("eth0", macA)); err != nil {
			t.Fatal(err)
		}
		_, err := o.AddInterface(ctx, eth("eth1", macB))
		if !errors.Is(err, hotplug.ErrRefused) || !strings.Contains(err.Error(), oneNICWhy) || !strings.Contains(err.Error(), macA) {
			t.Fatalf("second AddInterface: %v; want ErrRefused naming eth0's MAC and why", err)
		}
		if n := len(sb.CallsOf(opAdd)); n != 1 {
			t.Errorf("the sandbox got %d AddInterface calls, want 1", n)
		}
		// eth0 is named once: as the guest's NIC, not also as an
		// earlier attach of ours.
		if n := strings.Count(err.Error(), macA); n != 1 {
			t.Errorf("the refusal names eth0's MAC %d times: %v", n, err)
		}
	})
	t.Run("a NIC the guest has is adopted", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{}
		if _, err := sb.GuestAddInterface(eth("eth0", macA)); err != nil {
			t.Fatal(err)
		}
		got, err := hotplug.OneNIC(sb, oneNICWhy).AddInterface(ctx, eth("eth0", macA))
		if err != nil || got.HwAddr != macA || len(sb.CallsOf(opAdd)) != 0 {
			t.Fatalf("AddInterface: %+v, %v; calls %v", got, err, sb.Ops())
		}
	})
	t.Run("after the NIC left, the next one goes through", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{}
		o := hotplug.OneNIC(sb, oneNICWhy)
		if _, err := o.AddInterface(ctx, eth("eth0", macA)); err != nil {
			t.Fatal(err)
		}
		if _, err := o.RemoveInterface(ctx, eth("eth0", macA)); err != nil {
			t.Fatal(err)
		}
		if _, err := o.AddInterface(ctx, eth("eth1", macB)); err != nil {
			t.Fatalf("AddInterface after the first NIC left: %v", err)
		}
	})
	t.Run("a failed attach still counts until it is unplugged", func(t *testing.T) {
		sb := &hotplugtest.FakeSandbox{AddInterfaceFn: func(context.Context, *hotplug.Interface) (*hotplug.Interface, error) {
			return nil, errInjected
		}}
		o := hotplug.OneNIC(sb, oneNICWhy)
		if _, err := o.AddInterface(ctx, eth("eth0", macA)); !errors.Is(err, errInjected) {
			t.Fatalf("first AddInterface: %v", err)
		}
		// The same NIC may be tried again; another may not: the runtime
		// may hold an endpoint for the failed one.
		if _, err := o.AddInterface(ctx, eth("eth0", macA)); !errors.Is(err, errInjected) {
			t.Fatalf("retry of the same NIC: %v, want it to reach the sandbox", err)
		}
		if _, err := o.AddInterface(ctx, eth("eth1", macB)); !errors.Is(err, hotplug.ErrRefused) {
			t.Fatalf("another NIC: %v, want ErrRefused", err)
		}
	})
	t.Run("a rescanning sandbox attaches every network at once", func(t *testing.T) {
		sb := &rescanSandbox{FakeSandbox: &hotplugtest.FakeSandbox{}, links: []*hotplug.Interface{eth("eth0", macA), eth("eth1", macB), eth("eth2", macC)}}
		o := hotplug.OneNIC(sb, oneNICWhy)
		for _, inf := range sb.links {
			got, err := o.AddInterface(ctx, inf)
			if err != nil || got.HwAddr != inf.HwAddr {
				t.Fatalf("AddInterface(%s): %+v, %v", inf.Name, got, err)
			}
		}
		if sb.scans != 1 || len(sb.CallsOf(opAdd)) != 0 {
			t.Errorf("rescans %d, AddInterface calls %d; want one rescan and no AddInterface", sb.scans, len(sb.CallsOf(opAdd)))
		}
		if got := sb.GuestMACs(); !slices.Equal(got, []string{macA, macB, macC}) {
			t.Errorf("guest MACs %v", got)
		}
	})
	t.Run("a rescan that attaches nothing is an error", func(t *testing.T) {
		sb := &rescanSandbox{FakeSandbox: &hotplugtest.FakeSandbox{}, noScan: true}
		_, err := hotplug.OneNIC(sb, oneNICWhy).AddInterface(ctx, eth("eth0", macA))
		if err == nil || errors.Is(err, hotplug.ErrRefused) || len(sb.CallsOf(opAdd)) != 0 {
			t.Fatalf("AddInterface: %v, calls %v; want an error and no AddInterface", err, sb.Ops())
		}
	})
}

// The reconciler over OneNIC: every network present at start is attached
// (by the rescan), a later connect is refused once and counted, and the
// guest's first NIC is never handed to AddInterface again.
func TestOneNICUnderReconciler(t *testing.T) {
	base := &hotplugtest.FakeSandbox{}
	sb := &rescanSandbox{FakeSandbox: base, links: []*hotplug.Interface{eth("eth0", macA), eth("eth1", macB)}}
	src := hotplugtest.NewFakeSource(hotplugtest.Loopback(),
		hotplugtest.Endpoint(7, "eth0", macA, "172.18.0.2/16"),
		hotplugtest.Endpoint(8, "eth1", macB, "10.1.0.2/24"))
	obs := &recObserver{}
	h := newHarness(t, base, src, func(c *hotplug.Config) {
		c.Sandbox = hotplug.OneNIC(sb, oneNICWhy)
		c.Observer = obs
	})
	st := h.reconcile()
	if len(st.NICs) != 2 || !st.Settled() || sb.scans != 1 || len(base.CallsOf(opAdd)) != 0 {
		t.Fatalf("status %+v, rescans %d, calls %v: want both attached by one rescan", st, sb.scans, base.Ops())
	}
	// docker network connect: refused, once.
	src.Update(func(s *view.Snapshot) { s.Links[9] = hotplugtest.Endpoint(9, "eth2", macC, "10.2.0.2/24") })
	st = h.reconcile()
	h.reconcile()
	if !slices.Equal(st.Refused, []string{"eth2"}) || len(base.CallsOf(opAdd)) != 0 {
		t.Fatalf("status %+v, calls %v: want eth2 refused without an AddInterface", st, base.Ops())
	}
}
