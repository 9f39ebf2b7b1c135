//go:build linux

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// gdSandbox is a Docker container (runc) whose netns plays the Kata sandbox
// netns, with a QEMU guest booted inside that netns, as Kata's hypervisor
// runs in the sandbox netns.
type gdSandbox struct {
	env   *dockerenv.Env
	ctr   string // container name
	id    string // container id
	pid   int
	netns string // /proc/<pid>/ns/net
	vm    *guest.VM
}

// gdRunSandbox runs a busybox container on network, then boots a guest with
// no NIC in its netns: the Docker 28+ order, where Docker has configured the
// container's interfaces before the shim's Start. The container is removed
// and the VM stopped on t's cleanup (VM first).
func gdRunSandbox(t *testing.T, env *dockerenv.Env, img, network string) *gdSandbox {
	t.Helper()
	s := &gdSandbox{env: env, ctr: dockerenv.UniqueName("knm-gd")}
	start := time.Now()
	s.id = env.MustDocker(t, "run", "--detach", "--name", s.ctr, "--network", network, img, "sleep", "3600")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := env.Docker(ctx, "rm", "--force", s.ctr); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	s.pid = env.ContainerPid(t, s.ctr)
	s.netns = fmt.Sprintf("/proc/%d/ns/net", s.pid)
	t.Logf("docker run %s: %v (pid %d)", s.ctr, time.Since(start).Round(time.Millisecond), s.pid)
	s.vm = guest.Boot(t, guest.Options{NetNS: s.netns})
	return s
}

// endpoint returns the container's endpoint on network per docker inspect.
func (s *gdSandbox) endpoint(t *testing.T, network string) *dockerenv.Endpoint {
	t.Helper()
	c := s.env.MustInspectContainer(t, s.ctr)
	ep := c.NetworkSettings.Networks[network]
	if ep == nil || ep.MacAddress == "" || !ep.IPAddress.IsValid() {
		t.Fatalf("container %s: no configured endpoint on %s: %+v", s.ctr, network, c.NetworkSettings.Networks)
	}
	return ep
}

// gdDockerSpec is the part of a Docker sandbox's OCI spec the shim hook
// reads: a network namespace entry with an empty path (a new netns).
func gdDockerSpec() *specs.Spec {
	return &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.MountNamespace},
	}}}
}

// gdMonitor is a shimhook.Start result with everything it logged.
type gdMonitor struct {
	m    *shimhook.Monitor
	hook *logtest.Hook
	took time.Duration // Start's duration
	// notMonitored is Start's ErrNotMonitored error (nil when monitored).
	notMonitored error
}

// gdStartMonitor calls shimhook.Start as a shim would for this sandbox: the
// production entry point, with Docker's containerd namespace and spec and
// dockerd's netns as the peer netns. The monitor logs at debug level into a
// test hook; info and above also go to t.Log. It is stopped on t's cleanup.
func gdStartMonitor(t *testing.T, s *gdSandbox, sb hotplug.Sandbox) *gdMonitor {
	t.Helper()
	logger := logrus.New()
	logger.Level = logrus.DebugLevel
	logger.Out = io.Discard
	hook := logtest.NewLocal(logger)
	logger.AddHook(&gdTestLogHook{t: t, start: time.Now()})
	settings := shimhook.DefaultSettings()
	settings.DockerdNetNS = s.env.NetNSPath()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	start := time.Now()
	m, err := shimhook.Start(ctx, shimhook.Config{
		SandboxID:     s.id[:12],
		Namespace:     "moby",
		Spec:          gdDockerSpec(),
		Sandbox:       sb,
		NetNSPath:     s.netns,
		HypervisorPID: s.vm.Pid,
		Settings:      settings,
		Log:           logrus.NewEntry(logger),
	})
	took := time.Since(start)
	if err != nil && !errors.Is(err, shimhook.ErrNotMonitored) {
		t.Fatalf("shimhook.Start: %v", err)
	}
	t.Logf("shimhook.Start returned after %v (monitor running: %v, attached %v, not monitored: %v)", took.Round(time.Millisecond), m != nil, m.NICNames(), err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			t.Errorf("monitor Stop: %v", err)
		}
	})
	return &gdMonitor{m: m, hook: hook, took: took, notMonitored: err}
}

// gdTestLogHook copies the monitor's info-and-above lines to t.Log.
type gdTestLogHook struct {
	t     *testing.T
	start time.Time
	mu    sync.Mutex
}

func (h *gdTestLogHook) Levels() []logrus.Level {
	if os.Getenv("KNM_GD_DEBUG") != "" {
		return logrus.AllLevels
	}
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel, logrus.InfoLevel}
}

func (h *gdTestLogHook) Fire(e *logrus.Entry) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.t.Logf("monitor %s: %s%s", strings.ToUpper(e.Level.String()), e.Message, gdFields(e.Data))
	return nil
}

// gdFields renders logrus fields sorted, leaving out the ones every line has.
func gdFields(d logrus.Fields) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		switch k {
		case "component", "sandbox", "netns":
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, d[k])
	}
	return b.String()
}

