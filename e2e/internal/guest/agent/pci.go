package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// The PCI side of Kata's update_interface: the device path the runtime
// sends ("02/01", "03/00": a slot on the root bus, then slots behind
// bridges), the wait for the net device under it
// (device/network_device_handler.rs wait_for_pci_net_interface) and the
// netdev found there (netlink.rs netdev_name_from_pci_path).

const sysfsDevices = "/sys/devices"

// pxbPCIeRootBusMin: a first segment at or above it names a pxb-pcie root
// complex (linux_abi.rs PXB_PCIE_ROOT_BUS_MIN).
const pxbPCIeRootBusMin = 0x20

// pciSlot is one "SS" or "SS.F" element of a PCI path (pci.rs SlotFn).
type pciSlot struct{ slot, fn int }

func (s pciSlot) String() string { return fmt.Sprintf("%02x.%x", s.slot, s.fn) }

// parsePCIPath is linux_abi.rs pcipath_from_dev_tree_path: "RC/BB/SS" with
// RC >= 0x20 names a pxb-pcie root complex; anything else is a path on
// root complex "00".
func parsePCIPath(devPath string) (rootComplex string, path []pciSlot, err error) {
	segs := strings.Split(devPath, "/")
	rootComplex = "00"
	if len(segs) >= 3 {
		if v, err := strconv.ParseUint(segs[0], 16, 8); err == nil && v >= pxbPCIeRootBusMin {
			rootComplex, segs = segs[0], segs[1:]
		}
	}
	for _, s := range segs {
		slot, fn, _ := strings.Cut(s, ".")
		sv, err := strconv.ParseUint(slot, 16, 8)
		if err != nil || sv > 0x1f {
			return "", nil, fmt.Errorf("Failed to parse PCI path from '%s'", devPath)
		}
		fv := uint64(0)
		if fn != "" {
			if fv, err = strconv.ParseUint(fn, 16, 8); err != nil || fv > 7 {
				return "", nil, fmt.Errorf("Failed to parse PCI path from '%s'", devPath)
			}
		}
		path = append(path, pciSlot{int(sv), int(fv)})
	}
	if len(path) == 0 {
		return "", nil, fmt.Errorf("Failed to parse PCI path from '%s'", devPath)
	}
	return rootComplex, path, nil
}

// pciSysfsPath is device/mod.rs pcipath_to_sysfs, from the root bus's sysfs
// directory: each element but the last must be a bridge, whose downstream
// bus is the one entry of its pci_bus directory.
func pciSysfsPath(rootComplex string, path []pciSlot) (string, error) {
	root := filepath.Join(sysfsDevices, "pci0000:"+rootComplex)
	bus := "0000:00"
	rel := ""
	for i, s := range path {
		rel = filepath.Join(rel, bus+":"+s.String())
		if i == len(path)-1 {
			break
		}
		entries, err := os.ReadDir(filepath.Join(root, rel, "pci_bus"))
		if err != nil || len(entries) != 1 {
			return "", fmt.Errorf("failed to resolve next bus for PCI path element %d (device %s) under root %s: %v", i, bus+":"+s.String(), root, err)
		}
		bus = entries[0].Name()
	}
	return filepath.Join(root, rel), nil
}

// netDevAt returns the netdev under the device at devPath: the first entry
// of its net directory, "" when it has none (netdev_name_from_pci_path).
func netDevAt(devPath string) (string, error) {
	rc, path, err := parsePCIPath(devPath)
	if err != nil {
		return "", fmt.Errorf("invalid PCI path for network interface: %s: %w", devPath, err)
	}
	dev, err := pciSysfsPath(rc, path)
	if err != nil {
		return "", err
	}
	entries, err := os.ReadDir(filepath.Join(dev, "net"))
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("failed to read net dir %s: %w", filepath.Join(dev, "net"), err)
	}
	if len(entries) == 0 {
		return "", nil
	}
	return entries[0].Name(), nil
}

// waitPCINet is wait_for_pci_net_interface: it returns once a net device
// sits under the device at devPath (check_existing matches the
// /sys/class/net symlinks against the device's sysfs path; then a uevent
// adding such a device), or fails after timeout (Kata's
// agent.hotplug_timeout, 3 s by default). A path that does not resolve
// (no bridge at an inner element) fails at once.
func waitPCINet(devPath string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	rc, path, err := parsePCIPath(devPath)
	if err != nil {
		return 0, fmt.Errorf("Invalid PCI path for network interface: %w", err)
	}
	dev, err := pciSysfsPath(rc, path)
	if err != nil {
		return 0, fmt.Errorf("interface not available: %w", err)
	}
	re := regexp.MustCompile(`[./]+` + regexp.QuoteMeta(strings.TrimPrefix(dev, "/sys")) + `/[a-z0-9/]*net/[a-z0-9/]*`)
	present := func() bool {
		entries, err := os.ReadDir("/sys/class/net")
		if err != nil {
			return false
		}
		for _, e := range entries {
			if t, err := os.Readlink(filepath.Join("/sys/class/net", e.Name())); err == nil && re.MatchString(t) {
				return true
			}
		}
		return false
	}
	// Links appear with an RTM_NEWLINK: wake on those, look in sysfs.
	ch := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{ErrorCallback: func(error) {}}); err != nil {
		return 0, fmt.Errorf("interface not available: subscribe to links: %w", err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for !present() {
		select {
		case _, ok := <-ch:
			if !ok {
				return time.Since(start), fmt.Errorf("interface not available: link subscription closed")
			}
		case <-timer.C:
			return time.Since(start), fmt.Errorf("interface not available: Timeout after %v waiting for uevent NetPciMatcher { devpath: %q }", timeout, strings.TrimPrefix(dev, "/sys"))
		}
	}
	return time.Since(start), nil
}
