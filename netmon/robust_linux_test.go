package netmon_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// Tests of what the single socket guarantees (order) and of a monitor that
// does not give up (undecodable messages, failing resyncs, panics, peers
// that settle late).

// countingObserver counts what a monitor reports.
type countingObserver struct {
	mu                          sync.Mutex
	events, undecodable, resync int
	panics                      []string
	ch                          chan struct{} // closed and replaced on every report
}

func newObserver() *countingObserver { return &countingObserver{ch: make(chan struct{})} }

func (o *countingObserver) report(f func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f()
	close(o.ch)
	o.ch = make(chan struct{})
}
func (o *countingObserver) EventSeen(string)   { o.report(func() { o.events++ }) }
func (o *countingObserver) Undecodable(string) { o.report(func() { o.undecodable++ }) }
func (o *countingObserver) Resynced()          { o.report(func() { o.resync++ }) }
func (o *countingObserver) Panicked(where string) {
	o.report(func() { o.panics = append(o.panics, where) })
}

// wait waits until cond holds for the counts (read under the lock).
func (o *countingObserver) wait(t *testing.T, what string, cond func(o *countingObserver) bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		ok, ch := cond(o), o.ch
		o.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// tapMsg is one message as an independent socket saw it: type and ifindex
// (links and addresses), or type and RTA_OIF (routes).
type tapMsg struct {
	typ   uint16
	index int
}

// tap reads the watched netns's link, address and route groups on a
// socket of its own, as the monitor's socket receives them.
func tap(t *testing.T, path string) (got func() []tapMsg) {
	t.Helper()
	var fd int
	ns, err := nsfs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := nsfs.Do(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	groups := uint32(unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR | unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		t.Fatal(err)
	}
	// Netlink sockets cannot be shut down: the reader wakes every 50 ms
	// to check whether it should stop.
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var msgs []tapMsg
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for !stop.Load() {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
					continue
				}
				t.Errorf("tap: %v", err)
				return
			}
			ms, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				continue
			}
			mu.Lock()
			for _, m := range ms {
				msgs = append(msgs, tapMsg{m.Header.Type, msgIndex(m)})
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		stop.Store(true)
		<-done
		unix.Close(fd)
	})
	return func() []tapMsg {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(msgs)
	}
}

func msgIndex(m syscall.NetlinkMessage) int {
	switch m.Header.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		return int(int32(binary.NativeEndian.Uint32(m.Data[4:8])))
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		return int(binary.NativeEndian.Uint32(m.Data[4:8]))
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		attrs, _ := syscall.ParseNetlinkRouteAttr(&m)
		for _, a := range attrs {
			if a.Attr.Type == unix.RTA_OIF {
				return int(binary.NativeEndian.Uint32(a.Value))
			}
		}
	}
	return 0
}

