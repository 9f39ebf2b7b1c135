//go:build linux

package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// Control tests: each hazard of docs/kata-model.md bites a naive client
// (one that calls the sandbox the obvious way, as a monitor without the
// hazard's handling would) on the model, and the patch series removes it
// where it can. The monitor's side is in docker_test.go and
// monitor_test.go.

// TestShippedSecondNIC (R17, R53, R54, R56): as shipped, a second
// AddInterface tells the agent the FIRST NIC's PCI path. The agent's wait
// for a net device there returns at once (eth0 is there); its MAC
// reconciliation finds no netdev right under a virtio-net PCI function
// (the netdev sits under virtioN/), so it re-MACs nothing; its by-MAC
// lookup runs before the guest has probed the new NIC, and 4.1's by-name
// fallback finds no link named eth1: "No such device", which the runtime
// does not retry. AddInterface's rollback then unplugs the new NIC and sets
// Docker's eth1 DOWN. eth0 is untouched: the catalogue's R58 (eth0
// re-MACed) needs a NIC whose netdev sits right under the PCI function
// (VFIO), not virtio-net.
//
// Whether the guest probes the NIC before the agent looks is a race the
// agent wins under TCG (device_add returns 35-100 ms before the guest sees
// the NIC): when the guest wins, the second NIC works; the test tries up to
// three times to see the hazard.
func TestShippedSecondNIC(t *testing.T) {
	l := newLab(t, 0)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	sb := l.sim(t, katasim.Options{Kata: katasim.AsShipped})
	eth0, eth1 := l.endpoint(t, "eth0"), l.endpoint(t, "eth1")
	if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth0.Index)); err != nil {
		t.Fatal(err)
	}
	ls, err := l.vm.Agent.WaitLinks(ctx, 20*time.Millisecond, func(ls []*guestproto.Link) error { return checkGuestNIC(ls, "eth0", eth0.MAC, eth0.IP) })
	must(t, err)
	t.Logf("eth0's netdev in sysfs: %s (the MAC reconciliation reads the PCI function's own net/ directory)", guest.FindLink(ls, eth0.MAC).PCI)
	first := sb.Endpoints()[0].PCIPath

	bit := false
	for try := 1; try <= 3 && !bit; try++ {
		inf := interfaceOf(t, l.Sandbox, eth1.Index)
		_, err := sb.AddInterface(ctx, inf)
		adds := sb.CallsOf("AddInterface")
		c := adds[len(adds)-1]
		if inf.DevicePath != first {
			t.Fatalf("eth1 was announced at %q, want the first NIC's %q", inf.DevicePath, first)
		}
		t.Logf("try %d: AddInterface(eth1) announced at %s: %v; Kata logged %q", try, inf.DevicePath, err, c.Logs)
		ls := l.links(ctx, t)
		if k := guest.FindLink(ls, eth0.MAC); k == nil || k.Name != "eth0" || !guest.LinkHasAddress(k, eth0.IP, 24) || !k.Up() {
			t.Fatalf("eth0 was disturbed: %s", describeLinks(ls))
		}
		if err == nil {
			t.Logf("the guest probed eth1's NIC before the agent looked: no harm this time (%s)", describeLinks(ls))
			_, _ = sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: eth1.MAC})
			must(t, l.Sandbox.LinkSetUp(l.link(t, eth1.Index)))
			continue
		}
		bit = true
		if !strings.Contains(err.Error(), "No such device") || strings.Contains(err.Error(), "Link not found") {
			t.Errorf("AddInterface(eth1): %v, want the by-name fallback's \"No such device\" (not retried)", err)
		}
		if up := l.link(t, eth1.Index).Attrs().Flags&1 != 0; up {
			t.Error("Docker's eth1 is still up: the rollback did not set it down")
		}
		if k := guest.FindLink(ls, eth1.MAC); k != nil {
			t.Errorf("the guest still has eth1's NIC: %s", describeLinks(ls))
		}
		if len(sb.Endpoints()) != 1 {
			t.Errorf("endpoints %v, want eth0 only", tapNames(sb.Endpoints()))
		}
	}
	if !bit {
		t.Fatal("the guest probed the new NIC before the agent looked, three times")
	}
	l.reach(ctx, t, eth0.IP, 8080)
}

