//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/metrics"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// ftWait bounds every wait of the fault and hostile tests.
const ftWait = 10 * time.Second

// ftGW is the gateway of the one bridge network of an ftEnv
// (172.31.0.0/16, on the bridge in the dockerd netns).
const ftGW = "172.31.0.1"

// ftEnv is a "dockerd" netns holding a bridge network and a "sandbox" netns
// (Kata's), both fresh, plus a log that records every entry and a private
// metrics registry.
type ftEnv struct {
	netmontest.Pair
	bridge string
	log    *logrus.Entry
	hook   *logtest.Hook
	reg    *prometheus.Registry
	hosts  atomic.Int32 // last host number handed out
}

// ftNewEnv makes the environment. Every goroutine started after this must be
// gone once the test's cleanups have run (goleak, registered first so that
// it runs last).
func ftNewEnv(t *testing.T) *ftEnv {
	t.Helper()
	netmontest.RequireRoot(t)
	ftLeakCheck(t)
	e := &ftEnv{reg: prometheus.NewPedanticRegistry()}
	e.Pair = netmontest.NewPair(t)
	br := netmontest.AddBridge(t, e.Dockerd)
	e.bridge = br.Name
	netmontest.AddAddr(t, e.Dockerd, br.Index, ftGW+"/16")
	e.hosts.Store(1)
	e.log, e.hook = ftLogger(t)
	return e
}

// ftLeakCheck fails t if a goroutine started after this call is still
// running once every cleanup registered after it has run.
func ftLeakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// ftLogger records every entry (debug included); with KNM_TEST_LOG set it
// also writes them to the test log.
func ftLogger(t testing.TB) (*logrus.Entry, *logtest.Hook) {
	l := logrus.New()
	l.SetLevel(logrus.DebugLevel)
	l.SetOutput(ftTestWriter{t})
	return logrus.NewEntry(l), logtest.NewLocal(l)
}

type ftTestWriter struct{ t testing.TB }

func (w ftTestWriter) Write(p []byte) (int, error) {
	if os.Getenv("KNM_TEST_LOG") != "" {
		w.t.Logf("%s", p)
	}
	return len(p), nil
}

// ftEntries returns the recorded entries at level or more severe whose
// message contains substr.
func ftEntries(h *logtest.Hook, level logrus.Level, substr string) []*logrus.Entry {
	var out []*logrus.Entry
	for _, e := range h.AllEntries() {
		if e.Level <= level && strings.Contains(e.Message, substr) {
			out = append(out, e)
		}
	}
	return out
}

func ftDumpLog(h *logtest.Hook, level logrus.Level) string {
	var b strings.Builder
	for _, e := range h.AllEntries() {
		if e.Level <= level {
			fmt.Fprintf(&b, "\n  %s %s %v", e.Level, e.Message, e.Data)
		}
	}
	return b.String()
}

// ftCheckLogFields: every entry of a monitor started through shimhook
// names its sandbox and netns, and every entry about one link (ifindex)
// names it too (ifname).
func ftCheckLogFields(t *testing.T, h *logtest.Hook) {
	t.Helper()
	for _, e := range h.AllEntries() {
		if _, ok := e.Data["sandbox"]; !ok {
			t.Errorf("log entry without sandbox: %s %q %v", e.Level, e.Message, e.Data)
		}
		if _, ok := e.Data["netns"]; !ok && !strings.Contains(e.Message, "netns") {
			t.Errorf("log entry without netns: %s %q %v", e.Level, e.Message, e.Data)
		}
		if idx, ok := e.Data["ifindex"]; ok && idx != 0 {
			if _, ok := e.Data["ifname"]; !ok {
				t.Errorf("log entry with ifindex but no ifname: %s %q %v", e.Level, e.Message, e.Data)
			}
		}
	}
}

// ftEP is a Docker endpoint: a veth whose sandbox end was created in the
// sandbox netns (Docker 28+), the host end on the bridge.
type ftEP struct {
	*netmontest.Endpoint
	MAC  net.HardwareAddr
	CIDR string
}

// newEP replays Docker's first step: the veth, its sandbox end still
// vethXXXXXXX, down, untied.
func (e *ftEnv) newEP(t *testing.T) *ftEP {
	t.Helper()
	h := int(e.hosts.Add(1))
	return &ftEP{
		Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, e.bridge),
		MAC:      netmontest.RandMAC(),
		CIDR:     fmt.Sprintf("172.31.%d.%d/16", h/250, h%250+1),
	}
}

