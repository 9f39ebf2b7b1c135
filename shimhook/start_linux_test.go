package shimhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestMain fails the package when a test leaves a goroutine behind: Start
// runs a monitor, a reconciler and its sandbox calls in goroutines.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const startWait = 10 * time.Second

// startEnv is a sandbox netns (Kata's) and a dockerd netns holding a
// bridge with the gateway address, as Docker 28+ leaves them.
type startEnv struct {
	netmontest.Pair
	bridge string
	log    *startLog
}

const (
	startGW     = "172.29.0.1"
	startSubnet = "172.29.0.%d/24"
)

func newStartEnv(t *testing.T) *startEnv {
	t.Helper()
	e := &startEnv{log: newStartLog(t)}
	e.Pair = netmontest.NewPair(t)
	br := netmontest.AddBridge(t, e.Dockerd)
	e.bridge = br.Name
	netmontest.AddAddr(t, e.Dockerd, br.Index, startGW+"/24")
	return e
}

// config is a moby sandbox with a new netns, watched through NetNSPath,
// peers resolved in the test's dockerd netns.
func (e *startEnv) config(sb hotplug.Sandbox) Config {
	s := DefaultSettings()
	s.DockerdNetNS = e.DockerdPath
	s.ReadyTimeout = startWait
	return Config{
		SandboxID: "knm-test",
		Namespace: "moby",
		Spec:      specWithNet("", true),
		Sandbox:   sb,
		NetNSPath: e.SandboxPath,
		Settings:  s,
		Log:       e.log.entry,
	}
}

// startEP is a Docker endpoint: a veth whose sandbox end was created in the
// sandbox netns (vethXXXXXXX, no IFLA_LINK yet), host end on the bridge.
type startEP struct {
	*netmontest.Endpoint
	mac  net.HardwareAddr
	cidr string
}

func (e *startEnv) endpoint(t *testing.T, host int) *startEP {
	t.Helper()
	ep := &startEP{Endpoint: netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, e.bridge), mac: netmontest.RandMAC()}
	ep.cidr = fmt.Sprintf(startSubnet, host)
	return ep
}

// configure runs Docker's steps: rename, MAC, address, up, default route.
func (ep *startEP) configure(name string, gw bool) {
	g := ""
	if gw {
		g = startGW
	}
	ep.Configure(name, ep.mac.String(), ep.cidr, g)
}

// startLog records the monitor's log entries; on, if set, sees each
// message as it is logged (it must not block).
type startLog struct {
	entry   *logrus.Entry
	mu      sync.Mutex
	entries []startEntry
	on      func(msg string)
}

type startEntry struct {
	level  logrus.Level
	msg    string
	fields logrus.Fields
}

func newStartLog(t *testing.T) *startLog {
	l := &startLog{}
	lg := logrus.New()
	lg.SetLevel(logrus.DebugLevel)
	lg.SetOutput(netmontest.LogWriter(t))
	lg.AddHook(l)
	l.entry = logrus.NewEntry(lg)
	return l
}

func (l *startLog) Levels() []logrus.Level { return logrus.AllLevels }

func (l *startLog) Fire(e *logrus.Entry) error {
	f := make(logrus.Fields, len(e.Data))
	for k, v := range e.Data {
		f[k] = v
	}
	l.mu.Lock()
	l.entries = append(l.entries, startEntry{level: e.Level, msg: e.Message, fields: f})
	on := l.on
	l.mu.Unlock()
	if on != nil {
		on(e.Message)
	}
	return nil
}

func (l *startLog) onMessage(fn func(string)) {
	l.mu.Lock()
	l.on = fn
	l.mu.Unlock()
}

// find returns the first entry whose message starts with prefix.
func (l *startLog) find(prefix string) (startEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		if strings.HasPrefix(e.msg, prefix) {
			return e, true
		}
	}
	return startEntry{}, false
}

func (l *startLog) dump() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, e := range l.entries {
		b.WriteString("\n  " + e.level.String() + " " + e.msg)
	}
	return b.String()
}