// TestDetachByName (R41, R29): a disconnect moves the endpoint's link out,
// a connect gives its name to a new link, and only then the old endpoint is
// removed. As shipped, Kata tears down whatever link holds the old name:
// the new link is set DOWN (tcfilter) or also given the old MAC and
// addresses (macvtap). Patched, the link is found by ifindex (gone) and the
// new one is left alone.
func TestDetachByName(t *testing.T) {
	for _, m := range []katasim.Model{katasim.TCFilter, katasim.MacVTap} {
		t.Run(m.String(), func(t *testing.T) {
			l := newLab(t, 0)
			for _, k := range []katasim.Kata{katasim.AsShipped, katasim.Patched} {
				t.Run(k.String(), func(t *testing.T) { detachByName(t, l, katasim.Options{Kata: k, Model: m}) })
			}
		})
	}
}

func detachByName(t *testing.T, l *lab, opts katasim.Options) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sb := l.sim(t, opts)
	old := l.endpoint(t, "eth0")
	if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, old.Index)); err != nil {
		t.Fatal(err)
	}
	l.disconnect(t, old)
	neu := l.endpoint(t, "eth0")
	if _, err := sb.RemoveInterface(ctx, &hotplug.Interface{Name: "eth0", HwAddr: old.MAC}); err != nil {
		t.Fatal(err)
	}
	k := l.link(t, neu.Index)
	up, mac, addrs := k.Attrs().Flags&1 != 0, k.Attrs().HardwareAddr.String(), addrsOf(t, l.Sandbox, neu.Index)
	t.Logf("the new eth0 after RemoveInterface(old eth0): up %v, MAC %s, addresses %v", up, mac, addrs)
	if opts.Kata == katasim.AsShipped {
		if up {
			t.Error("the new eth0 is still up: the hazard did not bite")
		}
		if opts.Model == katasim.MacVTap && (mac != old.MAC || !slices.Contains(addrs, old.IP+"/24")) {
			t.Errorf("the new eth0 has MAC %s and %v, want the old endpoint's %s and %s written onto it", mac, addrs, old.MAC, old.IP)
		}
		// Leave the link as Docker has it for the next subtest.
		must(t, l.Sandbox.LinkSetUp(k))
		return
	}
	if !up || mac != neu.MAC || !slices.Contains(addrs, neu.IP+"/24") {
		t.Errorf("patched Kata changed the new eth0: up %v, MAC %s, %v", up, mac, addrs)
	}
	if ls := l.links(ctx, t); len(ls) != 1 {
		t.Errorf("guest still has %s", describeLinks(ls))
	}
}

// TestRollback (R16, R22, R60): an agent failure after the hot-plug (here
// the kernel refusing MTU 0) makes AddInterface hot-detach the endpoint.
// As shipped that sets the link DOWN and logs a rollback failure even
// though it worked; the next attach "succeeds" on the DOWN link (tcfilter
// never sets it up). Patched, the link stays up and the next attach works.
func TestRollback(t *testing.T) {
	l := newLab(t, 0)
	for _, k := range []katasim.Kata{katasim.AsShipped, katasim.Patched} {
		t.Run(k.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			sb := l.sim(t, katasim.Options{Kata: k})
			e := l.endpoint(t, "eth0")
			bad := interfaceOf(t, l.Sandbox, e.Index)
			bad.Mtu = 0
			_, err := sb.AddInterface(ctx, bad)
			if err == nil || !strings.Contains(err.Error(), "Failure in LinkSetRequest") {
				t.Fatalf("AddInterface with MTU 0: %v, want the agent's LinkSetRequest failure", err)
			}
			c := sb.CallsOf("AddInterface")[0]
			t.Logf("AddInterface(MTU 0): %v; Kata logged %q", err, c.Logs)
			logged := slices.ContainsFunc(c.Logs, func(s string) bool { return strings.Contains(s, "rollback hot attaching endpoint failed") })
			up := l.link(t, e.Index).Attrs().Flags&1 != 0
			if k == katasim.AsShipped {
				if up || !logged {
					t.Errorf("after the rollback: link up %v, rollback failure logged %v; want down, logged", up, logged)
				}
			} else if !up || logged {
				t.Errorf("after the rollback: link up %v, rollback failure logged %v; want up, not logged", up, logged)
			}
			if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, e.Index)); err != nil {
				t.Fatalf("AddInterface again: %v", err)
			}
			if up = l.link(t, e.Index).Attrs().Flags&1 != 0; up != (k == katasim.Patched) {
				t.Errorf("after the retry the link is up = %v", up)
			}
			if k == katasim.Patched {
				l.reach(ctx, t, e.IP, 8080)
			}
			_, _ = sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: e.MAC})
		})
	}
}

