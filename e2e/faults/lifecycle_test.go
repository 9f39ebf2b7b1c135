//go:build linux

package faults

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/metrics"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// Start and Stop at the wrong moments, twice, and with metrics that cannot
// be registered.

// TestStopDuringAttach: Stop while an AddInterface is in flight (one
// that honours its context, as Kata's do): Stop returns promptly, the call
// is cancelled, nothing is undone, nothing leaks; Stop twice returns the
// same at once.
func TestStopDuringAttach(t *testing.T) {
	e := newEnv(t)
	const id = "ft-stop"
	inFlight := make(chan struct{})
	var once sync.Once
	fs := &hotplugtest.FakeSandbox{}
	fs.AddInterfaceFn = func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		once.Do(func() { close(inFlight) })
		<-ctx.Done()
		return nil, ctx.Err()
	}
	m, err := shimhook.Start(context.Background(), e.shimConfig(id, fs))
	if err != nil || m == nil {
		t.Fatalf("Start = %v, %v", m, err)
	}
	e.addEndpoint(t, "eth0", true)
	select {
	case <-inFlight:
	case <-time.After(waitTimeout):
		t.Fatalf("no AddInterface: %v", fs.Ops())
	}
	begin := time.Now()
	err = stopWithin(t, m, 2*time.Second)
	if took := time.Since(begin); err != nil || took > 500*time.Millisecond {
		t.Errorf("Stop = %v after %v", err, took)
	}
	begin = time.Now()
	if err2 := m.Stop(context.Background()); err2 != err || time.Since(begin) > 10*time.Millisecond {
		t.Errorf("second Stop = %v after %v", err2, time.Since(begin))
	}
	if n := len(fs.CallsOf(hotplugtest.OpRemoveInterface)); n != 0 {
		t.Errorf("RemoveInterface called: %v", fs.Ops())
	}
	if n := seriesOf(t, e.reg, id); n != 0 {
		t.Errorf("%d series left after Stop", n)
	}
}

