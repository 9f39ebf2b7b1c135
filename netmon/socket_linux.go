package netmon

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// groups are the rtnetlink multicast groups the socket joins: links,
// IPv4 and IPv6 addresses, IPv4 and IPv6 routes. One socket for all of
// them is what keeps the kernel's order between a link, its addresses and
// its routes (three sockets, one per kind, have no order between them).
const groups = unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR |
	unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE

// defaultReceiveBuffer is the socket's receive buffer when the
// configuration sets none (SO_RCVBUFFORCE, so rmem_max does not cap it;
// without CAP_NET_ADMIN, SO_RCVBUF and the cap). The kernel charges it only
// for messages queued and not read yet: an idle monitor pays nothing for it.
// It is the only queue between the kernel and the loop, which also reads
// while it dumps, so it covers the time the loop spends resolving peers or
// waiting to be scheduled.
const defaultReceiveBuffer = 4 << 20

// recvBufferSize is the user buffer of one recvfrom. A dump sends
// datagrams of at most 32 KiB (the kernel caps them at the largest buffer
// recvmsg was given, itself capped at 32 KiB), and an event is one message
// in a datagram of its own, far smaller. A datagram that still does not fit
// is reported (MSG_TRUNC) and treated as lost: a resync follows.
const recvBufferSize = 32 << 10

// recvBuffers holds the receive buffers, shared by every monitor of the
// process: a loop takes one only while it reads and decodes, so idle
// monitors hold none.
var recvBuffers = sync.Pool{New: func() any { b := make([]byte, recvBufferSize); return &b }}

var (
	// errOverflow: the kernel dropped messages for this socket (ENOBUFS):
	// the view may have missed changes. A re-list follows.
	errOverflow = errors.New("netlink receive buffer overflowed (ENOBUFS): messages were lost")
	// errTruncated: a datagram did not fit the receive buffer.
	errTruncated = errors.New("netlink datagram larger than the receive buffer: messages were lost")
	// errDumpInterrupted: the kernel flagged a dump NLM_F_DUMP_INTR (the
	// table changed while it was dumped).
	errDumpInterrupted = errors.New("netlink dump interrupted (NLM_F_DUMP_INTR)")
)

// nlSocket is one NETLINK_ROUTE socket bound to the watched netns and
// joined to groups: the monitor's events arrive on it, and its dumps are
// asked and answered on it too, so that events that arrive during a dump
// are read (not left to overflow the buffer) and kept in order.
//
// It is non-blocking and parked on the runtime's poller: a loop waiting
// for events holds no thread, Close wakes it (the read fails), and a read
// deadline wakes it for timers. Only the loop goroutine reads and writes;
// close may be called from any goroutine.
type nlSocket struct {
	f    *os.File
	rc   syscall.RawConn
	pid  uint32 // the port id the kernel gave the socket
	seq  uint32 // of the last request
	path string // the watched netns, for messages
	// deadline is the read deadline last set (zero: none); kept to set it
	// only when it changes.
	deadline time.Time
}

// openSocket creates the socket inside ns (a socket's netns is fixed when
// it is created), binds it to groups and sets its receive buffer (rcvbuf
// > 0: SO_RCVBUF to that size; tests make it tiny to force ENOBUFS).
func openSocket(ns *nsfs.File, rcvbuf int) (s *nlSocket, err error) {
	fd := -1
	err = nsfs.Do(ns, func() (err error) {
		defer recoverAs(&err)
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket in netns %q: %w", ns.Path(), err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	if rcvbuf > 0 {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
	} else if err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, defaultReceiveBuffer); err != nil {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, defaultReceiveBuffer)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink socket in netns %q: receive buffer: %w", ns.Path(), err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		return nil, fmt.Errorf("netlink socket in netns %q: join link, address and route groups: %w", ns.Path(), err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("netlink socket in netns %q: getsockname: %w", ns.Path(), err)
	}
	nsa, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		return nil, fmt.Errorf("netlink socket in netns %q: getsockname returned %T", ns.Path(), sa)
	}
	// A non-blocking descriptor given to os.NewFile is registered with the
	// runtime's poller.
	f := os.NewFile(uintptr(fd), "netlink:"+ns.Path())
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		fd = -1 // closed with f
		return nil, fmt.Errorf("netlink socket in netns %q: %w", ns.Path(), err)
	}
	return &nlSocket{f: f, rc: rc, pid: nsa.Pid, path: ns.Path()}, nil
}

// close closes the socket; a read in progress fails. Idempotent.
func (s *nlSocket) close() { _ = s.f.Close() }

// datagram is one datagram read: its messages (their Data alias buf) and
// the buffer, which release gives back.
type datagram struct {
	msgs []syscall.NetlinkMessage
	buf  *[]byte
}

func (d *datagram) release() {
	if d.buf != nil {
		recvBuffers.Put(d.buf)
		d.buf, d.msgs = nil, nil
	}
}

// errWouldBlock: nothing is queued (receive with wait false).
var errWouldBlock = errors.New("no netlink message queued")

