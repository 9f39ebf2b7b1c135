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
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/internal/nsfs"
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

// AddInterface implements hotplug.Sandbox like Kata 4.1 with QEMU.
func (s *Sandbox) AddInterface(ctx context.Context, inf *hotplug.Interface) (res *hotplug.Interface, err error) {
	c := &Call{Method: "AddInterface", Arg: inf.Clone(), Start: time.Now()}
	defer func() { c.Result, c.Err = res.Clone(), err; s.record(c) }()
	if inf == nil {
		return nil, errors.New("nil interface")
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	// generateNetInfo.
	if _, err := net.ParseMAC(inf.HwAddr); err != nil {
		return nil, err
	}
	for _, a := range inf.IPAddresses {
		str := fmt.Sprintf("%s/%s", a.Address, a.Mask)
		if _, err := netlink.ParseAddr(str); err != nil {
			return nil, fmt.Errorf("could not parse %q: %v", str, err)
		}
	}
	if s.opts.NoHotplug {
		// Firecracker's HotplugAddDevice.
		return nil, fmt.Errorf("Could not hot add device: unsupported device: %s, type: %v", inf.Name, "NetDev")
	}

	ep, err := s.attach(ctx, c, inf)
	if err != nil {
		// AddEndpoints: a failed endpoint makes Kata forget all of them.
		s.eps = nil
		return nil, err
	}
	s.eps = append(s.eps, ep)

	// Kata's bug: the PCI path of the first endpoint.
	inf.DevicePath = s.eps[0].PCIPath
	t := time.Now()
	wait := s.opts.NICWait
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
		wait = time.Until(dl)
	}
	got, waited, err := s.vm.Agent.UpdateInterface(ctx, toGuestInterface(inf), wait)
	c.Phases = append(c.Phases, Phase{Name: "guest NIC appeared", Took: waited})
	c.phase("agent update_interface", t)
	if err != nil {
		// AddInterface's rollback: detach the endpoint just added.
		if derr := s.detach(c, ep); derr == nil {
			s.eps = s.eps[:len(s.eps)-1]
		} else {
			c.Swallowed = derr
		}
		return nil, err
	}
	return fromGuestInterface(got), nil
}

// tapIndex is Kata's: len(endpoints), or the last endpoint's index + 1 if
// that is larger.
func (s *Sandbox) tapIndex() (int, error) {
	idx := len(s.eps)
	if len(s.eps) > 0 {
		m := regexp.MustCompile("[0-9]+").FindString(s.eps[len(s.eps)-1].Name)
		n, err := strconv.ParseInt(m, 10, 64)
		if err != nil {
			return 0, err
		}
		if idx <= int(n) {
			idx = int(n) + 1
		}
	}
	return idx, nil
}

