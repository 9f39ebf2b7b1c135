package hotplug_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
)

func TestInterfaceFromLink(t *testing.T) {
	tests := []struct {
		name string
		link func() *view.Link
		want *hotplug.Interface
	}{
		{
			name: "IPv4 endpoint",
			link: func() *view.Link {
				return hotplugtest.Endpoint(7, "eth0", "02:42:AC:12:00:02", "172.18.0.2/16")
			},
			want: &hotplug.Interface{
				Device: "eth0", Name: "eth0", Mtu: 1500, HwAddr: "02:42:ac:12:00:02", Type: "veth",
				RawFlags:    hotplugtest.UpRunning,
				IPAddresses: []*hotplug.IPAddress{{Family: hotplug.FamilyV4, Address: "172.18.0.2", Mask: "16"}},
			},
		},
		{
			name: "dual stack, link-local addresses left out, custom MTU",
			link: func() *view.Link {
				l := hotplugtest.Endpoint(8, "eth1", "5e:1f:00:aa:bb:cc",
					"fe80::5c1f:ff:feaa:bbcc/64", "10.10.0.5/24", "169.254.3.4/16", "fd00:dead::5/64")
				l.MTU = 1450
				return l
			},
			want: &hotplug.Interface{
				Device: "eth1", Name: "eth1", Mtu: 1450, HwAddr: "5e:1f:00:aa:bb:cc", Type: "veth",
				RawFlags: hotplugtest.UpRunning,
				IPAddresses: []*hotplug.IPAddress{
					{Family: hotplug.FamilyV4, Address: "10.10.0.5", Mask: "24"},
					{Family: hotplug.FamilyV6, Address: "fd00:dead::5", Mask: "64"},
				},
			},
		},
		{
			name: "host address /32 and /128",
			link: func() *view.Link {
				return hotplugtest.Endpoint(9, "eth2", "02:00:00:00:00:09", "192.0.2.9/32", "2001:db8::9/128")
			},
			want: &hotplug.Interface{
				Device: "eth2", Name: "eth2", Mtu: 1500, HwAddr: "02:00:00:00:00:09", Type: "veth",
				RawFlags: hotplugtest.UpRunning,
				IPAddresses: []*hotplug.IPAddress{
					{Family: hotplug.FamilyV4, Address: "192.0.2.9", Mask: "32"},
					{Family: hotplug.FamilyV6, Address: "2001:db8::9", Mask: "128"},
				},
			},
		},
		{
			name: "macvlan keeps its kind; no address; invalid prefix skipped",
			link: func() *view.Link {
				l := hotplugtest.Endpoint(10, "eth3", "02:00:00:00:00:0a")
				l.Kind = "macvlan"
				l.Addrs = []view.Addr{{}}
				return l
			},
			want: &hotplug.Interface{
				Device: "eth3", Name: "eth3", Mtu: 1500, HwAddr: "02:00:00:00:00:0a", Type: "macvlan",
				RawFlags: hotplugtest.UpRunning,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := hotplug.InterfaceFromLink(tc.link())
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("InterfaceFromLink:\n got  %s\n want %s", fmtInterface(got), fmtInterface(tc.want))
			}
		})
	}
}

