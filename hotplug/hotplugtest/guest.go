package hotplugtest

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// GuestAddInterface is the default AddInterface: the guest gains a NIC, even
// one whose MAC it has already (Kata 4.1 checks nothing; see FakeSandbox).
func (f *FakeSandbox) GuestAddInterface(inf *hotplug.Interface) (*hotplug.Interface, error) {
	if inf == nil || inf.HwAddr == "" {
		return nil, fmt.Errorf("fake sandbox: AddInterface needs a MAC")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.guest = append(f.guest, inf.Clone())
	e := Event{Op: "attach", Name: inf.Name, MAC: strings.ToLower(inf.HwAddr), MTU: inf.Mtu}
	for _, a := range inf.IPAddresses {
		if a != nil {
			e.Addresses = append(e.Addresses, a.Address+"/"+a.Mask)
		}
	}
	f.emitLocked(e)
	return inf.Clone(), nil
}

// GuestRemoveInterface is the default RemoveInterface: the first NIC (in plug
// order) whose MAC, in the kernel's spelling, equals inf.HwAddr leaves the
// guest, with the routes through it. Like Kata it returns (nil, nil)
// whether or not it removed anything.
func (f *FakeSandbox) GuestRemoveInterface(inf *hotplug.Interface) (*hotplug.Interface, error) {
	if inf == nil {
		return nil, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.guest, func(g *hotplug.Interface) bool { return kernelMAC(g.HwAddr) == inf.HwAddr })
	if i < 0 {
		return nil, nil
	}
	gone := f.guest[i]
	f.guest = slices.Delete(f.guest, i, i+1)
	if !slices.ContainsFunc(f.guest, func(g *hotplug.Interface) bool { return g.Name == gone.Name }) {
		f.routes = slices.DeleteFunc(f.routes, func(r *hotplug.Route) bool { return r.Device == gone.Name })
	}
	f.emitLocked(Event{Op: "detach", Name: gone.Name, MAC: strings.ToLower(gone.HwAddr)})
	return nil, nil
}

// kernelMAC is mac as the kernel's link reports it and Kata keeps it for
// its endpoint (net.HardwareAddr.String: lower-case, colons); mac itself,
// lower-cased, when it does not parse.
func kernelMAC(mac string) string {
	if hw, err := net.ParseMAC(mac); err == nil {
		return hw.String()
	}
	return strings.ToLower(mac)
}

// GuestInterfaces returns copies of the guest's NICs, in plug order.
func (f *FakeSandbox) GuestInterfaces() []*hotplug.Interface {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*hotplug.Interface, 0, len(f.guest))
	for _, g := range f.guest {
		out = append(out, g.Clone())
	}
	return out
}

// GuestMACs returns the guest NICs' MACs in lower case, sorted; a MAC
// plugged twice appears twice.
func (f *FakeSandbox) GuestMACs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.guest))
	for _, g := range f.guest {
		out = append(out, strings.ToLower(g.HwAddr))
	}
	slices.Sort(out)
	return out
}

// GuestUpdateRoutes is the default UpdateRoutes: the agent's add-or-replace
// by (Dest, Family). It changes nothing and fails if any route names a
// device the guest lacks.
func (f *FakeSandbox) GuestUpdateRoutes(routes []*hotplug.Route) ([]*hotplug.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range routes {
		if r == nil {
			return nil, fmt.Errorf("fake sandbox: nil route")
		}
		if !slices.ContainsFunc(f.guest, func(g *hotplug.Interface) bool { return g.Name == r.Device }) {
			return nil, fmt.Errorf("fake sandbox: route %q via %q: Link not found", r.Dest, r.Device)
		}
	}
	e := Event{Op: "routes"}
	for _, r := range routes {
		c := *r
		i := slices.IndexFunc(f.routes, func(g *hotplug.Route) bool { return g.Dest == r.Dest && g.Family == r.Family })
		if i >= 0 {
			f.routes[i] = &c
		} else {
			f.routes = append(f.routes, &c)
		}
		dest := r.Dest
		if dest == "" {
			dest = "default"
		}
		e.Routes = append(e.Routes, EventRoute{Dest: dest, Gateway: r.Gateway, Device: r.Device})
	}
	f.emitLocked(e)
	return copyRoutes(routes), nil
}

// GuestRoutes returns copies of the guest's routes, in the order they were
// first added.
func (f *FakeSandbox) GuestRoutes() []*hotplug.Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	return copyRoutes(f.routes)
}

// Events returns a copy of the guest's changes so far, as Events.
func (f *FakeSandbox) Events() []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

// emitLocked logs a change of the guest, tells OnEvent and wakes waiters.
func (f *FakeSandbox) emitLocked(e Event) {
	f.events = append(f.events, e)
	if f.OnEvent != nil {
		f.OnEvent(e)
	}
	f.notifyLocked()
}