// TestKernelOrder: the monitor applies link, address and route messages in
// the order the kernel sent them, as an independent socket joined to the
// same groups reads them.
func TestKernelOrder(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var applied []tapMsg
	netmon.SetApplyHook(func(typ uint16, l *view.Link, addrIndex, routeIndex int) {
		m := tapMsg{typ: typ}
		switch {
		case l != nil:
			m.index = l.Index
		case addrIndex != 0:
			m.index = addrIndex
		default:
			m.index = routeIndex
		}
		mu.Lock()
		applied = append(applied, m)
		mu.Unlock()
	})
	t.Cleanup(func() { netmon.SetApplyHook(nil) })
	obs := newObserver()
	m := e.start(t, func(c *netmon.Config) { c.Observer = obs })
	kernel := tap(t, e.SandboxPath)

	// A link, its addresses (IPv4 and IPv6, each with routes the kernel
	// adds), up (more routes), a route of ours, down, and gone; three
	// rounds, so any reordering between kinds would show.
	var last int
	for round := range 3 {
		name := netmontest.RandName()
		if err := e.Sandbox.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		l, err := e.Sandbox.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		last = l.Attrs().Index
		netmontest.AddAddr(t, e.Sandbox, last, fmt.Sprintf("10.70.%d.1/24", round))
		netmontest.AddAddr(t, e.Sandbox, last, fmt.Sprintf("fd70:%d::1/64", round))
		linkUp(t, e.Sandbox, l)
		if err := e.Sandbox.RouteAdd(&netlink.Route{LinkIndex: last, Dst: mustCIDR(fmt.Sprintf("10.71.%d.0/24", round)),
			Gw: net.ParseIP(fmt.Sprintf("10.70.%d.2", round))}); err != nil {
			t.Fatal(err)
		}
		if err := e.Sandbox.LinkSetDown(l); err != nil {
			t.Fatal(err)
		}
		if err := e.Sandbox.LinkDel(l); err != nil {
			t.Fatal(err)
		}
	}
	waitView(t, m, "the last link gone", func(s *view.Snapshot) bool { return s.Links[last] == nil })
	// The monitor has applied everything up to the last DELLINK; the tap
	// has read at least as far (it wakes on its own).
	mu.Lock()
	got := slices.Clone(applied)
	mu.Unlock()
	want := kernel()
	deadline := time.Now().Add(waitTimeout)
	for len(want) < len(got) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polls the tap's own goroutine only; nothing is decided by it
		want = kernel()
	}
	want = want[:min(len(want), len(got))]
	if len(got) < 20 || !slices.Equal(got, want) {
		t.Errorf("applied %d messages, kernel order differs:\n got %v\nwant %v", len(got), got, want)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.resync != 0 || obs.undecodable != 0 {
		t.Errorf("%d resyncs, %d undecodable: the order test needs neither", obs.resync, obs.undecodable)
	}
}

// TestSeg6HMACRoute: an IPv6 route with a seg6 encapsulation carrying an
// HMAC, which the netlink library cannot decode (its route list fails on
// the whole netns), is in the view, before Start (the dump) and after (an
// event); nothing is skipped and nothing resyncs.
func TestSeg6HMACRoute(t *testing.T) {
	e := newEnv(t)
	ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
	if err := e.Sandbox.LinkAdd(ifb); err != nil {
		t.Fatal(err)
	}
	l, err := e.Sandbox.LinkByName(ifb.Name)
	if err != nil {
		t.Fatal(err)
	}
	linkUp(t, e.Sandbox, l)
	netmontest.AddAddr(t, e.Sandbox, l.Attrs().Index, "fd72::1/64")
	ns := filepath.Base(e.SandboxPath)
	seg6 := func(dst string) {
		t.Helper()
		out, err := exec.Command("ip", "-n", ns, "-6", "route", "add", dst, "encap", "seg6", "mode", "encap",
			"segs", "fd72::2,fd72::3", "hmac", "1", "dev", ifb.Name).CombinedOutput()
		if err != nil {
			t.Fatalf("ip route add %s encap seg6 ... hmac 1: %v: %s", dst, err, out)
		}
	}
	seg6("fc72:1::/64")
	if _, err := e.Sandbox.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{}, 0); err == nil {
		t.Log("the netlink library decodes seg6 with an HMAC now; this test still checks the monitor")
	} else {
		t.Logf("the netlink library's route list: %v", err)
	}
	obs := newObserver()
	m := e.start(t, func(c *netmon.Config) { c.Observer = obs })
	has := func(dst string) func(s *view.Snapshot) bool {
		return func(s *view.Snapshot) bool {
			return findRoute(s, func(r view.Route) bool { return r.Dst.String() == dst && r.LinkIndex == l.Attrs().Index }) != nil
		}
	}
	if !has("fc72:1::/64")(m.Snapshot()) {
		t.Errorf("route from the first dump missing: %+v", m.Snapshot().Routes)
	}
	seg6("fc72:2::/64")
	waitView(t, m, "the route added as an event", has("fc72:2::/64"))
	waitFresh(t, m)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.undecodable != 0 || obs.resync != 0 {
		t.Errorf("%d undecodable, %d resyncs; want none", obs.undecodable, obs.resync)
	}
}

