package katarules

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/metrics"
)

var allFixes = Fixes{PCIPath: true, LinkByIndex: true, KeepLinkUp: true, UnplugGivenNetNS: true}

func newAdapter(k *fakeKata) hotplug.Sandbox {
	return NewSandbox(k, Config{HypervisorType: HypervisorQEMU, InterworkingModel: ModelTCFilter, Fixes: allFixes}, nil)
}

func veth(name, mac, addr, mask string) *hotplug.Interface {
	return &hotplug.Interface{Name: name, HwAddr: mac, Type: "veth", Mtu: 1500,
		IPAddresses: []*hotplug.IPAddress{{Family: hotplug.FamilyV4, Address: addr, Mask: mask}}}
}

func TestAdapterRefusesWhatKataWouldMisread(t *testing.T) {
	for _, kind := range []string{"tap", "tuntap", "macvtap", "ipvlan", "bridge", ""} {
		t.Run(kind, func(t *testing.T) {
			k := &fakeKata{}
			inf := veth("eth0", "02:42:ac:11:00:02", "172.17.0.2", "16")
			inf.Type = kind
			_, err := newAdapter(k).AddInterface(context.Background(), inf)
			if !errors.Is(err, hotplug.ErrRefused) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrRefused and ErrInvalid", err)
			}
			if got := metrics.Outcome(err); got != metrics.OutcomeRefused {
				t.Errorf("metrics outcome %q, want %q", got, metrics.OutcomeRefused)
			}
			if calls := k.Calls(); len(calls) != 0 {
				t.Errorf("Kata was called: %v", calls)
			}
		})
	}
}

func TestAdapterEncodes(t *testing.T) {
	ctx := context.Background()
	k := &fakeKata{}
	a := newAdapter(k)

	if _, err := a.AddInterface(ctx, veth("eth0", "02:42:AC:11:00:02", "172.17.0.2", "255.255.0.0")); err != nil {
		t.Fatal(err)
	}
	want := &hotplug.Interface{Device: "eth0", Name: "eth0", HwAddr: "02:42:ac:11:00:02", Type: "veth", Mtu: 1500,
		IPAddresses: []*hotplug.IPAddress{{Family: hotplug.FamilyV4, Address: "172.17.0.2", Mask: "16"}}}
	if got := fromGuest(k.guest)[0]; !reflect.DeepEqual(got, want) {
		t.Errorf("Kata was asked for %+v, want %+v", got, want)
	}

	// The agent's list: upper-case MACs, inverted families (R68).
	infs, err := a.ListInterfaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(infs) != 2 || infs[1].HwAddr != "02:42:ac:11:00:02" || infs[1].IPAddresses[0].Family != hotplug.FamilyV4 {
		t.Errorf("ListInterfaces = %+v %+v, want eth0's MAC in lower case and its IPv4 address as v4", infs[0], infs[1])
	}

	// RemoveInterface in the form Kata compares (lower case).
	if _, err := a.RemoveInterface(ctx, &hotplug.Interface{Name: "eth0", HwAddr: "02:42:AC:11:00:02"}); err != nil {
		t.Fatal(err)
	}
	if k.lastRemove.HwAddr != "02:42:ac:11:00:02" || len(k.guest) != 0 {
		t.Errorf("RemoveInterface sent %q, guest left with %v", k.lastRemove.HwAddr, k.guest)
	}
	if _, err := a.RemoveInterface(ctx, &hotplug.Interface{Name: "eth0", HwAddr: "02:42"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("RemoveInterface of a bad MAC: %v, want ErrInvalid", err)
	}

	// Routes as the agent reads them.
	if _, err := a.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "0.0.0.0/0", Gateway: "172.17.0.1", Device: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	if got := *k.lastRoutes[0]; got != (hotplug.Route{Gateway: "172.17.0.1", Device: "eth0"}) {
		t.Errorf("UpdateRoutes sent %+v", got)
	}
	if _, err := a.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "10.0.0.0/8"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a route without device: %v, want ErrInvalid", err)
	}
}

