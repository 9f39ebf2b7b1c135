package kata

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/namespaces"
	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/kata-containers/kata-containers/src/runtime/pkg/oci"
	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"

	"github.com/kata-netmon/kata-netmon/shimhook"
)

// fakeMonitor records Start and Stop in the inner service's call list, so
// their order against Kata's RPCs shows. Stop is idempotent, like
// shimhook.Monitor's.
type fakeMonitor struct {
	in   *fakeInner
	once sync.Once
}

func (m *fakeMonitor) Stop(ctx context.Context) error {
	m.once.Do(func() { m.in.record("monitor.Stop") })
	return nil
}

// env is a wrapped shim around a fake Kata service, in containerd namespace
// ns, with a bundle whose spec asks for a new netns (Docker's bridge).
type env struct {
	t        *testing.T
	s        *Service
	in       *fakeInner
	kata     *fakeKata
	hook     *test.Hook
	bundle   string
	settings Settings
	cfgs     []shimhook.Config
	// firstReconcile, if set, runs inside the fake shimhook.Start (it may
	// call the adapter, like the real first reconcile).
	firstReconcile func(cfg shimhook.Config) error
	noMonitor      bool // the fake shimhook.Start returns (nil, nil)
	reachErr       error
	hypervisor     vc.HypervisorType
}

const sbID = "3f1c0a7e5d2b4c6a8e9f0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e"

func newEnv(t *testing.T, ns string, spec *specs.Spec) *env {
	t.Helper()
	e := &env{t: t, kata: newFakeKata(sbID), settings: DefaultSettings(), hypervisor: vc.QemuHypervisor}
	e.in = &fakeInner{kata: e.kata}
	e.bundle = filepath.Join(t.TempDir(), "io.containerd.runtime.v2.task", ns, sbID)
	if err := os.MkdirAll(e.bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	if spec == nil {
		spec = &specs.Spec{Version: "1.2.0", Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}
	}
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(e.bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), ns)
	e.s = Wrap(ctx, sbID, e.in)
	log, hook := testLog()
	e.hook = hook
	e.s.log = log
	e.s.reach = func(inner any) (vc.VCSandbox, *oci.RuntimeConfig, error) {
		e.in.record("reach")
		if e.reachErr != nil {
			return nil, nil, e.reachErr
		}
		if inner != e.in {
			t.Errorf("reach got %T, want the inner service", inner)
		}
		e.in.mu.Lock()
		defer e.in.mu.Unlock()
		if !e.in.created {
			return nil, nil, nil
		}
		return e.kata, &oci.RuntimeConfig{HypervisorType: e.hypervisor}, nil
	}
	e.s.loadSettings = func(*taskAPI.CreateTaskRequest) (Settings, []string) { return e.settings, nil }
	e.s.newAdapter = func(sb vc.VCSandbox, cfg *oci.RuntimeConfig, log *logrus.Entry) *Adapter {
		a := NewAdapter(sb, cfg.HypervisorType, sb.GetNetNs(), log)
		a.guard.maxWait, a.guard.settle, a.guard.straggler, a.guard.poll = 300*time.Millisecond, 100*time.Millisecond, 5*time.Second, 5*time.Millisecond
		a.poll = 5 * time.Millisecond
		a.owned = e.kata.isOwned
		return a
	}
	e.s.startMonitor = func(ctx context.Context, cfg shimhook.Config) (Monitor, error) {
		e.in.record("monitor.Start")
		e.cfgs = append(e.cfgs, cfg)
		if e.firstReconcile != nil {
			if err := e.firstReconcile(cfg); err != nil {
				return nil, err
			}
		}
		if e.noMonitor {
			return nil, nil
		}
		return &fakeMonitor{in: e.in}, nil
	}
	return e
}

func (e *env) create(id string) {
	e.t.Helper()
	if _, err := e.s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: id, Bundle: e.bundle}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) start(id, exec string) error {
	_, err := e.s.Start(context.Background(), &taskAPI.StartRequest{ID: id, ExecID: exec})
	return err
}

