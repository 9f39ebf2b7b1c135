package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
)

// update_interface as Kata 4.1's agent does it (src/agent/src/rpc.rs
// update_interface 1212-1300, netlink.rs update_interface 110-248), step by
// step, on the guest's kernel. docs/kata-model.md has the rules and why
// each matters to a monitor.

// updateInterface is rpc.rs update_interface: wait for a net device at
// DevicePath (outside the sandbox lock), then, holding it, give the netdev
// at DevicePath the request's MAC ("VFIO MAC reconciliation", agent 3.32.0
// and later), then configure the link that has the MAC. It answers with
// the request itself. notes are what Kata's agent would log at info or warn
// about the reconciliation; waited is the PCI wait.
func (a *agent) updateInterface(inf *guestproto.Interface, timeout time.Duration) (_ *guestproto.Interface, waited time.Duration, notes []string, err error) {
	if inf == nil {
		return nil, 0, nil, errors.New("empty update interface request")
	}
	if timeout <= 0 {
		timeout = defaultHotplugTimeout
	}
	if inf.DevicePath != "" {
		if waited, err = waitPCINet(inf.DevicePath, timeout); err != nil {
			return nil, waited, nil, err
		}
	}
	a.netMu.Lock()
	defer a.netMu.Unlock()
	if inf.DevicePath != "" && inf.HwAddr != "" {
		notes = reconcileMAC(inf.DevicePath, inf.HwAddr)
	}
	if err := kataUpdateInterface(inf); err != nil {
		return nil, waited, notes, fmt.Errorf("update interface: %w", err)
	}
	return inf, waited, notes, nil
}

// reconcileMAC is rpc.rs 1251-1291: the netdev under devPath gets mac.
// Failures are only logged by Kata; they come back as notes here.
func reconcileMAC(devPath, mac string) []string {
	name, err := netDevAt(devPath)
	switch {
	case err != nil:
		return []string{fmt.Sprintf("warn: update_interface: unable to resolve netdev from PCI path, fallback to by-MAC lookup (device-path %s, target-mac %s): %v", devPath, mac, err)}
	case name == "":
		return []string{fmt.Sprintf("info: update_interface: no netdev found for PCI path before by-MAC lookup (device-path %s, target-mac %s)", devPath, mac)}
	}
	prev, err := setLinkMACByName(name, mac)
	if err != nil {
		return []string{fmt.Sprintf("warn: update_interface: VFIO MAC reconciliation failed, fallback to by-MAC lookup (device-path %s, target-mac %s, netdev %s): %v", devPath, mac, name, err)}
	}
	if !strings.EqualFold(prev, mac) {
		return []string{fmt.Sprintf("info: update_interface: %s at %s re-MACed from %s to %s", name, devPath, strings.ToLower(prev), strings.ToLower(mac))}
	}
	return nil
}

// setLinkMACByName is netlink.rs set_link_mac_by_name: nothing when the
// link named ifname has mac already (any case); else, if it is UP, set it
// DOWN, set the MAC with a request carrying the link's header as read
// before (so its old flags come back with it), and set it UP again. It
// returns the link's previous MAC.
func setLinkMACByName(ifname, mac string) (string, error) {
	l, err := getLinkByName(ifname)
	if err != nil {
		return "", err
	}
	prev := l.macString()
	if strings.EqualFold(prev, mac) {
		return prev, nil
	}
	parsed, err := parseMACAddress(mac)
	if err != nil {
		return "", fmt.Errorf("failed to parse MAC address: %s: %w", mac, err)
	}
	if l.up() {
		if err := enableLink(l.hdr.Index, false); err != nil {
			return "", err
		}
	}
	if err := setLink(l.hdr, macAttr(parsed)); err != nil {
		return "", fmt.Errorf("failed to set MAC for interface %s to %s: %w", ifname, mac, err)
	}
	if l.up() {
		if err := enableLink(l.hdr.Index, true); err != nil {
			return "", err
		}
	}
	return prev, nil
}