// leakCheck fails t if a goroutine started after this call is still there
// once every cleanup registered after it has run.
func leakCheck(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// stopOnCleanup stops m on cleanup and checks it returned by its deadline.
func stopOnCleanup(t *testing.T, m *Monitor) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startWait)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
}

func addCalls(fs *hotplugtest.FakeSandbox, mac net.HardwareAddr) []hotplugtest.Call {
	var out []hotplugtest.Call
	for _, c := range fs.CallsOf(hotplugtest.OpAddInterface) {
		if c.MAC() == mac.String() {
			out = append(out, c)
		}
	}
	return out
}

// TestStartAttachesConfiguredEndpoint: Docker 28+ configures the endpoint
// after the sandbox exists and before the shim's Start; the first
// reconcile attaches it, and pushes its routes, before Start returns.
func TestStartAttachesConfiguredEndpoint(t *testing.T) {
	e := newStartEnv(t)
	ep := e.endpoint(t, 2)
	ep.configure("eth0", true)
	fs := &hotplugtest.FakeSandbox{}

	m, err := Start(context.Background(), e.config(fs))
	if err != nil || m == nil {
		t.Fatalf("Start = %v, %v; want a monitor", m, err)
	}
	stopOnCleanup(t, m)
	// No waiting from here on: all of it happened inside Start.
	calls := addCalls(fs, ep.mac)
	if len(calls) != 1 {
		t.Fatalf("AddInterface calls for eth0 before Start returned: %d (calls %v)", len(calls), fs.Ops())
	}
	inf := calls[0].Interface
	if inf.Name != "eth0" || inf.Type != "veth" || !slices.Equal(startAddrs(inf), []string{ep.cidr}) {
		t.Errorf("AddInterface(%+v) addresses %s, want eth0 veth with %s", inf, startAddrs(inf), ep.cidr)
	}
	if got := m.NICNames(); !slices.Equal(got, []string{"eth0"}) {
		t.Errorf("Attached = %v, want [eth0]", got)
	}
	routes := fs.CallsOf(hotplugtest.OpUpdateRoutes)
	if len(routes) == 0 || !slices.ContainsFunc(routes[len(routes)-1].Routes, func(r *hotplug.Route) bool {
		return r.Dest == "" && r.Gateway == startGW && r.Device == "eth0"
	}) {
		t.Errorf("default route not pushed before Start returned: %v", fs.Ops())
	}
	if _, ok := e.log.find("first reconcile done"); !ok {
		t.Errorf("no 'first reconcile done' log:%s", e.log.dump())
	}
}

