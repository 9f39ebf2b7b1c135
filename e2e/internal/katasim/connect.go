package katasim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
)

// The host side of an endpoint: xConnectVMNetwork and xDisconnectVMNetwork
// (virtcontainers/network_linux.go 851-906) with the tcfilter model
// (setupTCFiltering 1084-1154, removeTCFiltering 1311-1354), the macvtap
// model (tapNetworkPair 987-1082, untapNetworkPair 1267-1309) and the tap
// endpoint (tap_endpoint.go tapNetwork, unTapNetwork). Kata runs these in
// the sandbox netns (doNetNS); katasim uses a netlink handle bound there.
// queues is 1 (one vCPU) and vhost-net is off (disable_vhost_net: these
// machines have no /dev/vhost-net).

// xConnect wires the endpoint's link (or, for a tap endpoint, a new tap) to
// a tap the VM will use.
func (s *Sandbox) xConnect(c *Call, ep *Endpoint) error {
	switch {
	case ep.Kind == "tap":
		return s.tapNetwork(ep)
	case ep.Model == MacVTap:
		return s.tapNetworkPair(c, ep)
	}
	return s.setupTCFiltering(c, ep)
}

// failStep is Options.FailTapStep's verdict on step.
func (s *Sandbox) failStep(step TapStep) error {
	if s.opts.FailTapStep == nil {
		return nil
	}
	return s.opts.FailTapStep(step)
}

// release closes queue fds that a failed tap setup opened and that the
// "shim" would otherwise hold (FixUndoPartialTap).
func (s *Sandbox) release(fds []*os.File) {
	for _, f := range fds {
		s.held = slices.DeleteFunc(s.held, func(h *os.File) bool { return h == f })
		f.Close()
	}
}

// xDisconnect undoes xConnect. linkDown is false for the undo of a failed
// hot-plug (FixForgetFailedOnly) and with FixKeepLinkUp: the link stays up.
func (s *Sandbox) xDisconnect(ep *Endpoint, linkDown bool) error {
	switch {
	case ep.Kind == "tap":
		return s.unTapNetwork(ep)
	case ep.Model == MacVTap:
		return s.untapNetworkPair(ep, linkDown)
	}
	return s.removeTCFiltering(ep, linkDown)
}

// linkForEndpoint is getLinkForEndpoint: the link by the name it had at
// attach (VirtIface.Name) - whatever link holds that name now - or, with
// FixLinkByIndex and an index recorded, by that index. macvlan and ipvlan
// endpoints check the link's kind.
func (s *Sandbox) linkForEndpoint(ep *Endpoint) (netlink.Link, error) {
	var l netlink.Link
	var err error
	if s.has(FixLinkByIndex) && ep.LinkIndex != 0 {
		if l, err = s.handle.LinkByIndex(ep.LinkIndex); err != nil {
			return nil, fmt.Errorf("LinkByIndex() failed for %s index %d: %w", ep.Name, ep.LinkIndex, err)
		}
	} else if l, err = s.handle.LinkByName(ep.Name); err != nil {
		return nil, fmt.Errorf("LinkByName() failed for %s: %w", ep.Name, err)
	}
	if (ep.Kind == "macvlan" || ep.Kind == "ipvlan") && l.Type() != ep.Kind {
		return nil, fmt.Errorf("Incorrect link type %s, expecting %s", l.Type(), ep.Kind)
	}
	return l, nil
}

