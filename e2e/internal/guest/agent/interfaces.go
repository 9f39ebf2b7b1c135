package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
)

// update_interface and list_interfaces: NICs found by MAC and configured as
// Kata's agent does.

// waitLinkByMAC returns the link whose MAC is mac, waiting for it to appear
// (the virtio-net probe after a hot-plug) until timeout.
func waitLinkByMAC(mac net.HardwareAddr, timeout time.Duration) (netlink.Link, error) {
	ch := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	var errMu sync.Mutex
	var subErr error
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		ListExisting: true,
		// Some errors are not fatal ("Wrong sender portid"); a fatal one
		// closes ch.
		ErrorCallback: func(err error) {
			errMu.Lock()
			subErr = err
			errMu.Unlock()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to links: %w", err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case u, ok := <-ch:
			if !ok {
				errMu.Lock()
				defer errMu.Unlock()
				return nil, fmt.Errorf("link subscription closed: %v", subErr)
			}
			if u.Header.Type != unix.RTM_NEWLINK {
				continue
			}
			if a := u.Link.Attrs(); a.HardwareAddr.String() == mac.String() {
				// Re-read: the update may be older than the link's state.
				return netlink.LinkByIndex(a.Index)
			}
		case <-timer.C:
			return nil, fmt.Errorf("Link not found (hardware address %s) after %v", mac, timeout)
		}
	}
}

func (a *agent) updateInterface(inf *guestproto.Interface, timeout time.Duration) (*guestproto.Interface, time.Duration, error) {
	if inf == nil {
		return nil, 0, errors.New("empty update interface request")
	}
	mac, err := net.ParseMAC(inf.HwAddr)
	if err != nil {
		return nil, 0, fmt.Errorf("Failed to parse MAC address: %s: %w", inf.HwAddr, err)
	}
	if timeout <= 0 {
		timeout = defaultNICTimeout
	}
	// Wait for the NIC outside the lock: other calls go on meanwhile.
	start := time.Now()
	link, err := waitLinkByMAC(mac, timeout)
	waited := time.Since(start)
	if err != nil {
		return nil, waited, err
	}
	inf2, err := a.configure(link, inf)
	return inf2, waited, err
}

func (a *agent) configure(link netlink.Link, inf *guestproto.Interface) (*guestproto.Interface, error) {
	a.netMu.Lock()
	defer a.netMu.Unlock()
	if link.Attrs().Flags&net.FlagUp != 0 {
		if err := netlink.LinkSetDown(link); err != nil {
			return nil, fmt.Errorf("set %s down: %w", link.Attrs().Name, err)
		}
	}
	for _, ip := range inf.IPAddresses {
		addr, err := netlink.ParseAddr(ip.Address + "/" + ip.Mask)
		if err != nil {
			return nil, fmt.Errorf("parse address %s/%s: %w", ip.Address, ip.Mask, err)
		}
		if addr.IP.To4() == nil && !ipv6Enabled() {
			continue // as Kata: skip IPv6 on a stack without it
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return nil, fmt.Errorf("Failed to add address %s: %w", addr.IP, err)
		}
	}
	// Another link holding the requested name is renamed out of the way and
	// given our old name afterwards (Kata swaps them through "<name>_temp").
	oldName := link.Attrs().Name
	var other netlink.Link
	if inf.Name != "" && oldName != inf.Name {
		if o, err := netlink.LinkByName(inf.Name); err == nil {
			other = o
			if err := netlink.LinkSetDown(o); err != nil {
				return nil, err
			}
			if err := netlink.LinkSetName(o, inf.Name+"_temp"); err != nil {
				return nil, fmt.Errorf("Failed to rename interface %s to %s_temp: %w", inf.Name, inf.Name, err)
			}
		}
	}
	if inf.Mtu != 0 {
		if err := netlink.LinkSetMTU(link, int(inf.Mtu)); err != nil {
			return nil, fmt.Errorf("Failure in LinkSetRequest for interface %s: mtu %d: %w", inf.Name, inf.Mtu, err)
		}
	}
	if inf.Name != "" && oldName != inf.Name {
		if err := netlink.LinkSetName(link, inf.Name); err != nil {
			return nil, fmt.Errorf("Failure in LinkSetRequest for interface %s: %w", inf.Name, err)
		}
	}
	arp := netlink.LinkSetARPOn
	if inf.RawFlags&unix.IFF_NOARP != 0 {
		arp = netlink.LinkSetARPOff
	}
	if err := arp(link); err != nil {
		return nil, fmt.Errorf("Failure in LinkSetRequest for interface %s: arp: %w", inf.Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("Failure in LinkSetRequest for interface %s: up: %w", inf.Name, err)
	}
	if other != nil {
		if err := netlink.LinkSetName(other, oldName); err != nil {
			return nil, fmt.Errorf("Error swapping back interface name %s_temp to %s: %w", inf.Name, oldName, err)
		}
		if err := netlink.LinkSetUp(other); err != nil {
			return nil, err
		}
	}
	link, err := netlink.LinkByIndex(link.Attrs().Index)
	if err != nil {
		return nil, err
	}
	return describe(link)
}

func ipv6Enabled() bool {
	for _, p := range []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"} {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "0" {
			return true
		}
	}
	return false
}

func describe(l netlink.Link) (*guestproto.Interface, error) {
	a := l.Attrs()
	inf := &guestproto.Interface{
		Name:     a.Name,
		HwAddr:   a.HardwareAddr.String(),
		Mtu:      uint64(a.MTU),
		Type:     l.Type(),
		RawFlags: a.RawFlags,
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		ones, _ := ad.Mask.Size()
		fam := guestproto.FamilyV4
		if ad.IP.To4() == nil {
			fam = guestproto.FamilyV6
		}
		inf.IPAddresses = append(inf.IPAddresses, &guestproto.IPAddress{Family: fam, Address: ad.IP.String(), Mask: strconv.Itoa(ones)})
	}
	return inf, nil
}

func listInterfaces() ([]*guestproto.Interface, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })
	out := make([]*guestproto.Interface, 0, len(links))
	for _, l := range links {
		inf, err := describe(l)
		if err != nil {
			return nil, err
		}
		out = append(out, inf)
	}
	return out, nil
}