// receive reads one datagram. With wait false it returns errWouldBlock
// when nothing is queued; with wait true it parks on the poller until a
// datagram arrives, the deadline passes (os.ErrDeadlineExceeded; a zero
// deadline waits for ever) or the socket is closed (os.ErrClosed).
// Datagrams sent by anything but the kernel are dropped (a process may send
// to the groups; none of it describes the netns).
func (s *nlSocket) receive(wait bool, deadline time.Time) (datagram, error) {
	if !wait {
		// A deadline already passed fails even a read that would not
		// wait.
		deadline = time.Time{}
	}
	if !deadline.Equal(s.deadline) {
		if err := s.f.SetReadDeadline(deadline); err != nil {
			return datagram{}, err
		}
		s.deadline = deadline
	}
	buf := recvBuffers.Get().(*[]byte)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := s.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), *buf, unix.MSG_TRUNC)
			if rerr == unix.EAGAIN && !wait {
				rerr = errWouldBlock
				return true
			}
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			recvBuffers.Put(buf)
			return datagram{}, errOverflow
		case err != nil:
			recvBuffers.Put(buf)
			return datagram{}, err
		case n > len(*buf):
			recvBuffers.Put(buf)
			return datagram{}, fmt.Errorf("%w (%d bytes)", errTruncated, n)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage((*buf)[:n])
		if err != nil {
			// The kernel's framing itself is broken: nothing in this
			// datagram can be trusted, and something may be missing.
			recvBuffers.Put(buf)
			return datagram{}, fmt.Errorf("netlink datagram of %d bytes: %w: %w", n, errUndecodable, err)
		}
		return datagram{msgs: msgs, buf: buf}, nil
	}
}

// request sends a dump request for typ (RTM_GETLINK, RTM_GETADDR,
// RTM_GETROUTE) of every family, and returns its sequence number.
func (s *nlSocket) request(typ uint16) (uint32, error) {
	req := nl.NewNetlinkRequest(int(typ), unix.NLM_F_DUMP)
	switch typ {
	case unix.RTM_GETLINK:
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	case unix.RTM_GETADDR:
		req.AddData(nl.NewIfAddrmsg(unix.AF_UNSPEC))
	case unix.RTM_GETROUTE:
		req.AddData(&nl.RtMsg{}) // AF_UNSPEC, every table
	default:
		return 0, fmt.Errorf("netmon: no dump for message type %d", typ)
	}
	s.seq++
	req.Seq = s.seq
	b := req.Serialize()
	var serr error
	err := s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("send %s dump request: %w", msgName(typ), err)
	}
	return s.seq, nil
}

// isReply reports whether m answers this socket's request seq (rather
// than being an event: events carry the pid and seq of whoever made the
// change, never this socket's pid).
func (s *nlSocket) isReply(m *syscall.NetlinkMessage, seq uint32) bool {
	return m.Header.Pid == s.pid && m.Header.Seq == seq
}

// doneError returns the error an NLMSG_DONE or NLMSG_ERROR reply carries,
// nil for success.
func doneError(m *syscall.NetlinkMessage) error {
	if len(m.Data) < 4 {
		return nil // NLMSG_DONE without payload: success
	}
	if errno := -int32(nl.NativeEndian().Uint32(m.Data[:4])); errno != 0 {
		return syscall.Errno(errno)
	}
	return nil
}

// ifreq is struct ifreq: a name and a 24-byte union.
type ifreq struct {
	name [unix.IFNAMSIZ]byte
	data [24]byte
}

func (s *nlSocket) ioctl(req uint, r *ifreq) error {
	var errno syscall.Errno
	err := s.rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(r)))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// ifname returns the name of ifindex index (SIOCGIFNAME).
func (s *nlSocket) ifname(index int) (string, error) {
	var r ifreq
	nl.NativeEndian().PutUint32(r.data[:4], uint32(index))
	if err := s.ioctl(unix.SIOCGIFNAME, &r); err != nil {
		return "", err
	}
	n, _, _ := bytes.Cut(r.name[:], []byte{0})
	return string(n), nil
}

// ioctlLink reads the link with ifindex index if it is named name: its MAC
// (SIOCGIFHWADDR), flags (SIOCGIFFLAGS, the low 16 bits) and MTU
// (SIOCGIFMTU). The kernel answers these under RCU (the MAC under a rwsem
// only MAC changes take), never rtnl_lock. They look the link up by name,
// so the name is checked by index (SIOCGIFNAME, which does not try to load
// a module for a missing name as the by-name ones do) before and after:
// the same index under the same name both times is the same link. nil
// when index does not carry name (or no longer exists).
func (s *nlSocket) ioctlLink(index int, name string) (*view.Link, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, nil
	}
	if got, err := s.ifname(index); err != nil || got != name {
		return nil, err
	}
	byName := func(req uint) (ifreq, error) {
		var r ifreq
		copy(r.name[:], name)
		return r, s.ioctl(req, &r)
	}
	hw, err := byName(unix.SIOCGIFHWADDR)
	if err != nil {
		return nil, err
	}
	fl, err := byName(unix.SIOCGIFFLAGS)
	if err != nil {
		return nil, err
	}
	mtu, err := byName(unix.SIOCGIFMTU)
	if err != nil {
		return nil, err
	}
	if got, err := s.ifname(index); err != nil || got != name {
		return nil, err
	}
	l := &view.Link{
		Index:       index,
		Name:        name,
		MTU:         int(nl.NativeEndian().Uint32(mtu.data[:4])),
		RawFlags:    uint32(nl.NativeEndian().Uint16(fl.data[:2])),
		LinkNetNSID: -1,
	}
	// ifr_hwaddr is a sockaddr: a 2-byte family, then the address. An
	// Ethernet-like link has a 6-byte one; the others are not read here.
	if fam := nl.NativeEndian().Uint16(hw.data[:2]); fam == unix.ARPHRD_ETHER {
		l.MAC = net.HardwareAddr(bytes.Clone(hw.data[2:8]))
	}
	return l, nil
}
