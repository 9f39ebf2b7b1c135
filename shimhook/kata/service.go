package kata

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/namespaces"
	crioption "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	cdshim "github.com/containerd/containerd/runtime/v2/shim"
	oldcrioption "github.com/containerd/cri-containerd/pkg/api/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	emptypb "google.golang.org/protobuf/types/known/emptypb"

	containerdshim "github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/katautils"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/oci"
	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"

	"github.com/kata-netmon/kata-netmon/shimhook"
)

// RuntimeType is the containerd runtime type of the wrapped shim; containerd
// runs it as the binary containerd-shim-kata-netmon-v2.
const RuntimeType = "io.containerd.kata-netmon.v2"

// stopTimeout bounds Monitor.Stop on Delete and Shutdown.
const stopTimeout = 3 * time.Second

// Monitor is what the wrapper needs of *shimhook.Monitor.
type Monitor interface {
	Stop(ctx context.Context) error
}

// New is the containerd shim entry point (a shim.Init): Kata's own shim
// service, wrapped by Wrap.
func New(ctx context.Context, id string, publisher cdshim.Publisher, shutdown func()) (cdshim.Shim, error) {
	inner, err := containerdshim.New(ctx, id, publisher, shutdown)
	if err != nil {
		return nil, err
	}
	return Wrap(ctx, id, inner), nil
}

// Service is Kata's shim service with four RPCs wrapped; every other RPC is
// Kata's, untouched (the embedded Shim).
//
//   - Create: Kata's first. For the sandbox container of a sandbox in a
//     Docker namespace (shimhook.IsDocker), it then reads Kata's sandbox and
//     runtime configuration (reach.go) and the settings.
//   - Start of that container (not of an exec, nor of another container):
//     shimhook.Start first, so the first reconcile attaches the endpoints
//     Docker configured between Create and Start before the workload runs;
//     then holds the adapter's mutating calls (guard.go) while Kata's Start
//     runs and launches RescanNetwork, and releases them when RescanNetwork
//     can no longer attach. A failed first attach fails Start only with
//     fail_start_on_attach_error; Kata's Start is then not called.
//   - Delete of that container: the monitor stops first, then Kata deletes.
//   - Shutdown: stops the monitor when Kata will exit (its sandbox container
//     was deleted); Kata ignores Shutdown while it still has a container.
//
// Nothing here fails an RPC Kata would not have failed, except that one
// opt-in Start failure; panics in the wrapper's own code are recovered and
// logged.
type Service struct {
	cdshim.Shim // Kata's service

	shimCtx   context.Context // lives as long as the shim, like Kata's s.ctx
	id        string
	namespace string
	logger    *logrus.Logger
	log       *logrus.Entry

	// Seams, set by Wrap; tests replace them.
	reach        func(inner any) (vc.VCSandbox, *oci.RuntimeConfig, error)
	loadSettings func(r *taskAPI.CreateTaskRequest) (Settings, []string)
	startMonitor func(ctx context.Context, cfg shimhook.Config) (Monitor, error)
	newAdapter   func(sb vc.VCSandbox, cfg *oci.RuntimeConfig, log *logrus.Entry) *Adapter

	mu      sync.Mutex
	decided bool          // guarded by mu: the first successful Create was looked at
	sandbox *sandboxState // guarded by mu; nil unless a monitored sandbox was created
}

// sandboxState is the monitored sandbox. Fields are set once in Create
// except monitor, started and deleted, which mu guards.
type sandboxState struct {
	id       string
	bundle   string
	spec     *specs.Spec
	settings Settings
	kata     vc.VCSandbox
	config   *oci.RuntimeConfig
	adapter  *Adapter

	monitor Monitor
	started bool
	deleted bool
}

