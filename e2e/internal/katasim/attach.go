package katasim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/internal/nsfs"
)

// AddInterface: Kata 4.1's hot-plug of a sandbox link into the guest.

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