// TestStartWaitsForLastStep: the endpoint's last step (its address, or
// `up` and the RUNNING the kernel sets after it) happens after Start has
// begun watching; Start waits for it and attaches before returning.
func TestStartWaitsForLastStep(t *testing.T) {
	tests := []struct {
		name  string
		early func(ep *startEP) // before Start
		last  func(ep *startEP) // from another goroutine, once Start watches
	}{
		{"address last", func(ep *startEP) {
			ep.Rename("eth0")
			ep.SetMAC(ep.mac.String())
			ep.Up()
		}, func(ep *startEP) { ep.AddAddr(ep.cidr) }},
		{"up last", func(ep *startEP) {
			ep.Rename("eth0")
			ep.SetMAC(ep.mac.String())
			ep.AddAddr(ep.cidr)
		}, func(ep *startEP) { ep.Up() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newStartEnv(t)
			ep := e.endpoint(t, 2)
			tc.early(ep)
			fs := &hotplugtest.FakeSandbox{}
			var once sync.Once
			lastDone := make(chan struct{})
			var lastAt atomic.Int64 // when the last step began
			// netmon logs "watching" once its first view is published,
			// inside Start: the endpoint is pending in that view.
			e.log.onMessage(func(msg string) {
				if msg == "watching" {
					once.Do(func() {
						go func() {
							defer close(lastDone)
							lastAt.Store(time.Now().UnixNano())
							tc.last(ep)
						}()
					})
				}
			})
			begin := time.Now()
			m, err := Start(context.Background(), e.config(fs))
			returned := time.Now()
			if m != nil {
				stopOnCleanup(t, m)
			}
			select {
			case <-lastDone:
			case <-time.After(startWait):
				t.Fatal("the last step never ran: no 'watching' log from netmon")
			}
			if err != nil || m == nil {
				t.Fatalf("Start = %v, %v", m, err)
			}
			calls := addCalls(fs, ep.mac)
			if len(calls) != 1 {
				t.Fatalf("AddInterface calls for eth0 before Start returned: %+v (ops %v)", calls, fs.Ops())
			}
			// What the last step brought is in the attach: Start waited.
			if inf := calls[0].Interface; !slices.Equal(startAddrs(inf), []string{ep.cidr}) || inf.RawFlags&0x40 == 0 {
				t.Errorf("AddInterface(%+v) addresses %v, want %s and IFF_RUNNING", inf, startAddrs(inf), ep.cidr)
			}
			if at := time.Unix(0, lastAt.Load()); at.After(returned) || at.Before(begin) {
				t.Errorf("last step began at %v, Start ran %v..%v", at, begin, returned)
			}
			if _, ok := e.log.find("first reconcile did not attach"); ok {
				t.Errorf("first reconcile timed out:%s", e.log.dump())
			}
			t.Logf("Start took %v", returned.Sub(begin).Round(time.Millisecond))
		})
	}
}

// TestStartNetNone: --net=none (only lo) has nothing to wait for: Start
// returns at once, and the monitor still attaches a later connect.
func TestStartNetNone(t *testing.T) {
	e := newStartEnv(t)
	fs := &hotplugtest.FakeSandbox{}
	cfg := e.config(fs)
	cfg.Settings.ReadyTimeout = time.Minute // a wait would show
	begin := time.Now()
	m, err := Start(context.Background(), cfg)
	took := time.Since(begin)
	if err != nil || m == nil {
		t.Fatalf("Start = %v, %v", m, err)
	}
	stopOnCleanup(t, m)
	if took > 5*time.Second {
		t.Errorf("Start took %v with only lo", took)
	}
	t.Logf("Start took %v", took.Round(time.Millisecond))
	if ops := fs.CallsOf(hotplugtest.OpAddInterface); len(ops) != 0 {
		t.Errorf("AddInterface called: %v", fs.Ops())
	}
	// docker network connect later: the background loop attaches it.
	ep := e.endpoint(t, 3)
	ep.configure("eth0", false)
	if _, err := fs.WaitFor(startWait, func([]hotplugtest.Call) bool { return len(addCalls(fs, ep.mac)) == 1 }, "attach after connect"); err != nil {
		t.Fatal(err)
	}
}

