// Command agent is the e2e test agent that runs inside the QEMU guest (started
// by the initramfs's /init). It answers JSON lines (guestproto) on a serial
// port and configures the guest's network the way Kata's agent does
// (src/agent/src/netlink.rs in Kata 4.1): NICs are found by MAC, routes name
// devices by name and are added or replaced, never deleted.
//
// Build it static: CGO_ENABLED=0 go build ./e2e/internal/guest/agent
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
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

// defaultNICTimeout bounds update_interface's wait for the NIC when the
// request gives none (Kata's agent waits on the PCI path for 3 s; TCG is
// slower).
const defaultNICTimeout = 10 * time.Second

func main() {
	port := flag.String("port", "/dev/ttyS1", "serial port to serve on")
	flag.Parse()
	log.SetPrefix("knm-agent: ")
	log.SetFlags(log.Lmicroseconds)

	f, err := os.OpenFile(*port, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		log.Fatalf("open %s: %v", *port, err)
	}
	if err := setRaw(f); err != nil {
		log.Fatalf("set %s raw: %v", *port, err)
	}
	a := &agent{out: f, servers: map[int]*tokenServer{}}
	log.Printf("serving on %s", *port)
	r := bufio.NewReaderSize(f, 1<<16)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			log.Fatalf("read %s: %v", *port, err)
		}
		var req guestproto.Request
		if json.Unmarshal(line, &req) != nil || req.ID == 0 || req.Cmd == "" {
			continue // noise: a half line from before the port was raw
		}
		go a.handle(&req)
	}
}

// setRaw puts the tty in raw mode (no echo, no line editing, no CR/NL
// translation) and drops whatever arrived before.
func setRaw(f *os.File) error {
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CBAUD | unix.CRTSCTS
	t.Cflag |= unix.CS8 | unix.CLOCAL | unix.CREAD | unix.B115200
	t.Ispeed, t.Ospeed = unix.B115200, unix.B115200
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return err
	}
	return unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH)
}

type agent struct {
	outMu sync.Mutex
	out   *os.File

	// netMu serialises network changes, like the sandbox lock in Kata's agent.
	netMu   sync.Mutex
	srvMu   sync.Mutex
	servers map[int]*tokenServer
}

func (a *agent) handle(req *guestproto.Request) {
	start := time.Now()
	resp := &guestproto.Response{Re: req.ID}
	var err error
	switch req.Cmd {
	case guestproto.CmdPing:
	case guestproto.CmdUpdateInterface:
		var waited time.Duration
		resp.Interface, waited, err = a.updateInterface(req.Interface, time.Duration(req.TimeoutMS)*time.Millisecond)
		resp.NICWaitUS = waited.Microseconds()
	case guestproto.CmdListInterfaces:
		resp.Interfaces, err = listInterfaces()
	case guestproto.CmdUpdateRoutes:
		resp.Routes, err = a.updateRoutes(req.Routes)
	case guestproto.CmdListRoutes:
		resp.Routes, err = listRoutes()
	case guestproto.CmdServeToken:
		err = a.serveToken(req.Port, req.Token)
	default:
		err = fmt.Errorf("unknown command %q", req.Cmd)
	}
	if err != nil {
		resp.Error = err.Error()
	}
	if req.Cmd != guestproto.CmdPing {
		log.Printf("%s #%d took %v err=%v", req.Cmd, req.ID, time.Since(start).Round(time.Microsecond), err)
	}
	b, merr := json.Marshal(resp)
	if merr != nil {
		b, _ = json.Marshal(&guestproto.Response{Re: req.ID, Error: merr.Error()})
	}
	b = append(b, '\n')
	a.outMu.Lock()
	defer a.outMu.Unlock()
	if _, err := a.out.Write(b); err != nil {
		log.Fatalf("write reply: %v", err)
	}
}

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

