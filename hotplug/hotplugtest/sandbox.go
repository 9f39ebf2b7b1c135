package hotplugtest

import (
	"context"
	"fmt"
	"slices"
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
}

// MAC returns the call's interface MAC in lower case, or "".
func (c Call) MAC() string {
	if c.Interface == nil {
		return ""
	}
	return strings.ToLower(c.Interface.HwAddr)
}

// FakeSandbox is a hotplug.Sandbox for tests. Each nil function field falls
// back to an in-memory guest that behaves like Kata 4.1:
//
//   - AddInterface records the interface (a second call with the same MAC
//     adds a second NIC, as Kata would) and returns a copy;
//   - RemoveInterface removes the first NIC with the MAC, and the routes
//     through it, and returns (nil, nil) whether or not it found one;
//   - ListInterfaces returns copies of the guest's NICs;
//   - UpdateRoutes adds or replaces routes by (Dest, Family), never deletes,
//     and fails the whole call if one route names a device the guest lacks.
//
// Overrides may call the Guest* methods to reach that default behaviour. Caps
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

	mu          sync.Mutex // guards everything below
	guest       []*hotplug.Interface
	routes      []*hotplug.Route
	calls       []Call
	inFlight    int
	maxInFlight int
	// changed is closed (and replaced) whenever a call is logged or
	// returns; nil until someone waits.
	changed chan struct{}
}

var _ hotplug.Sandbox = (*FakeSandbox)(nil)

// begin logs a call and counts it in flight; the returned func ends it.
func (f *FakeSandbox) begin(c Call) func() {
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

// GuestAddInterface is the default AddInterface: the guest gains a NIC.
func (f *FakeSandbox) GuestAddInterface(inf *hotplug.Interface) (*hotplug.Interface, error) {
	if inf == nil || inf.HwAddr == "" {
		return nil, fmt.Errorf("fake sandbox: AddInterface needs a MAC")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.guest = append(f.guest, inf.Clone())
	f.notifyLocked()
	return inf.Clone(), nil
}

// GuestRemoveInterface is the default RemoveInterface: the first NIC with
// inf's MAC and the routes through it leave the guest. Like Kata it returns
// (nil, nil) whether or not it removed anything.
func (f *FakeSandbox) GuestRemoveInterface(inf *hotplug.Interface) (*hotplug.Interface, error) {
	if inf == nil {
		return nil, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.guest, func(g *hotplug.Interface) bool { return strings.EqualFold(g.HwAddr, inf.HwAddr) })
	if i < 0 {
		return nil, nil
	}
	name := f.guest[i].Name
	f.guest = slices.Delete(f.guest, i, i+1)
	if !slices.ContainsFunc(f.guest, func(g *hotplug.Interface) bool { return g.Name == name }) {
		f.routes = slices.DeleteFunc(f.routes, func(r *hotplug.Route) bool { return r.Device == name })
	}
	f.notifyLocked()
	return nil, nil
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
	for _, r := range routes {
		c := *r
		i := slices.IndexFunc(f.routes, func(g *hotplug.Route) bool { return g.Dest == r.Dest && g.Family == r.Family })
		if i >= 0 {
			f.routes[i] = &c
		} else {
			f.routes = append(f.routes, &c)
		}
	}
	f.notifyLocked()
	return copyRoutes(routes), nil
}

// GuestRoutes returns copies of the guest's routes, in the order they were
// first added.
func (f *FakeSandbox) GuestRoutes() []*hotplug.Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	return copyRoutes(f.routes)
}

// Calls returns a copy of the call log.
func (f *FakeSandbox) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// CallsOf returns the logged calls of one operation.
func (f *FakeSandbox) CallsOf(op string) []Call {
	var out []Call
	for _, c := range f.Calls() {
		if c.Op == op {
			out = append(out, c)
		}
	}
	return out
}

// Ops returns the logged operations in order, for compact assertions.
func (f *FakeSandbox) Ops() []string {
	var out []string
	for _, c := range f.Calls() {
		out = append(out, c.Op)
	}
	return out
}

// InFlight returns how many calls are running now.
func (f *FakeSandbox) InFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inFlight
}

// MaxInFlight returns the most calls ever running at once: more than 1
// means the caller did not serialise its calls.
func (f *FakeSandbox) MaxInFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxInFlight
}

// WaitCalls waits until at least n calls of op ("" for any) have been logged
// and returns them, or fails after timeout with what was logged.
func (f *FakeSandbox) WaitCalls(op string, n int, timeout time.Duration) ([]Call, error) {
	return f.WaitFor(timeout, func(calls []Call) bool {
		return len(filterOp(calls, op)) >= n
	}, fmt.Sprintf("%d %s call(s)", n, opName(op)))
}

// WaitFor waits until cond holds for the call log (it is checked on every
// call start and end, and on every change of the guest), or fails after
// timeout. what names the condition in the error.
func (f *FakeSandbox) WaitFor(timeout time.Duration, cond func([]Call) bool, what string) ([]Call, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		calls := slices.Clone(f.calls)
		if f.changed == nil {
			f.changed = make(chan struct{})
		}
		ch := f.changed
		f.mu.Unlock()
		if cond(calls) {
			return calls, nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return calls, fmt.Errorf("fake sandbox: no %s within %v; calls: %v", what, timeout, summary(calls))
		}
	}
}

func filterOp(calls []Call, op string) []Call {
	if op == "" {
		return calls
	}
	var out []Call
	for _, c := range calls {
		if c.Op == op {
			out = append(out, c)
		}
	}
	return out
}

func opName(op string) string {
	if op == "" {
		return "sandbox"
	}
	return op
}

func summary(calls []Call) []string {
	out := make([]string, 0, len(calls))
	for _, c := range calls {
		if m := c.MAC(); m != "" {
			out = append(out, c.Op+"("+m+")")
			continue
		}
		out = append(out, c.Op)
	}
	return out
}

func copyRoutes(routes []*hotplug.Route) []*hotplug.Route {
	if routes == nil {
		return nil
	}
	out := make([]*hotplug.Route, 0, len(routes))
	for _, r := range routes {
		if r == nil {
			out = append(out, nil)
			continue
		}
		c := *r
		out = append(out, &c)
	}
	return out
}