// TestStartNotMonitored: every case where Start declines (ErrNotMonitored,
// with the reason in the error) or fails before starting anything: the
// sandbox is never called and no netns watch starts.
func TestStartNotMonitored(t *testing.T) {
	e := newStartEnv(t)
	ep := e.endpoint(t, 2)
	ep.configure("eth0", true) // something to attach, were it monitored
	tests := []struct {
		name    string
		mod     func(*Config)
		failure bool   // a failure, not ErrNotMonitored
		why     string // what the error says
	}{
		{"not Docker", func(c *Config) { c.Namespace = "k8s.io" }, false, "not a Docker sandbox"},
		{"disabled", func(c *Config) { c.Settings.Enabled = false }, false, "disabled by configuration"},
		{"--net=host", func(c *Config) { c.Spec = specWithNet("", false) }, false, "not a Docker sandbox"},
		{"--net=container", func(c *Config) { c.Spec = specWithNet("/proc/1/ns/net", true) }, false, "not a Docker sandbox"},
		{"the shim's own netns", func(c *Config) { c.NetNSPath = "/proc/self/ns/net" }, false, "the shim's own netns"},
		{"no hotplug capability", func(c *Config) {
			c.Sandbox = &hotplugtest.FakeSandbox{Caps: &hotplug.Capabilities{}}
		}, false, "cannot hot-plug"},
		{"no netns at all", func(c *Config) { c.NetNSPath = "" }, true, "neither a netns path nor a hypervisor pid"},
		{"netns path missing", func(c *Config) { c.NetNSPath = "/run/netns/knm-missing" }, true, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			e.log = newStartLog(t)
			fs := &hotplugtest.FakeSandbox{}
			cfg := e.config(fs)
			tc.mod(&cfg)
			cfg.Settings.FailStartOnAttachError = true
			m, err := Start(context.Background(), cfg)
			if m != nil || err == nil {
				m.Stop(context.Background())
				t.Fatalf("Start = %v, %v; want nil and an error", m, err)
			}
			if errors.Is(err, ErrNotMonitored) == tc.failure || !strings.Contains(err.Error(), tc.why) {
				t.Errorf("Start: %v; want it to say %q and ErrNotMonitored %v", err, tc.why, !tc.failure)
			}
			if FailsStart(err, cfg.Settings) != tc.failure {
				t.Errorf("FailsStart = %v with FailStartOnAttachError set, want %v", !tc.failure, tc.failure)
			}
			if c := fs.Calls(); len(c) != 0 {
				t.Errorf("sandbox called: %v", fs.Ops())
			}
			if s, ok := cfg.Sandbox.(*hotplugtest.FakeSandbox); ok && len(s.Calls()) != 0 {
				t.Errorf("sandbox called: %v", s.Ops())
			}
			if _, ok := e.log.find("watching"); ok {
				t.Error("the netns watch started")
			}
		})
	}
}

// panicSandbox panics when asked for its capabilities: a bug anywhere
// under Start.
type panicSandbox struct{ *hotplugtest.FakeSandbox }

func (panicSandbox) Capabilities() hotplug.Capabilities { panic("knm-test: boom") }

// TestStartPanic: a panic under Start is recovered and returned as a
// failure (ErrPanicked), which fails the container's Start only when the
// operator asked for that.
func TestStartPanic(t *testing.T) {
	leakCheck(t)
	e := newStartEnv(t)
	cfg := e.config(panicSandbox{&hotplugtest.FakeSandbox{}})
	m, err := Start(context.Background(), cfg)
	if m != nil || !errors.Is(err, ErrPanicked) || !strings.Contains(err.Error(), "knm-test: boom") {
		t.Fatalf("Start = %v, %v; want nil and ErrPanicked", m, err)
	}
	if FailsStart(err, cfg.Settings) {
		t.Error("FailsStart without FailStartOnAttachError")
	}
	cfg.Settings.FailStartOnAttachError = true
	if !FailsStart(err, cfg.Settings) {
		t.Error("FailsStart false with FailStartOnAttachError")
	}
	if le, ok := e.log.find("kata-netmon panicked in Start"); !ok || le.level != logrus.ErrorLevel || le.fields["stack"] == nil {
		t.Errorf("no error line with the stack:%s", e.log.dump())
	}
	// The netns was given up: a second Start may watch it.
	m, err = Start(context.Background(), e.config(&hotplugtest.FakeSandbox{}))
	if err != nil {
		t.Fatalf("Start after the panic: %v", err)
	}
	m.Stop(context.Background())
}