// TestEndpointWipe (R15, R21): a hot-plug that fails in QEMU (here: no
// free slot) makes Kata as shipped forget every endpoint, so removing an
// earlier NIC silently does nothing, and leaves the failed endpoint's tap
// with the link's redirect to it (its inbound traffic black-holed).
// Patched, the list survives and the failed endpoint's tap and tc are
// undone, its link left up.
func TestEndpointWipe(t *testing.T) {
	l := newLab(t, 1) // one slot: the second NIC's hot-plug fails
	for _, k := range []katasim.Kata{katasim.AsShipped, katasim.Patched} {
		t.Run(k.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			sb := l.sim(t, katasim.Options{Kata: k})
			shipped := k == katasim.AsShipped
			eth0, eth1 := l.endpoint(t, "eth0"), l.endpoint(t, "eth1")
			if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth0.Index)); err != nil {
				t.Fatal(err)
			}
			_, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth1.Index))
			if err == nil {
				t.Fatal("AddInterface(eth1) into a guest with no free slot succeeded")
			}
			t.Logf("AddInterface(eth1): %v; endpoints now %v", err, tapNames(sb.Endpoints()))
			if n := len(sb.Endpoints()); n != map[bool]int{true: 0, false: 1}[shipped] {
				t.Errorf("%d endpoints after the failed hot-plug", n)
			}
			_, tapErr := l.Sandbox.LinkByName("tap1_kata")
			if redirects := mirred(t, l.Sandbox, eth1.Index); redirects != shipped || (tapErr == nil) != shipped {
				t.Errorf("after the failed hot-plug: eth1 redirects %v, tap1_kata left %v; want %v", redirects, tapErr == nil, shipped)
			}
			if up := l.link(t, eth1.Index).Attrs().Flags&1 != 0; !up {
				t.Error("eth1 is down after the failed hot-plug")
			}
			if _, err := sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: eth0.MAC}); err != nil {
				t.Fatal(err)
			}
			stays := guest.FindLink(l.links(ctx, t), eth0.MAC) != nil
			if stays != shipped {
				t.Errorf("after RemoveInterface(eth0) the guest still has it: %v, want %v", stays, shipped)
			}
			if shipped {
				t.Log("as shipped: RemoveInterface(eth0) returned (nil, nil) and left the NIC: Kata had forgotten it")
				forgetKata(ctx, t, l)
			}
			l.disconnect(t, eth0)
			l.disconnect(t, eth1)
		})
	}
}

