package shimhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/internal/procwatch"
	"github.com/kata-netmon/kata-netmon/metrics"
	"github.com/kata-netmon/kata-netmon/netmon"
)

// IsDocker reports whether the sandbox is a Docker ("moby") container whose
// network Docker will set up after the sandbox exists, and why not otherwise.
// Both must hold: the containerd namespace is one of Settings.DockerNamespaces
// (or, when the namespace is unknown, the bundle path is under
// .../io.containerd.runtime.v2.task/<such a namespace>/<id>); and the OCI spec
// asks for a new network namespace (an entry with an empty path). No network
// entry is --net=host; a path is --net=container:X (another sandbox's netns,
// which its own monitor watches).
func IsDocker(cfg Config) (bool, string) {
	nss := cfg.Settings.DockerNamespaces
	switch {
	case cfg.Namespace != "" && !slices.Contains(nss, cfg.Namespace):
		return false, fmt.Sprintf("containerd namespace %q is not Docker's (%v)", cfg.Namespace, nss)
	case cfg.Namespace == "" && !bundleInNamespace(cfg.BundlePath, nss):
		return false, fmt.Sprintf("bundle %q is not under a Docker namespace (%v)", cfg.BundlePath, nss)
	}
	if cfg.Spec == nil || cfg.Spec.Linux == nil {
		return false, "no Linux section in the OCI spec"
	}
	for _, ns := range cfg.Spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace {
			continue
		}
		if ns.Path != "" {
			return false, fmt.Sprintf("joins an existing netns %q (--net=container:...)", ns.Path)
		}
		return true, "Docker sandbox with a new netns"
	}
	return false, "no network namespace in the OCI spec (--net=host)"
}

// bundleInNamespace matches containerd's task bundle layout
// <state>/io.containerd.runtime.v2.task/<namespace>/<id>.
func bundleInNamespace(bundle string, nss []string) bool {
	if bundle == "" {
		return false
	}
	parent := filepath.Base(filepath.Dir(filepath.Clean(bundle)))
	grand := filepath.Base(filepath.Dir(filepath.Dir(filepath.Clean(bundle))))
	return grand == "io.containerd.runtime.v2.task" && slices.Contains(nss, parent)
}

// Monitor is a running kata-netmon for one sandbox. A nil *Monitor is valid
// and does nothing: Start returns nil when the sandbox is not monitored.
type Monitor struct {
	log    *logrus.Entry
	mon    *netmon.Monitor
	rec    *hotplug.Reconciler
	met    *metrics.Sandbox // nil without metrics
	netns  nsID             // claimed in watching until release
	cancel context.CancelFunc
	done   chan struct{} // closed when the background loop returned

	releaseOnce sync.Once
	stopOnce    sync.Once
	stopErr     error
}

// watching holds the netns this process monitors: a second Start for a
// netns already watched would attach every endpoint from two reconcilers
// (and collide in metrics), so it is refused.
var watching = struct {
	sync.Mutex
	m map[nsID]bool
}{m: map[nsID]bool{}}

func claimNetNS(id nsID) bool {
	watching.Lock()
	defer watching.Unlock()
	if watching.m[id] {
		return false
	}
	watching.m[id] = true
	return true
}

func unclaimNetNS(id nsID) {
	watching.Lock()
	delete(watching.m, id)
	watching.Unlock()
}

// ErrInvalidConfig is returned for a Config that cannot describe a sandbox.
var ErrInvalidConfig = errors.New("shimhook: invalid config")

