package netmontest

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequireRoot skips t unless it runs as root; with CI=true it fails instead,
// so a CI job that lost its privileges does not pass by skipping.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (CI=true: not skipping)")
	}
	t.Skip("needs root")
}

// RandName returns "knm-" and 8 random hex digits: a unique name that fits
// IFNAMSIZ, for netns, links and bridges.
func RandName() string { return "knm-" + randHex(4) }

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// onFreshThread runs fn on a new goroutine locked to its thread and never
// unlocked: whatever fn did to the thread's netns, the runtime discards the
// thread when the goroutine exits.
func onFreshThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

// NewNetNS creates a uniquely named netns (/run/netns/knm-<hex>) and
// returns its path and an open handle. Cleanup closes the handle and
// unmounts the name; the netns itself dies with its last user.
func NewNetNS(t testing.TB) (string, netns.NsHandle) {
	t.Helper()
	return NewNamedNetNS(t, RandName())
}

// NewNamedNetNS is NewNetNS with a given name (reusing a name a test deleted
// with DeleteNetNS puts a new netns at the same path).
func NewNamedNetNS(t testing.TB, name string) (string, netns.NsHandle) {
	t.Helper()
	var h netns.NsHandle
	err := onFreshThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		// NewNamed unshares this thread into the new netns.
		if h, err = netns.NewNamed(name); err != nil {
			return err
		}
		// Restore; if that failed the thread is discarded anyway.
		return netns.Set(orig)
	})
	if err != nil {
		if h.IsOpen() {
			h.Close()
			_ = netns.DeleteNamed(name)
		}
		t.Fatalf("create netns %s: %v", name, err)
	}
	path := filepath.Join("/run/netns", name)
	registry.Lock()
	registry.m[path] = h
	registry.Unlock()
	t.Cleanup(func() {
		if err := deleteNetNS(path); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return path, h
}

// registry holds the handles NewNetNS returned, by path, so DeleteNetNS
// and the cleanup close each exactly once.
var registry = struct {
	sync.Mutex
	m map[string]netns.NsHandle
}{m: map[string]netns.NsHandle{}}

// DeleteNetNS closes the handle NewNetNS returned for path and removes the
// name before the test ends. The netns dies once nothing else holds it
// (handles from HandleAt hold it: close them first).
func DeleteNetNS(t testing.TB, path string) {
	t.Helper()
	if err := deleteNetNS(path); err != nil {
		t.Fatalf("delete netns %s: %v", path, err)
	}
}

func deleteNetNS(path string) error {
	registry.Lock()
	h, ok := registry.m[path]
	delete(registry.m, path)
	registry.Unlock()
	if !ok {
		return nil // deleted already
	}
	h.Close()
	if _, err := os.Stat(path); err != nil {
		return nil // a test unmounted it itself
	}
	return netns.DeleteNamed(filepath.Base(path))
}

// HandleAt returns a netlink handle whose sockets live in ns, closed on
// cleanup.
func HandleAt(t testing.TB, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	err := onFreshThread(func() error {
		var err error
		h, err = netlink.NewHandleAt(ns)
		return err
	})
	if err != nil {
		t.Fatalf("netlink handle in %v: %v", ns, err)
	}
	t.Cleanup(h.Close)
	return h
}

// AddBridge creates an up bridge named knm-<hex> through h.
func AddBridge(t testing.TB, h *netlink.Handle) *netlink.Bridge {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: RandName()}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("add bridge %s: %v", br.Name, err)
	}
	t.Cleanup(func() { _ = h.LinkDel(br) })
	if err := h.LinkSetUp(br); err != nil {
		t.Fatalf("bridge %s up: %v", br.Name, err)
	}
	return br
}

// Endpoint is one veth replayed the way Docker's bridge driver sets it up:
// the host end stays in the host (dockerd's) netns, the other end is moved
// into the sandbox netns under a temporary name and configured there.
type Endpoint struct {
	t         testing.TB
	Host      *netlink.Handle // in the host netns
	Sandbox   *netlink.Handle // in the sandbox netns
	HostName  string          // host end, knm-<hex>
	HostIndex int             // host end's ifindex, in the host netns
	Name      string          // sandbox end's current name (veth<7 hex> until Rename)
	Index     int             // sandbox end's ifindex, in the sandbox netns
	closed    bool
}