// TestDuplicateAttach (R19, R20, R23): AddInterface checks for no
// duplicate: the same link twice fails on the link's ingress qdisc after
// making a second tap. As shipped the tap stays and every endpoint is
// forgotten with it; the next link then gets index 0, eth0's live tap, and
// fails on its qdisc. With the series up to 0009 (finding F5) the tap
// stays too, with its ingress qdisc, and 0007 gives the next link its
// index: that attach fails on the leftover's qdisc, and so does every
// later one. 0010 undoes the failed tap setup (and leaves eth0's qdisc and
// redirect alone), 0011 skips an index whose tap exists: either one lets
// the next link attach. An unsupported Type fails the same way; "tuntap"
// panics the caller as shipped (patched: an error).
func TestDuplicateAttach(t *testing.T) {
	l := newLab(t, 0)
	const partialTap = katasim.FixUndoPartialTap | katasim.FixSkipExistingTap
	for _, c := range []struct {
		name string
		opts katasim.Options
		// left: the duplicate's tap1_kata is left behind; next: the tap
		// of the link attached after the duplicate ("": every attach fails).
		left bool
		next string
	}{
		{"as shipped", katasim.Options{Kata: katasim.AsShipped}, true, ""},
		{"without undo-partial-tap+skip-existing-tap", katasim.Options{Without: partialTap}, true, ""},
		{"without undo-partial-tap", katasim.Options{Without: katasim.FixUndoPartialTap}, true, "tap2_kata"},
		{"without skip-existing-tap", katasim.Options{Without: katasim.FixSkipExistingTap}, false, "tap1_kata"},
		{"patched", katasim.Options{}, false, "tap1_kata"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			sb := l.sim(t, c.opts)
			shipped := c.opts.Kata == katasim.AsShipped
			eth0 := l.endpoint(t, "eth0")
			inf := interfaceOf(t, l.Sandbox, eth0.Index)
			if _, err := sb.AddInterface(ctx, inf); err != nil {
				t.Fatal(err)
			}
			_, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth0.Index))
			if err == nil || !strings.Contains(err.Error(), "Failed to add qdisc") {
				t.Fatalf("a second AddInterface(eth0): %v, want the qdisc failure", err)
			}
			if _, err := l.Sandbox.LinkByName("tap1_kata"); (err == nil) != c.left {
				t.Errorf("the duplicate's tap1_kata left behind: %v, want %v", err == nil, c.left)
			}
			if n := len(sb.Endpoints()); n != map[bool]int{true: 0, false: 1}[shipped] {
				t.Errorf("%d endpoints after the duplicate", n)
			}
			if !shipped {
				// eth0's own redirect survives the failed duplicate.
				l.reach(ctx, t, eth0.IP, 8080)
			}
			bad := *inf
			bad.Type = "bridge"
			if _, err := sb.AddInterface(ctx, &bad); err == nil || !strings.Contains(err.Error(), "Unsupported network interface: bridge") {
				t.Errorf("AddInterface(Type bridge): %v", err)
			}
			func() {
				var err error
				defer func() {
					r := recover()
					switch {
					case shipped && r == nil:
						t.Errorf("AddInterface(Type tuntap) did not panic (%v)", err)
					case !shipped && r != nil:
						t.Errorf("patched AddInterface(Type tuntap) panicked: %v", r)
					case r != nil:
						t.Logf("AddInterface(Type tuntap) panicked: %v", r)
					default:
						t.Logf("AddInterface(Type tuntap): %v", err)
					}
				}()
				bad.Type = "tuntap"
				_, err = sb.AddInterface(ctx, &bad)
			}()
			// Other links now. As shipped Kata forgot eth0: index 0,
			// eth0's live tap0_kata (R25). Patched up to 0009: the lowest
			// index no endpoint uses is 1, the duplicate's tap1_kata left
			// behind with its ingress qdisc, for every later link too.
			links := []*endpoint{l.endpoint(t, "eth1"), l.endpoint(t, "eth2")}
			for _, e := range links {
				_, err = sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, e.Index))
				t.Logf("AddInterface(%s) after the duplicate: %v (endpoints %v)", e.Name, err, tapNames(sb.Endpoints()))
				if c.next == "" {
					if err == nil || !strings.Contains(err.Error(), "Failed to add qdisc") {
						t.Errorf("AddInterface(%s) after the duplicate: %v, want the qdisc failure on a reused tap", e.Name, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("AddInterface(%s) after the duplicate: %v", e.Name, err)
				}
				if got := sb.Endpoints()[len(sb.Endpoints())-1].TapName; got != c.next {
					t.Errorf("%s got %s, want %s", e.Name, got, c.next)
				}
				l.reach(ctx, t, e.IP, 8081)
				break // one is enough
			}
			if _, err := sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: eth0.MAC}); err != nil {
				t.Fatal(err)
			}
			if stays := guest.FindLink(l.links(ctx, t), eth0.MAC) != nil; stays != shipped {
				t.Errorf("after RemoveInterface(eth0) the guest still has it: %v, want %v", stays, shipped)
			}
			forgetKata(ctx, t, l)
			l.disconnect(t, eth0)
			for _, e := range links {
				l.disconnect(t, e)
			}
		})
	}
}