func (s *Sandbox) attach(ctx context.Context, c *Call, inf *hotplug.Interface) (*Endpoint, error) {
	t := time.Now()
	switch inf.Type {
	case "veth", "device", "macvlan", "ipvlan":
	case "tap", "tuntap", "macvtap":
		return nil, fmt.Errorf("katasim: %s endpoints are not simulated", inf.Type)
	default:
		return nil, fmt.Errorf("Unsupported network interface: %s", inf.Type)
	}
	idx, err := s.tapIndex()
	if err != nil {
		return nil, err
	}
	tapName := fmt.Sprintf("tap%d_kata", idx)

	// setupTCFiltering: the tap first, then the link by name.
	tapf, err := openTap(s.opts.NetNS, tapName)
	if err != nil {
		return nil, fmt.Errorf("Could not create TAP interface: LinkAdd() failed for tuntap name %s: %w", tapName, err)
	}
	defer tapf.Close() // QEMU has its own copy once getfd succeeded
	tap, err := s.handle.LinkByName(tapName)
	if err != nil {
		return nil, fmt.Errorf("Could not create TAP interface: %w", err)
	}
	link, err := s.handle.LinkByName(inf.Name)
	if err != nil {
		return nil, fmt.Errorf("LinkByName() failed for %s: %s", inf.Name, err)
	}
	la := link.Attrs()
	if (inf.Type == "macvlan" || inf.Type == "ipvlan") && link.Type() != inf.Type {
		return nil, fmt.Errorf("Incorrect link type %s, expecting %s", link.Type(), inf.Type)
	}
	ep := &Endpoint{
		Name:      inf.Name,
		HwAddr:    la.HardwareAddr.String(),
		LinkIndex: la.Index,
		Type:      inf.Type,
		TapName:   tapName,
		TapIndex:  tap.Attrs().Index,
		DeviceID:  "virtio-" + randomHex(8),
	}
	if err := s.handle.LinkSetMTU(tap, la.MTU); err != nil {
		return nil, fmt.Errorf("Could not set TAP MTU %d: %s", la.MTU, err)
	}
	if err := s.handle.LinkSetUp(tap); err != nil {
		return nil, fmt.Errorf("Could not enable TAP %s: %s", tapName, err)
	}
	for _, ix := range []int{ep.TapIndex, ep.LinkIndex} {
		if err := s.handle.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ix, Parent: netlink.HANDLE_INGRESS}}); err != nil {
			return nil, fmt.Errorf("Failed to add qdisc for network index %d : %w", ix, err)
		}
	}
	for _, p := range [][2]int{{ep.LinkIndex, ep.TapIndex}, {ep.TapIndex, ep.LinkIndex}} {
		if err := s.handle.FilterAdd(redirect(p[0], p[1])); err != nil {
			return nil, fmt.Errorf("Failed to add filter for index %d : %s", p[0], err)
		}
	}
	t = c.phase("tap+tc", t)

	// hotplugNetDevice.
	for _, p := range s.vm.RootPorts {
		if _, busy := s.busyPorts[p.ID]; !busy {
			ep.Bus, ep.PCIPath = p.ID, p.PCIPath()
			break
		}
	}
	if ep.Bus == "" {
		return nil, fmt.Errorf("no free pcie-root-port (%d in use)", len(s.busyPorts))
	}
	s.fdSeq++
	fdName := fmt.Sprintf("fd%d", s.fdSeq)
	if err := s.vm.QMP.GetFD(ctx, fdName, tapf); err != nil {
		return nil, err
	}
	if _, err := s.vm.QMP.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": tapName, "fd": fdName, "vhost": false}); err != nil {
		_, _ = s.vm.QMP.Execute(context.Background(), "closefd", map[string]any{"fdname": fdName})
		return nil, err
	}
	t = c.phase("getfd+netdev_add", t)
	_, err = s.vm.QMP.Execute(ctx, "device_add", map[string]any{
		"driver": "virtio-net-pci", "id": ep.DeviceID, "netdev": tapName, "mac": ep.HwAddr,
		"bus": ep.Bus, "addr": "0", "romfile": "",
		// Kata with one vCPU: one queue pair, 2N+2 vectors.
		"mq": true, "vectors": 4,
	})
	if err != nil {
		_, _ = s.vm.QMP.Execute(context.Background(), "netdev_del", map[string]any{"id": tapName})
		return nil, err
	}
	s.busyPorts[ep.Bus] = ep.DeviceID
	c.phase("device_add", t)
	return ep, nil
}

func redirect(from, to int) *netlink.U32 {
	// tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0
	//   action mirred egress redirect dev TO
	// (a nil selector is netlink's match-all: one zero key).
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from, Parent: netlink.MakeHandle(0xffff, 0), Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to,
		}},
	}
}

// openTap creates the persistent tap in the sandbox netns and returns one
// queue fd. /dev/net/tun binds a tap to the netns of the thread that opens
// it, so this runs on a fresh locked thread that enters the netns and comes
// back; if coming back fails the thread stays locked and dies with its
// goroutine.
func openTap(nsPath, name string) (*os.File, error) {
	var f *os.File
	err := nsfs.DoPath(nsPath, func() error {
		var err error
		f, err = tunSetIff(name)
		return err
	})
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, err
	}
	return f, nil
}

