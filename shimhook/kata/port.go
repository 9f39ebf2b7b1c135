package kata

import (
	"context"

	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"
	pbTypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/shimhook/katarules"
)

// kataPort is Kata's sandbox as katarules.Kata: field copies between Kata's
// protocol types and hotplug's, nothing else (the rules are katarules').
type kataPort struct{ sb vc.VCSandbox }

var _ katarules.Kata = kataPort{}

func (p kataPort) AddInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	out, err := p.sb.AddInterface(ctx, toPBInterface(inf))
	return fromPBInterface(out), err
}

func (p kataPort) RemoveInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	out, err := p.sb.RemoveInterface(ctx, toPBInterface(inf))
	return fromPBInterface(out), err
}

func (p kataPort) ListInterfaces(ctx context.Context) ([]*hotplug.Interface, error) {
	pbs, err := p.sb.ListInterfaces(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*hotplug.Interface, 0, len(pbs))
	for _, pb := range pbs {
		if pb != nil {
			out = append(out, fromPBInterface(pb))
		}
	}
	return out, nil
}

func (p kataPort) UpdateRoutes(ctx context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error) {
	pbs := make([]*pbTypes.Route, 0, len(routes))
	for _, r := range routes {
		pbs = append(pbs, toPBRoute(r))
	}
	out, err := p.sb.UpdateRoutes(ctx, pbs)
	res := make([]*hotplug.Route, 0, len(out))
	for _, r := range out {
		if r != nil {
			res = append(res, fromPBRoute(r))
		}
	}
	return res, err
}

func (p kataPort) RescanNetwork(ctx context.Context) error { return p.sb.RescanNetwork(ctx) }

// pbTypes are protobuf messages: never copy them by value.

func toPBInterface(in *hotplug.Interface) *pbTypes.Interface {
	if in == nil {
		return nil
	}
	out := &pbTypes.Interface{
		Device:     in.Device,
		Name:       in.Name,
		Mtu:        in.Mtu,
		HwAddr:     in.HwAddr,
		DevicePath: in.DevicePath,
		Type:       in.Type,
		RawFlags:   in.RawFlags,
	}
	for _, a := range in.IPAddresses {
		if a != nil {
			out.IPAddresses = append(out.IPAddresses, &pbTypes.IPAddress{Family: pbTypes.IPFamily(a.Family), Address: a.Address, Mask: a.Mask})
		}
	}
	return out
}

func fromPBInterface(in *pbTypes.Interface) *hotplug.Interface {
	if in == nil {
		return nil
	}
	out := &hotplug.Interface{
		Device:     in.Device,
		Name:       in.Name,
		Mtu:        in.Mtu,
		HwAddr:     in.HwAddr,
		DevicePath: in.DevicePath,
		Type:       in.Type,
		RawFlags:   in.RawFlags,
	}
	for _, a := range in.IPAddresses {
		if a != nil {
			out.IPAddresses = append(out.IPAddresses, &hotplug.IPAddress{Family: hotplug.IPFamily(a.Family), Address: a.Address, Mask: a.Mask})
		}
	}
	return out
}

func toPBRoute(in *hotplug.Route) *pbTypes.Route {
	return &pbTypes.Route{
		Dest:    in.Dest,
		Gateway: in.Gateway,
		Device:  in.Device,
		Source:  in.Source,
		Scope:   in.Scope,
		Family:  pbTypes.IPFamily(in.Family),
		Flags:   in.Flags,
		Mtu:     in.Mtu,
	}
}

func fromPBRoute(in *pbTypes.Route) *hotplug.Route {
	return &hotplug.Route{
		Dest:    in.Dest,
		Gateway: in.Gateway,
		Device:  in.Device,
		Source:  in.Source,
		Scope:   in.Scope,
		Family:  hotplug.IPFamily(in.Family),
		Flags:   in.Flags,
		Mtu:     in.Mtu,
	}
}