// forgetKata removes what Kata left behind in the lab (its taps, the NICs
// QEMU still has), for the next subtest on the same guest.
func forgetKata(ctx context.Context, t *testing.T, l *lab) {
	t.Helper()
	links, err := l.Sandbox.LinkList()
	must(t, err)
	for _, k := range links {
		if strings.HasSuffix(k.Attrs().Name, "_kata") {
			_ = l.Sandbox.LinkDel(k)
		}
	}
	out, err := l.vm.QMP.Execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"})
	must(t, err)
	var devs []struct{ Name, Type string }
	must(t, json.Unmarshal(out, &devs))
	for _, d := range devs {
		if !strings.HasPrefix(d.Name, "virtio-") {
			continue
		}
		mark := l.vm.QMP.EventMark()
		if _, err := l.vm.QMP.Execute(ctx, "device_del", map[string]any{"id": d.Name}); err != nil {
			t.Fatalf("device_del %s: %v", d.Name, err)
		}
		if _, err := l.vm.QMP.WaitEvent(ctx, mark, "DEVICE_DELETED", guest.DeviceDeleted(d.Name)); err != nil {
			t.Fatal(err)
		}
	}
	// Their netdevs too (netdev_del of an id QEMU lacks just fails).
	for i := range 8 {
		_, _ = l.vm.QMP.Execute(ctx, "netdev_del", map[string]any{"id": fmt.Sprintf("br%d_kata", i)})
	}
}

// TestTapIndexCollision (R12, R25): without the free-index fix, the tap
// index rule reuses a live endpoint's tap with no failure before it: eth0
// and eth1 attached (tap0, tap1), eth0 removed and attached again (tap2),
// then eth2 gets index max(2, 0+1) = 2. Opening tap2_kata again adds a
// queue to eth0's live tap, held by the shim and never read: flows hashed
// to it are lost. With 0010 but without 0007 the failed attach of eth2
// undoes itself: its queue is detached again and eth0 keeps answering.
// With 0007, eth2 gets tap3.
func TestTapIndexCollision(t *testing.T) {
	l := newLab(t, 0)
	for _, c := range []struct {
		name    string
		without katasim.Fix
		// fixed: eth2 attaches; queues: eth0's tap's queues after eth2.
		fixed  bool
		queues int
	}{
		{"without free-tap-index+undo-partial-tap", katasim.FixFreeTapIndex | katasim.FixUndoPartialTap, false, 2},
		{"without free-tap-index", katasim.FixFreeTapIndex, false, 1},
		{"patched", 0, true, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			fixed := c.fixed
			opts := katasim.Options{Without: c.without}
			sb := l.sim(t, opts)
			eth0, eth1, eth2 := l.endpoint(t, "eth0"), l.endpoint(t, "eth1"), l.endpoint(t, "eth2")
			for _, e := range []*endpoint{eth0, eth1} {
				if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, e.Index)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: eth0.MAC}); err != nil {
				t.Fatal(err)
			}
			if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth0.Index)); err != nil {
				t.Fatal(err)
			}
			live := sb.Endpoints()[1].TapName
			_, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth2.Index))
			queues := tunQueues(t, l.Sandbox, live)
			t.Logf("eth0's tap %s: %d queues; AddInterface(eth2): %v; endpoints %v", live, queues, err, tapNames(sb.Endpoints()))
			if fixed {
				if err != nil || queues != 1 {
					t.Fatalf("patched: AddInterface(eth2) = %v, %s has %d queues; want success and 1", err, live, queues)
				}
				l.reach(ctx, t, eth2.IP, 8081)
			} else if err == nil || queues != c.queues {
				t.Fatalf("AddInterface(eth2) = %v and %s has %d queues: want a failure, and %d queues on eth0's live tap", err, live, queues, c.queues)
			}
			// eth0 (on the tap) answers every connection only when its
			// tap has one queue.
			lost := lostConnections(ctx, t, l, eth0.IP, 8080, 16)
			t.Logf("eth0: %d of 16 connections lost", lost)
			if (lost > 0) != (queues > 1) {
				t.Errorf("%d of 16 connections to eth0 lost, its tap has %d queues", lost, queues)
			}
			forgetKata(ctx, t, l)
			for _, e := range []*endpoint{eth0, eth1, eth2} {
				l.disconnect(t, e)
			}
		})
	}
}