// Close closes the endpoint's handles now (their sockets keep both netns
// alive) instead of at cleanup; the endpoint must not be used afterwards.
// Beware: a closed netlink.Handle does not fail, it silently falls back to
// sockets in the calling thread's netns.
func (e *Endpoint) Close() {
	e.closed = true
	e.Host.Close()
	e.Sandbox.Close()
}

// VethToNetNS creates a veth pair in hostNS, enslaves the host end to the
// bridge named bridge ("" for none) and sets it up, then moves the other
// end, still down and under its temporary name, into sandboxNS. The
// methods replay the rest of Docker's sequence one step at a time. Cleanup
// deletes the host end (which deletes the pair) if it still exists.
func VethToNetNS(t testing.TB, hostNS, sandboxNS netns.NsHandle, bridge string) *Endpoint {
	t.Helper()
	return newEndpoint(t, hostNS, sandboxNS, bridge, false)
}

// VethPeerInNetNS is VethToNetNS with the sandbox end created directly in
// sandboxNS (IFLA_NET_NS_FD on the peer) instead of moved there. The kernel
// registers that end first, so its RTM_NEWLINK carries no IFLA_LINK, and
// no later message ties it until its next change (the rename): the first
// NEWLINK Docker 28+ produces in the sandbox.
func VethPeerInNetNS(t testing.TB, hostNS, sandboxNS netns.NsHandle, bridge string) *Endpoint {
	t.Helper()
	return newEndpoint(t, hostNS, sandboxNS, bridge, true)
}

func newEndpoint(t testing.TB, hostNS, sandboxNS netns.NsHandle, bridge string, peerThere bool) *Endpoint {
	t.Helper()
	e := &Endpoint{t: t, Host: HandleAt(t, hostNS), Sandbox: HandleAt(t, sandboxNS),
		HostName: RandName(), Name: "veth" + randHex(4)[:7]}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: e.HostName}, PeerName: e.Name}
	if peerThere {
		veth.PeerNamespace = netlink.NsFd(int(sandboxNS))
	}
	if err := e.Host.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s/%s: %v", e.HostName, e.Name, err)
	}
	host, err := e.Host.LinkByName(e.HostName)
	if err != nil {
		t.Fatalf("look up %s: %v", e.HostName, err)
	}
	e.HostIndex = host.Attrs().Index
	t.Cleanup(func() {
		if e.closed {
			return // the handle would query the wrong netns (see Close)
		}
		if l, err := e.Host.LinkByIndex(e.HostIndex); err == nil && l.Attrs().Name == e.HostName {
			_ = e.Host.LinkDel(l)
		}
	})
	if bridge != "" {
		br, err := e.Host.LinkByName(bridge)
		if err != nil {
			t.Fatalf("look up bridge %s: %v", bridge, err)
		}
		if err := e.Host.LinkSetMaster(host, br); err != nil {
			t.Fatalf("enslave %s to %s: %v", e.HostName, bridge, err)
		}
	}
	if err := e.Host.LinkSetUp(host); err != nil {
		t.Fatalf("%s up: %v", e.HostName, err)
	}
	if !peerThere {
		peer, err := e.Host.LinkByName(e.Name)
		if err != nil {
			t.Fatalf("look up %s: %v", e.Name, err)
		}
		if err := e.Host.LinkSetNsFd(peer, int(sandboxNS)); err != nil {
			t.Fatalf("move %s to the sandbox netns: %v", e.Name, err)
		}
	}
	l, err := e.Sandbox.LinkByName(e.Name)
	if err != nil {
		t.Fatalf("look up %s in the sandbox netns: %v", e.Name, err)
	}
	e.Index = l.Attrs().Index
	return e
}

func (e *Endpoint) link() netlink.Link {
	e.t.Helper()
	l, err := e.Sandbox.LinkByIndex(e.Index)
	if err != nil {
		e.t.Fatalf("look up ifindex %d (%s) in the sandbox netns: %v", e.Index, e.Name, err)
	}
	return l
}

// Rename renames the sandbox end (Docker: the lowest free ethN).
func (e *Endpoint) Rename(name string) {
	e.t.Helper()
	if err := e.Sandbox.LinkSetName(e.link(), name); err != nil {
		e.t.Fatalf("rename %s to %s: %v", e.Name, name, err)
	}
	e.Name = name
}