// endpoint replays Docker's whole sequence: rename, MAC, address, up, and
// the default route via the gateway when gw.
func (e *ftEnv) endpoint(t *testing.T, name string, gw bool) *ftEP {
	t.Helper()
	ep := e.newEP(t)
	ep.configure(name, gw)
	return ep
}

func (ep *ftEP) configure(name string, gw bool) {
	g := ""
	if gw {
		g = ftGW
	}
	ep.Configure(name, ep.MAC.String(), ep.CIDR, g)
}

// ftWaitRunning waits until the kernel reports ifindex RUNNING in h's netns
// (linkwatch sets it asynchronously after up).
func ftWaitRunning(t *testing.T, h *netlink.Handle, index int) {
	t.Helper()
	ftWaitUntil(t, ftWait, fmt.Sprintf("ifindex %d running", index), func() (bool, string) {
		l, err := h.LinkByIndex(index)
		if err != nil {
			return false, err.Error()
		}
		return l.Attrs().RawFlags&unix.IFF_RUNNING != 0, fmt.Sprintf("flags %#x", l.Attrs().RawFlags)
	})
}

// ftWaitUntil re-checks cond every 2 ms until it holds, failing t after
// timeout with cond's last description. For conditions that no single
// channel signals (the sandbox's calls and the monitor's view together).
func ftWaitUntil(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
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

// ftSpec is the OCI spec of a Docker sandbox: a new netns (empty path).
func ftSpec() *specs.Spec {
	return &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}
}

// shimConfig is what the Kata shim passes for a Docker sandbox watching the
// sandbox netns, peers in the test's dockerd netns, metrics on e.reg.
func (e *ftEnv) shimConfig(id string, sb hotplug.Sandbox) shimhook.Config {
	s := shimhook.DefaultSettings()
	s.DockerdNetNS = e.DockerdPath
	s.ReadyTimeout = ftWait
	return shimhook.Config{
		SandboxID:  id,
		Namespace:  "moby",
		Spec:       ftSpec(),
		Sandbox:    sb,
		NetNSPath:  e.SandboxPath,
		Settings:   s,
		Log:        e.log,
		Registerer: e.reg,
	}
}

// ftStart runs shimhook.Start and stops the monitor on cleanup, checking
// that Stop returns by its deadline.
func ftStart(t *testing.T, cfg shimhook.Config) *shimhook.Monitor {
	t.Helper()
	m, err := shimhook.Start(context.Background(), cfg)
	if err != nil || m == nil {
		t.Fatalf("shimhook.Start = %v, %v", m, err)
	}
	t.Cleanup(func() { ftStop(t, m, ftWait) })
	return m
}