// TestFailedTapSetup: a tap setup that fails part way (katasim's
// FailTapStep: /dev/vhost-net missing with disable_vhost_net = false, or
// the tcfilter model's last redirect) leaves, up to 0009 of the series,
// what it made: the tap with the failed call's queue, the link's ingress
// qdisc and redirect into that tap, the macvtap and the link's random MAC
// without addresses. 0007 then gives the same link, attached again, that
// tap's index: with tcfilter the attach takes the leftover tap (a second
// queue: the failed call's, never read, stays attached) or fails on its
// qdisc, with macvtap it fails on the leftover macvtap, every time. With
// 0010 and 0011 the failed setup leaves nothing and the retry answers.
// (katasim holds the failed call's queue fds, as the shim holds a hot-
// plugged tap's: the harsher reading. Kata drops them, and they stay
// attached until the garbage collector closes them.)
func TestFailedTapSetup(t *testing.T) {
	l := newLab(t, 0)
	for _, c := range []struct {
		model katasim.Model
		step  katasim.TapStep
		// retry is what the retry of eth1 does without 0010 and 0011:
		// "lossy" (it succeeds on the leftover tap, which keeps the
		// failed call's queue attached, never read) or the error it
		// fails with.
		retry string
	}{
		{katasim.TCFilter, katasim.StepVhostFds, "lossy"},
		{katasim.TCFilter, katasim.StepRedirect, "Failed to add qdisc"},
		{katasim.MacVTap, katasim.StepVhostFds, "Could not create TAP interface"},
	} {
		for _, fixed := range []bool{false, true} {
			name := fmt.Sprintf("%s/%s/%s", c.model, c.step, map[bool]string{false: "without undo-partial-tap+skip-existing-tap", true: "patched"}[fixed])
			t.Run(name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
				defer cancel()
				fail := false
				opts := katasim.Options{Model: c.model, FailTapStep: func(step katasim.TapStep) error {
					if !fail || step != c.step {
						return nil
					}
					if step == katasim.StepVhostFds {
						return errors.New("open /dev/vhost-net: no such file or directory")
					}
					return errors.New("no buffer space available")
				}}
				if !fixed {
					opts.Without = katasim.FixUndoPartialTap | katasim.FixSkipExistingTap
				}
				sb := l.sim(t, opts)
				eth0, eth1 := l.endpoint(t, "eth0"), l.endpoint(t, "eth1")
				if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth0.Index)); err != nil {
					t.Fatal(err)
				}
				before := linkState(t, l, eth1.Index)
				fail = true
				_, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, eth1.Index))
				fail = false
				if err == nil {
					t.Fatal("AddInterface(eth1) with a failing tap setup succeeded")
				}
				after := linkState(t, l, eth1.Index)
				_, tapErr := l.Sandbox.LinkByName("tap1_kata")
				t.Logf("AddInterface(eth1): %v; tap1_kata left: %v; eth1 before %v, after %v", err, tapErr == nil, before, after)
				if fixed && (tapErr == nil || after != before) {
					t.Errorf("patched: the failed setup left tap1_kata (%v) or changed eth1: %v, was %v", tapErr == nil, after, before)
				}
				if !fixed && tapErr != nil {
					t.Errorf("without the fixes the failed setup left no tap1_kata: %v", tapErr)
				}

				// Attach eth1 again, now that the step works.
				inf := interfaceOf(t, l.Sandbox, eth1.Index)
				inf.HwAddr, inf.IPAddresses = eth1.MAC, []*hotplug.IPAddress{{Family: hotplug.FamilyV4, Address: eth1.IP, Mask: "24"}}
				_, err = sb.AddInterface(ctx, inf)
				t.Logf("AddInterface(eth1) again: %v; endpoints %v", err, tapNames(sb.Endpoints()))
				switch {
				case fixed || c.retry == "lossy":
					if err != nil {
						t.Fatalf("AddInterface(eth1) again: %v", err)
					}
					tap := sb.Endpoints()[1].TapName
					queues := 1 // a macvtap's one queue is the one katasim opened
					if c.model == katasim.TCFilter {
						queues = tunQueues(t, l.Sandbox, tap)
					}
					lost := lostConnections(ctx, t, l, eth1.IP, 8080, 16)
					t.Logf("eth1's tap %s: %d queues; %d of 16 connections lost", tap, queues, lost)
					if fixed && (queues != 1 || lost > 0) {
						t.Errorf("patched: eth1's tap has %d queues, %d of 16 connections lost", queues, lost)
					}
					// Without the fixes the failed call's queue (queue 0,
					// never read) stays attached to eth1's live tap. Unlike
					// TestTapIndexCollision (the unread queue added last),
					// no connection was lost to it in our runs (0 of 16,
					// three runs on 6.12): the kernel's choice of queue is
					// not asserted, the leftover queue is.
					if !fixed && queues != 2 {
						t.Errorf("without the fixes: eth1's tap has %d queues, want 2 (the failed call's left attached)", queues)
					}
				case err == nil || !strings.Contains(err.Error(), c.retry):
					t.Errorf("AddInterface(eth1) again: %v, want %q", err, c.retry)
				}
				if fixed {
					l.reach(ctx, t, eth0.IP, 8081)
				}
				forgetKata(ctx, t, l)
				l.disconnect(t, eth0)
				l.disconnect(t, eth1)
			})
		}
	}
}