// kataUpdateInterface is netlink.rs Handle::update_interface:
//  1. the first link (dump order) with the MAC; if none (agent 4.1.0,
//     commit aebdc582ee), the link NAMED like the request is given the MAC
//     and looked up by MAC again;
//  2. that link set DOWN if UP;
//  3. each address added with NLM_F_REPLACE (IPv6 skipped on a stack
//     without it); existing addresses are never removed;
//  4. a link already holding the requested name is set DOWN and renamed
//     "<name>_temp" by a request carrying its old header (its old flags
//     come back);
//  5. the link found by MAC again gets MTU, name, ARP and UP in one
//     request (all or nothing: MTU 0 fails it);
//  6. the displaced link gets our link's former name and is set UP.
func kataUpdateInterface(inf *guestproto.Interface) error {
	l, err := tryFindLinkByMAC(inf.HwAddr)
	if err != nil {
		return err
	}
	if l == nil {
		if _, err := setLinkMACByName(inf.Name, inf.HwAddr); err != nil {
			return err
		}
		if l, err = findLinkByMAC(inf.HwAddr); err != nil {
			return err
		}
	}
	if l.up() {
		if err := enableLink(l.hdr.Index, false); err != nil {
			return err
		}
	}
	v6 := ipv6Supported()
	for _, ip := range inf.IPAddresses {
		if ip == nil {
			continue
		}
		addr := net.ParseIP(ip.Address)
		if addr == nil {
			return fmt.Errorf("invalid IP address syntax: %q", ip.Address)
		}
		mask, err := strconv.ParseUint(ip.Mask, 10, 8)
		if err != nil {
			return fmt.Errorf("invalid mask %q: %w", ip.Mask, err)
		}
		v4 := addr.To4() != nil
		if (v4 && mask > 32) || mask > 128 {
			return fmt.Errorf("invalid prefix %d for %s", mask, ip.Address)
		}
		if !v4 && !v6 {
			continue
		}
		if err := addAddress(l.hdr.Index, addr, int(mask)); err != nil {
			return fmt.Errorf("Failed to add address %s: %v", addr, err)
		}
	}
	var displaced *link
	if l.name != inf.Name {
		if n, err := getLinkByName(inf.Name); err == nil {
			if n.up() {
				if err := enableLink(n.hdr.Index, false); err != nil {
					return err
				}
			}
			temp := n.name + "_temp"
			if err := setLink(n.hdr, nameAttr(temp)); err != nil {
				return fmt.Errorf("Failed to rename interface %s to %swith error: %v", n.name, temp, err)
			}
			displaced = n
		}
	}
	l, err = findLinkByMAC(inf.HwAddr)
	if err != nil {
		return err
	}
	hdr := l.hdr
	if inf.RawFlags&unix.IFF_NOARP == 0 {
		hdr.Flags &^= unix.IFF_NOARP
	} else {
		hdr.Flags |= unix.IFF_NOARP
	}
	hdr.Flags |= unix.IFF_UP
	hdr.Change |= unix.IFF_NOARP | unix.IFF_UP
	if err := setLink(hdr, mtuAttr(uint32(inf.Mtu)), nameAttr(inf.Name)); err != nil {
		return fmt.Errorf("Failure in LinkSetRequest for interface %s: %v", inf.Name, err)
	}
	if displaced != nil {
		hdr := displaced.hdr
		hdr.Flags |= unix.IFF_UP
		hdr.Change |= unix.IFF_UP
		if err := setLink(hdr, nameAttr(l.name)); err != nil {
			return fmt.Errorf("Error swapping back interface name %s to %s: %v", displaced.name, l.name, err)
		}
	}
	return nil
}

// ipv6Supported: "0" in disable_ipv6 of all or default.
func ipv6Supported() bool {
	for _, p := range []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"} {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "0" {
			return true
		}
	}
	return false
}
