package katarules

import (
	"errors"
	"reflect"
	"testing"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

func TestNormalizeInterface(t *testing.T) {
	addr := func(f hotplug.IPFamily, a, m string) *hotplug.IPAddress {
		return &hotplug.IPAddress{Family: f, Address: a, Mask: m}
	}
	tests := []struct {
		name    string
		in      *hotplug.Interface
		want    hotplug.Interface
		wantErr bool
	}{
		{
			name: "docker veth, dual stack",
			in: &hotplug.Interface{Name: "eth0", HwAddr: "02:42:AC:11:00:02", Type: "veth", Mtu: 1500, IPAddresses: []*hotplug.IPAddress{
				addr(hotplug.FamilyV4, "172.17.0.2", "16"), addr(hotplug.FamilyV6, "fd00::2", "64"),
			}},
			want: hotplug.Interface{Device: "eth0", Name: "eth0", HwAddr: "02:42:ac:11:00:02", Type: "veth", Mtu: 1500, IPAddresses: []*hotplug.IPAddress{
				addr(hotplug.FamilyV4, "172.17.0.2", "16"), addr(hotplug.FamilyV6, "fd00::2", "64"),
			}},
		},
		{
			name: "dotted netmask becomes a prefix length, wrong family fixed",
			in: &hotplug.Interface{Name: "eth1", Device: "eth1", HwAddr: "02:00:00:00:00:01", Type: "macvlan", IPAddresses: []*hotplug.IPAddress{
				addr(hotplug.FamilyV6, "10.0.0.5", "255.255.255.0"),
			}},
			want: hotplug.Interface{Name: "eth1", Device: "eth1", HwAddr: "02:00:00:00:00:01", Type: "macvlan", IPAddresses: []*hotplug.IPAddress{
				addr(hotplug.FamilyV4, "10.0.0.5", "24"),
			}},
		},
		{
			// As hotplug.InterfaceFromLink keeps it: the agent parses
			// it as IPv6.
			name: "v4-mapped stays IPv6",
			in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Type: "veth", IPAddresses: []*hotplug.IPAddress{
				addr(hotplug.FamilyV6, "::ffff:10.0.0.5", "120"),
			}},
			want: hotplug.Interface{Name: "eth0", Device: "eth0", HwAddr: "02:00:00:00:00:01", Type: "veth", IPAddresses: []*hotplug.IPAddress{
				addr(hotplug.FamilyV6, "::ffff:10.0.0.5", "120"),
			}},
		},
		{name: "kind Kata refuses", in: &hotplug.Interface{Name: "br0", HwAddr: "02:00:00:00:00:01", Type: "bridge"}, wantErr: true},
		// Kata takes these, but not as the named link (R23, R24).
		{name: "tap", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Type: "tap"}, wantErr: true},
		{name: "tuntap", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Type: "tuntap"}, wantErr: true},
		{name: "ipvlan", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Type: "ipvlan"}, wantErr: true},
		{name: "no kind", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01"}, wantErr: true},
		{name: "no name", in: &hotplug.Interface{HwAddr: "02:00:00:00:00:01", Type: "veth"}, wantErr: true},
		{name: "bad MAC", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00", Type: "veth"}, wantErr: true},
		{name: "EUI-64 MAC", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:00:00:01", Type: "veth"}, wantErr: true},
		{name: "prefix too long", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Type: "veth",
			IPAddresses: []*hotplug.IPAddress{addr(0, "10.0.0.1", "33")}}, wantErr: true},
		{name: "mask word", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Type: "veth",
			IPAddresses: []*hotplug.IPAddress{addr(0, "10.0.0.1", "default")}}, wantErr: true},
		{name: "non-contiguous netmask", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Type: "veth",
			IPAddresses: []*hotplug.IPAddress{addr(0, "10.0.0.1", "255.0.255.0")}}, wantErr: true},
		{name: "zone", in: &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Type: "veth",
			IPAddresses: []*hotplug.IPAddress{addr(1, "fe80::1%eth0", "64")}}, wantErr: true},
		{name: "nil", in: nil, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := normalizeInterface(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestNormalizeRoute(t *testing.T) {
	tests := []struct {
		name    string
		in      hotplug.Route
		want    hotplug.Route
		wantErr bool
	}{
		{name: "default v4 as netlink reports it", in: hotplug.Route{Dest: "0.0.0.0/0", Gateway: "172.17.0.1", Device: "eth0"},
			want: hotplug.Route{Dest: "", Gateway: "172.17.0.1", Device: "eth0", Family: hotplug.FamilyV4}},
		{name: "default v6", in: hotplug.Route{Dest: "::/0", Gateway: "fd00::1", Device: "eth0", Family: hotplug.FamilyV4},
			want: hotplug.Route{Dest: "", Gateway: "fd00::1", Device: "eth0", Family: hotplug.FamilyV6}},
		{name: "the word default", in: hotplug.Route{Dest: "default", Gateway: "10.0.0.1", Device: "eth1"},
			want: hotplug.Route{Gateway: "10.0.0.1", Device: "eth1"}},
		{name: "empty dest kept, family kept without addresses", in: hotplug.Route{Device: "eth0", Family: hotplug.FamilyV6, Scope: 253},
			want: hotplug.Route{Device: "eth0", Family: hotplug.FamilyV6, Scope: 253}},
		{name: "link route masked", in: hotplug.Route{Dest: "172.18.0.7/16", Device: "eth1", Source: "172.18.0.7", Scope: 253, Mtu: 1400, Flags: 4},
			want: hotplug.Route{Dest: "172.18.0.0/16", Device: "eth1", Source: "172.18.0.7", Scope: 253, Mtu: 1400, Flags: 4}},
		{name: "bare address is a host route", in: hotplug.Route{Dest: "fd00::5", Device: "eth0"},
			want: hotplug.Route{Dest: "fd00::5/128", Device: "eth0", Family: hotplug.FamilyV6}},
		{name: "no device", in: hotplug.Route{Dest: "10.0.0.0/8"}, wantErr: true},
		{name: "mixed families", in: hotplug.Route{Dest: "10.0.0.0/8", Gateway: "fd00::1", Device: "eth0"}, wantErr: true},
		{name: "bad gateway", in: hotplug.Route{Gateway: "gw", Device: "eth0"}, wantErr: true},
		{name: "bad family", in: hotplug.Route{Device: "eth0", Family: 2}, wantErr: true},
		{name: "bad dest", in: hotplug.Route{Dest: "10.0.0.0/40", Device: "eth0"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			got, err := normalizeRoute(&in)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// Normalising is idempotent and never panics.
func FuzzNormalizeRoute(f *testing.F) {
	f.Add("0.0.0.0/0", "172.17.0.1", "", "eth0", int32(0))
	f.Add("fd00::/64", "", "fd00::2", "eth1", int32(1))
	f.Add("default", "10.0.0.1", "10.0.0.2", "eth0", int32(0))
	f.Fuzz(func(t *testing.T, dest, gw, src, dev string, fam int32) {
		r := hotplug.Route{Dest: dest, Gateway: gw, Source: src, Device: dev, Family: hotplug.IPFamily(fam)}
		n, err := normalizeRoute(&r)
		if err != nil {
			return
		}
		again, err := normalizeRoute(&n)
		if err != nil || again != n {
			t.Fatalf("not idempotent: %+v -> %+v -> %+v (%v)", r, n, again, err)
		}
	})
}

func FuzzNormalizeInterface(f *testing.F) {
	f.Add("eth0", "02:42:ac:11:00:02", "veth", "172.17.0.2", "16")
	f.Add("eth1", "02:00:00:00:00:01", "macvlan", "fd00::1", "64")
	f.Fuzz(func(t *testing.T, name, mac, kind, address, mask string) {
		in := hotplug.Interface{Name: name, HwAddr: mac, Type: kind, IPAddresses: []*hotplug.IPAddress{{Address: address, Mask: mask}}}
		n, err := normalizeInterface(&in)
		if err != nil {
			return
		}
		again, err := normalizeInterface(&n)
		if err != nil || !reflect.DeepEqual(again, n) {
			t.Fatalf("not idempotent: %+v -> %+v -> %+v (%v)", in, n, again, err)
		}
	})
}