// linkState is what TestFailedTapSetup compares of a sandbox link: admin
// state, MAC, IPv4 addresses, ingress redirect.
func linkState(t *testing.T, l *lab, index int) string {
	t.Helper()
	k := l.link(t, index)
	return fmt.Sprintf("up=%v mac=%s addrs=%v redirect=%v", k.Attrs().Flags&net.FlagUp != 0, k.Attrs().HardwareAddr,
		addrsOf(t, l.Sandbox, index), mirred(t, l.Sandbox, index))
}

func tapNames(eps []katasim.Endpoint) []string {
	var out []string
	for _, ep := range eps {
		out = append(out, ep.Name+"/"+ep.TapName)
	}
	return out
}

// tunQueues is the number of queues attached to the tun link name.
func tunQueues(t *testing.T, h *netlink.Handle, name string) int {
	t.Helper()
	k, err := h.LinkByName(name)
	must(t, err)
	tt, ok := k.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is a %s", name, k.Type())
	}
	return tt.Queues
}

// lostConnections opens n TCP connections to the guest at ip:port from the
// dockerd netns (each its own source port, so its own flow) and counts
// those that got no answer within 2 s.
func lostConnections(ctx context.Context, t *testing.T, l *lab, ip string, port, n int) int {
	t.Helper()
	must(t, l.vm.Agent.ServeToken(ctx, port, "tok"))
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	// The first connection may wait for ARP: make sure the path works
	// at all before counting.
	if _, err := guest.ReadToken(ctx, l.DockerdPath, addr, 2*time.Second, 50*time.Millisecond); err != nil {
		t.Fatalf("%s never answered: %v", addr, err)
	}
	lost := 0
	for range n {
		if _, err := guest.ProbeToken(ctx, l.DockerdPath, addr, 2*time.Second); err != nil {
			lost++
		}
	}
	return lost
}

// TestMacvtapRoutesGone (R28): with the macvtap model, the attach takes
// the link's addresses, and the kernel its routes with them: the sandbox
// netns can take no route through the link any more. Docker's own route
// changes through an attached link then fail (a connect with
// --gw-priority racing the attach, the default route Docker restores
// after a disconnect). Patched or not; no monitor can give the addresses
// back.
func TestMacvtapRoutesGone(t *testing.T) {
	l := newLab(t, 0)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sb := l.sim(t, katasim.Options{Model: katasim.MacVTap})
	e := l.endpoint(t, "eth0")
	gw := net.ParseIP(l.gateway())
	must(t, l.Sandbox.RouteAdd(&netlink.Route{LinkIndex: e.Index, Gw: gw}))
	if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, e.Index)); err != nil {
		t.Fatal(err)
	}
	rs, err := l.Sandbox.RouteList(l.link(t, e.Index), netlink.FAMILY_V4)
	must(t, err)
	if len(rs) != 0 {
		t.Errorf("routes through eth0 after the attach: %+v, want none", rs)
	}
	err = l.Sandbox.RouteAdd(&netlink.Route{LinkIndex: e.Index, Gw: gw})
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("default route via %s dev eth0 after the attach: %v, want network unreachable", gw, err)
	}
	t.Logf("ip route add default via %s dev eth0: %v", gw, err)
	l.reach(ctx, t, e.IP, 8080)
}