func tunSetIff(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETPERSIST %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// RemoveInterface implements hotplug.Sandbox like Kata 4.1: the endpoint is
// found by MAC; the result is (nil, nil) whether or not one was removed.
func (s *Sandbox) RemoveInterface(ctx context.Context, inf *hotplug.Interface) (res *hotplug.Interface, err error) {
	c := &Call{Method: "RemoveInterface", Arg: inf.Clone(), Start: time.Now()}
	defer func() { c.Result, c.Err = res.Clone(), err; s.record(c) }()
	if inf == nil {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, ep := range s.eps {
		if ep.HwAddr != inf.HwAddr {
			continue
		}
		if s.opts.NoUnplug {
			// Cloud Hypervisor's HotplugRemoveDevice for a NIC.
			return inf, fmt.Errorf("Could not hot remove device: unsupported device: %s, type: %v", ep.Name, "NetDev")
		}
		if derr := s.detach(c, ep); derr != nil {
			c.Swallowed = derr // Kata logs it and goes on
		} else {
			s.eps = append(s.eps[:i], s.eps[i+1:]...)
		}
		break
	}
	return nil, nil
}

// detach removes the device from QEMU (waiting for the guest to let go),
// then the tc plumbing and the tap.
func (s *Sandbox) detach(c *Call, ep *Endpoint) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.UnplugWait)
	defer cancel()
	t := time.Now()
	mark := s.vm.QMP.EventMark()
	if _, err := s.vm.QMP.Execute(ctx, "device_del", map[string]any{"id": ep.DeviceID}); err != nil {
		return err
	}
	if _, err := s.vm.QMP.WaitEvent(ctx, mark, "DEVICE_DELETED", guest.DeviceDeleted(ep.DeviceID)); err != nil {
		return err
	}
	delete(s.busyPorts, ep.Bus)
	t = c.phase("device_del+DEVICE_DELETED", t)
	if _, err := s.vm.QMP.Execute(ctx, "netdev_del", map[string]any{"id": ep.TapName}); err != nil {
		return err
	}
	t = c.phase("netdev_del", t)

	var errs []error
	if link, err := s.handle.LinkByIndex(ep.LinkIndex); err == nil {
		// The same link (its ifindex), not whatever now has its name.
		errs = append(errs, s.untc(link))
		if err := s.handle.LinkSetDown(link); err != nil {
			errs = append(errs, fmt.Errorf("Could not disable veth %s: %s", ep.Name, err))
		}
	}
	if tap, err := s.handle.LinkByName(ep.TapName); err == nil {
		errs = append(errs, s.untc(tap))
		if err := s.handle.LinkSetDown(tap); err != nil {
			errs = append(errs, fmt.Errorf("Could not disable TAP %s: %s", ep.TapName, err))
		}
		if err := s.handle.LinkDel(tap); err != nil {
			errs = append(errs, fmt.Errorf("Could not remove TAP %s: %s", ep.TapName, err))
		}
	} else {
		errs = append(errs, fmt.Errorf("Could not get TAP interface: %w", err))
	}
	c.phase("tc+tap removed", t)
	return errors.Join(errs...)
}

func (s *Sandbox) untc(link netlink.Link) error {
	filters, err := s.handle.FilterList(link, netlink.MakeHandle(0xffff, 0))
	if err != nil {
		return err
	}
	for _, f := range filters {
		if u, ok := f.(*netlink.U32); ok {
			if err := s.handle.FilterDel(u); err != nil {
				return err
			}
		}
	}
	qdiscs, err := s.handle.QdiscList(link)
	if err != nil {
		return err
	}
	for _, q := range qdiscs {
		if in, ok := q.(*netlink.Ingress); ok {
			if err := s.handle.QdiscDel(in); err != nil {
				return err
			}
		}
	}
	return nil
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
