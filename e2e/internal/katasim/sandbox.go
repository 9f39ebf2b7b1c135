package katasim

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Endpoint is an attached NIC as Kata's LinuxNetwork keeps it (eps).
type Endpoint struct {
	ID     string // the endpoint's UUID (TapInterface.ID)
	Kind   string // Kata's endpoint type: "virtual" (veth), "macvlan", "ipvlan", "tap"
	Model  Model
	Name   string // VirtIface.Name: the request's Name, the link's name at attach time
	HwAddr string // TAPIface.HardAddr: the link's MAC at attach time (the guest NIC's MAC), lowercase
	// LinkIndex is the link's ifindex at attach. Kata as shipped does not
	// record it; with FixLinkByIndex the teardown finds the link by it.
	LinkIndex int
	// VirtMAC is VirtIface.HardAddr, the random MAC the macvtap model
	// gives the link; SavedAddrs the addresses it took from the link.
	VirtMAC    string
	SavedAddrs []netlink.Addr
	TapIndex   int    // N of tap<N>_kata
	TapName    string // tap<N>_kata: a tun tap (tcfilter) or a macvtap
	NetdevID   string // br<N>_kata: the QEMU netdev id
	DeviceID   string // virtio-<ID>: the QEMU device id
	Bus        string // the pcie-root-port it sits on
	PCIPath    string // Kata's PCI path ("03/00"); "" until hot-plugged

	props netInfo // what generateNetInfo or the scan gave (RescanNetwork reads it)
	fds   []*os.File
}

// Phase is one timed step of a call.
type Phase struct {
	Name string
	Took time.Duration
}

// Call is one recorded call of the hotplug.Sandbox methods (every one,
// Capabilities included), in the order they returned.
type Call struct {
	Method string
	Arg    any // *hotplug.Interface (a copy) or []*hotplug.Route
	Result any
	Err    error
	// Swallowed is what Kata logs but does not return (a failed detach
	// inside RemoveInterface, a rollback's own failure).
	Swallowed error
	// Logs are the lines Kata's runtime and agent would log during the
	// call at info level or above that a test may look for ("Error
	// un-bridging virtual ep", the agent's MAC reconciliation).
	Logs   []string
	Start  time.Time
	Took   time.Duration
	Phases []Phase
}

// Sandbox implements hotplug.Sandbox on a guest.VM the way Kata 4.1's Go
// runtime with QEMU does: see the package doc and docs/kata-model.md.
type Sandbox struct {
	vm    *guest.VM
	opts  Options
	fixes Fix

	ns     netns.NsHandle
	handle *netlink.Handle

	// mu serialises the network methods. Kata takes no lock there (R47);
	// its callers here (the reconciler, OneNIC) never overlap calls, so
	// the lock hides no race of theirs and keeps katasim's own state safe.
	mu    sync.Mutex
	eps   []*Endpoint
	slots map[string]string // root port id -> endpoint ID (Kata's bridge slot map)
	held  []*os.File        // tap and macvtap queue fds: the shim keeps them (R30)

	logMu    sync.Mutex
	calls    []Call
	recorded chan struct{} // closed and replaced on every recorded call
}

var (
	_ hotplug.Sandbox   = (*Sandbox)(nil)
	_ hotplug.Rescanner = (*Sandbox)(nil)
)

