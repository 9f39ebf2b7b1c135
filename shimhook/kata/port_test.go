package kata

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/proto"

	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"
	pbTypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// The encodings Kata insists on, checked on Kata's own types.
func TestKataEncodings(t *testing.T) {
	if pbTypes.IPFamily_v4 != pbTypes.IPFamily(hotplug.FamilyV4) || pbTypes.IPFamily_v6 != pbTypes.IPFamily(hotplug.FamilyV6) {
		t.Fatalf("Kata's IPFamily v4=%d v6=%d no longer match hotplug's v4=0 v6=1", pbTypes.IPFamily_v4, pbTypes.IPFamily_v6)
	}
	for hv, want := range map[vc.HypervisorType]string{
		vc.QemuHypervisor: hvQEMU, vc.ClhHypervisor: hvCloudHyp, vc.FirecrackerHypervisor: hvFirecracker,
		vc.StratovirtHypervisor: hvStratoVirt, vc.RemoteHypervisor: hvRemote, vc.DragonballHypervisor: hvDragonball,
		vc.VirtframeworkHypervisor: hvVirtframework, vc.MockHypervisor: hvMock,
	} {
		if string(hv) != want {
			t.Errorf("Kata's hypervisor type %q is spelled %q in wire.go", hv, want)
		}
	}
	a := NewAdapter(newFakeKata("x"), vc.QemuHypervisor, "", nil)
	if got := a.Capabilities(); got != (hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true}) {
		t.Errorf("qemu capabilities %+v", got)
	}
	if got := NewAdapter(newFakeKata("x"), vc.ClhHypervisor, "", nil).Capabilities(); got != (hotplug.Capabilities{HotplugNIC: true}) {
		t.Errorf("clh capabilities %+v", got)
	}
	if got := NewAdapter(newFakeKata("x"), vc.FirecrackerHypervisor, "", nil).Capabilities(); got.HotplugNIC {
		t.Errorf("firecracker capabilities %+v", got)
	}
}

func TestInterfaceConversions(t *testing.T) {
	tests := []struct {
		name string
		in   hotplug.Interface
		pb   *pbTypes.Interface
	}{
		{
			name: "veth with v4 and v6",
			in: hotplug.Interface{Device: "eth0", Name: "eth0", Mtu: 1500, HwAddr: "02:42:ac:11:00:02", Type: "veth", RawFlags: 0x80,
				IPAddresses: []*hotplug.IPAddress{
					{Family: hotplug.FamilyV4, Address: "172.17.0.2", Mask: "16"},
					{Family: hotplug.FamilyV6, Address: "fd00::2", Mask: "64"},
				}},
			pb: &pbTypes.Interface{Device: "eth0", Name: "eth0", Mtu: 1500, HwAddr: "02:42:ac:11:00:02", Type: "veth", RawFlags: 0x80,
				IPAddresses: []*pbTypes.IPAddress{
					{Family: pbTypes.IPFamily_v4, Address: "172.17.0.2", Mask: "16"},
					{Family: pbTypes.IPFamily_v6, Address: "fd00::2", Mask: "64"},
				}},
		},
		{
			name: "macvlan, no address, device path kept",
			in:   hotplug.Interface{Device: "eth1", Name: "eth1", HwAddr: "02:00:00:00:00:01", Type: "macvlan", DevicePath: "02/03"},
			pb:   &pbTypes.Interface{Device: "eth1", Name: "eth1", HwAddr: "02:00:00:00:00:01", Type: "macvlan", DevicePath: "02/03"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := toPBInterface(&tt.in)
			if !proto.Equal(got, tt.pb) {
				t.Errorf("to Kata:\n got %v\nwant %v", got, tt.pb)
			}
			back := fromPBInterface(tt.pb)
			if !reflect.DeepEqual(*back, tt.in) {
				t.Errorf("from Kata:\n got %+v\nwant %+v", *back, tt.in)
			}
		})
	}
	if fromPBInterface(nil) != nil {
		t.Error("fromPBInterface(nil) != nil")
	}
}

func TestRouteConversions(t *testing.T) {
	tests := []struct {
		name string
		in   hotplug.Route
		pb   *pbTypes.Route
	}{
		{"default v4: Dest empty", hotplug.Route{Gateway: "172.17.0.1", Device: "eth0", Family: hotplug.FamilyV4},
			&pbTypes.Route{Gateway: "172.17.0.1", Device: "eth0", Family: pbTypes.IPFamily_v4}},
		{"default v6", hotplug.Route{Gateway: "fd00::1", Device: "eth0", Family: hotplug.FamilyV6},
			&pbTypes.Route{Gateway: "fd00::1", Device: "eth0", Family: pbTypes.IPFamily_v6}},
		{"link scope route with source", hotplug.Route{Dest: "172.18.0.0/16", Device: "eth1", Source: "172.18.0.7", Scope: 253, Flags: 4, Mtu: 1400},
			&pbTypes.Route{Dest: "172.18.0.0/16", Device: "eth1", Source: "172.18.0.7", Scope: 253, Flags: 4, Mtu: 1400}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := toPBRoute(&tt.in); !proto.Equal(got, tt.pb) {
				t.Errorf("to Kata:\n got %v\nwant %v", got, tt.pb)
			}
			if back := fromPBRoute(tt.pb); *back != tt.in {
				t.Errorf("from Kata:\n got %+v\nwant %+v", *back, tt.in)
			}
		})
	}
}

