package katasim

import (
	"context"
	"fmt"
	"time"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
)

// QEMU's NIC hot-plug as Kata drives it (virtcontainers/qemu.go
// hotAddNetDevice 2574-2595, hotplugNetDevice 2597-2669; govmm qmp.go).
// Kata plugs NICs into slots of a pci-bridge ("02/01", "02/02"); the test
// VM has pcie-root-ports instead, one NIC each ("03/00", "04/00"): the
// agent resolves both kinds of path the same way.

// hotplugAddDevice: getfd "fd0" for the queue, netdev_add {type tap, id
// br<N>_kata, fds}, a free slot (the lowest; the endpoint's PCI path is set
// now), device_add {virtio-net-pci, id virtio-<uuid>, mac: the link's MAC
// at attach, mq, vectors 2N+2, romfile ""}. If anything after netdev_add
// fails: netdev_del, and the slot is freed. QEMU answers device_add before
// the guest has probed the NIC.
func (s *Sandbox) hotplugAddDevice(ctx context.Context, c *Call, ep *Endpoint) (err error) {
	if s.opts.NoHotplug {
		// Firecracker's and StratoVirt's HotplugAddDevice for a NIC.
		return fmt.Errorf("Could not hot add device: unsupported device: %s, type: NetDev", ep.Name)
	}
	t := time.Now()
	var names []string
	for i, f := range ep.fds {
		name := fmt.Sprintf("fd%d", i)
		if err := s.vm.QMP.GetFD(ctx, name, f); err != nil {
			return err
		}
		names = append(names, name)
	}
	fds := ""
	for i, n := range names {
		if i > 0 {
			fds += ":"
		}
		fds += n
	}
	if _, err := s.vm.QMP.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": ep.NetdevID, "fds": fds}); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_, _ = s.vm.QMP.Execute(context.Background(), "netdev_del", map[string]any{"id": ep.NetdevID})
		}
	}()
	t = c.phase("getfd+netdev_add", t)
	for _, p := range s.vm.RootPorts {
		if _, busy := s.slots[p.ID]; !busy {
			ep.Bus, ep.PCIPath = p.ID, p.PCIPath()
			break
		}
	}
	if ep.Bus == "" {
		return fmt.Errorf("no free slot on the PCI bridges (%d in use)", len(s.slots))
	}
	s.slots[ep.Bus] = ep.ID
	defer func() {
		if err != nil {
			delete(s.slots, ep.Bus)
		}
	}()
	_, err = s.vm.QMP.Execute(ctx, "device_add", map[string]any{
		"id": ep.DeviceID, "driver": "virtio-net-pci", "romfile": "", "bus": ep.Bus, "addr": "00",
		"mac": ep.HwAddr, "netdev": ep.NetdevID,
		// One vCPU: one queue pair, 2N+2 vectors.
		"mq": true, "vectors": 4,
	})
	if err != nil {
		return err
	}
	c.phase("device_add", t)
	return nil
}

// hotplugRemoveDevice: the slot is freed FIRST (an endpoint not on the
// bridge fails here, before any QMP); device_del, waiting for
// DEVICE_DELETED; netdev_del. A device_del failure skips netdev_del and
// leaves the slot free in Kata's books while the device still holds it.
func (s *Sandbox) hotplugRemoveDevice(c *Call, ep *Endpoint) error {
	if s.opts.NoUnplug {
		// Cloud Hypervisor's HotplugRemoveDevice has no NIC case.
		return fmt.Errorf("Could not hot remove device: unsupported device: %s, type: NetDev", ep.DeviceID)
	}
	if s.slots[ep.Bus] != ep.ID {
		return fmt.Errorf("Unable to hot unplug device %s: not present on bridge", ep.ID)
	}
	delete(s.slots, ep.Bus)
	// Kata waits on the VM's context: no bound. katasim bounds it so that a
	// test cannot hang.
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
	t = c.phase("device_del+DEVICE_DELETED", t)
	if _, err := s.vm.QMP.Execute(ctx, "netdev_del", map[string]any{"id": ep.NetdevID}); err != nil {
		return err
	}
	c.phase("netdev_del", t)
	return nil
}