// TestStaleName (R14, R22, R56): Kata looks the link up by the request's
// name inside the attach. A request whose name another link holds now (a
// monitor's stale view) plugs that other link, then asks the agent for the
// request's MAC, which no guest link has: 4.1's by-name fallback finds no
// guest link of that name either, AddInterface fails and its rollback
// unplugs the NIC; as shipped that also sets the other link DOWN. The
// monitor re-reads the link by name right before the call and after it
// (hotplug: TestStaleViewBeforeCall, TestNameChangesDuringCall).
func TestStaleName(t *testing.T) {
	l := newLab(t, 0)
	for _, k := range []katasim.Kata{katasim.AsShipped, katasim.Patched} {
		t.Run(k.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			sb := l.sim(t, katasim.Options{Kata: k})
			x, y := l.endpoint(t, "eth1"), l.endpoint(t, "eth2")
			stale := interfaceOf(t, l.Sandbox, x.Index)
			// x leaves, y takes its name.
			l.disconnect(t, x)
			y.Rename("eth1")
			_, err := sb.AddInterface(ctx, stale)
			t.Logf("AddInterface(eth1 with x's MAC) while y holds eth1: %v", err)
			if err == nil {
				t.Fatal("the stale request succeeded")
			}
			up := l.link(t, y.Index).Attrs().Flags&1 != 0
			if up == (k == katasim.AsShipped) {
				t.Errorf("y is up = %v after the failed attach", up)
			}
			if ls := l.links(ctx, t); len(ls) != 1 {
				t.Errorf("guest has %s", describeLinks(ls))
			}
			forgetKata(ctx, t, l)
			l.disconnect(t, y)
		})
	}
}

// TestDuplicateMAC (R55, R61): the agent configures the FIRST guest link
// with the MAC. A NIC the guest kept (a hypervisor that cannot unplug) and
// a new link with the same MAC (Docker with --mac-address): the new NIC is
// plugged, and the agent configures the stale one, wired to the old link's
// tap, while the new NIC stays down and unaddressed. The monitor never
// attaches a MAC the guest kept because the hypervisor cannot unplug
// (hotplug: TestNoUnplugCapability; TestDocker's NoUnplug).
func TestDuplicateMAC(t *testing.T) {
	l := newLab(t, 0)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sb := l.sim(t, katasim.Options{NoUnplug: true})
	old := l.endpoint(t, "eth0")
	if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, old.Index)); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.RemoveInterface(ctx, &hotplug.Interface{HwAddr: old.MAC}); err != nil {
		t.Fatal(err)
	}
	stale := guest.FindLink(l.links(ctx, t), old.MAC)
	if stale == nil {
		t.Fatal("the guest dropped the NIC although the hypervisor cannot unplug")
	}
	l.disconnect(t, old)
	neu := &endpoint{Endpoint: netmontest.VethToNetNS(t, l.DockerdNS, l.SandboxNS, l.bridge.Name), MAC: old.MAC, IP: old.IP}
	neu.Configure("eth0", neu.MAC, neu.IP+"/24", "")
	if _, err := sb.AddInterface(ctx, interfaceOf(t, l.Sandbox, neu.Index)); err != nil {
		t.Fatalf("AddInterface(new eth0): %v", err)
	}
	ls := l.links(ctx, t)
	t.Logf("guest: %s", describeLinks(ls))
	var fresh *guestproto.Link
	for _, k := range ls {
		if k.MAC == old.MAC && k.Index != stale.Index {
			fresh = k
		}
	}
	if fresh == nil {
		t.Fatalf("no new NIC with %s: %s", old.MAC, describeLinks(ls))
	}
	if fresh.Up() || guest.LinkHasAddress(fresh, neu.IP, 24) {
		t.Errorf("the new NIC %s was configured: the hazard did not bite", fresh.Name)
	}
	if k := guest.LinkNamed(ls, "eth0"); k == nil || k.Index != stale.Index || !k.Up() {
		t.Errorf("eth0 in the guest is not the stale NIC (%d): %s", stale.Index, describeLinks(ls))
	}
}