func TestAdapterMarksDeadSandbox(t *testing.T) {
	ctx := context.Background()
	for _, text := range []string{"Dead agent", "ttrpc: closed", "Sandbox not running"} {
		k := &fakeKata{fail: func(op string) error { return errors.New("rpc error: " + text) }}
		a := newAdapter(k)
		_, errAdd := a.AddInterface(ctx, veth("eth0", "02:42:ac:11:00:02", "172.17.0.2", "16"))
		_, errRm := a.RemoveInterface(ctx, &hotplug.Interface{Name: "eth0", HwAddr: "02:42:ac:11:00:02"})
		_, errList := a.ListInterfaces(ctx)
		_, errRoutes := a.UpdateRoutes(ctx, []*hotplug.Route{{Device: "eth0", Gateway: "172.17.0.1"}})
		errRescan := rescanner{a.(*adapter)}.RescanNetwork(ctx)
		for op, err := range map[string]error{"AddInterface": errAdd, "RemoveInterface": errRm, "ListInterfaces": errList,
			"UpdateRoutes": errRoutes, "RescanNetwork": errRescan} {
			if !errors.Is(err, hotplug.ErrSandboxDead) {
				t.Errorf("%s with %q: %v, want ErrSandboxDead", op, text, err)
			}
		}
	}
	k := &fakeKata{fail: func(string) error { return errors.New("QMP: device_add failed") }}
	if _, err := newAdapter(k).AddInterface(ctx, veth("eth0", "02:42:ac:11:00:02", "172.17.0.2", "16")); err == nil || errors.Is(err, hotplug.ErrSandboxDead) {
		t.Errorf("a hotplug failure: %v, want an error that is not ErrSandboxDead", err)
	}
}