// Wrap wraps a Kata shim service. ctx is the shim's (its namespace is
// Docker's or not); id is the shim id.
func Wrap(ctx context.Context, id string, inner cdshim.Shim) *Service {
	ns, _ := namespaces.Namespace(ctx)
	logger := newLogger()
	s := &Service{
		Shim:      inner,
		shimCtx:   ctx,
		id:        id,
		namespace: ns,
		logger:    logger,
		log: logger.WithFields(logrus.Fields{
			"source": "kata-netmon", "name": "containerd-shim-kata-netmon-v2", "sandbox": id, "pid": os.Getpid(),
		}),
		reach: reachSandbox,
		loadSettings: func(r *taskAPI.CreateTaskRequest) (Settings, []string) {
			return LoadSettings(kataConfigPath(r), nil)
		},
		startMonitor: func(ctx context.Context, cfg shimhook.Config) (Monitor, error) {
			m, err := shimhook.Start(ctx, cfg)
			if m == nil {
				return nil, err // no typed nil in the interface
			}
			return m, err
		},
		newAdapter: func(sb vc.VCSandbox, cfg *oci.RuntimeConfig, log *logrus.Entry) *Adapter {
			return NewAdapter(sb, cfg.HypervisorType, sb.GetNetNs(), log)
		},
	}
	return s
}

// Create is Kata's Create, then, for a Docker sandbox, the wrapper's
// bookkeeping.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	resp, err := s.Shim.Create(ctx, r)
	if err != nil {
		return resp, err
	}
	s.afterCreate(r)
	return resp, nil
}

func (s *Service) afterCreate(r *taskAPI.CreateTaskRequest) {
	defer s.recoverf("Create")
	// The sandbox container is the first one a shim creates: later Creates
	// are containers in that sandbox (or in one not monitored).
	s.mu.Lock()
	decided := s.decided
	s.decided = true
	s.mu.Unlock()
	if decided {
		return
	}
	settings, warnings := s.loadSettings(r)
	setLevel(s.logger, settings.LogLevel)
	for _, w := range warnings {
		s.log.Warn("settings: " + w)
	}
	log := s.log.WithField("container", r.ID)
	if !settings.Enabled {
		log.Debug("kata-netmon is disabled by configuration")
		return
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		log.WithError(err).Warn("cannot read the OCI spec; not monitoring")
		return
	}
	cfg := shimhook.Config{SandboxID: r.ID, Namespace: s.namespace, BundlePath: r.Bundle, Spec: spec, Settings: settings.Settings}
	if ok, why := shimhook.IsDocker(cfg); !ok {
		log.WithField("reason", why).Debug("not a Docker sandbox; the shim behaves exactly as Kata's")
		return
	}
	kata, rc, err := s.reach(s.Shim)
	if err != nil {
		log.WithError(err).Error("kata-netmon cannot monitor this sandbox; the shim behaves exactly as Kata's own")
		return
	}
	if kata == nil || rc == nil || kata.ID() != r.ID {
		log.Debug("not a sandbox container; not monitoring")
		return
	}
	st := &sandboxState{
		id: r.ID, bundle: r.Bundle, spec: spec, settings: settings, kata: kata, config: rc,
		adapter: s.newAdapter(kata, rc, log),
	}
	s.mu.Lock()
	if s.sandbox == nil {
		s.sandbox = st
	}
	s.mu.Unlock()
	log.WithField("hypervisor", rc.HypervisorType).Debug("Docker sandbox: kata-netmon starts with it")
}

// Start runs the monitor's first reconcile before Kata starts the sandbox
// container, and keeps the monitor out of Kata's RescanNetwork's way.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	st := s.claimStart(r)
	if st == nil {
		return s.Shim.Start(ctx, r)
	}
	m, err := s.startSandboxMonitor(st)
	if err != nil {
		if st.settings.FailStartOnAttachError {
			return nil, fmt.Errorf("kata-netmon: the sandbox's network could not be attached before the workload starts "+
				"(fail_start_on_attach_error is set): %w", err)
		}
		// Only that setting may fail an RPC Kata would not have failed.
		s.log.WithError(err).Error("kata-netmon did not start; the container starts without it")
		m = nil
	}
	if m == nil {
		return s.Shim.Start(ctx, r)
	}
	hctx, cancel := context.WithTimeout(ctx, st.settings.CallTimeout)
	rescans := st.adapter.HoldForKataStart(hctx, st.config.DisableNewNetNs)
	cancel()
	resp, err := s.Shim.Start(ctx, r)
	st.adapter.KataStarted(time.Now(), rescans)
	if err != nil {
		s.stopMonitor(ctx, st, "Kata's Start failed")
	}
	return resp, err
}

// claimStart returns the sandbox state when r starts the monitored sandbox
// container for the first time.
func (s *Service) claimStart(r *taskAPI.StartRequest) *sandboxState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.sandbox
	if st == nil || r.ExecID != "" || r.ID != st.id || st.started {
		return nil
	}
	st.started = true
	return st
}

