package recording

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Event is one call a Sandbox received, in the form the watch
// command prints with --json.
type Event struct {
	Op        string       `json:"op"` // "attach", "detach" or "routes"
	Name      string       `json:"name,omitempty"`
	MAC       string       `json:"mac,omitempty"`
	MTU       uint64       `json:"mtu,omitempty"`
	Addresses []string     `json:"addresses,omitempty"` // CIDR strings
	Routes    []EventRoute `json:"routes,omitempty"`
}

// EventRoute is one route of a "routes" event.
type EventRoute struct {
	Dest    string `json:"dest"` // CIDR, or "default"
	Gateway string `json:"gateway,omitempty"`
	Device  string `json:"device"`
	// Metric is the route's metric in the netns. Kata's agent installs
	// every route with the kernel's default; it is printed so a reader
	// sees which of several routes to one destination the guest got.
	Metric uint32 `json:"metric,omitempty"`
}

// Sandbox is a dry-run hotplug.Sandbox: it attaches nothing, keeps the guest
// Kata would have (NICs in attach order, routes added or replaced and never
// deleted) and reports every change to OnEvent. Like Kata's agent, it fails
// a whole UpdateRoutes call that names a device the guest lacks, so a
// monitor bug shows up here as it would in a VM. Safe for concurrent use.
type Sandbox struct {
	// Caps are the capabilities it reports; the zero value means none, so
	// set both for a QEMU-like sandbox.
	Caps hotplug.Capabilities
	// OnEvent, if set, is called for each change, in order, with the
	// sandbox's lock held: it must not call back into the sandbox.
	OnEvent func(Event)

	mu     sync.Mutex
	guest  []*hotplug.Interface      // in attach order
	routes map[string]*hotplug.Route // by family+dest
	events []Event
}

// Events returns every event so far.
func (s *Sandbox) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// Guest returns the interfaces the guest would have now.
func (s *Sandbox) Guest() []*hotplug.Interface {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*hotplug.Interface(nil), s.guest...)
}

func (s *Sandbox) emit(e Event) {
	s.events = append(s.events, e)
	if s.OnEvent != nil {
		s.OnEvent(e)
	}
}

// Capabilities implements hotplug.Sandbox.
func (s *Sandbox) Capabilities() hotplug.Capabilities { return s.Caps }

// AddInterface implements hotplug.Sandbox.
func (s *Sandbox) AddInterface(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	if !s.Caps.HotplugNIC {
		return nil, hotplug.ErrNoHotplug
	}
	if inf == nil || inf.Name == "" || inf.HwAddr == "" {
		return nil, fmt.Errorf("add interface: name and MAC are required: %+v", inf)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Kata attaches a second NIC with a MAC or name the guest has already
	// (virtcontainers/network_linux.go addSingleEndpoint checks neither):
	// so does the dry run, and the event log shows the double attach.
	c := inf.Clone()
	s.guest = append(s.guest, c)
	e := Event{Op: "attach", Name: inf.Name, MAC: strings.ToLower(inf.HwAddr), MTU: inf.Mtu}
	for _, a := range inf.IPAddresses {
		e.Addresses = append(e.Addresses, a.Address+"/"+a.Mask)
	}
	s.emit(e)
	return c, nil
}

// RemoveInterface implements hotplug.Sandbox as Kata 4.1 does
// (virtcontainers/sandbox.go RemoveInterface): the first NIC whose MAC
// equals inf.HwAddr as a string (Kata keeps net.HardwareAddr.String(): lower
// case), and (nil, nil) whether or not anything was removed. Routes through
// the NIC go with it.
func (s *Sandbox) RemoveInterface(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	if !s.Caps.HotUnplugNIC {
		return nil, fmt.Errorf("remove interface: hypervisor cannot hot-unplug NICs")
	}
	if inf == nil {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, g := range s.guest {
		if g.HwAddr == inf.HwAddr {
			s.guest = append(s.guest[:i], s.guest[i+1:]...)
			for k, r := range s.routes {
				if r.Device == g.Name {
					delete(s.routes, k)
				}
			}
			s.emit(Event{Op: "detach", Name: g.Name, MAC: strings.ToLower(g.HwAddr)})
			break
		}
	}
	return nil, nil
}

// ListInterfaces implements hotplug.Sandbox.
func (s *Sandbox) ListInterfaces(context.Context) ([]*hotplug.Interface, error) {
	return s.Guest(), nil
}

// UpdateRoutes implements hotplug.Sandbox with the agent's semantics: add or
// replace, never delete, all or nothing.
func (s *Sandbox) UpdateRoutes(_ context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := map[string]bool{}
	for _, g := range s.guest {
		names[g.Name] = true
	}
	for _, r := range routes {
		if !names[r.Device] {
			return nil, fmt.Errorf("update routes: route to %q names device %q, which the guest lacks", r.Dest, r.Device)
		}
		if r.Dest != "" {
			if _, err := netip.ParsePrefix(r.Dest); err != nil {
				return nil, fmt.Errorf("update routes: %w", err)
			}
		}
	}
	if s.routes == nil {
		s.routes = map[string]*hotplug.Route{}
	}
	e := Event{Op: "routes"}
	for _, r := range routes {
		c := *r
		s.routes[fmt.Sprint(r.Family, "|", r.Dest)] = &c
		dest := r.Dest
		if dest == "" {
			dest = "default"
		}
		e.Routes = append(e.Routes, EventRoute{Dest: dest, Gateway: r.Gateway, Device: r.Device, Metric: r.Metric})
	}
	s.emit(e)
	return routes, nil
}
