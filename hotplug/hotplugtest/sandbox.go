package hotplugtest

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Names of the sandbox operations, as recorded in Call.Op.
const (
	OpAddInterface    = "AddInterface"
	OpRemoveInterface = "RemoveInterface"
	OpListInterfaces  = "ListInterfaces"
	OpUpdateRoutes    = "UpdateRoutes"
)

// Call is one recorded sandbox call, logged when the call starts (so a call
// that is still blocked is already in the log).
type Call struct {
	Op        string
	Interface *hotplug.Interface // AddInterface, RemoveInterface: a copy of the argument
	Routes    []*hotplug.Route   // UpdateRoutes: a copy of the argument
	At        time.Time          // when the call started, read before anything else it does
}

// MAC returns the call's interface MAC in lower case, or "".
func (c Call) MAC() string {
	if c.Interface == nil {
		return ""
	}
	return strings.ToLower(c.Interface.HwAddr)
}

// FakeSandbox is the one in-memory Kata-like hotplug.Sandbox of the
// project's tests and benchmarks (hotplug, shimhook, e2e, the benchmarks).
// Each nil function field falls back to an in-memory guest that behaves like
// Kata 4.1:
//
//   - AddInterface records the interface and returns a copy. It refuses no
//     MAC: a second call with a MAC the guest has already adds a second NIC.
//   - RemoveInterface removes the FIRST NIC (in plug order) whose MAC equals
//     inf.HwAddr, and the routes through it, and returns (nil, nil) whether
//     or not it found one. The comparison is Kata's: the NIC's MAC in the
//     kernel's spelling (lower-case hex, colons, as net.HardwareAddr.String
//     prints it) against inf.HwAddr as given, so an upper-case inf.HwAddr
//     removes nothing.
//   - ListInterfaces returns copies of the guest's NICs as they were added.
//   - UpdateRoutes adds or replaces routes by (Dest, Family), never deletes,
//     and fails the whole call if one route names a device the guest lacks.
//
// The duplicate-MAC rule is Kata 4.1's (kata-containers 7c6ba40c54,
// src/runtime/virtcontainers): Sandbox.AddInterface (sandbox.go:1253) calls
// LinuxNetwork.AddEndpoints, whose addSingleEndpoint (network_linux.go:128)
// appends the new endpoint to n.eps without looking for its MAC among the
// others; Sandbox.RemoveInterface (sandbox.go:1291) walks
// s.network.Endpoints() in order and removes the first endpoint with
// `endpoint.HardwareAddr() == inf.HwAddr`, then stops (break), and
// removeSingleEndpoint (network_linux.go:263) and findEndpoint
// (endpoint.go:246) again take the first match. HardwareAddr()
// (veth_endpoint.go:68) is NetPair.TAPIface.HardAddr, which
// setupTCFiltering (network_linux.go:1125) sets to the link's
// attrs.HardwareAddr.String(). So Kata attaches a duplicate MAC and detaches
// by MAC the first one attached; the monitor, not the sandbox, must refuse a
// second endpoint with a MAC the guest already has.
//
// Every change of the in-memory guest is also kept as an Event, in the
// form the watch command prints (Events, WaitEvents, OnEvent): an attach per
// NIC added, a detach per NIC removed, a routes per UpdateRoutes that
// succeeded. An override that does not call a Guest* method changes nothing
// and logs no event.
//
// Overrides may call the Guest* methods to reach the default behaviour. Caps
// nil means QEMU's: hot-plug and hot-unplug.
//
// The zero value is ready to use. Change the function fields only while no
// call is running (an abandoned call may still be). Every call is logged
// (Calls, WaitCalls) and counted as in flight while it runs (MaxInFlight).
type FakeSandbox struct {
	AddInterfaceFn    func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error)
	RemoveInterfaceFn func(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error)
	ListInterfacesFn  func(ctx context.Context) ([]*hotplug.Interface, error)
	UpdateRoutesFn    func(ctx context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error)
	Caps              *hotplug.Capabilities
	// OnEvent, if set, is called with each event as the guest changes, in
	// order, with the sandbox's lock held: it must not call back into the
	// sandbox.
	OnEvent func(Event)

	mu          sync.Mutex // guards everything below
	guest       []*hotplug.Interface
	routes      []*hotplug.Route
	events      []Event
	calls       []Call
	inFlight    int
	maxInFlight int
	// changed is closed (and replaced) whenever a call is logged or
	// returns, or the guest changes; nil until someone waits.
	changed chan struct{}
}

var _ hotplug.Sandbox = (*FakeSandbox)(nil)

// begin logs a call and counts it in flight; the returned func ends it.
func (f *FakeSandbox) begin(c Call) func() {
	c.At = time.Now()
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.inFlight++
	f.maxInFlight = max(f.maxInFlight, f.inFlight)
	f.notifyLocked()
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		f.inFlight--
		f.notifyLocked()
		f.mu.Unlock()
	}
}

func (f *FakeSandbox) notifyLocked() {
	if f.changed != nil {
		close(f.changed)
		f.changed = nil
	}
}

// AddInterface implements hotplug.Sandbox.
func (f *FakeSandbox) AddInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	defer f.begin(Call{Op: OpAddInterface, Interface: inf.Clone()})()
	if f.AddInterfaceFn != nil {
		return f.AddInterfaceFn(ctx, inf)
	}
	return f.GuestAddInterface(inf)
}

// RemoveInterface implements hotplug.Sandbox.
func (f *FakeSandbox) RemoveInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	defer f.begin(Call{Op: OpRemoveInterface, Interface: inf.Clone()})()
	if f.RemoveInterfaceFn != nil {
		return f.RemoveInterfaceFn(ctx, inf)
	}
	return f.GuestRemoveInterface(inf)
}

// ListInterfaces implements hotplug.Sandbox.
func (f *FakeSandbox) ListInterfaces(ctx context.Context) ([]*hotplug.Interface, error) {
	defer f.begin(Call{Op: OpListInterfaces})()
	if f.ListInterfacesFn != nil {
		return f.ListInterfacesFn(ctx)
	}
	return f.GuestInterfaces(), nil
}

// UpdateRoutes implements hotplug.Sandbox.
func (f *FakeSandbox) UpdateRoutes(ctx context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error) {
	defer f.begin(Call{Op: OpUpdateRoutes, Routes: copyRoutes(routes)})()
	if f.UpdateRoutesFn != nil {
		return f.UpdateRoutesFn(ctx, routes)
	}
	return f.GuestUpdateRoutes(routes)
}

// Capabilities implements hotplug.Sandbox.
func (f *FakeSandbox) Capabilities() hotplug.Capabilities {
	if f.Caps != nil {
		return *f.Caps
	}
	return hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true}
}