func (e *env) del(id, exec string) {
	e.t.Helper()
	if _, err := e.s.Delete(context.Background(), &taskAPI.DeleteRequest{ID: id, ExecID: exec}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) shutdown() {
	e.t.Helper()
	if _, err := e.s.Shutdown(context.Background(), &taskAPI.ShutdownRequest{ID: sbID}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) wantCalls(want ...string) {
	e.t.Helper()
	if got := e.in.Calls(); !slices.Equal(got, want) {
		e.t.Errorf("calls:\n got %q\nwant %q", got, want)
	}
}

func TestServiceRouting(t *testing.T) {
	sb, ex := sbID, "exec-1"
	tests := []struct {
		name  string
		ns    string
		spec  *specs.Spec
		setup func(*env)
		run   func(*env)
		want  []string
	}{
		{
			name: "Docker sandbox: monitor before Kata's Start, stopped before Kata's Delete; execs untouched",
			ns:   "moby",
			run: func(e *env) {
				e.create(sb)
				if err := e.start(sb, ""); err != nil {
					t.Fatal(err)
				}
				_ = e.start(sb, ex)
				e.del(sb, ex)
				e.s.State(context.Background(), &taskAPI.StateRequest{ID: sb})
				e.del(sb, "")
				e.shutdown()
			},
			want: []string{"kata.Create " + sb, "reach", "monitor.Start", "kata.Start " + sb + "/", "kata.Start " + sb + "/" + ex,
				"kata.Delete " + sb + "/" + ex, "kata.State " + sb, "monitor.Stop", "kata.Delete " + sb + "/", "kata.Shutdown"},
		},
		{
			name: "Shutdown while the sandbox container lives does not stop the monitor (Kata ignores it then)",
			ns:   "moby",
			run: func(e *env) {
				e.create(sb)
				_ = e.start(sb, "")
				e.shutdown()
			},
			want: []string{"kata.Create " + sb, "reach", "monitor.Start", "kata.Start " + sb + "/", "kata.Shutdown"},
		},
		{
			name: "other containerd namespace: Kata's shim as is, sandbox never reached",
			ns:   "k8s.io",
			run: func(e *env) {
				e.create(sb)
				_ = e.start(sb, "")
				e.del(sb, "")
			},
			want: []string{"kata.Create " + sb, "kata.Start " + sb + "/", "kata.Delete " + sb + "/"},
		},
		{
			name:  "disabled by configuration",
			ns:    "moby",
			setup: func(e *env) { e.settings.Enabled = false },
			run: func(e *env) {
				e.create(sb)
				_ = e.start(sb, "")
			},
			want: []string{"kata.Create " + sb, "kata.Start " + sb + "/"},
		},
		{
			name: "--net=host (no netns entry) is not monitored",
			ns:   "moby",
			spec: &specs.Spec{Version: "1.2.0", Linux: &specs.Linux{}},
			run: func(e *env) {
				e.create(sb)
				_ = e.start(sb, "")
			},
			want: []string{"kata.Create " + sb, "kata.Start " + sb + "/"},
		},
		{
			name: "a container that is not the sandbox (ID differs) is not monitored",
			ns:   "moby",
			run: func(e *env) {
				e.create("other")
				_ = e.start("other", "")
			},
			want: []string{"kata.Create other", "reach", "kata.Start other/"},
		},
		{
			name: "a second container in a monitored sandbox is Kata's alone",
			ns:   "moby",
			run: func(e *env) {
				e.create(sb)
				_ = e.start(sb, "")
				e.create("c2")
				_ = e.start("c2", "")
				e.del("c2", "")
			},
			want: []string{"kata.Create " + sb, "reach", "monitor.Start", "kata.Start " + sb + "/",
				"kata.Create c2", "kata.Start c2/", "kata.Delete c2/"},
		},
		{
			name:  "hypervisor without NIC hotplug: shimhook.Start returns nil, Start goes on",
			ns:    "moby",
			setup: func(e *env) { e.noMonitor = true; e.hypervisor = vc.FirecrackerHypervisor },
			run: func(e *env) {
				e.create(sb)
				_ = e.start(sb, "")
				e.del(sb, "")
			},
			want: []string{"kata.Create " + sb, "reach", "monitor.Start", "kata.Start " + sb + "/", "kata.Delete " + sb + "/"},
		},
		{
			name: "a second Start of the sandbox container goes straight to Kata",
			ns:   "moby",
			run: func(e *env) {
				e.create(sb)
				_ = e.start(sb, "")
				_ = e.start(sb, "")
			},
			want: []string{"kata.Create " + sb, "reach", "monitor.Start", "kata.Start " + sb + "/", "kata.Start " + sb + "/"},
		},
		{
			name:  "Kata's Start fails: the monitor is stopped",
			ns:    "moby",
			setup: func(e *env) { e.in.startErr = errBoom },
			run: func(e *env) {
				e.create(sb)
				if err := e.start(sb, ""); !errors.Is(err, errBoom) {
					t.Errorf("Start: %v", err)
				}
			},
			want: []string{"kata.Create " + sb, "reach", "monitor.Start", "kata.Start " + sb + "/", "monitor.Stop"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.ns, tt.spec)
			if tt.setup != nil {
				tt.setup(e)
			}
			tt.run(e)
			e.wantCalls(tt.want...)
		})
	}
}

func TestServiceConfig(t *testing.T) {
	e := newEnv(t, "moby", nil)
	e.settings.TrustNetNSAnnotation = true
	e.create(sbID)
	if err := e.start(sbID, ""); err != nil {
		t.Fatal(err)
	}
	if len(e.cfgs) != 1 {
		t.Fatalf("%d monitors started", len(e.cfgs))
	}
	c := e.cfgs[0]
	if c.SandboxID != sbID || c.Namespace != "moby" || c.BundlePath != e.bundle || c.Spec == nil ||
		c.NetNSPath != "/run/netns/fake-"+sbID || c.HypervisorPID != 4242 || !c.Settings.TrustNetNSAnnotation || c.Log == nil {
		t.Errorf("config %+v", c)
	}
	if caps := c.Sandbox.Capabilities(); !caps.HotplugNIC || !caps.HotUnplugNIC {
		t.Errorf("capabilities %+v", caps)
	}
}

func TestServiceFailStartOnAttachError(t *testing.T) {
	// Any other error of shimhook.Start (invalid config) never fails Start.
	e := newEnv(t, "moby", nil)
	e.firstReconcile = func(shimhook.Config) error { return shimhook.ErrInvalidConfig }
	e.create(sbID)
	if err := e.start(sbID, ""); err != nil {
		t.Errorf("Start failed without fail_start_on_attach_error: %v", err)
	}
	e.wantCalls("kata.Create "+sbID, "reach", "monitor.Start", "kata.Start "+sbID+"/")

	for _, fail := range []bool{false, true} {
		e := newEnv(t, "moby", nil)
		e.settings.FailStartOnAttachError = fail
		// The real shimhook.Start returns an error only when the setting is
		// on; model that.
		e.firstReconcile = func(cfg shimhook.Config) error {
			if cfg.Settings.FailStartOnAttachError {
				return errBoom
			}
			return nil
		}
		e.create(sbID)
		err := e.start(sbID, "")
		if fail {
			if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "fail_start_on_attach_error") {
				t.Errorf("Start: %v", err)
			}
			e.wantCalls("kata.Create "+sbID, "reach", "monitor.Start")
		} else if err != nil {
			t.Errorf("Start: %v", err)
		}
	}
}

