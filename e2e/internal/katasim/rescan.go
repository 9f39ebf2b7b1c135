package katasim

import (
	"context"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// RescanNetwork of Kata 4.1 (virtcontainers/sandbox.go RescanNetwork
// 341-375, configureGuestNetwork 379-403; network_linux.go addAllEndpoints
// 355-403, scanEndpointsInNs 408-470; network.go
// generateVCNetworkStructures 237-349). The shim runs it after Start; the
// monitor's OneNIC uses it (hotplug.Rescanner) to attach the start-time
// networks of a runtime without the PCI-path fix, since it tells the agent
// each endpoint's own PCI path.

// Rescan timing (sandbox.go 349-350).
const (
	rescanMaxWait = 5 * time.Second
	rescanPoll    = 50 * time.Millisecond
)

// RescanNetwork implements hotplug.Rescanner. It returns at once when the
// sandbox has an endpoint; otherwise it scans the netns now and every 50 ms
// until a scan attached something (then it configures the guest: every
// endpoint with its own PCI path, then all their routes), 5 s passed
// (nil), ctx ended, or a scan failed (that error).
func (s *Sandbox) RescanNetwork(ctx context.Context) (err error) {
	c := &Call{Method: "RescanNetwork", Start: time.Now()}
	defer func() { c.Err = err; s.record(c) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.eps) > 0 {
		return nil
	}
	deadline := time.NewTimer(rescanMaxWait)
	defer deadline.Stop()
	tick := time.NewTicker(rescanPoll)
	defer tick.Stop()
	for {
		if err := s.addAllEndpoints(ctx, c); err != nil {
			return err
		}
		if len(s.eps) > 0 {
			return s.configureGuestNetwork(ctx, c)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			c.logf("no network interfaces found after timeout — networking may be configured by prestart hooks")
			return nil
		case <-tick.C:
		}
	}
}

// addAllEndpoints is one scan: links in dump order; those without an
// address, loopback ones and those already added (by name) are skipped;
// each other one is attached. A failure forgets what this scan added (but
// leaves its NICs, taps and tc in place) and is returned. Then the list is
// sorted by name.
func (s *Sandbox) addAllEndpoints(ctx context.Context, c *Call) error {
	links, err := s.handle.LinkList()
	if err != nil {
		return err
	}
	before := len(s.eps)
	for _, l := range links {
		ni, err := s.networkInfoFromLink(l)
		if err != nil {
			return err
		}
		if !ni.configured || l.Attrs().Flags&net.FlagLoopback != 0 || s.alreadyAdded(ni.name) {
			continue
		}
		if _, err := s.addSingleEndpoint(ctx, c, ni); err != nil {
			s.eps = s.eps[:before]
			return err
		}
	}
	sort.SliceStable(s.eps, func(i, j int) bool { return s.eps[i].Name < s.eps[j].Name })
	return nil
}

// alreadyAdded is endpointAlreadyAdded: a name of an endpoint, its netdev
// id or its tap.
func (s *Sandbox) alreadyAdded(name string) bool {
	for _, ep := range s.eps {
		if ep.Name == name || ep.NetdevID == name || ep.TapName == name {
			return true
		}
	}
	return false
}

// networkInfoFromLink: the link's kind, flags, every address (link-local
// included, loopback addresses dropped later), and its main-table routes
// converted as generateVCNetworkStructures does: routes of protocol kernel
// dropped; Dest the destination's String ("0.0.0.0/0" for a default
// route), Source the preferred source as a bare address, Flags the raw
// rtm_flags (a link without carrier gives RTNH_F_LINKDOWN), Family v6 only
// for AF_INET6.
func (s *Sandbox) networkInfoFromLink(l netlink.Link) (netInfo, error) {
	a := l.Attrs()
	ni := netInfo{scanned: true, name: a.Name, mac: a.HardwareAddr.String(), mtu: uint64(a.MTU), kind: l.Type(), flags: a.RawFlags}
	addrs, err := s.handle.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return ni, err
	}
	for _, ad := range addrs {
		if ad.IP.IsLoopback() {
			continue
		}
		ones, _ := ad.Mask.Size()
		fam := hotplug.FamilyV4
		if ad.IP.To4() == nil {
			fam = hotplug.FamilyV6
		}
		ni.addrs = append(ni.addrs, &hotplug.IPAddress{Family: fam, Address: ad.IP.String(), Mask: fmt.Sprint(ones)})
	}
	ni.configured = len(addrs) > 0 // loopback addresses count here
	routes, err := s.handle.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return ni, err
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		hr := &hotplug.Route{Device: a.Name, Scope: uint32(r.Scope), Flags: uint32(r.Flags), Mtu: uint32(r.MTU), Family: hotplug.FamilyV4}
		if r.Family == unix.AF_INET6 {
			hr.Family = hotplug.FamilyV6
		}
		if r.Dst != nil {
			hr.Dest = r.Dst.String()
		}
		if r.Gw != nil {
			hr.Gateway = r.Gw.String()
		}
		if r.Src != nil {
			hr.Source = r.Src.String()
		}
		ni.routes = append(ni.routes, hr)
	}
	return ni, nil
}

// configureGuestNetwork: UpdateInterface for EVERY endpoint with its own
// PCI path, name and MAC (Type "virtual", RawFlags only IFF_NOARP), then
// one UpdateRoutes with all their routes. No ARP neighbours.
func (s *Sandbox) configureGuestNetwork(ctx context.Context, c *Call) error {
	var routes []*hotplug.Route
	for _, ep := range s.eps {
		inf := &hotplug.Interface{
			Device: ep.Name, Name: ep.Name, IPAddresses: ep.props.addrs, Mtu: ep.props.mtu,
			Type: ep.Kind, RawFlags: ep.props.flags & unix.IFF_NOARP, HwAddr: ep.HwAddr, DevicePath: ep.PCIPath,
		}
		if _, err := s.updateInterface(ctx, c, inf); err != nil {
			return fmt.Errorf("updating interface %s in guest: %w", ep.Name, err)
		}
		for _, r := range ep.props.routes {
			rc := *r
			rc.Device = ep.Name
			routes = append(routes, &rc)
		}
	}
	if len(routes) > 0 {
		if _, err := s.vm.Agent.UpdateRoutes(ctx, toGuestRoutes(routes)); err != nil {
			return fmt.Errorf("updating routes in guest: %w", rpcError(err))
		}
	}
	return nil
}