// Start starts the monitor for a sandbox whose container is about to start.
// It returns (nil, nil) when the sandbox is not Docker's, the monitor is
// disabled, the hypervisor cannot hot-plug NICs, the netns cannot be
// watched, or this process already monitors that netns (a second Start):
// each case is logged once, and the container starts as it would without
// kata-netmon. Before returning it runs the first reconcile
// synchronously: it waits up to Settings.ReadyTimeout for candidate links to
// become ready and attaches them, so the workload starts with its network.
// A first attach that fails is logged; it fails Start only when
// Settings.FailStartOnAttachError is set.
func Start(ctx context.Context, cfg Config) (m *Monitor, err error) {
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	log = log.WithField("component", "kata-netmon")
	if cfg.SandboxID != "" {
		log = log.WithField("sandbox", cfg.SandboxID)
	}
	// Nothing in here may take the shim down.
	defer func() {
		if p := recover(); p != nil {
			log.Errorf("kata-netmon panicked in Start, continuing without it: %v", p)
			m, err = nil, nil
		}
	}()
	if !cfg.Settings.Enabled {
		log.Debug("disabled by configuration")
		return nil, nil
	}
	if cfg.Sandbox == nil {
		return nil, fmt.Errorf("%w: no sandbox", ErrInvalidConfig)
	}
	cfg.Settings = cfg.Settings.withDefaults()
	if ok, why := IsDocker(cfg); !ok {
		log.WithField("reason", why).Debug("not a Docker sandbox; not monitoring")
		return nil, nil
	}
	path, id, err := sandboxNetNS(cfg, log)
	if err != nil {
		log.WithError(err).Warn("cannot tell which netns to watch; not monitoring")
		return nil, nil
	}
	log = log.WithField("netns", path)
	if !claimNetNS(id) {
		log.Warn("a monitor already watches this netns in this process (Start called twice?); not starting a second one")
		return nil, nil
	}
	// Undone unless Start returns a monitor (also on a panic: this runs
	// before the recover above).
	var met *metrics.Sandbox
	var mon *netmon.Monitor
	defer func() {
		if m == nil {
			if mon != nil {
				mon.Close()
			}
			met.Unregister()
			unclaimNetNS(id)
		}
	}()
	if cfg.Registerer != nil {
		if met, err = metrics.New(cfg.Registerer, cfg.SandboxID); err != nil {
			log.WithError(err).Warn("cannot register metrics; monitoring without them")
			met = nil
		}
	}

	s := cfg.Settings
	ncfg := netmon.Config{NetNSPath: path, DockerdNetNS: s.DockerdNetNS, Log: log}
	hcfg := hotplug.Config{Sandbox: cfg.Sandbox, Log: log, CallTimeout: s.CallTimeout}
	if met != nil { // never a typed nil in the interfaces
		ncfg.Observer, hcfg.Observer = met, met
	}
	mon, err = netmon.New(ncfg)
	if err != nil {
		log.WithError(err).Warn("cannot watch the sandbox netns; not monitoring")
		return nil, nil
	}
	hcfg.Source = mon
	rec, err := hotplug.New(hcfg)
	if err != nil {
		if errors.Is(err, hotplug.ErrNoHotplug) {
			log.Info("the hypervisor cannot hot-plug NICs: kata-netmon does not start; the VM keeps the interfaces it booted with")
			return nil, nil
		}
		log.WithError(err).Warn("cannot start the reconciler; not monitoring")
		return nil, nil
	}
	if err := mon.Start(ctx); err != nil {
		log.WithError(err).Warn("cannot subscribe to the sandbox netns; not monitoring")
		return nil, nil
	}

	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, s.ReadyTimeout)
	st, syncErr := rec.Sync(sctx)
	cancel()
	fields := logrus.Fields{"attached": len(st.Attached), "took": time.Since(start).Round(time.Millisecond)}
	if syncErr != nil {
		log.WithFields(fields).WithError(syncErr).Error("first reconcile did not attach every endpoint before the workload starts")
		if s.FailStartOnAttachError {
			return nil, fmt.Errorf("kata-netmon: first attach: %w", syncErr)
		}
	} else {
		log.WithFields(fields).Info("first reconcile done")
	}

	rctx, rcancel := context.WithCancel(context.Background())
	m = &Monitor{log: log, mon: mon, rec: rec, met: met, netns: id, cancel: rcancel, done: make(chan struct{})}
	var exited <-chan struct{}
	var pw *procwatch.Watch
	if cfg.HypervisorPID > 0 {
		if pw, err = procwatch.Open(cfg.HypervisorPID); err != nil {
			log.WithError(err).Warn("cannot watch the hypervisor process; relying on Stop")
		} else {
			exited = pw.Exited()
		}
	}
	go m.run(rctx, exited, pw)
	return m, nil
}