// When Kata's internals change under the wrapper, it says so loudly, naming
// the Kata version, and behaves as Kata's shim.
func TestServiceUnreachableSandbox(t *testing.T) {
	e := newEnv(t, "moby", nil)
	e.reachErr = unreachable("test")
	e.create(sbID)
	if err := e.start(sbID, ""); err != nil {
		t.Fatal(err)
	}
	e.wantCalls("kata.Create "+sbID, "reach", "kata.Start "+sbID+"/")
	if !logged(e.hook, logrus.ErrorLevel, "cannot monitor this sandbox") {
		t.Fatalf("no error logged: %v", e.hook.AllEntries())
	}
	for _, en := range e.hook.AllEntries() {
		if en.Level == logrus.ErrorLevel {
			msg, _ := en.Data[logrus.ErrorKey].(error)
			if msg == nil || !strings.Contains(msg.Error(), VerifiedKata) || !strings.Contains(msg.Error(), "service.sandbox") {
				t.Errorf("the error does not name the verified Kata version and the field: %v", msg)
			}
		}
	}
}

func TestServicePanicsAreContained(t *testing.T) {
	e := newEnv(t, "moby", nil)
	e.firstReconcile = func(shimhook.Config) error { panic("bug") }
	e.create(sbID)
	if err := e.start(sbID, ""); err != nil {
		t.Fatal(err)
	}
	e.wantCalls("kata.Create "+sbID, "reach", "monitor.Start", "kata.Start "+sbID+"/")
}