// TestCloseDuringAttach: the netns watch is closed while an
// AddInterface is in flight, and the call then succeeds. The NIC it
// plugged is a working one: the reconciler must not unplug it because the
// closed monitor can no longer confirm the link; it ends (the source is
// done). Before the fix it unplugged it ("link changed during AddInterface").
func TestCloseDuringAttach(t *testing.T) {
	e := newEnv(t)
	inFlight, closed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fs := &hotplugtest.FakeSandbox{}
	fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		once.Do(func() { close(inFlight) })
		<-closed
		return fs.GuestAddInterface(inf)
	}
	d := e.startDirect(t, fs, "ft-close", nil)
	ep := e.addEndpoint(t, "eth0", true)
	select {
	case <-inFlight:
	case <-time.After(waitTimeout):
		t.Fatalf("no AddInterface: %v", fs.Ops())
	}
	d.Netmon.Close()
	close(closed)
	if ended, err := d.WaitRun(waitTimeout); !ended {
		t.Fatal("reconciler still running after its source closed")
	} else if err != nil {
		t.Errorf("reconciler: %v", err)
	}
	// The pass in progress may still push the routes through the NIC it
	// plugged (from the view it read); nothing is unplugged.
	if n := len(fs.CallsOf(hotplugtest.OpAddInterface)); n != 1 || len(fs.CallsOf(hotplugtest.OpRemoveInterface)) != 0 {
		t.Errorf("sandbox calls %v, want one attach and no detach", fs.Ops())
	}
	if got := fs.GuestMACs(); !slices.Equal(got, []string{ep.MAC.String()}) {
		t.Errorf("guest NICs %v, want %s", got, ep.MAC)
	}
	if err := d.Netmon.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := d.Netmon.Start(context.Background()); !errors.Is(err, netmon.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

// TestStartTwice: a second Start for a netns this process already
// watches is refused with ErrNotMonitored (two reconcilers would each
// attach the endpoints, and their metrics would collide); once the first is
// stopped, Start works again, adopts what the VM has, and registers its
// metrics again. netmon itself refuses a second Start.
func TestStartTwice(t *testing.T) {
	e := newEnv(t)
	const id = "ft-twice"
	ep := e.addEndpoint(t, "eth0", true)
	fs := &hotplugtest.FakeSandbox{}
	m1, err := shimhook.Start(context.Background(), e.shimConfig(id, fs))
	if err != nil || m1 == nil {
		t.Fatalf("first Start = %v, %v", m1, err)
	}
	series := seriesOf(t, e.reg, id)
	m2, err := shimhook.Start(context.Background(), e.shimConfig(id, fs))
	if m2 != nil || !errors.Is(err, shimhook.ErrNotMonitored) || !strings.Contains(err.Error(), "already watches netns") {
		m2.Stop(context.Background())
		t.Fatalf("second Start = %v, %v; want nil and ErrNotMonitored saying the netns is watched already", m2, err)
	}
	if n := seriesOf(t, e.reg, id); n != series {
		t.Errorf("series %d after the refused Start, %d before", n, series)
	}
	if n := len(fs.CallsOf(hotplugtest.OpAddInterface)); n != 1 {
		t.Errorf("%d AddInterface calls, want 1", n)
	}
	if err := stopWithin(t, m1, waitTimeout); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := m1.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if n := seriesOf(t, e.reg, id); n != 0 {
		t.Errorf("%d series after Stop", n)
	}
	m3 := startShim(t, e.shimConfig(id, fs))
	if got := m3.NICNames(); !slices.Equal(got, []string{"eth0"}) {
		t.Errorf("restarted monitor: Attached = %v", got)
	}
	if n := len(fs.CallsOf(hotplugtest.OpAddInterface)); n != 1 {
		t.Errorf("%d AddInterface calls after the restart, want 1 (adopted)", n)
	}
	if got := metric(t, e.reg, "kata_netmon_interfaces_attached", id); got != 1 {
		t.Errorf("interfaces_attached = %v after the restart", got)
	}
	if got := fs.GuestMACs(); !slices.Equal(got, []string{ep.MAC.String()}) {
		t.Errorf("guest NICs %v, want only %s", got, ep.MAC)
	}

	mon, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := mon.Start(context.Background()); err == nil {
		t.Error("netmon: second Start succeeded")
	}
	mon.Close()
	mon.Close()
}

// TestMetricsRegistration: metrics never stop a monitor. Without a
// sandbox id, or with the id's series already on the registry, Start warns
// once and monitors without metrics; what it did not register it leaves
// alone at Stop.
func TestMetricsRegistration(t *testing.T) {
	e := newEnv(t)
	e.addEndpoint(t, "eth0", true)
	taken, err := metrics.New(e.reg, "ft-taken")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Unregister()
	for _, id := range []string{"", "ft-taken"} {
		t.Run(fmt.Sprintf("id %q", id), func(t *testing.T) {
			e.log.Reset()
			fs := &hotplugtest.FakeSandbox{}
			series := seriesOf(t, e.reg, "ft-taken")
			m, err := shimhook.Start(context.Background(), e.shimConfig(id, fs))
			if err != nil || m == nil {
				t.Fatalf("Start = %v, %v", m, err)
			}
			if got := m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
				t.Errorf("Attached = %v", got)
			}
			if w := e.log.Entries(logrus.WarnLevel, "cannot register metrics"); len(w) != 1 {
				t.Errorf("%d metrics warnings:%s", len(w), e.log.Dump(logrus.WarnLevel))
			}
			if err := stopWithin(t, m, waitTimeout); err != nil {
				t.Errorf("Stop: %v", err)
			}
			if n := seriesOf(t, e.reg, "ft-taken"); n != series {
				t.Errorf("the other registration's series: %d -> %d", series, n)
			}
		})
	}
}