// linkGone reports whether err says the link does not exist.
func linkGone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// setupTCFiltering, in Kata's order: the tap (multi-queue, vnet_hdr;
// TUNSETIFF on the name of a live multi-queue tap attaches one more queue
// to it, R25), the vhost fds (StepVhostFds), the link BY NAME, the tap's
// MAC record, MTU and UP, ingress qdiscs on tap then link (EBUSY retried),
// then the two u32 mirred redirects (the last one StepRedirect). The
// link's MAC, addresses and admin state are not touched: a link that is
// DOWN stays DOWN (R22). A step that fails returns; as shipped nothing is
// undone (the tap stays, with its queue fds held, and whatever qdisc and
// filter were added); with FixUndoPartialTap, undoTCFiltering.
func (s *Sandbox) setupTCFiltering(c *Call, ep *Endpoint) (err error) {
	var u tcUndo
	if s.has(FixUndoPartialTap) {
		if tap, lerr := s.handle.LinkByName(ep.TapName); lerr == nil {
			u.oldTap = tap.Attrs()
		}
		defer func() {
			if err != nil {
				s.undoTCFiltering(c, ep, &u)
			}
		}()
	}
	tapf, err := s.openTap(ep.TapName)
	if err != nil {
		return fmt.Errorf("Could not create TAP interface: LinkAdd() failed for tuntap name %s: %w", ep.TapName, err)
	}
	ep.fds = []*os.File{tapf}
	s.held = append(s.held, tapf)
	u.tapOpened = true
	tap, err := s.handle.LinkByName(ep.TapName)
	if err != nil {
		return fmt.Errorf("Could not create TAP interface: %w", err)
	}
	if err := s.failStep(StepVhostFds); err != nil {
		return fmt.Errorf("Could not setup vhost fds %s : %s", ep.Name, err)
	}
	link, err := s.linkForEndpoint(ep)
	if err != nil {
		return err
	}
	la := link.Attrs()
	ep.LinkIndex = la.Index
	ep.HwAddr = la.HardwareAddr.String()
	if err := s.handle.LinkSetMTU(tap, la.MTU); err != nil {
		return fmt.Errorf("Could not set TAP MTU %d: %s", la.MTU, err)
	}
	if err := s.handle.LinkSetUp(tap); err != nil {
		return fmt.Errorf("Could not enable TAP %s: %s", ep.TapName, err)
	}
	for _, ix := range []int{tap.Attrs().Index, la.Index} {
		if err := s.addQdiscIngress(ix); err != nil {
			return err
		}
		if ix == la.Index {
			u.linkQdisc = ix
		} else {
			u.tapQdisc = ix
		}
	}
	for _, p := range [][2]int{{la.Index, tap.Attrs().Index}, {tap.Attrs().Index, la.Index}} {
		if p[0] == tap.Attrs().Index {
			if err := s.failStep(StepRedirect); err != nil {
				return fmt.Errorf("Failed to add filter for index %d : %s", p[0], err)
			}
		}
		if err := s.handle.FilterAdd(redirect(p[0], p[1])); err != nil {
			return fmt.Errorf("Failed to add filter for index %d : %s", p[0], err)
		}
	}
	return nil
}

// tcUndo is what a setupTCFiltering call did so far (FixUndoPartialTap).
type tcUndo struct {
	oldTap              *netlink.LinkAttrs // the tap of that name before the call, if any
	tapOpened           bool               // the call made the tap, or joined the one that existed
	tapQdisc, linkQdisc int                // ifindexes the call added an ingress qdisc to
}

// undoTCFiltering is 0010's undo of a failed setupTCFiltering: the
// ingress qdisc the call added to the link goes (with the redirect under
// it; a qdisc that was there, an attached endpoint's, is not the call's);
// its queue fds are closed; the tap it made is deleted, a tap that existed
// gets its ingress qdisc, MTU and admin state back. Failures are logged.
func (s *Sandbox) undoTCFiltering(c *Call, ep *Endpoint, u *tcUndo) {
	if u.linkQdisc != 0 {
		if err := s.delQdiscIngress(u.linkQdisc); err != nil {
			c.logf("Could not remove the ingress qdisc of the link of a failed attach: %v", err)
		}
	}
	if u.oldTap != nil && u.tapQdisc != 0 {
		if err := s.delQdiscIngress(u.tapQdisc); err != nil {
			c.logf("Could not remove the ingress qdisc of the TAP of a failed attach: %v", err)
		}
	}
	s.release(ep.fds)
	ep.fds = nil
	if u.oldTap != nil && !u.tapOpened {
		return
	}
	tap, err := s.handle.LinkByName(ep.TapName)
	if err != nil {
		if !linkGone(err) {
			c.logf("Could not get the TAP of a failed attach: %v", err)
		}
		return
	}
	if _, ok := tap.(*netlink.Tuntap); !ok {
		return
	}
	if u.oldTap == nil {
		if err := s.handle.LinkDel(tap); err != nil {
			c.logf("Could not remove the TAP of a failed attach: %v", err)
		}
		return
	}
	if err := s.handle.LinkSetMTU(tap, u.oldTap.MTU); err != nil {
		c.logf("Could not restore the MTU of the TAP of a failed attach: %v", err)
	}
	if u.oldTap.Flags&net.FlagUp == 0 {
		if err := s.handle.LinkSetDown(tap); err != nil {
			c.logf("Could not disable the TAP of a failed attach again: %v", err)
		}
	}
}

