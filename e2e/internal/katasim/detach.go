package katasim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

// RemoveInterface: Kata 4.1's unplug, in the right order.

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