func TestCapabilities(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want hotplug.Capabilities
	}{
		{"qemu, all fixes", Config{HypervisorType: HypervisorQEMU, InterworkingModel: ModelTCFilter, Fixes: allFixes},
			hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true}},
		{"qemu, macvtap", Config{HypervisorType: HypervisorQEMU, InterworkingModel: ModelMacVtap, Fixes: allFixes},
			hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, ReMACsLink: true}},
		{"qemu, no fix", Config{HypervisorType: HypervisorQEMU, InterworkingModel: ModelTCFilter},
			hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, DetachByName: true}},
		{"qemu, by index but sets the link down", Config{HypervisorType: HypervisorQEMU, Fixes: Fixes{PCIPath: true, LinkByIndex: true}},
			hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, DetachByName: true}},
		{"qemu, leaves the link up but by name", Config{HypervisorType: HypervisorQEMU, Fixes: Fixes{PCIPath: true, KeepLinkUp: true}},
			hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true, DetachByName: true}},
		{"qemu, a netns the spec named, all fixes", Config{HypervisorType: HypervisorQEMU, Fixes: allFixes, NetNSGiven: true},
			hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true}},
		{"qemu, a netns the spec named, without 0006", Config{HypervisorType: HypervisorQEMU, NetNSGiven: true,
			Fixes: Fixes{PCIPath: true, LinkByIndex: true, KeepLinkUp: true}},
			hotplug.Capabilities{HotplugNIC: true}},
		{"clh", Config{HypervisorType: HypervisorCloudHyp, Fixes: allFixes}, hotplug.Capabilities{HotplugNIC: true}},
		{"firecracker", Config{HypervisorType: HypervisorFirecracker, Fixes: allFixes}, hotplug.Capabilities{}},
		{"stratovirt", Config{HypervisorType: HypervisorStratoVirt, Fixes: allFixes}, hotplug.Capabilities{}},
		{"remote", Config{HypervisorType: HypervisorRemote, Fixes: allFixes}, hotplug.Capabilities{}},
		{"dragonball", Config{HypervisorType: HypervisorDragonball, Fixes: allFixes}, hotplug.Capabilities{}},
		{"mock", Config{HypervisorType: HypervisorMock, Fixes: allFixes}, hotplug.Capabilities{}},
		{"unknown", Config{Fixes: allFixes}, hotplug.Capabilities{}},
	}
	for _, tt := range tests {
		if got := Capabilities(tt.cfg); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
		if got := NewSandbox(&fakeKata{}, tt.cfg, nil).Capabilities(); got != tt.want {
			t.Errorf("%s: the sandbox says %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

// Without the PCI-path fix, no AddInterface reaches Kata while the guest
// has a NIC; the networks there at start are attached by Kata's
// RescanNetwork, each announced with its own PCI path.
func TestWithoutPCIPathFix(t *testing.T) {
	ctx := context.Background()
	eth0 := veth("eth0", "02:42:ac:11:00:02", "172.17.0.2", "16")
	eth1 := veth("eth1", "02:42:ac:12:00:02", "172.18.0.2", "16")
	k := &fakeKata{links: []*hotplug.Interface{eth0, eth1}}
	sb := NewSandbox(k, Config{HypervisorType: HypervisorQEMU, InterworkingModel: ModelTCFilter, Fixes: Fixes{LinkByIndex: true, KeepLinkUp: true}}, nil)

	// Start: two networks. The first attach is Kata's rescan; the second
	// finds its NIC there.
	for _, inf := range []*hotplug.Interface{eth0, eth1} {
		got, err := sb.AddInterface(ctx, inf)
		if err != nil {
			t.Fatalf("attach %s: %v", inf.Name, err)
		}
		if !strings.EqualFold(got.HwAddr, inf.HwAddr) {
			t.Errorf("attach %s returned MAC %s", inf.Name, got.HwAddr)
		}
	}
	for _, c := range k.Calls() {
		if strings.HasPrefix(c, "AddInterface") {
			t.Errorf("Kata's AddInterface was called: %v", k.Calls())
		}
	}
	if n := strings.Count(strings.Join(k.Calls(), ","), "RescanNetwork"); n != 1 {
		t.Errorf("RescanNetwork called %d times, want 1: %v", n, k.Calls())
	}

	// A network connected later is refused, with the fix and the command.
	eth2 := veth("eth2", "02:42:ac:13:00:02", "172.19.0.2", "16")
	_, err := sb.AddInterface(ctx, eth2)
	if !errors.Is(err, hotplug.ErrRefused) {
		t.Fatalf("attach eth2: %v, want ErrRefused", err)
	}
	if metrics.Outcome(err) != metrics.OutcomeRefused {
		t.Errorf("metrics outcome %q", metrics.Outcome(err))
	}
	for _, want := range []string{FixPCIPath, "make kata KATA_SRC="} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not name %q: %v", want, err)
		}
	}
	for _, c := range k.Calls() {
		if strings.HasPrefix(c, "AddInterface") {
			t.Errorf("Kata's AddInterface was called: %v", k.Calls())
		}
	}

	// Once the guest has no NIC left, a network can be attached again.
	for _, inf := range []*hotplug.Interface{eth0, eth1} {
		if _, err := sb.RemoveInterface(ctx, inf); err != nil {
			t.Fatal(err)
		}
	}
	k.links = []*hotplug.Interface{eth2}
	if _, err := sb.AddInterface(ctx, eth2); err != nil {
		t.Fatalf("attach eth2 into an empty guest: %v", err)
	}
}

// With macvtap and without the PCI-path fix, the first NIC is a plain
// AddInterface (Kata's RescanNetwork would re-MAC and strip links the
// monitor has not attached yet), and the others are refused.
func TestWithoutPCIPathFixMacVtap(t *testing.T) {
	ctx := context.Background()
	eth0 := veth("eth0", "02:42:ac:11:00:02", "172.17.0.2", "16")
	eth1 := veth("eth1", "02:42:ac:12:00:02", "172.18.0.2", "16")
	k := &fakeKata{links: []*hotplug.Interface{eth0, eth1}}
	sb := NewSandbox(k, Config{HypervisorType: HypervisorQEMU, InterworkingModel: ModelMacVtap}, nil)
	if _, err := sb.AddInterface(ctx, eth0); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.AddInterface(ctx, eth1); !errors.Is(err, hotplug.ErrRefused) {
		t.Fatalf("attach eth1: %v, want ErrRefused", err)
	}
	calls := strings.Join(k.Calls(), ",")
	if strings.Contains(calls, "RescanNetwork") || strings.Count(calls, "AddInterface") != 1 {
		t.Errorf("calls %s, want one AddInterface and no RescanNetwork", calls)
	}
}