// TestResyncNeverGivesUp: every resync attempt fails, far more times than
// the 10 after which the monitor used to end; it keeps retrying with a
// capped backoff while the netns exists, and recovers once they succeed.
func TestResyncNeverGivesUp(t *testing.T) {
	e := newEnv(t)
	a, _ := vethPair(t, e.Sandbox)
	const failures = 30
	var attempts atomic.Int32
	failing := errors.New("knm-test: resync refused")
	netmon.SetResyncHook(func() error {
		if attempts.Add(1) <= failures {
			return failing
		}
		return nil
	})
	t.Cleanup(func() { netmon.SetResyncHook(nil) })
	m, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath, Log: netmontest.Log(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	// The production backoff (20 ms doubling to 5 s) would take minutes;
	// its cap is what this test keeps (TestBackoff checks the sequence).
	netmon.SetBackoff(m, time.Millisecond, 20*time.Millisecond)
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !netmon.KillSocket(m) {
		t.Fatal("no socket to kill")
	}
	// Changes made while it fails are in the view once it succeeds.
	netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, "10.73.0.1/24")
	waitView(t, m, "the resync after the failures", func(s *view.Snapshot) bool { return s.Resyncs == 1 })
	if n := attempts.Load(); n != failures+1 {
		t.Errorf("%d resync attempts, want %d", n, failures+1)
	}
	select {
	case <-m.Done():
		t.Fatalf("monitor ended: %v", m.Err())
	default:
	}
	waitLink(t, m, a.Attrs().Index, "address added while failing", func(l *view.Link) bool { return hasAddr(l, "10.73.0.1/24") })
	waitFresh(t, m)
}

// TestLoopPanicRecovered: a panic in the loop is recovered, counted and
// logged, and the view is rebuilt from a fresh list; the monitor goes on.
func TestLoopPanicRecovered(t *testing.T) {
	e := newEnv(t)
	var armed atomic.Bool
	armed.Store(true)
	netmon.SetApplyHook(func(uint16, *view.Link, int, int) {
		if armed.CompareAndSwap(true, false) {
			panic("knm-test: a bug in the loop")
		}
	})
	t.Cleanup(func() { netmon.SetApplyHook(nil) })
	obs := newObserver()
	m := e.start(t, func(c *netmon.Config) { c.Observer = obs })
	a, _ := vethPair(t, e.Sandbox) // its first message panics the loop
	obs.wait(t, "the panic reported", func(o *countingObserver) bool { return len(o.panics) == 1 })
	waitView(t, m, "rebuilt after the panic", func(s *view.Snapshot) bool { return s.Resyncs >= 1 && s.Links[a.Attrs().Index] != nil })
	waitFresh(t, m)
	netmontest.AddAddr(t, e.Sandbox, a.Attrs().Index, "10.74.0.1/24")
	waitLink(t, m, a.Attrs().Index, "an address after the panic", func(l *view.Link) bool { return hasAddr(l, "10.74.0.1/24") })
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.panics[0] != "netmon loop" {
		t.Errorf("panic reported from %q", obs.panics[0])
	}
}