func TestAdapterCalls(t *testing.T) {
	ctx := context.Background()
	veth := &hotplug.Interface{Name: "eth0", HwAddr: "02:42:AC:11:00:02", Type: "veth", Mtu: 1500,
		IPAddresses: []*hotplug.IPAddress{{Address: "172.17.0.2", Mask: "255.255.0.0"}}}

	t.Run("AddInterface sends Kata's encoding", func(t *testing.T) {
		k := newFakeKata("sb")
		a := NewAdapter(k, vc.QemuHypervisor, "", nil)
		got, err := a.AddInterface(ctx, veth)
		if err != nil {
			t.Fatal(err)
		}
		if got.HwAddr != "02:42:ac:11:00:02" || got.IPAddresses[0].Mask != "16" || got.IPAddresses[0].Family != hotplug.FamilyV4 {
			t.Errorf("got %+v", got)
		}
		if veth.HwAddr != "02:42:AC:11:00:02" {
			t.Error("the caller's Interface was modified")
		}
	})
	t.Run("a kind Kata refuses never reaches Kata", func(t *testing.T) {
		k := newFakeKata("sb")
		a := NewAdapter(k, vc.QemuHypervisor, "", nil)
		_, err := a.AddInterface(ctx, &hotplug.Interface{Name: "x", HwAddr: "02:00:00:00:00:01", Type: "ifb"})
		if !errors.Is(err, ErrInvalid) || len(k.calls) != 0 {
			t.Errorf("err %v, calls %v", err, k.calls)
		}
	})
	t.Run("failed hotplug names the endpoint-list wipe", func(t *testing.T) {
		k := newFakeKata("sb")
		k.addErr = errors.New("update interface: Link not found (name eth1)")
		log, hook := testLog()
		a := NewAdapter(k, vc.QemuHypervisor, "", log)
		if _, err := a.AddInterface(ctx, veth); err == nil {
			t.Fatal("no error")
		}
		if !logged(hook, logrus.ErrorLevel, "endpoints[0].PciPath()") || !a.SuspectEndpointWipe() {
			t.Errorf("no diagnosis: %v", hook.AllEntries())
		}
	})
	t.Run("re-MACed first NIC is named", func(t *testing.T) {
		k := newFakeKata("sb")
		k.guest["02:00:00:00:00:0a"] = &pbTypes.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:0a"}
		log, hook := testLog()
		a := NewAdapter(&reMACKata{k}, vc.QemuHypervisor, "", log)
		if _, err := a.AddInterface(ctx, &hotplug.Interface{Name: "eth1", HwAddr: "02:00:00:00:00:0b", Type: "veth"}); err != nil {
			t.Fatal(err)
		}
		if !logged(hook, logrus.ErrorLevel, "re-MACed an existing NIC") {
			t.Errorf("no diagnosis: %v", hook.AllEntries())
		}
	})
	t.Run("dead agent is ErrSandboxDead", func(t *testing.T) {
		k := newFakeKata("sb")
		k.listErr = errors.New("Dead agent")
		a := NewAdapter(k, vc.QemuHypervisor, "", nil)
		if _, err := a.ListInterfaces(ctx); !errors.Is(err, hotplug.ErrSandboxDead) {
			t.Errorf("err %v", err)
		}
	})
	t.Run("remove failure names the detach order", func(t *testing.T) {
		k := newFakeKata("sb")
		k.rmErr = errBoom
		log, hook := testLog()
		a := NewAdapter(k, vc.QemuHypervisor, "", log)
		if _, err := a.RemoveInterface(ctx, &hotplug.Interface{Name: "eth1", HwAddr: "02:00:00:00:00:0b"}); !errors.Is(err, errBoom) {
			t.Fatalf("err %v", err)
		}
		if !logged(hook, logrus.ErrorLevel, "HotDetach") {
			t.Errorf("no diagnosis: %v", hook.AllEntries())
		}
	})
	t.Run("RemoveInterface sends the MAC as Kata's endpoints spell it", func(t *testing.T) {
		k := newFakeKata("sb")
		a := NewAdapter(k, vc.QemuHypervisor, "", nil)
		if _, err := a.RemoveInterface(ctx, &hotplug.Interface{Name: "eth1", HwAddr: "02:00:00:00:00:0B"}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.RemoveInterface(ctx, &hotplug.Interface{Name: "eth1", HwAddr: "nope"}); !errors.Is(err, ErrInvalid) {
			t.Errorf("err %v", err)
		}
		if want := []string{"RemoveInterface 02:00:00:00:00:0b"}; !reflect.DeepEqual(k.calls, want) {
			t.Errorf("calls %q, want %q", k.calls, want)
		}
	})
	t.Run("routes are normalised, invalid ones never sent", func(t *testing.T) {
		k := newFakeKata("sb")
		a := NewAdapter(k, vc.QemuHypervisor, "", nil)
		got, err := a.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "0.0.0.0/0", Gateway: "172.17.0.1", Device: "eth0"}})
		if err != nil || len(got) != 1 || got[0].Dest != "" {
			t.Fatalf("got %+v, %v", got, err)
		}
		if _, err := a.UpdateRoutes(ctx, []*hotplug.Route{{Dest: "10.0.0.0/8"}}); !errors.Is(err, ErrInvalid) {
			t.Errorf("err %v", err)
		}
		if len(k.calls) != 1 {
			t.Errorf("calls %v", k.calls)
		}
	})
}

// reMACKata behaves like Kata 4.1 with its agent for a second NIC: the
// agent re-MACs the NIC at the (first endpoint's) PCI path and configures
// it as the new one.
type reMACKata struct{ *fakeKata }

func (r *reMACKata) AddInterface(ctx context.Context, inf *pbTypes.Interface) (*pbTypes.Interface, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.guest, "02:00:00:00:00:0a")
	r.guest[inf.HwAddr] = &pbTypes.Interface{Name: inf.Name, HwAddr: inf.HwAddr}
	r.guest["02:00:00:00:00:0b#new"] = &pbTypes.Interface{Name: "eth0", HwAddr: inf.HwAddr}
	return inf, nil
}