// delQdiscIngress deletes the ingress qdisc of the link (and the filters
// under it).
func (s *Sandbox) delQdiscIngress(index int) error {
	return s.handle.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Parent: netlink.HANDLE_INGRESS}})
}

// addQdiscIngress: EBUSY is retried 5 times (10, 20, 30, 40 ms apart);
// anything else (EEXIST: the link has an ingress qdisc already) is final.
func (s *Sandbox) addQdiscIngress(index int) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Parent: netlink.HANDLE_INGRESS}}
	var err error
	for i := 0; i < 5; i++ {
		if err = s.handle.QdiscAdd(q); err == nil || !errors.Is(err, unix.EBUSY) {
			break
		}
		if i < 4 {
			time.Sleep(time.Duration(i+1) * 10 * time.Millisecond)
		}
	}
	if err != nil {
		return fmt.Errorf("Failed to add qdisc for network index %d : %w", index, err)
	}
	return nil
}

// removeTCFiltering: the tap by name (none: the error returns before the
// link is touched), DOWN and deleted; then the link - BY NAME as shipped,
// whatever link holds the name now (R41) - loses every u32 filter and
// ingress qdisc and is set DOWN. With FixDetachOrder a link that left the
// netns is nothing to do; with FixKeepLinkUp (or linkDown false) it is
// not set down.
func (s *Sandbox) removeTCFiltering(ep *Endpoint, linkDown bool) error {
	tap, err := s.handle.LinkByName(ep.TapName)
	if err != nil {
		return fmt.Errorf("Could not get TAP interface: %w", err)
	}
	if _, ok := tap.(*netlink.Tuntap); !ok {
		return fmt.Errorf("Could not get TAP interface: Incorrect link type %s, expecting tuntap", tap.Type())
	}
	if err := s.handle.LinkSetDown(tap); err != nil {
		return fmt.Errorf("Could not disable TAP %s: %s", ep.TapName, err)
	}
	if err := s.handle.LinkDel(tap); err != nil {
		return fmt.Errorf("Could not remove TAP %s: %s", ep.TapName, err)
	}
	link, err := s.linkForEndpoint(ep)
	if err != nil {
		if s.has(FixDetachOrder) && linkGone(err) {
			return nil
		}
		return err
	}
	if err := s.untc(link); err != nil {
		return err
	}
	if linkDown && !s.has(FixKeepLinkUp) {
		if err := s.handle.LinkSetDown(link); err != nil {
			return fmt.Errorf("Could not disable veth %s: %s", ep.Name, err)
		}
	}
	return nil
}

// untc removes every u32 filter under the link's ingress and every ingress
// qdisc (removeRedirectTCFilter, removeQdiscIngress): a monitor's or a
// later endpoint's included.
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

// Kata's macvtap ifindex workaround (network_linux.go 927-941): a random
// index above the host's, tried up to 128 times.
const (
	hostLinkOffset = 8192
	linkRange      = 0xFFFF
	linkRetries    = 128
)