// TestStartFirstAttachFails: by default a failed first attach is logged and
// Start returns a monitor, which retries in the background; with
// FailStartOnAttachError, Start fails and nothing keeps running.
func TestStartFirstAttachFails(t *testing.T) {
	for _, failStart := range []bool{false, true} {
		name := "logged"
		if failStart {
			name = "FailStartOnAttachError"
		}
		t.Run(name, func(t *testing.T) {
			leakCheck(t)
			e := newStartEnv(t)
			ep := e.endpoint(t, 2)
			ep.configure("eth0", false)
			var failing atomic.Bool
			failing.Store(true)
			fs := &hotplugtest.FakeSandbox{}
			fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
				if failing.Load() {
					return nil, errors.New("QMP device_add: no free PCI slot")
				}
				return fs.GuestAddInterface(inf)
			}
			cfg := e.config(fs)
			cfg.Settings.ReadyTimeout = time.Second
			cfg.Settings.FailStartOnAttachError = failStart
			m, err := Start(context.Background(), cfg)
			if len(addCalls(fs, ep.mac)) == 0 {
				t.Errorf("no attach tried: %v", fs.Ops())
			}
			if failStart {
				if m != nil || !errors.Is(err, hotplug.ErrNotSettled) {
					m.Stop(context.Background())
					t.Fatalf("Start = %v, %v; want nil and ErrNotSettled", m, err)
				}
				t.Logf("Start: %v", err)
				return
			}
			if m == nil || err != nil {
				t.Fatalf("Start = %v, %v; want a monitor", m, err)
			}
			stopOnCleanup(t, m)
			if le, ok := e.log.find("first reconcile did not attach"); !ok || le.level != logrus.ErrorLevel {
				t.Errorf("no error log about the first attach:%s", e.log.dump())
			}
			// The background loop retries (Kata's hotplug can recover).
			n := len(fs.CallsOf(hotplugtest.OpAddInterface))
			failing.Store(false)
			if _, err := fs.WaitFor(startWait, func([]hotplugtest.Call) bool {
				return slices.Contains(fs.GuestMACs(), ep.mac.String())
			}, "attach retried in the background"); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d failed attach(es) before Start returned", n)
		})
	}
}

// TestStopWhileCallHangs: a sandbox call that never returns (it ignores its
// context, as a wedged QMP socket would) holds neither Start past its
// ReadyTimeout nor Stop past its deadline. Stop is idempotent.
func TestStopWhileCallHangs(t *testing.T) {
	tests := []struct {
		name         string
		hangsInStart bool
		readyTimeout time.Duration
		stopDeadline time.Duration
	}{
		{"in the background", false, startWait, time.Second},
		{"in the first reconcile", true, time.Second, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newStartEnv(t)
			release := make(chan struct{})
			hung := make(chan struct{})
			var hangOnce sync.Once
			// Runs after every cleanup registered below (LIFO): the hung
			// call returns, and its goroutine ends before goleak looks.
			t.Cleanup(func() { close(release) })
			first := e.endpoint(t, 2)
			first.configure("eth0", true)
			// Attached by the background loop: created after Start, so
			// that Start does not wait for it.
			secondMAC := netmontest.RandMAC()
			hangMAC := secondMAC
			if tc.hangsInStart {
				hangMAC = first.mac
			}
			fs := &hotplugtest.FakeSandbox{}
			fs.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
				if strings.EqualFold(inf.HwAddr, hangMAC.String()) {
					hangOnce.Do(func() { close(hung) })
					<-release
					return nil, errors.New("released")
				}
				return fs.GuestAddInterface(inf)
			}
			cfg := e.config(fs)
			cfg.Settings.ReadyTimeout = tc.readyTimeout
			cfg.Settings.CallTimeout = time.Hour
			begin := time.Now()
			m, err := Start(context.Background(), cfg)
			if took := time.Since(begin); took > tc.readyTimeout+5*time.Second {
				t.Errorf("Start took %v, ReadyTimeout %v", took, tc.readyTimeout)
			}
			if err != nil || m == nil {
				t.Fatalf("Start = %v, %v", m, err)
			}
			if !tc.hangsInStart {
				second := e.endpoint(t, 3)
				second.mac = secondMAC
				second.configure("eth1", false)
			}
			select {
			case <-hung:
			case <-time.After(startWait):
				t.Fatalf("the sandbox call never started: %v", fs.Ops())
			}

			ctx, cancel := context.WithTimeout(context.Background(), tc.stopDeadline)
			defer cancel()
			begin = time.Now()
			err = m.Stop(ctx)
			took := time.Since(begin)
			t.Logf("Stop took %v: %v", took.Round(time.Millisecond), err)
			if took > tc.stopDeadline+2*time.Second {
				t.Errorf("Stop took %v, deadline %v", took, tc.stopDeadline)
			}
			// Twice: returns at once with the same result.
			begin = time.Now()
			err2 := m.Stop(context.Background())
			if time.Since(begin) > time.Second || !errors.Is(err2, err) && (err2 != nil || err != nil) {
				t.Errorf("second Stop = %v after %v; first %v", err2, time.Since(begin), err)
			}
		})
	}
}

