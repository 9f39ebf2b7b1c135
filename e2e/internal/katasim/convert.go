package katasim

import (
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

func toGuestInterface(in *hotplug.Interface) *guestproto.Interface {
	if in == nil {
		return nil
	}
	out := &guestproto.Interface{
		Device: in.Device, Name: in.Name, Mtu: in.Mtu, HwAddr: in.HwAddr,
		DevicePath: in.DevicePath, Type: in.Type, RawFlags: in.RawFlags,
	}
	for _, a := range in.IPAddresses {
		if a != nil {
			out.IPAddresses = append(out.IPAddresses, &guestproto.IPAddress{Family: guestproto.IPFamily(a.Family), Address: a.Address, Mask: a.Mask})
		}
	}
	return out
}

func fromGuestInterface(in *guestproto.Interface) *hotplug.Interface {
	if in == nil {
		return nil
	}
	out := &hotplug.Interface{
		Device: in.Device, Name: in.Name, Mtu: in.Mtu, HwAddr: in.HwAddr,
		DevicePath: in.DevicePath, Type: in.Type, RawFlags: in.RawFlags,
	}
	for _, a := range in.IPAddresses {
		if a != nil {
			out.IPAddresses = append(out.IPAddresses, &hotplug.IPAddress{Family: hotplug.IPFamily(a.Family), Address: a.Address, Mask: a.Mask})
		}
	}
	return out
}

func toGuestRoutes(in []*hotplug.Route) []*guestproto.Route {
	out := make([]*guestproto.Route, 0, len(in))
	for _, r := range in {
		if r != nil {
			out = append(out, &guestproto.Route{Dest: r.Dest, Gateway: r.Gateway, Device: r.Device, Source: r.Source,
				Scope: r.Scope, Family: guestproto.IPFamily(r.Family), Flags: r.Flags, Mtu: r.Mtu})
		}
	}
	return out
}

func fromGuestRoutes(in []*guestproto.Route) []*hotplug.Route {
	if in == nil {
		return nil
	}
	out := make([]*hotplug.Route, 0, len(in))
	for _, r := range in {
		if r != nil {
			out = append(out, &hotplug.Route{Dest: r.Dest, Gateway: r.Gateway, Device: r.Device, Source: r.Source,
				Scope: r.Scope, Family: hotplug.IPFamily(r.Family), Flags: r.Flags, Mtu: r.Mtu})
		}
	}
	return out
}