// New returns a sandbox for vm. Close releases its netlink handle and the
// queue fds it holds.
func New(vm *guest.VM, opts Options) (*Sandbox, error) {
	if opts.NetNS == "" {
		opts.NetNS = vm.NetNS
	}
	if opts.NetNS == "" {
		return nil, errors.New("katasim: no sandbox netns")
	}
	if opts.NICWait == 0 {
		opts.NICWait = 10 * time.Second
	}
	if opts.UnplugWait == 0 {
		opts.UnplugWait = 10 * time.Second
	}
	ns, err := netns.GetFromPath(opts.NetNS)
	if err != nil {
		return nil, fmt.Errorf("katasim: open netns %s: %w", opts.NetNS, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("katasim: netlink handle in %s: %w", opts.NetNS, err)
	}
	return &Sandbox{vm: vm, opts: opts, fixes: opts.fixes(), ns: ns, handle: h, slots: map[string]string{}, recorded: make(chan struct{})}, nil
}

// Close releases the netlink handle, the netns handle and the queue fds
// the "shim" held. It detaches nothing: the VM and the netns go away with
// the test.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	for _, f := range s.held {
		f.Close()
	}
	s.held = nil
	s.mu.Unlock()
	s.handle.Close()
	return s.ns.Close()
}

// Options returns the options the sandbox runs with (defaults filled in).
func (s *Sandbox) Options() Options { return s.opts }

// Fixes returns the patch series' fixes this sandbox has.
func (s *Sandbox) Fixes() Fix { return s.fixes }

func (s *Sandbox) has(f Fix) bool { return s.fixes&f != 0 }

// OneNICWhy is what production says when it refuses a second NIC on a
// runtime without the PCI-path fix (hotplug.OneNIC's why).
const OneNICWhy = "Kata 4.1 as shipped tells its agent the first NIC's PCI path with every hot-plugged NIC " +
	"(virtcontainers/sandbox.go AddInterface): the agent then does not wait for the new NIC and, unless the guest " +
	"has probed it already, fails (\"No such device\"), and Kata's rollback sets the container's link down. " +
	"Install the runtime with the kata-netmon patch series " +
	"(0001 \"runtime: give the agent the PCI path of the hot-plugged NIC\")"

// Port returns the sandbox as production hands it to the monitor for this
// runtime (shimhook/kata): wrapped in hotplug.OneNIC, which attaches the
// start-time networks through RescanNetwork and refuses any later NIC, when
// the runtime lacks the PCI-path fix; the sandbox itself otherwise. Its
// Capabilities carry the hazards production sets (DetachByName without
// the link-by-index fix, ReMACsLink in the macvtap model).
func (s *Sandbox) Port() hotplug.Sandbox {
	if s.has(FixPCIPath) {
		return s
	}
	return hotplug.OneNIC(s, OneNICWhy)
}

// Capabilities implements hotplug.Sandbox: QEMU hot-plugs and unplugs
// NICs (unless NoHotplug or NoUnplug); DetachByName unless the runtime has
// FixLinkByIndex; ReMACsLink in the macvtap model.
func (s *Sandbox) Capabilities() hotplug.Capabilities {
	c := &Call{Method: "Capabilities", Start: time.Now()}
	caps := hotplug.Capabilities{
		HotplugNIC:   true,
		HotUnplugNIC: !s.opts.NoUnplug,
		DetachByName: !s.has(FixLinkByIndex),
		ReMACsLink:   s.opts.Model == MacVTap,
	}
	if s.opts.NoHotplug {
		caps = hotplug.Capabilities{}
	}
	c.Result = caps
	s.record(c)
	return caps
}

// Calls returns a copy of the call log.
func (s *Sandbox) Calls() []Call {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return append([]Call(nil), s.calls...)
}

// CallsOf returns copies of the returned calls of one method.
func (s *Sandbox) CallsOf(method string) []Call {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.callsOfLocked(method)
}

func (s *Sandbox) callsOfLocked(method string) []Call {
	var out []Call
	for _, c := range s.calls {
		if c.Method == method {
			out = append(out, c)
		}
	}
	return out
}

// Endpoints returns copies of the endpoints the sandbox knows, in Kata's
// order.
func (s *Sandbox) Endpoints() []Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Endpoint, len(s.eps))
	for i, ep := range s.eps {
		out[i] = *ep
		out[i].fds = nil
	}
	return out
}