// tapNetworkPair, in Kata's order (R28): the link BY NAME; a macvtap
// "tap<N>_kata" on it (bridge mode, a forced random ifindex); the link's
// MAC recorded as the NIC's; the macvtap's MTU; the LINK gets the
// endpoint's random MAC and the macvtap the link's own; the macvtap UP;
// every address of the link (any family) saved and deleted (the kernel
// drops the link's IPv4 routes with its last IPv4 address); the link UP;
// the queue fd opened at /dev/tap<macvtap ifindex>; the vhost fds
// (StepVhostFds). A step that fails returns; as shipped nothing is undone
// (the macvtap stays, the link keeps the random MAC and has no address);
// with FixUndoPartialTap, undoTapNetworkPair.
func (s *Sandbox) tapNetworkPair(c *Call, ep *Endpoint) (err error) {
	link, err := s.linkForEndpoint(ep)
	if err != nil {
		return err
	}
	la := link.Attrs()
	ep.LinkIndex = la.Index
	var u macvtapUndo
	if s.has(FixUndoPartialTap) {
		defer func() {
			if err != nil {
				s.undoTapNetworkPair(c, ep, link, &u)
			}
		}()
	}
	qlen := la.TxQLen
	if qlen <= 0 {
		qlen = 1500
	}
	var tap netlink.Link
	for i := 0; i < linkRetries; i++ {
		mv := &netlink.Macvtap{Macvlan: netlink.Macvlan{Mode: netlink.MACVLAN_MODE_BRIDGE, LinkAttrs: netlink.LinkAttrs{
			Index: hostLinkOffset + (rand.Int() & linkRange), Name: ep.TapName, TxQLen: qlen, ParentIndex: la.Index,
		}}}
		if err = s.handle.LinkAdd(mv); err == nil {
			tap, err = s.handle.LinkByName(ep.TapName)
			if err == nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("Could not create TAP interface: LinkAdd() failed for macvtap name %s: %s", ep.TapName, err)
	}
	u.tap = tap // LinkAdd fails on a name that exists: this call's
	ep.HwAddr = la.HardwareAddr.String()
	if err := s.handle.LinkSetMTU(tap, la.MTU); err != nil {
		return fmt.Errorf("Could not set TAP MTU %d: %s", la.MTU, err)
	}
	virt, err := net.ParseMAC(ep.VirtMAC)
	if err != nil {
		return err
	}
	if err := s.handle.LinkSetHardwareAddr(link, virt); err != nil {
		return fmt.Errorf("Could not set MAC address %s for veth interface %s: %s", ep.VirtMAC, ep.Name, err)
	}
	u.linkMAC = la.HardwareAddr
	if err := s.handle.LinkSetHardwareAddr(tap, la.HardwareAddr); err != nil {
		return fmt.Errorf("Could not set MAC address %s for TAP interface %s: %s", ep.HwAddr, ep.TapName, err)
	}
	if err := s.handle.LinkSetUp(tap); err != nil {
		return fmt.Errorf("Could not enable TAP %s: %s", ep.TapName, err)
	}
	addrs, err := s.handle.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("Unable to obtain veth IP addresses: %s", err)
	}
	ep.SavedAddrs = addrs
	u.addrs = addrs
	for i := range addrs {
		if err := s.handle.AddrDel(link, &addrs[i]); err != nil {
			return fmt.Errorf("Unable to clear veth IP addresses: %s", err)
		}
	}
	if err := s.handle.LinkSetUp(link); err != nil {
		return fmt.Errorf("Could not enable veth %s: %s", ep.Name, err)
	}
	u.setUp = la.Flags&net.FlagUp == 0
	f, err := os.OpenFile(fmt.Sprintf("/dev/tap%d", tap.Attrs().Index), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("Could not setup macvtap fds %s: %s", ep.TapName, err)
	}
	ep.fds = []*os.File{f}
	s.held = append(s.held, f)
	if err := s.failStep(StepVhostFds); err != nil {
		return fmt.Errorf("Could not setup vhost fds %s : %s", ep.Name, err)
	}
	return nil
}

// macvtapUndo is what a tapNetworkPair call did so far (FixUndoPartialTap).
type macvtapUndo struct {
	tap     netlink.Link     // the macvtap it made
	linkMAC net.HardwareAddr // the link's MAC, if the call changed it
	addrs   []netlink.Addr   // the link's addresses, if the call (may have) deleted them
	setUp   bool             // the link was down and the call set it up
}

// undoTapNetworkPair is 0010's undo of a failed tapNetworkPair, in
// untapNetworkPair's order: the queue fds closed, the macvtap deleted, the
// link's MAC back, the link down only if the call set it up, its addresses
// back (those still there are not added again; the routes the kernel
// dropped with them are not restored). Failures are logged.
func (s *Sandbox) undoTapNetworkPair(c *Call, ep *Endpoint, link netlink.Link, u *macvtapUndo) {
	s.release(ep.fds)
	ep.fds = nil
	if u.tap != nil {
		if err := s.handle.LinkDel(u.tap); err != nil {
			c.logf("Could not remove the TAP of a failed attach: %v", err)
		}
	}
	if u.linkMAC != nil {
		if err := s.handle.LinkSetHardwareAddr(link, u.linkMAC); err != nil {
			c.logf("Could not restore the MAC address of the link of a failed attach: %v", err)
		}
	}
	if u.setUp {
		if err := s.handle.LinkSetDown(link); err != nil {
			c.logf("Could not disable the link of a failed attach again: %v", err)
		}
	}
	for i := range u.addrs {
		if err := s.handle.AddrAdd(link, &u.addrs[i]); err != nil && !errors.Is(err, unix.EEXIST) {
			c.logf("Could not restore an address of the link of a failed attach: %v", err)
		}
	}
}

