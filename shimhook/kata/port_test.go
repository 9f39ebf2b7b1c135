package kata

import (
	"context"
	"reflect"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"google.golang.org/protobuf/proto"

	containerdshim "github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/oci"
	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"
	pbTypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols"
	"github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/vcmock"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/shimhook/katarules"
)

// The encodings Kata insists on, checked on Kata's own types.
func TestKataEncodings(t *testing.T) {
	if pbTypes.IPFamily_v4 != pbTypes.IPFamily(hotplug.FamilyV4) || pbTypes.IPFamily_v6 != pbTypes.IPFamily(hotplug.FamilyV6) {
		t.Fatalf("Kata's IPFamily v4=%d v6=%d no longer match hotplug's v4=0 v6=1", pbTypes.IPFamily_v4, pbTypes.IPFamily_v6)
	}
	for hv, want := range map[vc.HypervisorType]string{
		vc.QemuHypervisor: katarules.HypervisorQEMU, vc.ClhHypervisor: katarules.HypervisorCloudHyp,
		vc.FirecrackerHypervisor: katarules.HypervisorFirecracker, vc.StratovirtHypervisor: katarules.HypervisorStratoVirt,
		vc.RemoteHypervisor: katarules.HypervisorRemote, vc.DragonballHypervisor: katarules.HypervisorDragonball,
		vc.VirtframeworkHypervisor: katarules.HypervisorVirtframework, vc.MockHypervisor: katarules.HypervisorMock,
	} {
		if string(hv) != want {
			t.Errorf("Kata's hypervisor type %q is spelled %q in katarules", hv, want)
		}
	}
	for m, want := range map[vc.NetInterworkingModel]string{
		vc.NetXConnectDefaultModel: katarules.ModelTCFilter, vc.NetXConnectTCFilterModel: katarules.ModelTCFilter,
		vc.NetXConnectMacVtapModel: katarules.ModelMacVtap, vc.NetXConnectNoneModel: "none",
	} {
		if got := modelName(m); got != want {
			t.Errorf("modelName(%d) = %q, want %q", m, got, want)
		}
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

// The factory never fails a container it does not monitor, and never
// panics into Kata's shim.
func TestFactoryNotMonitored(t *testing.T) {
	l, hook := test.NewNullLogger()
	log := logrus.NewEntry(l)
	spec := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}
	qemu := &oci.RuntimeConfig{HypervisorType: vc.QemuHypervisor}
	f := NewFactory(Options{Registerer: prometheus.NewRegistry(), Getenv: func(string) (string, bool) { return "", false }})
	tests := []struct {
		name string
		cfg  containerdshim.NetworkMonitorConfig
	}{
		{"no sandbox", containerdshim.NetworkMonitorConfig{RuntimeConfig: qemu, Namespace: "moby", Spec: spec, Logger: log}},
		{"not Docker's", containerdshim.NetworkMonitorConfig{Sandbox: &vcmock.Sandbox{MockID: "x", MockNetNs: "/run/netns/none"},
			RuntimeConfig: qemu, Namespace: "k8s.io", ContainerID: "x", Spec: spec, Logger: log}},
		{"a panic", containerdshim.NetworkMonitorConfig{Sandbox: panickingSandbox{&vcmock.Sandbox{}},
			RuntimeConfig: qemu, Namespace: "moby", ContainerID: "x", Spec: spec, Logger: log}},
	}
	for _, tt := range tests {
		m, err := f(context.Background(), tt.cfg)
		if m != nil || err != nil {
			t.Errorf("%s: factory = %v, %v; want nil, nil", tt.name, m, err)
		}
	}
	if len(hook.AllEntries()) == 0 {
		t.Error("nothing logged")
	}
}

type panickingSandbox struct{ *vcmock.Sandbox }

func (panickingSandbox) GetNetNs() string { panic("boom") }