// WaitCalls waits until n calls of method have returned and returns them.
// A guest-side effect (a NIC gone) can be visible before the call that
// caused it returns (netdev_del and the tc and tap removal come after), so
// tests that look at a call wait for it here.
func (s *Sandbox) WaitCalls(ctx context.Context, method string, n int) ([]Call, error) {
	for {
		s.logMu.Lock()
		got := s.callsOfLocked(method)
		wake := s.recorded
		s.logMu.Unlock()
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return got, fmt.Errorf("waiting for %d %s calls (have %d): %w", n, method, len(got), ctx.Err())
		}
	}
}

func (s *Sandbox) record(c *Call) {
	c.Took = time.Since(c.Start)
	s.logMu.Lock()
	s.calls = append(s.calls, *c)
	close(s.recorded)
	s.recorded = make(chan struct{})
	s.logMu.Unlock()
}

// PhasesString is the call's phases for a log line: "name took, ...",
// rounded to 100 µs.
func (c Call) PhasesString() string {
	var b strings.Builder
	for i, p := range c.Phases {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %v", p.Name, p.Took.Round(100*time.Microsecond))
	}
	return b.String()
}

// Phase returns the duration of the named phase (0 if the call had none).
func (c Call) Phase(name string) time.Duration {
	var d time.Duration
	for _, p := range c.Phases {
		if p.Name == name {
			d += p.Took
		}
	}
	return d
}

func (c *Call) phase(name string, since time.Time) time.Time {
	now := time.Now()
	c.Phases = append(c.Phases, Phase{Name: name, Took: now.Sub(since)})
	return now
}

func (c *Call) logf(format string, args ...any) {
	c.Logs = append(c.Logs, fmt.Sprintf(format, args...))
}

func (c *Call) swallow(err error) {
	if err != nil {
		c.Swallowed = errors.Join(c.Swallowed, err)
	}
}

// ListInterfaces implements hotplug.Sandbox: Kata's agent list, uppercase
// MACs and inverted families included (R68).
func (s *Sandbox) ListInterfaces(ctx context.Context) (res []*hotplug.Interface, err error) {
	c := &Call{Method: "ListInterfaces", Start: time.Now()}
	defer func() { c.Result, c.Err = res, err; s.record(c) }()
	got, err := s.vm.Agent.ListInterfaces(ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	for _, g := range got {
		res = append(res, fromGuestInterface(g))
	}
	return res, nil
}

// UpdateRoutes implements hotplug.Sandbox: nil makes no agent call and
// returns (nil, nil) (R44); otherwise the agent adds or replaces each
// route, gateway-less ones first, flags as the kernel takes them, and
// returns its lossy list_routes (R63-R67).
func (s *Sandbox) UpdateRoutes(ctx context.Context, routes []*hotplug.Route) (res []*hotplug.Route, err error) {
	c := &Call{Method: "UpdateRoutes", Arg: copyRoutes(routes), Start: time.Now()}
	defer func() { c.Result, c.Err = copyRoutes(res), err; s.record(c) }()
	if routes == nil {
		return nil, nil
	}
	got, err := s.vm.Agent.UpdateRoutes(ctx, toGuestRoutes(routes))
	if err != nil {
		return nil, rpcError(err)
	}
	return fromGuestRoutes(got), nil
}

// ListRoutes is Kata's ListRoutes (hotplug.Sandbox does not have it): the
// agent's list_routes, which rewrites every gateway route's Dest (R67).
func (s *Sandbox) ListRoutes(ctx context.Context) ([]*hotplug.Route, error) {
	got, err := s.vm.Agent.ListRoutes(ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	return fromGuestRoutes(got), nil
}

func copyRoutes(rs []*hotplug.Route) []*hotplug.Route {
	if rs == nil {
		return nil
	}
	out := make([]*hotplug.Route, 0, len(rs))
	for _, r := range rs {
		if r != nil {
			c := *r
			out = append(out, &c)
		}
	}
	return out
}

// newUUID is a random (version 4) UUID, as Kata's uuid.Generate.
func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