// TestPeerEnslavedLate: the host end joins its bridge after the sandbox
// end is ready. Meanwhile the facts say so (on no bridge, Rechecking: the
// matcher keeps it pending); once it joins, netmon sees it without any
// message in the watched netns and the endpoint is ready. A peer that
// never joins one is final (ignored) once the schedule ends.
func TestPeerEnslavedLate(t *testing.T) {
	for _, joins := range []bool{true, false} {
		t.Run(fmt.Sprintf("joins=%v", joins), func(t *testing.T) {
			e := newEnv(t)
			br := netmontest.AddBridge(t, e.Dockerd)
			m, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath, Log: netmontest.Log(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { m.Close() })
			window := 30 * time.Second
			if !joins {
				window = 300 * time.Millisecond
			}
			netmon.SetRecheck(m, 5*time.Millisecond, 50*time.Millisecond, window)
			if err := m.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			ep := netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, "")
			ep.Configure("eth0", netmontest.RandMAC().String(), "172.31.9.2/24", "")
			l := waitLink(t, m, ep.Index, "ready but for the bridge", func(l *view.Link) bool {
				return l.Running() && l.Peer != nil && l.Peer.Found && l.Peer.MasterIndex == 0
			})
			if d := matcher.Classify(l); joins && (d.State != matcher.Pending || !l.Peer.Rechecking) {
				t.Fatalf("on no bridge yet: %v (%s), peer %+v; want pending and rechecking", d.State, d.Reason, l.Peer)
			}
			if !joins {
				l := waitLink(t, m, ep.Index, "the schedule ended", func(l *view.Link) bool { return l.Peer != nil && !l.Peer.Rechecking })
				if d := matcher.Classify(l); d.State != matcher.Ignored || l.Peer.MasterIndex != 0 {
					t.Errorf("after the schedule: %v (%s), peer %+v; want ignored", d.State, d.Reason, l.Peer)
				}
				return
			}
			host, err := ep.Host.LinkByIndex(ep.HostIndex)
			if err != nil {
				t.Fatal(err)
			}
			if err := ep.Host.LinkSetMaster(host, br); err != nil {
				t.Fatal(err)
			}
			l = waitLink(t, m, ep.Index, "peer on its bridge", func(l *view.Link) bool {
				return l.Peer != nil && l.Peer.MasterKind == "bridge"
			})
			if d := matcher.Classify(l); d.State != matcher.Ready || l.Peer.Rechecking {
				t.Errorf("after the bridge: %v (%s), peer %+v; want ready, no longer rechecking", d.State, d.Reason, l.Peer)
			}
		})
	}
}

// TestIdleOneGoroutine: a started monitor runs one goroutine, its loop,
// parked on the runtime's poller (no thread, no timer) while nothing
// happens; Close ends it.
func TestIdleOneGoroutine(t *testing.T) {
	e := newEnv(t)
	ep := netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, netmontest.AddBridge(t, e.Dockerd).Name)
	ep.Configure("eth0", netmontest.RandMAC().String(), "172.31.10.2/24", "172.31.10.1")
	before := runtime.NumGoroutine()
	m := e.start(t, nil)
	var stacks string
	deadline := time.Now().Add(waitTimeout)
	for {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		if runtime.NumGoroutine() == before+1 && loopParked(stacks) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond) // polling a state, with a deadline
	}
	if n := runtime.NumGoroutine() - before; n != 1 {
		t.Fatalf("%d goroutines for one idle monitor, want 1:\n%s", n, stacks)
	}
	if !loopParked(stacks) {
		t.Fatalf("the loop is not parked on the poller in serve:\n%s", stacks)
	}
	m.Close()
	// Close returns once the loop has said it ended (its deferred
	// wg.Done); the goroutine exits just after, so the count is polled
	// until it is back, as goleak does, with a deadline.
	for deadline := time.Now().Add(waitTimeout); runtime.NumGoroutine() != before; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines left %v after Close:\n%s", runtime.NumGoroutine()-before, waitTimeout, buf[:runtime.Stack(buf, true)])
			break
		}
	}
}

// loopParked reports whether, in a dump of all goroutines, the one running
// netmon's loop (serve) waits on the runtime's poller ("IO wait"): not
// running, not on a timer.
func loopParked(stacks string) bool {
	for _, g := range strings.Split(stacks, "\n\n") {
		if strings.Contains(g, "netmon.(*Monitor).serve") {
			header, _, _ := strings.Cut(g, "\n")
			return strings.Contains(header, "[IO wait")
		}
	}
	return false
}