// startSandboxMonitor runs shimhook.Start. Panics are recovered: the
// container then starts without the monitor.
func (s *Service) startSandboxMonitor(st *sandboxState) (m Monitor, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Errorf("kata-netmon panicked while starting; the container starts without it: %v", p)
			m, err = nil, nil
		}
	}()
	pid, perr := st.kata.GetHypervisorPid()
	if perr != nil {
		pid = 0
	}
	cfg := shimhook.Config{
		SandboxID:     st.id,
		Namespace:     s.namespace,
		BundlePath:    st.bundle,
		Spec:          st.spec,
		Sandbox:       st.adapter,
		NetNSPath:     st.kata.GetNetNs(),
		HypervisorPID: pid,
		Settings:      st.settings.Settings,
		Log:           s.log,
		// Kata's shim serves the default registry on its metrics
		// endpoint; the series carry sandbox=<id> and go with Stop.
		Registerer: prometheus.DefaultRegisterer,
	}
	// The shim's context, not the RPC's: the monitor outlives this call
	// (Kata passes its s.ctx to CreateSandbox for the same reason). The
	// first reconcile is bounded by Settings.ReadyTimeout.
	m, err = s.startMonitor(s.shimCtx, cfg)
	if m != nil {
		s.mu.Lock()
		st.monitor = m
		s.mu.Unlock()
	}
	return m, err
}

// Delete stops the monitor before Kata deletes the sandbox container.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	s.mu.Lock()
	st := s.sandbox
	s.mu.Unlock()
	if st == nil || r.ExecID != "" || r.ID != st.id {
		return s.Shim.Delete(ctx, r)
	}
	s.stopMonitor(ctx, st, "sandbox container deleted")
	resp, err := s.Shim.Delete(ctx, r)
	if err == nil {
		s.mu.Lock()
		st.deleted = true
		s.mu.Unlock()
	}
	return resp, err
}

// Shutdown stops the monitor when Kata is about to exit, then passes
// Shutdown on (Kata's exits the process when it has no container left).
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	st := s.sandbox
	live := st != nil && !st.deleted
	s.mu.Unlock()
	if st != nil && !live {
		s.stopMonitor(ctx, st, "shim shutdown")
	}
	return s.Shim.Shutdown(ctx, r)
}

func (s *Service) stopMonitor(ctx context.Context, st *sandboxState, why string) {
	defer s.recoverf("Stop")
	s.mu.Lock()
	m := st.monitor
	s.mu.Unlock()
	if m == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	if err := m.Stop(sctx); err != nil {
		s.log.WithError(err).WithField("reason", why).Warn("kata-netmon did not stop cleanly")
		return
	}
	s.log.WithField("reason", why).Debug("kata-netmon stopped")
}

func (s *Service) recoverf(op string) {
	if p := recover(); p != nil {
		s.log.Errorf("kata-netmon panicked in %s; carrying on as Kata's shim: %v", op, p)
	}
}

// readSpec reads the bundle's config.json.
func readSpec(bundle string) (*specs.Spec, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(bundle, "config.json"), err)
	}
	return &spec, nil
}

// kataConfigPath finds the configuration file Kata's shim loads for this
// Create (pkg/containerd-shim-v2/create.go, loadRuntimeConfig): the runtime
// options' ConfigPath, else $KATA_CONF_FILE, else the first of Kata's
// default paths that exists; resolved as Kata resolves it, so config.d is
// the same directory Kata reads drop-ins from.
func kataConfigPath(r *taskAPI.CreateTaskRequest) string {
	path := ""
	if r != nil && r.Options != nil {
		if v, err := typeurl.UnmarshalAny(r.Options); err == nil {
			switch o := v.(type) {
			case *crioption.Options:
				path = o.ConfigPath
			case *oldcrioption.Options:
				path = o.ConfigPath
			}
		}
	}
	if path == "" {
		path = os.Getenv("KATA_CONF_FILE")
	}
	if path == "" {
		for _, p := range katautils.GetDefaultConfigFilePaths() {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
	}
	if path == "" {
		return ""
	}
	if resolved, err := katautils.ResolvePath(path); err == nil {
		return resolved
	}
	return path
}