// SetMAC sets the sandbox end's MAC.
func (e *Endpoint) SetMAC(mac string) {
	e.t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		e.t.Fatalf("parse MAC %q: %v", mac, err)
	}
	if err := e.Sandbox.LinkSetHardwareAddr(e.link(), hw); err != nil {
		e.t.Fatalf("set MAC of %s: %v", e.Name, err)
	}
}

// AddAddr adds an address ("172.18.0.2/16", "fd00::2/64") to the sandbox
// end; IPv6 ones with nodad, as Docker does.
func (e *Endpoint) AddAddr(cidr string) {
	e.t.Helper()
	AddAddr(e.t, e.Sandbox, e.Index, cidr)
}

// Up sets the sandbox end up.
func (e *Endpoint) Up() {
	e.t.Helper()
	if err := e.Sandbox.LinkSetUp(e.link()); err != nil {
		e.t.Fatalf("%s up: %v", e.Name, err)
	}
}

// AddDefaultRoute adds a default route via gw through the sandbox end.
func (e *Endpoint) AddDefaultRoute(gw string) {
	e.t.Helper()
	ip := net.ParseIP(gw)
	if ip == nil {
		e.t.Fatalf("parse gateway %q", gw)
	}
	r := &netlink.Route{LinkIndex: e.Index, Gw: ip, Protocol: unix.RTPROT_BOOT}
	if err := e.Sandbox.RouteAdd(r); err != nil {
		e.t.Fatalf("default route via %s dev %s: %v", gw, e.Name, err)
	}
}

// Configure runs Docker's remaining steps in order: rename, MAC, address,
// up, and the default route when gw is not "".
func (e *Endpoint) Configure(name, mac, cidr, gw string) {
	e.t.Helper()
	e.Rename(name)
	e.SetMAC(mac)
	e.AddAddr(cidr)
	e.Up()
	if gw != "" {
		e.AddDefaultRoute(gw)
	}
}

// MoveTo moves the sandbox end into ns (Docker's disconnect moves it back
// to dockerd's netns). The Endpoint no longer tracks it afterwards.
func (e *Endpoint) MoveTo(ns netns.NsHandle) {
	e.t.Helper()
	if err := e.Sandbox.LinkSetNsFd(e.link(), int(ns)); err != nil {
		e.t.Fatalf("move %s out of the sandbox netns: %v", e.Name, err)
	}
}

// AddAddr adds cidr to ifindex through h; IPv6 addresses get nodad so they
// are not tentative.
func AddAddr(t testing.TB, h *netlink.Handle, index int, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatalf("parse address %q: %v", cidr, err)
	}
	if a.IP.To4() == nil {
		a.Flags |= unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: index}}, a); err != nil {
		t.Fatalf("add %s to ifindex %d: %v", cidr, index, err)
	}
}

// WaitFor waits until cond holds for get(), re-checking after every
// notification on changed (a coalescing channel such as
// netmon.Monitor.Changed) and failing t after timeout with what and the
// last value. It returns the value that satisfied cond.
func WaitFor[T any](t testing.TB, changed <-chan struct{}, timeout time.Duration, what string, get func() T, cond func(T) bool) T {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		v := get()
		if cond(v) {
			return v
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; last value: %+v", timeout, what, v)
			return v
		}
	}
}

// Pair is the arrangement most kernel tests need: a "sandbox" netns to
// watch and a "dockerd" netns beside it, where endpoint peers live, with a
// netlink handle into each. Tests embed it in their environment.
type Pair struct {
	SandboxPath string
	SandboxNS   netns.NsHandle
	Sandbox     *netlink.Handle
	DockerdPath string
	DockerdNS   netns.NsHandle
	Dockerd     *netlink.Handle
}

// NewPair requires root (see RequireRoot), then makes both netns and their
// handles, all removed on cleanup.
func NewPair(t testing.TB) Pair {
	t.Helper()
	RequireRoot(t)
	var p Pair
	p.SandboxPath, p.SandboxNS = NewNetNS(t)
	p.DockerdPath, p.DockerdNS = NewNetNS(t)
	p.Sandbox = HandleAt(t, p.SandboxNS)
	p.Dockerd = HandleAt(t, p.DockerdNS)
	return p
}