// untapNetworkPair (R29): the macvtap deleted by name; then the link - BY
// NAME as shipped, whatever link holds it now - gets the saved MAC back, is
// set DOWN (not with FixKeepLinkUp or linkDown false) and gets the saved
// addresses back (the first failure, EEXIST included, is returned). With
// FixDetachOrder a link that left the netns is nothing to restore.
func (s *Sandbox) untapNetworkPair(ep *Endpoint, linkDown bool) error {
	tap, err := s.handle.LinkByName(ep.TapName)
	if err == nil {
		if _, ok := tap.(*netlink.Macvtap); !ok {
			err = fmt.Errorf("Incorrect link type %s, expecting macvtap", tap.Type())
		}
	}
	if err != nil {
		return fmt.Errorf("Could not get TAP interface %s: %s", ep.TapName, err)
	}
	if err := s.handle.LinkDel(tap); err != nil {
		return fmt.Errorf("Could not remove TAP %s: %s", ep.TapName, err)
	}
	link, err := s.linkForEndpoint(ep)
	if err != nil {
		if s.has(FixDetachOrder) && linkGone(err) {
			return nil
		}
		return err
	}
	mac, err := net.ParseMAC(ep.HwAddr)
	if err != nil {
		return err
	}
	if err := s.handle.LinkSetHardwareAddr(link, mac); err != nil {
		return fmt.Errorf("Could not set MAC address %s for veth interface %s: %s", ep.VirtMAC, ep.Name, err)
	}
	if linkDown && !s.has(FixKeepLinkUp) {
		if err := s.handle.LinkSetDown(link); err != nil {
			return fmt.Errorf("Could not disable veth %s: %s", ep.Name, err)
		}
	}
	for i := range ep.SavedAddrs {
		if err := s.handle.AddrAdd(link, &ep.SavedAddrs[i]); err != nil {
			return err
		}
	}
	return nil
}

// tapNetwork is a tap endpoint's (request Type "tap", R24): a NEW tap
// "tap<N>_kata" with the request's MAC and MTU, up; the link named in the
// request is never touched and nothing redirects to it.
func (s *Sandbox) tapNetwork(ep *Endpoint) error {
	tapf, err := s.openTap(ep.TapName)
	if err != nil {
		return fmt.Errorf("Could not create TAP interface: LinkAdd() failed for tuntap name %s: %w", ep.TapName, err)
	}
	ep.fds = []*os.File{tapf}
	s.held = append(s.held, tapf)
	tap, err := s.handle.LinkByName(ep.TapName)
	if err != nil {
		return fmt.Errorf("Could not create TAP interface: %w", err)
	}
	ep.HwAddr = ep.props.mac
	if hw, err := net.ParseMAC(ep.props.mac); err == nil {
		ep.HwAddr = hw.String()
	}
	if err := s.handle.LinkSetMTU(tap, int(ep.props.mtu)); err != nil {
		return fmt.Errorf("Could not set TAP MTU %d: %s", ep.props.mtu, err)
	}
	if err := s.handle.LinkSetUp(tap); err != nil {
		return fmt.Errorf("Could not enable TAP %s: %s", ep.Name, err)
	}
	return nil
}

// unTapNetwork deletes a tap endpoint's tap by name.
func (s *Sandbox) unTapNetwork(ep *Endpoint) error {
	tap, err := s.handle.LinkByName(ep.TapName)
	if err != nil {
		return fmt.Errorf("Could not get TAP interface: %s", err)
	}
	if err := s.handle.LinkSetDown(tap); err != nil {
		return fmt.Errorf("Could not disable TAP %s: %s", ep.TapName, err)
	}
	if err := s.handle.LinkDel(tap); err != nil {
		return fmt.Errorf("Could not remove TAP %s: %s", ep.TapName, err)
	}
	return nil
}

// openTap creates (or, for an existing multi-queue tap, joins) the
// persistent tap "name" in the sandbox netns and returns its queue fd, as
// netlink's LinkAdd of a multi-queue Tuntap does. /dev/net/tun binds a tap
// to the netns of the thread that opens it, so this runs on a fresh locked
// thread that enters the netns and comes back.
func (s *Sandbox) openTap(name string) (*os.File, error) {
	var f *os.File
	err := nsfs.DoPath(s.opts.NetNS, func() error {
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

// randomPrivateMAC is generateRandomPrivateMacAddr: random, locally
// administered, unicast.
func randomPrivateMAC() string {
	b := make([]byte, 6)
	for i := range b {
		b[i] = byte(rand.N(256))
	}
	b[0] = (b[0] | 2) & 0xfe
	return net.HardwareAddr(b).String()
}
