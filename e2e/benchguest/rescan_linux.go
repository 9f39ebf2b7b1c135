package benchguest

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

// RescanSandbox is what the upstream loop needs of the sandbox: katasim's
// endpoint list stands for Kata's s.network.Endpoints().
type RescanSandbox interface {
	AddInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error)
	UpdateRoutes(ctx context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error)
	Endpoints() []katasim.Endpoint
}

// Kata 4.1's constants (virtcontainers/sandbox.go, RescanNetwork).
const (
	RescanMaxWait      = 5 * time.Second
	RescanPollInterval = 50 * time.Millisecond
)

// RescanResult says what one Rescan did.
type RescanResult struct {
	Scans    int           // netns listings made
	Found    time.Duration // from the call to the scan that found endpoints (0: none found)
	Attached []string      // link names attached
	TimedOut bool          // 5 s passed with nothing found
}

// Rescan emulates the upstream strategy that Kata 4.1's Go shim runs once
// after Start (pkg/containerd-shim-v2/start.go: `go s.sandbox.RescanNetwork
// (s.ctx)`), as virtcontainers/sandbox.go RescanNetwork and
// network_linux.go scanEndpointsInNs / networkInfoFromLink /
// generateVCNetworkStructures do it:
//
//   - return at once if the sandbox has any endpoint;
//   - every 50 ms for up to 5 s (the first scan at once): list the links of
//     the netns with plain netlink (no events); per link read its addresses
//     (all families), its routes (all families, main table) at that moment;
//     skip links with no address, loopback links and links already added
//     (by name, or by the name of their tap); attach each other link;
//   - as soon as one scan added an endpoint: configure the guest (each
//     interface, then the routes collected by that scan, minus
//     kernel-protocol routes) and return; nothing is rescanned later.
//
// One difference in form, none in effect for one NIC: Kata hot-attaches
// every endpoint of the scan first and tells the agent afterwards
// (configureGuestNetwork); katasim's AddInterface does both for each link,
// the same calls in the same order when the scan finds one link.
func Rescan(ctx context.Context, nsPath string, sb RescanSandbox) (RescanResult, error) {
	var res RescanResult
	if len(sb.Endpoints()) > 0 {
		return res, nil
	}
	start := time.Now()
	deadline := time.NewTimer(RescanMaxWait)
	defer deadline.Stop()
	ticker := time.NewTicker(RescanPollInterval)
	defer ticker.Stop()
	for {
		res.Scans++
		infs, routes, err := scanNetNS(nsPath, sb.Endpoints())
		if err != nil {
			return res, err
		}
		if len(infs) > 0 {
			res.Found = time.Since(start)
			for _, inf := range infs {
				if _, err := sb.AddInterface(ctx, inf); err != nil {
					return res, fmt.Errorf("updating interface %s in guest: %w", inf.Name, err)
				}
				res.Attached = append(res.Attached, inf.Name)
			}
			if len(routes) > 0 {
				if _, err := sb.UpdateRoutes(ctx, routes); err != nil {
					return res, fmt.Errorf("updating routes in guest: %w", err)
				}
			}
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-deadline.C:
			res.TimedOut = true
			return res, nil
		case <-ticker.C:
		}
	}
}

// scanNetNS is one scanEndpointsInNs pass: the interfaces Kata would add
// and the guest routes it would send for them.
func scanNetNS(nsPath string, known []katasim.Endpoint) ([]*hotplug.Interface, []*hotplug.Route, error) {
	h, err := handleAt(nsPath)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, nil, err
	}
	var infs []*hotplug.Interface
	var routes []*hotplug.Route
	for _, link := range links {
		a := link.Attrs()
		addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return nil, nil, err
		}
		rts, err := h.RouteList(link, netlink.FAMILY_ALL)
		if err != nil {
			return nil, nil, err
		}
		if len(addrs) == 0 || a.Flags&net.FlagLoopback != 0 || alreadyAdded(a.Name, known) {
			continue
		}
		inf := &hotplug.Interface{
			Device:   a.Name,
			Name:     a.Name,
			Mtu:      uint64(a.MTU),
			HwAddr:   a.HardwareAddr.String(),
			Type:     link.Type(),
			RawFlags: a.RawFlags & unix.IFF_NOARP,
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
			inf.IPAddresses = append(inf.IPAddresses, &hotplug.IPAddress{Family: fam, Address: ad.IP.String(), Mask: fmt.Sprint(ones)})
		}
		infs = append(infs, inf)
		for _, r := range rts {
			if r.Protocol == unix.RTPROT_KERNEL { // validGuestRoute
				continue
			}
			hr := &hotplug.Route{Device: a.Name, Scope: uint32(r.Scope), Flags: uint32(r.Flags), Mtu: uint32(r.MTU)}
			if r.Dst != nil {
				hr.Dest = r.Dst.String()
			}
			if r.Gw != nil {
				hr.Gateway = r.Gw.String()
			}
			if r.Src != nil {
				hr.Source = r.Src.String()
			}
			if r.Family == unix.AF_INET6 {
				hr.Family = hotplug.FamilyV6
			}
			routes = append(routes, hr)
		}
	}
	return infs, routes, nil
}

// alreadyAdded is endpointAlreadyAdded: by the endpoint's name or its tap's.
func alreadyAdded(name string, known []katasim.Endpoint) bool {
	for _, ep := range known {
		if ep.Name == name || ep.TapName == name {
			return true
		}
	}
	return false
}

// handleAt returns a netlink handle whose sockets are in the netns at
// nsPath (no thread enters it); the caller closes it.
func handleAt(nsPath string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}
