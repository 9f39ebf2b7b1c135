package hotplugtest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Kata 4.1 attaches a MAC the guest has already and detaches by MAC the
// first NIC attached, comparing the kernel's spelling of the link's MAC with
// the request's as strings (see FakeSandbox).
func TestDuplicateMACIsKatas(t *testing.T) {
	const mac = "02:42:ac:11:00:02"
	ctx := context.Background()
	f := &FakeSandbox{}
	for _, name := range []string{"eth0", "eth1"} {
		if _, err := f.AddInterface(ctx, &hotplug.Interface{Name: name, HwAddr: mac}); err != nil {
			t.Fatalf("AddInterface(%s, %s): %v; Kata does not refuse a MAC it has", name, mac, err)
		}
	}
	if got := f.GuestMACs(); !slices.Equal(got, []string{mac, mac}) {
		t.Fatalf("guest MACs %v, want %s twice", got, mac)
	}
	if _, err := f.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "", Gateway: "172.17.0.1", Device: "eth0"}}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		hwAddr    string
		wantNames []string
	}{
		{"upper case: no endpoint's MAC equals it", "02:42:AC:11:00:02", []string{"eth0", "eth1"}},
		{"the first one attached goes", mac, []string{"eth1"}},
		{"then the second", mac, nil},
		{"then nothing, and still (nil, nil)", mac, nil},
	}
	for _, tc := range tests {
		res, err := f.RemoveInterface(ctx, &hotplug.Interface{HwAddr: tc.hwAddr})
		if res != nil || err != nil {
			t.Fatalf("%s: RemoveInterface = %v, %v; want nil, nil", tc.name, res, err)
		}
		var got []string
		for _, g := range f.GuestInterfaces() {
			got = append(got, g.Name)
		}
		if !slices.Equal(got, tc.wantNames) {
			t.Fatalf("%s: guest has %v, want %v", tc.name, got, tc.wantNames)
		}
	}
	if r := f.GuestRoutes(); len(r) != 0 {
		t.Errorf("routes %+v left after their NIC went", r)
	}
	var ops []string
	for _, e := range f.Events() {
		ops = append(ops, e.Op+" "+e.Name)
	}
	if want := []string{"attach eth0", "attach eth1", "routes ", "detach eth0", "detach eth1"}; !slices.Equal(ops, want) {
		t.Errorf("events %q, want %q", ops, want)
	}
}

// WaitEvents and WaitFor return as soon as a call or change makes the
// condition true, and a call's At is taken when it starts.
func TestWaitsWakeOnChange(t *testing.T) {
	f := &FakeSandbox{}
	release := make(chan struct{})
	f.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		<-release
		return f.GuestAddInterface(inf)
	}
	before := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := f.AddInterface(context.Background(), &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01"})
		done <- err
	}()
	calls, err := f.WaitCalls(OpAddInterface, 1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if at := calls[0].At; at.Before(before) || at.After(time.Now()) {
		t.Errorf("call At %v, want between %v and now", at, before)
	}
	if n := len(f.Events()); n != 0 {
		t.Fatalf("%d events while the call is blocked", n)
	}
	close(release)
	evs, err := f.WaitEvents(10*time.Second, func(evs []Event) bool { return len(evs) == 1 }, "the attach")
	if err != nil || evs[0].Op != "attach" || evs[0].MAC != "02:00:00:00:00:01" {
		t.Fatalf("WaitEvents = %+v, %v", evs, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