func TestRouteFromView(t *testing.T) {
	withSrc := func(r view.Route, src string) view.Route {
		r.Src = netip.MustParseAddr(src)
		return r
	}
	withMeta := func(r view.Route) view.Route {
		r.Scope, r.Flags, r.MTU = 253, 4, 1400
		return r
	}
	tests := []struct {
		name   string
		route  view.Route
		device string
		want   hotplug.Route
	}{
		{
			name:  "IPv4 default: Dest empty",
			route: hotplugtest.DefaultRoute("172.18.0.1", 7), device: "eth0",
			want: hotplug.Route{Dest: "", Gateway: "172.18.0.1", Device: "eth0", Family: hotplug.FamilyV4},
		},
		{
			name:  "IPv6 default: Dest empty, family 1",
			route: hotplugtest.DefaultRoute("fd00::1", 7), device: "eth0",
			want: hotplug.Route{Dest: "", Gateway: "fd00::1", Device: "eth0", Family: hotplug.FamilyV6},
		},
		{
			// The agent would install a preferred source as a source
			// prefix (RTA_SRC): an IPv6 route would only match that source.
			name:  "non-default IPv4 is masked CIDR, preferred source not sent",
			route: withSrc(hotplugtest.StaticRoute("10.5.1.7/16", "172.18.0.254", 7), "172.18.0.2"), device: "eth0",
			want: hotplug.Route{Dest: "10.5.0.0/16", Gateway: "172.18.0.254", Device: "eth0", Family: hotplug.FamilyV4},
		},
		{
			name:  "non-default IPv6 without gateway, scope and MTU passed, flags not",
			route: withMeta(hotplugtest.StaticRoute("fd00:1::17/48", "", 8)), device: "eth1",
			want: hotplug.Route{Dest: "fd00:1::/48", Device: "eth1", Family: hotplug.FamilyV6, Scope: 253, Mtu: 1400},
		},
		{
			name: "onlink kept with a gateway; linkdown (set by the kernel, refused on add) dropped",
			route: func() view.Route {
				r := hotplugtest.StaticRoute("10.6.0.0/16", "10.99.0.1", 7)
				r.Flags = view.RouteFlagOnLink | 0x10
				return r
			}(), device: "eth0",
			want: hotplug.Route{Dest: "10.6.0.0/16", Gateway: "10.99.0.1", Device: "eth0", Family: hotplug.FamilyV4, Flags: 4},
		},
		{
			name: "IPv6 source-specific default: the source prefix in Source",
			route: func() view.Route {
				r := hotplugtest.DefaultRoute("fe80::1", 7)
				r.SrcPrefix = netip.MustParsePrefix("2001:db8::/64")
				return r
			}(), device: "eth0",
			want: hotplug.Route{Gateway: "fe80::1", Device: "eth0", Family: hotplug.FamilyV6, Source: "2001:db8::/64"},
		},
		{
			name: "metric kept for the record",
			route: func() view.Route {
				r := hotplugtest.DefaultRoute("172.18.0.1", 7)
				r.Priority = 100
				return r
			}(), device: "eth0",
			want: hotplug.Route{Gateway: "172.18.0.1", Device: "eth0", Family: hotplug.FamilyV4, Metric: 100},
		},
		{
			name:  "device name is the one given, not the kernel's",
			route: hotplugtest.StaticRoute("192.168.5.0/24", "", 9), device: "eth7",
			want: hotplug.Route{Dest: "192.168.5.0/24", Device: "eth7", Family: hotplug.FamilyV4},
		},
		{
			name:  "host route /32",
			route: hotplugtest.StaticRoute("203.0.113.5/32", "172.18.0.1", 7), device: "eth0",
			want: hotplug.Route{Dest: "203.0.113.5/32", Gateway: "172.18.0.1", Device: "eth0", Family: hotplug.FamilyV4},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := hotplug.RouteFromView(tc.route, tc.device)
			if got == nil || *got != tc.want {
				t.Errorf("RouteFromView:\n got  %+v\n want %+v", got, tc.want)
			}
		})
	}
}

func fmtInterface(inf *hotplug.Interface) string {
	if inf == nil {
		return "<nil>"
	}
	c := *inf
	c.IPAddresses = nil
	s := fmt.Sprintf("%+v addrs:", c)
	for _, a := range inf.IPAddresses {
		s += fmt.Sprintf(" %+v", *a)
	}
	return s
}

func TestInterfaceClone(t *testing.T) {
	if (*hotplug.Interface)(nil).Clone() != nil {
		t.Fatal("Clone of nil is not nil")
	}
	orig := &hotplug.Interface{Name: "eth0", HwAddr: "02:00:00:00:00:01", Mtu: 1500, Type: "veth",
		IPAddresses: []*hotplug.IPAddress{{Family: hotplug.FamilyV4, Address: "10.0.0.2", Mask: "24"}, nil}}
	c := orig.Clone()
	if c == orig || c.Name != orig.Name || c.HwAddr != orig.HwAddr || c.Mtu != orig.Mtu || len(c.IPAddresses) != 1 {
		t.Fatalf("Clone = %+v", c)
	}
	c.IPAddresses[0].Address = "10.0.0.3"
	c.Name = "eth1"
	if orig.IPAddresses[0].Address != "10.0.0.2" || orig.Name != "eth0" {
		t.Fatalf("changing the clone changed the original: %+v %+v", orig, orig.IPAddresses[0])
	}
}
