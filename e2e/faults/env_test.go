//go:build linux

package faults

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/direct"
	"github.com/kata-netmon/kata-netmon/e2e/internal/logrec"
	"github.com/kata-netmon/kata-netmon/e2e/internal/shimcfg"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/metrics"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// waitTimeout bounds every wait of the fault and hostile tests.
const waitTimeout = 10 * time.Second

// gateway is the gateway of the one bridge network of an env
// (172.31.0.0/16, on the bridge in the dockerd netns).
const gateway = "172.31.0.1"

// env is a "dockerd" netns holding a bridge network and a "sandbox" netns
// (Kata's), both fresh, plus a log that records every entry and a private
// metrics registry.
type env struct {
	netmontest.Pair
	bridge string
	log    *logrec.Recorder // every entry, debug included
	reg    *prometheus.Registry
	hosts  atomic.Int32 // last host number handed out
}

// newEnv makes the environment. Every goroutine started after this must be
// gone once the test's cleanups have run (goleak, registered first so that
// it runs last).
func newEnv(t *testing.T) *env {
	t.Helper()
	netmontest.RequireRoot(t)
	checkLeaks(t)
	e := &env{reg: prometheus.NewPedanticRegistry()}
	e.Pair = netmontest.NewPair(t)
	br := netmontest.AddBridge(t, e.Dockerd)
	e.bridge = br.Name
	netmontest.AddAddr(t, e.Dockerd, br.Index, gateway+"/16")
	e.hosts.Store(1)
	e.log = logrec.New(t)
	return e
}

// checkLeaks fails t if a goroutine started after this call is still
// running once every cleanup registered after it has run.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// endpoint is a Docker endpoint: a veth whose sandbox end was created in the
// sandbox netns (Docker 28+), the host end on the bridge.
type endpoint struct {
	*netmontest.Endpoint
	MAC  net.HardwareAddr
	CIDR string
}

// newVeth replays Docker's first step: the veth, its sandbox end still
// vethXXXXXXX, down, untied.
func (e *env) newVeth(t *testing.T) *endpoint {
	t.Helper()
	h := int(e.hosts.Add(1))
	return &endpoint{
		Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, e.bridge),
		MAC:      netmontest.RandMAC(),
		CIDR:     fmt.Sprintf("172.31.%d.%d/16", h/250, h%250+1),
	}
}

// addEndpoint replays Docker's whole sequence: rename, MAC, address, up, and
// the default route via the gateway when gw.
func (e *env) addEndpoint(t *testing.T, name string, gw bool) *endpoint {
	t.Helper()
	ep := e.newVeth(t)
	ep.configure(name, gw)
	return ep
}

func (ep *endpoint) configure(name string, gw bool) {
	g := ""
	if gw {
		g = gateway
	}
	ep.Configure(name, ep.MAC.String(), ep.CIDR, g)
}

// routeVia is a unicast main-table route to dst via gateway through index.
func routeVia(dst string, index int) *netlink.Route {
	_, n, err := net.ParseCIDR(dst)
	if err != nil {
		panic(err)
	}
	return &netlink.Route{Dst: n, Gw: net.ParseIP(gateway), LinkIndex: index, Protocol: unix.RTPROT_BOOT}
}

// waitRunning waits until the kernel reports ifindex RUNNING in h's netns
// (linkwatch sets it asynchronously after up).
func waitRunning(t *testing.T, h *netlink.Handle, index int) {
	t.Helper()
	waitUntil(t, waitTimeout, fmt.Sprintf("ifindex %d running", index), func() (bool, string) {
		l, err := h.LinkByIndex(index)
		if err != nil {
			return false, err.Error()
		}
		return l.Attrs().RawFlags&unix.IFF_RUNNING != 0, fmt.Sprintf("flags %#x", l.Attrs().RawFlags)
	})
}

// waitUntil re-checks cond every 2 ms until it holds, failing t after
// timeout with cond's last description. For conditions that no single
// channel signals (the sandbox's calls and the monitor's view together).
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// shimConfig is what the Kata shim passes for a Docker sandbox watching the
// sandbox netns, peers in the test's dockerd netns, metrics on e.reg.
func (e *env) shimConfig(id string, sb hotplug.Sandbox) shimhook.Config {
	cfg := shimcfg.Docker(id, sb, e.SandboxPath, e.DockerdPath)
	cfg.Settings.ReadyTimeout = waitTimeout
	cfg.Log = e.log.Log
	cfg.Registerer = e.reg
	return cfg
}

// startShim runs shimhook.Start and stops the monitor on cleanup, checking
// that Stop returns by its deadline.
func startShim(t *testing.T, cfg shimhook.Config) *shimhook.Monitor {
	t.Helper()
	m, err := shimhook.Start(context.Background(), cfg)
	if err != nil || m == nil {
		t.Fatalf("shimhook.Start = %v, %v", m, err)
	}
	t.Cleanup(func() { stopWithin(t, m, waitTimeout) })
	return m
}

// stopWithin stops m with a deadline and fails t if Stop overran it.
func stopWithin(t *testing.T, m *shimhook.Monitor, deadline time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	begin := time.Now()
	err := m.Stop(ctx)
	if took := time.Since(begin); took > deadline+time.Second {
		t.Errorf("Stop took %v, deadline %v", took, deadline)
	}
	return err
}

// startDirect starts netmon on the sandbox netns and a reconciler driving
// sb (direct.Start: no shimhook, so a test can see the view and count the
// passes), logging to e.log with a sandbox field and counting into e.reg
// under id. mod, if set, changes the config first.
func (e *env) startDirect(t *testing.T, sb hotplug.Sandbox, id string, mod func(*direct.Config)) *direct.Monitor {
	t.Helper()
	met, err := metrics.New(e.reg, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { met.Unregister() })
	cfg := direct.Config{Sandbox: sb, SandboxNetNS: e.SandboxPath, DockerdNetNS: e.DockerdPath,
		Log: e.log.Log.WithField("sandbox", id), Metrics: met}
	if mod != nil {
		mod(&cfg)
	}
	return direct.Start(t, cfg)
}
