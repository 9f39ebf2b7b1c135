// Package katasim is a test hotplug.Sandbox that does what Kata 4.1's Go
// runtime does with QEMU (virtcontainers: sandbox.go AddInterface and
// RemoveInterface, network_linux.go setupTCFiltering, qemu.go
// hotplugNetDevice), on a real guest booted by the guest package.
//
// AddInterface looks the link up by name in the sandbox netns, creates a
// multi-queue vnet_hdr tap "tap<N>_kata" there, mirrors link and tap both ways
// with an ingress qdisc and a u32 match-all filter with a mirred egress
// redirect, passes a tap queue fd to QEMU (getfd), adds a tap netdev and a
// virtio-net-pci device on a free pcie-root-port, then has the guest agent
// configure the NIC, which it finds by MAC.
//
// Kata's behaviour is copied where a monitor can observe it:
//   - the tap index N is max(len(endpoints), last endpoint's N + 1);
//   - a failed attach forgets every endpoint (Kata sets its list to nil), so a
//     later RemoveInterface of an earlier MAC does nothing and the next tap
//     index restarts at 0; the tap created before the failure is left behind;
//   - inf.DevicePath is set to the PCI path of the FIRST endpoint;
//   - the endpoint's MAC is the link's MAC read at attach time, and
//     RemoveInterface compares it with inf.HwAddr as strings;
//   - RemoveInterface returns (nil, nil) whether or not it removed anything
//     (Kata logs detach errors and goes on); they are kept in the call log;
//   - a failed agent update after a successful hot-plug detaches the endpoint;
//   - UpdateRoutes(nil) returns (nil, nil) without asking the agent.
//
// Unlike Kata 4.1 it detaches in the right order: device_del, wait for
// DEVICE_DELETED, netdev_del, then the tc filters, the ingress qdiscs and the
// tap (and it sets the link down, as Kata does).
package katasim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Options configure a Sandbox.
type Options struct {
	// NetNS is the sandbox netns path; default: the VM's.
	NetNS string
	// NoUnplug makes the hypervisor unable to unplug NICs, like Cloud
	// Hypervisor: RemoveInterface fails and Capabilities says so.
	NoUnplug bool
	// NoHotplug makes it unable to hot-plug NICs at all, like Firecracker:
	// AddInterface fails and Capabilities is all false.
	NoHotplug bool
	// NICWait bounds how long the guest waits for a hot-plugged NIC
	// (default 10 s, or less if the context ends sooner).
	NICWait time.Duration
	// UnplugWait bounds the wait for QEMU's DEVICE_DELETED (default 10 s).
	UnplugWait time.Duration
}

// Endpoint is an attached NIC as the sandbox tracks it.
type Endpoint struct {
	Name      string // link name in the sandbox netns at attach time
	HwAddr    string // the link's MAC at attach time (the guest NIC's MAC)
	LinkIndex int    // the link's ifindex in the sandbox netns
	Type      string
	TapName   string // tap<N>_kata, also the QEMU netdev id
	TapIndex  int
	DeviceID  string // QEMU device id
	Bus       string // pcie-root-port id
	PCIPath   string
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
	// Swallowed is an error Kata would log but not return (detach).
	Swallowed error
	Start     time.Time
	Took      time.Duration
	Phases    []Phase
}

// Sandbox implements hotplug.Sandbox on a guest.VM.
type Sandbox struct {
	vm   *guest.VM
	opts Options

	ns     netns.NsHandle
	handle *netlink.Handle

	// mu serialises network changes (Kata holds the sandbox lock).
	mu        sync.Mutex
	eps       []*Endpoint
	busyPorts map[string]string // root port id -> device id
	fdSeq     int

	logMu    sync.Mutex
	calls    []Call
	recorded chan struct{} // closed and replaced on every recorded call
}

var _ hotplug.Sandbox = (*Sandbox)(nil)

// New returns a sandbox for vm. Close releases its netlink handle.
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
	return &Sandbox{vm: vm, opts: opts, ns: ns, handle: h, busyPorts: map[string]string{}, recorded: make(chan struct{})}, nil
}

// Close releases the netlink handle and the netns handle. It detaches
// nothing: the VM and the netns go away with the test.
func (s *Sandbox) Close() error {
	s.handle.Close()
	return s.ns.Close()
}

// Capabilities implements hotplug.Sandbox.
func (s *Sandbox) Capabilities() hotplug.Capabilities {
	c := &Call{Method: "Capabilities", Start: time.Now()}
	caps := hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: !s.opts.NoUnplug}
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

// Endpoints returns copies of the endpoints the sandbox knows.
func (s *Sandbox) Endpoints() []Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Endpoint, len(s.eps))
	for i, ep := range s.eps {
		out[i] = *ep
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

func (c *Call) phase(name string, since time.Time) time.Time {
	now := time.Now()
	c.Phases = append(c.Phases, Phase{Name: name, Took: now.Sub(since)})
	return now
}

// ListInterfaces implements hotplug.Sandbox: the guest's view.
func (s *Sandbox) ListInterfaces(ctx context.Context) (res []*hotplug.Interface, err error) {
	c := &Call{Method: "ListInterfaces", Start: time.Now()}
	defer func() { c.Result, c.Err = res, err; s.record(c) }()
	got, err := s.vm.Agent.ListInterfaces(ctx)
	if err != nil {
		return nil, err
	}
	for _, g := range got {
		res = append(res, fromGuestInterface(g))
	}
	return res, nil
}

// UpdateRoutes implements hotplug.Sandbox: the agent adds or replaces each
// route (a route naming a device the guest lacks fails the call) and
// returns the guest's routes.
func (s *Sandbox) UpdateRoutes(ctx context.Context, routes []*hotplug.Route) (res []*hotplug.Route, err error) {
	c := &Call{Method: "UpdateRoutes", Arg: copyRoutes(routes), Start: time.Now()}
	defer func() { c.Result, c.Err = copyRoutes(res), err; s.record(c) }()
	if routes == nil {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	got, err := s.vm.Agent.UpdateRoutes(ctx, toGuestRoutes(routes))
	return fromGuestRoutes(got), err
}

// ListRoutes returns the guest's main routing table (Dest "" for a default
// route). Kata has it too; hotplug.Sandbox does not.
func (s *Sandbox) ListRoutes(ctx context.Context) ([]*hotplug.Route, error) {
	got, err := s.vm.Agent.ListRoutes(ctx)
	return fromGuestRoutes(got), err
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

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
