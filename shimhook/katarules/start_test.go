package katarules

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"go.uber.org/goleak"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// Start runs a monitor with goroutines: none may be left behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// dockerSpec is the sandbox container's spec as Docker 28+ writes it: a new
// netns (no path).
func dockerSpec() *specs.Spec {
	return &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}
}

// startConfig is a Docker sandbox on QEMU with every fix, with settings
// only from env.
func startConfig(env map[string]string, log *logrus.Entry) StartConfig {
	return StartConfig{
		Kata:      &fakeKata{},
		Config:    Config{HypervisorType: HypervisorQEMU, InterworkingModel: ModelTCFilter, Fixes: allFixes},
		Getenv:    func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		SandboxID: "knm-start", Namespace: "moby", Bundle: "/run/containerd/io.containerd.runtime.v2.task/moby/knm-start",
		Spec: dockerSpec(),
		Log:  log,
	}
}

func TestStartMapsResult(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		change  func(*StartConfig)
		wantErr bool
		level   logrus.Level // the level Start logs the outcome at
		logs    string
	}{
		{name: "disabled", env: map[string]string{EnvEnable: "false"}, level: logrus.InfoLevel, logs: "disabled by configuration"},
		{name: "not Docker's", change: func(c *StartConfig) { c.Namespace = "k8s.io" }, level: logrus.InfoLevel, logs: "not a Docker sandbox"},
		// Neither a netns nor a hypervisor pid: shimhook.ErrInvalidConfig.
		{name: "a failure", level: logrus.ErrorLevel, logs: "did not start"},
		{name: "a failure, fail_start_on_attach_error", env: map[string]string{EnvFailStartOnAttach: "true"}, wantErr: true},
		{name: "no sandbox", change: func(c *StartConfig) { c.Kata = nil }, level: logrus.ErrorLevel, logs: "no sandbox"},
		{name: "a panic", change: func(c *StartConfig) { c.Getenv = func(string) (string, bool) { panic("boom") } },
			level: logrus.ErrorLevel, logs: "panicked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, hook := test.NewNullLogger()
			l.SetLevel(logrus.DebugLevel)
			cfg := startConfig(tt.env, logrus.NewEntry(l))
			if tt.change != nil {
				tt.change(&cfg)
			}
			m, err := Start(context.Background(), cfg)
			if m != nil {
				m.Stop(context.Background())
				t.Fatal("a monitor was started")
			}
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "fail_start_on_attach_error") {
					t.Fatalf("err = %v, want the failure that fails Start", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v, want nil: the container must start", err)
			}
			found := false
			for _, e := range hook.AllEntries() {
				msg := e.Message
				if e, ok := e.Data[logrus.ErrorKey].(error); ok {
					msg += " " + e.Error()
				}
				if p, ok := e.Data["panic"]; ok {
					msg += " " + p.(string)
				}
				if e.Level == tt.level && strings.Contains(msg, tt.logs) {
					found = true
				}
			}
			if !found {
				t.Errorf("no %s log containing %q in %v", tt.level, tt.logs, hook.AllEntries())
			}
		})
	}
}

// On a real (empty) netns, Start returns a running monitor, its settings
// from the file Kata loaded and the environment; it registers its metrics
// and takes them with it on Stop.
func TestStartMonitors(t *testing.T) {
	netmontest.RequireRoot(t)
	path, _ := netmontest.NewNetNS(t)
	conf := filepath.Join(t.TempDir(), "configuration.toml")
	if err := os.WriteFile(conf, []byte("[netmon]\nready_timeout = \"2s\"\nlog_level = \"debug\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, hook := test.NewNullLogger()
	l.SetLevel(logrus.WarnLevel)
	reg := prometheus.NewRegistry()
	cfg := startConfig(nil, logrus.NewEntry(l).WithField("subsystem", "network-monitor"))
	cfg.ConfigPath, cfg.NetNSPath, cfg.Registerer = conf, path, reg
	m, err := Start(context.Background(), cfg)
	if err != nil || m == nil {
		t.Fatalf("Start = %v, %v; want a monitor", m, err)
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) == 0 {
		t.Errorf("no metrics registered (%v)", err)
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Errorf("metrics left after Stop: %d families", len(mfs))
	}
	// log_level = "debug" from the file: kata-netmon logs at debug while
	// the shim's logger stays at warn; the shim's fields are kept.
	debug := false
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.DebugLevel && e.Data["subsystem"] == "network-monitor" && e.Data["component"] == "kata-netmon" {
			debug = true
		}
	}
	if !debug || l.GetLevel() != logrus.WarnLevel {
		t.Errorf("want kata-netmon's debug lines with the shim's fields and the shim's level unchanged (warn); level %v, entries %d", l.GetLevel(), len(hook.AllEntries()))
	}
}

// A hypervisor that cannot hot-plug NICs: not monitored, the container
// starts and Kata's own rescan runs.
func TestStartWithoutHotplug(t *testing.T) {
	netmontest.RequireRoot(t)
	path, _ := netmontest.NewNetNS(t)
	l, hook := test.NewNullLogger()
	cfg := startConfig(nil, logrus.NewEntry(l))
	cfg.Config.HypervisorType = HypervisorFirecracker
	cfg.NetNSPath = path
	m, err := Start(context.Background(), cfg)
	if m != nil || err != nil {
		t.Fatalf("Start = %v, %v; want nil, nil", m, err)
	}
	e := hook.LastEntry()
	if e == nil || e.Level != logrus.InfoLevel || !errors.Is(e.Data[logrus.ErrorKey].(error), shimhook.ErrNotMonitored) {
		t.Errorf("want an info line with ErrNotMonitored, got %v", hook.AllEntries())
	}
}

func TestSpecNetNSPath(t *testing.T) {
	withNet := func(path string) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"}, {Type: specs.NetworkNamespace, Path: path}}}}
	}
	for _, tc := range []struct {
		spec *specs.Spec
		want string
	}{
		{nil, ""},
		{&specs.Spec{}, ""},
		{withNet(""), ""},
		{withNet("/run/docker/netns/0123456789ab"), "/run/docker/netns/0123456789ab"},
	} {
		if got := specNetNSPath(tc.spec); got != tc.want {
			t.Errorf("specNetNSPath(%+v) = %q, want %q", tc.spec, got, tc.want)
		}
	}
}