// gdFindLog returns the first entry at level or above whose message
// contains substr.
func gdFindLog(h *logtest.Hook, level logrus.Level, substr string) *logrus.Entry {
	for _, e := range h.AllEntries() {
		if e.Level <= level && strings.Contains(e.Message, substr) {
			return e
		}
	}
	return nil
}

// gdWaitLog waits until gdFindLog finds an entry.
func gdWaitLog(ctx context.Context, h *logtest.Hook, level logrus.Level, substr string) (*logrus.Entry, error) {
	for {
		if e := gdFindLog(h, level, substr); e != nil {
			return e, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no %s log line containing %q: %w", level, substr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// gdNoErrors fails t for every error-level entry the monitor logged.
func gdNoErrors(t *testing.T, h *logtest.Hook) {
	t.Helper()
	for _, e := range h.AllEntries() {
		if e.Level <= logrus.ErrorLevel {
			t.Errorf("monitor logged an error: %s%s", e.Message, gdFields(e.Data))
		}
	}
}

// gdCheckNIC checks that the guest has a NIC with the endpoint's MAC, named
// name, carrying the endpoint's IPv4 address and prefix length.
func gdCheckNIC(infs []*guestproto.Interface, name string, ep *dockerenv.Endpoint) error {
	inf := guest.FindInterface(infs, ep.MacAddress)
	if inf == nil {
		return fmt.Errorf("no guest NIC with MAC %s (guest has %s)", ep.MacAddress, gdDescribe(infs))
	}
	if inf.Name != name {
		return fmt.Errorf("guest NIC with MAC %s is %q, want %q", ep.MacAddress, inf.Name, name)
	}
	if !guest.HasAddress(inf, ep.IPAddress.String(), ep.IPPrefixLen) {
		return fmt.Errorf("guest %s lacks %v (guest has %s)", name, ep.IPv4Prefix(), gdDescribe(infs))
	}
	return nil
}

func gdDescribe(infs []*guestproto.Interface) string {
	var parts []string
	for _, inf := range infs {
		var addrs []string
		for _, a := range inf.IPAddresses {
			addrs = append(addrs, a.Address+"/"+a.Mask)
		}
		parts = append(parts, fmt.Sprintf("%s %s [%s]", inf.Name, inf.HwAddr, strings.Join(addrs, " ")))
	}
	return strings.Join(parts, "; ")
}

// gdDefaultRoutes returns the guest's IPv4 default routes as "via GW dev D".
func gdDefaultRoutes(rs []*guestproto.Route) []string {
	var out []string
	for _, r := range rs {
		if r.Dest == "" && r.Family == guestproto.FamilyV4 {
			out = append(out, fmt.Sprintf("via %s dev %s", r.Gateway, r.Device))
		}
	}
	sort.Strings(out)
	return out
}

// gdWantDefault returns a WaitRoutes predicate: exactly one IPv4 default
// route, via gw on dev.
func gdWantDefault(gw, dev string) func([]*guestproto.Route) error {
	want := fmt.Sprintf("via %s dev %s", gw, dev)
	return func(rs []*guestproto.Route) error {
		if got := gdDefaultRoutes(rs); len(got) != 1 || got[0] != want {
			return fmt.Errorf("guest IPv4 default routes %q, want [%q]", got, want)
		}
		return nil
	}
}

// gdReachable serves a fresh random token in the guest on port and reads it
// from dockerd's netns at ip:port: only the guest knows the token, and
// nothing listens in the sandbox netns, so an answer proves the packets went
// bridge -> veth -> tc mirred -> tap -> guest and back.
func gdReachable(ctx context.Context, t *testing.T, s *gdSandbox, ip string, port int) time.Duration {
	t.Helper()
	token := "knm-" + gdRandHex(8)
	if err := s.vm.Agent.ServeToken(ctx, port, token); err != nil {
		t.Fatalf("guest ServeToken: %v", err)
	}
	addr := net.JoinHostPort(ip, fmt.Sprint(port))
	start := time.Now()
	got, err := guest.ReadToken(ctx, s.env.NetNSPath(), addr, 2*time.Second, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("from dockerd's netns: %v", err)
	}
	if got != token {
		t.Fatalf("token from %s = %q, want the guest's %q", addr, got, token)
	}
	took := time.Since(start)
	t.Logf("guest answered at %s from dockerd's netns in %v", addr, took.Round(100*time.Microsecond))
	return took
}

// gdAssertQEMUQuiet fails t if QEMU logged anything about tun/tap (the
// error Kata 4.1's detach order causes).
func gdAssertQEMUQuiet(t *testing.T, vm *guest.VM) {
	t.Helper()
	if l := strings.ToLower(vm.QEMULog()); strings.Contains(l, "tap") || strings.Contains(l, "tun") {
		t.Errorf("QEMU logged a tun/tap error:\n%s", vm.QEMULog())
	}
}

func gdRandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