// ftStop stops m with a deadline and fails t if Stop overran it.
func ftStop(t *testing.T, m *shimhook.Monitor, deadline time.Duration) error {
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

// ftTee stands between netmon and the reconciler and counts the
// reconciler's passes (one Snapshot per pass).
type ftTee struct {
	*netmon.Monitor
	passes atomic.Int64
}

var _ hotplug.Source = (*ftTee)(nil)

func (s *ftTee) Snapshot() *view.Snapshot {
	s.passes.Add(1)
	return s.Monitor.Snapshot()
}

// ftDirect is netmon and a reconciler run directly (no shimhook), with
// metrics, for what shimhook does not expose (the receive buffer size).
type ftDirect struct {
	*ftTee
	rec    *hotplug.Reconciler
	met    *metrics.Sandbox
	cancel context.CancelFunc
	runErr chan error
}

// startDirect starts netmon on the sandbox netns and a reconciler driving
// sb, as shimhook does after its first reconcile. Cleanup stops both and
// waits for every goroutine.
func (e *ftEnv) startDirect(t *testing.T, sb hotplug.Sandbox, id string, mod func(*netmon.Config)) *ftDirect {
	t.Helper()
	met, err := metrics.New(e.reg, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { met.Unregister() })
	log := e.log.WithField("sandbox", id)
	cfg := netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath, Log: log, Observer: met}
	if mod != nil {
		mod(&cfg)
	}
	mon, err := netmon.New(cfg)
	if err != nil {
		t.Fatalf("netmon.New: %v", err)
	}
	t.Cleanup(func() { mon.Close() })
	tee := &ftTee{Monitor: mon}
	rec, err := hotplug.New(hotplug.Config{Sandbox: sb, Source: tee, Log: log.WithField("netns", e.SandboxPath), Observer: met,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("hotplug.New: %v", err)
	}
	if err := mon.Start(context.Background()); err != nil {
		t.Fatalf("netmon Start: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &ftDirect{ftTee: tee, rec: rec, met: met, cancel: cancel, runErr: make(chan error, 1)}
	go func() { d.runErr <- rec.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-d.runErr:
			if err != nil {
				t.Errorf("reconciler: %v", err)
			}
			d.runErr <- err
		case <-time.After(ftWait):
			t.Errorf("reconciler still running %v after cancel", ftWait)
		}
	})
	return d
}

// ftLastRoutes returns the routes of the last UpdateRoutes call sb received.
func ftLastRoutes(sb *hotplugtest.FakeSandbox) ([]*hotplug.Route, bool) {
	calls := sb.CallsOf(hotplugtest.OpUpdateRoutes)
	if len(calls) == 0 {
		return nil, false
	}
	return calls[len(calls)-1].Routes, true
}

func ftRoutesString(rs []*hotplug.Route) string {
	var parts []string
	for _, r := range rs {
		d := r.Dest
		if d == "" {
			d = "default"
		}
		parts = append(parts, fmt.Sprintf("%s via %q dev %s", d, r.Gateway, r.Device))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

func ftSameRoutes(a, b []*hotplug.Route) bool {
	return slices.EqualFunc(a, b, func(x, y *hotplug.Route) bool { return *x == *y })
}

// ftInvariants: no MAC is plugged twice, and every RemoveInterface names a
// MAC an AddInterface named before it.
func ftInvariants(t *testing.T, sb *hotplugtest.FakeSandbox) {
	t.Helper()
	macs := sb.GuestMACs()
	if c := slices.Compact(slices.Clone(macs)); len(c) != len(macs) {
		t.Fatalf("a MAC is plugged twice: %v", macs)
	}
	added := map[string]bool{}
	for _, c := range sb.Calls() {
		switch c.Op {
		case hotplugtest.OpAddInterface:
			added[c.MAC()] = true
		case hotplugtest.OpRemoveInterface:
			if !added[c.MAC()] {
				t.Fatalf("RemoveInterface(%s) of a MAC never attached; calls %v", c.MAC(), sb.Ops())
			}
		}
	}
}

// ftMetric returns the value of the counter or gauge name{labels...} of
// sandbox id in reg (0 when the series does not exist).
func ftMetric(t testing.TB, reg prometheus.Gatherer, name, id string, pairs ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	pairs = append(pairs, metrics.SandboxLabel, id)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !ftHasLabels(m, pairs) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func ftHasLabels(m *dto.Metric, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			found = found || (l.GetName() == pairs[i] && l.GetValue() == pairs[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}

// ftSeries counts the series of reg that carry sandbox="id".
func ftSeries(t testing.TB, reg prometheus.Gatherer, id string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if ftHasLabels(m, []string{metrics.SandboxLabel, id}) {
				n++
			}
		}
	}
	return n
}

// ftCalls is the total of kata_netmon_sandbox_calls_total of sandbox id.
func ftCalls(t testing.TB, reg prometheus.Gatherer, id string) float64 {
	return ftMetric(t, reg, "kata_netmon_sandbox_calls_total", id)
}

// ftEvents is the total of kata_netmon_netlink_events_total of sandbox id.
func ftEvents(t testing.TB, reg prometheus.Gatherer, id string) float64 {
	return ftMetric(t, reg, "kata_netmon_netlink_events_total", id)
}

// ftGoroutines returns the stacks of the goroutines running now whose stack
// mentions every one of substrs.
func ftGoroutines(substrs ...string) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range regexp.MustCompile(`\n\n`).Split(string(buf), -1) {
		ok := true
		for _, s := range substrs {
			ok = ok && strings.Contains(g, s)
		}
		if ok {
			out = append(out, g)
		}
	}
	return out
}

// ftCPU returns the CPU time (user + system) this process has used.
func ftCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ftGoroutineMax samples runtime.NumGoroutine until stop is closed and
// returns the largest count seen.
func ftGoroutineMax(stop <-chan struct{}) func() int {
	var mu sync.Mutex
	peak := runtime.NumGoroutine()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				n := runtime.NumGoroutine()
				mu.Lock()
				peak = max(peak, n)
				mu.Unlock()
			}
		}
	}()
	return func() int {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// ftRoute is a unicast main-table route to dst via ftGW through index.
func ftRoute(dst string, index int) *netlink.Route {
	_, n, err := net.ParseCIDR(dst)
	if err != nil {
		panic(err)
	}
	return &netlink.Route{Dst: n, Gw: net.ParseIP(ftGW), LinkIndex: index, Protocol: unix.RTPROT_BOOT}
}