func (a *agent) updateRoutes(routes []*guestproto.Route) ([]*guestproto.Route, error) {
	a.netMu.Lock()
	defer a.netMu.Unlock()
	// Kata adds the routes without a gateway first (the gateway must be
	// reachable), each looked up by device name; the first failure ends
	// the call.
	var direct, viaGW []*guestproto.Route
	for _, r := range routes {
		if r == nil {
			continue
		}
		if r.Gateway == "" {
			direct = append(direct, r)
		} else {
			viaGW = append(viaGW, r)
		}
	}
	for _, r := range append(direct, viaGW...) {
		if err := addRoute(r); err != nil {
			return nil, fmt.Errorf("Failed to update routes: %w", err)
		}
	}
	return listRoutes()
}

func addRoute(r *guestproto.Route) error {
	link, err := netlink.LinkByName(r.Device)
	if err != nil {
		return fmt.Errorf("Link not found (name %q): %w", r.Device, err)
	}
	v6 := r.Family == guestproto.FamilyV6
	nr := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
		Protocol:  unix.RTPROT_BOOT,
		Scope:     netlink.Scope(r.Scope),
		Flags:     int(r.Flags),
		MTU:       int(r.Mtu),
	}
	if r.Dest == "" {
		nr.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if v6 {
			nr.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
	} else {
		_, dst, err := net.ParseCIDR(r.Dest)
		if err != nil {
			ip := net.ParseIP(r.Dest)
			if ip == nil {
				return fmt.Errorf("parse route destination %q: %w", r.Dest, err)
			}
			bits := 32
			if ip.To4() == nil {
				bits = 128
			} else {
				ip = ip.To4()
			}
			dst = &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
		}
		nr.Dst = dst
	}
	if r.Gateway != "" {
		if nr.Gw = net.ParseIP(r.Gateway); nr.Gw == nil {
			return fmt.Errorf("parse gateway %q", r.Gateway)
		}
	}
	if r.Source != "" {
		// A preferred source address ("10.0.0.2" or "10.0.0.2/32").
		src := r.Source
		if i := strings.IndexByte(src, '/'); i >= 0 {
			src = src[:i]
		}
		if nr.Src = net.ParseIP(src); nr.Src == nil {
			return fmt.Errorf("parse route source %q", r.Source)
		}
	}
	if err := netlink.RouteReplace(nr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("Failed to add route (src: %s, dst: %s, gtw: %s, dev: %s): %w", r.Source, r.Dest, r.Gateway, r.Device, err)
	}
	return nil
}

func listRoutes() ([]*guestproto.Route, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	out := make([]*guestproto.Route, 0, len(rs))
	for _, r := range rs {
		hr := &guestproto.Route{
			Device: names[r.LinkIndex],
			Scope:  uint32(r.Scope),
			Flags:  uint32(r.Flags),
			Mtu:    uint32(r.MTU),
		}
		if r.Family == unix.AF_INET6 {
			hr.Family = guestproto.FamilyV6
		}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 {
				hr.Dest = r.Dst.String()
			}
		}
		if r.Gw != nil {
			hr.Gateway = r.Gw.String()
		}
		if r.Src != nil {
			hr.Source = r.Src.String()
		}
		out = append(out, hr)
	}
	return out, nil
}

type tokenServer struct {
	ln    net.Listener
	mu    sync.Mutex
	token string
}

func (a *agent) serveToken(port int, token string) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("bad port %d", port)
	}
	a.srvMu.Lock()
	defer a.srvMu.Unlock()
	if s := a.servers[port]; s != nil {
		s.mu.Lock()
		s.token = token
		s.mu.Unlock()
		return nil
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	s := &tokenServer{ln: ln, token: token}
	a.servers[port] = s
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Printf("token server :%d: %v", port, err)
				return
			}
			s.mu.Lock()
			tok := s.token
			s.mu.Unlock()
			log.Printf("token server :%d: connection from %s", port, c.RemoteAddr())
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, _ = c.Write([]byte(tok + "\n"))
			_ = c.Close()
		}
	}()
	return nil
}