func TestStopNil(t *testing.T) {
	var m *Monitor
	if err := m.Stop(context.Background()); err != nil {
		t.Errorf("nil Stop = %v", err)
	}
	if a := m.NICNames(); a != nil {
		t.Errorf("nil NICNames = %v", a)
	}
}

// TestStartHypervisorExit: the monitor stops by itself when the hypervisor
// process exits (pidfd), and a later Stop returns at once.
func TestStartHypervisorExit(t *testing.T) {
	e := newStartEnv(t)
	cmd := exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-waited })
	fs := &hotplugtest.FakeSandbox{}
	cfg := e.config(fs)
	cfg.HypervisorPID = cmd.Process.Pid
	m, err := Start(context.Background(), cfg)
	if err != nil || m == nil {
		t.Fatalf("Start = %v, %v", m, err)
	}
	stopOnCleanup(t, m)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.mon.Done():
	case <-time.After(startWait):
		t.Fatal("monitor still running after the hypervisor exited")
	}
	if _, ok := e.log.find("the watched process exited"); !ok {
		t.Errorf("no log about the exit:%s", e.log.dump())
	}
}

// TestStartAnnotation: with TrustNetNSAnnotation, an annotation naming the
// sandbox's own netns (a bind mount in /run/docker/netns, as dockerd's
// SetKey makes) is the path watched; one naming another netns is refused
// with a warning and the sandbox's netns is watched; untrusted, it is
// ignored.
func TestStartAnnotation(t *testing.T) {
	tests := []struct {
		name    string
		trust   bool
		same    bool
		warning bool
	}{
		{"same netns, trusted", true, true, false},
		{"another netns, trusted", true, false, true},
		{"same netns, not trusted", false, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newStartEnv(t)
			target := e.SandboxPath
			if !tc.same {
				target, _ = netmontest.NewNetNS(t)
			}
			ann := dockerNetNSEntry(t, bindAt(target))
			ep := e.endpoint(t, 2)
			ep.configure("eth0", false)
			fs := &hotplugtest.FakeSandbox{}
			cfg := e.config(fs)
			cfg.Settings.TrustNetNSAnnotation = tc.trust
			cfg.Spec.Annotations = map[string]string{NetNSAnnotation: ann}
			m, err := Start(context.Background(), cfg)
			if err != nil || m == nil {
				t.Fatalf("Start = %v, %v", m, err)
			}
			stopOnCleanup(t, m)

			want := e.SandboxPath
			if tc.trust && tc.same {
				want = ann
			}
			le, ok := e.log.find("first reconcile done")
			if !ok {
				t.Fatalf("no 'first reconcile done' log:%s", e.log.dump())
			}
			if got := le.fields["netns"]; got != want {
				t.Errorf("watched %v, want %s", got, want)
			}
			w, warned := e.log.find("netns annotation refused")
			if warned != tc.warning || (warned && w.level != logrus.WarnLevel) {
				t.Errorf("refusal warning logged %v (%v), want %v:%s", warned, w.level, tc.warning, e.log.dump())
			}
			if len(addCalls(fs, ep.mac)) != 1 {
				t.Errorf("eth0 not attached once: %v", fs.Ops())
			}
		})
	}
}

func startAddrs(inf *hotplug.Interface) []string {
	var out []string
	for _, a := range inf.IPAddresses {
		out = append(out, a.Address+"/"+a.Mask)
	}
	return out
}