// run is the background loop: the reconciler until Stop, the end of the
// netns watch, the hypervisor's exit or a dead sandbox.
func (m *Monitor) run(ctx context.Context, exited <-chan struct{}, pw *procwatch.Watch) {
	defer close(m.done)
	// Whatever ended the loop, the netns watch has no reader any more:
	// release its sockets and goroutines now rather than at Stop.
	defer m.release()
	if pw != nil {
		defer pw.Close()
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-exited:
			m.log.Info("hypervisor exited; stopping")
			cancel()
		case <-ctx.Done():
		}
	}()
	defer func() {
		if p := recover(); p != nil {
			m.log.Errorf("kata-netmon panicked, monitoring stops (the sandbox carries on): %v", p)
		}
	}()
	if err := m.rec.Run(ctx); err != nil {
		m.log.WithError(err).Error("monitoring stops")
	}
	if err := m.mon.Err(); err != nil {
		m.log.WithError(err).Warn("netns watch ended")
	}
}

// Stop ends the monitor and unregisters its metrics. It returns by ctx's
// deadline even if a sandbox call hangs (that call is abandoned and
// logged). Safe on nil, idempotent.
func (m *Monitor) Stop(ctx context.Context) error {
	if m == nil {
		return nil
	}
	m.stopOnce.Do(func() {
		m.cancel()
		select {
		case <-m.done:
		case <-ctx.Done():
			m.stopErr = fmt.Errorf("kata-netmon: stop: background loop still busy: %w", context.Cause(ctx))
			m.log.WithError(m.stopErr).Warn("abandoning the monitor loop")
		}
		m.release()
		m.met.Unregister()
	})
	return m.stopErr
}

// release closes the netns watch (it waits for netmon's goroutines, never
// for a sandbox call) and gives the netns up for another Start. Once.
func (m *Monitor) release() {
	m.releaseOnce.Do(func() {
		m.mon.Close() // always nil
		unclaimNetNS(m.netns)
	})
}

// Attached returns the endpoints the VM has now (for logs and tests).
func (m *Monitor) Attached() []string {
	if m == nil {
		return nil
	}
	var out []string
	for _, a := range m.rec.Attached() {
		out = append(out, a.Name)
	}
	return out
}

// sandboxNetNS picks the netns to watch, and returns its path and identity:
// Kata's netns path, else the
// hypervisor's; never the shim's own (the sandbox then shares the host
// netns, disable_new_netns, and Docker's links are not ours). The annotation,
// when trusted, is honoured only if it names that same netns.
func sandboxNetNS(cfg Config, log *logrus.Entry) (string, nsID, error) {
	path := cfg.NetNSPath
	if path == "" {
		if cfg.HypervisorPID <= 0 {
			return "", nsID{}, errors.New("neither a netns path nor a hypervisor pid")
		}
		path = "/proc/" + strconv.Itoa(cfg.HypervisorPID) + "/ns/net"
	}
	id, err := statNetNS(path)
	if err != nil {
		return "", nsID{}, err
	}
	self, err := statNetNS("/proc/self/ns/net")
	if err != nil {
		return "", nsID{}, err
	}
	if id == self {
		return "", nsID{}, fmt.Errorf("%s is the shim's own netns (disable_new_netns?)", path)
	}
	if cfg.Spec == nil || cfg.Spec.Annotations == nil {
		return path, id, nil
	}
	ann, ok := cfg.Spec.Annotations[NetNSAnnotation]
	if !ok {
		return path, id, nil
	}
	if !cfg.Settings.TrustNetNSAnnotation {
		log.WithField("annotation", NetNSAnnotation).Debug("netns annotation present but not trusted by configuration; ignored")
		return path, id, nil
	}
	if err := validateAnnotatedNetNS(ann, id); err != nil {
		log.WithField("annotation", NetNSAnnotation).WithError(err).Warn("netns annotation refused; watching the sandbox's own netns")
		return path, id, nil
	}
	return ann, id, nil
}
