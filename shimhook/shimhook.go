package shimhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/internal/monitor"
	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/metrics"
)

// IsDocker reports whether the sandbox is a Docker ("moby") container whose
// network Docker sets up after the sandbox exists, and why not otherwise.
// Both must hold: the containerd namespace is one of Settings.DockerNamespaces
// (or, when the namespace is unknown, the bundle path is under
// .../io.containerd.runtime.v2.task/<such a namespace>/<id>); and the OCI spec
// asks for a new network namespace: an entry with an empty path (Docker 28
// and later: Kata creates the netns), or a path directly under Docker's
// netns directory (dockerd created the netns and names it, as moby#52488
// proposes: Kata then uses it and records NetworkCreated=false). No network
// entry is --net=host; any other path is --net=container:X (another
// sandbox's netns, which its own monitor watches).
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
		switch {
		case ns.Path == "":
			return true, "Docker sandbox with a new netns"
		case inDockerNetNSDir(ns.Path):
			return true, "Docker sandbox with a netns dockerd created"
		}
		return false, fmt.Sprintf("joins an existing netns %q (--net=container:...)", ns.Path)
	}
	return false, "no network namespace in the OCI spec (--net=host)"
}

// inDockerNetNSDir reports a path naming one entry directly in Docker's
// netns directory (/run/docker/netns, or through Debian's /var/run
// symlink), where dockerd bind-mounts the netns it creates. The spec comes
// from dockerd, not from the user (a user's --net=container:X is a
// /proc/<pid>/ns/net path), so the name alone decides; the netns watched is
// opened and checked like any other.
func inDockerNetNSDir(path string) bool {
	if !filepath.IsAbs(path) {
		return false
	}
	clean := filepath.Clean(path)
	dir, base := filepath.Dir(clean), filepath.Base(clean)
	return (dir == dockerNetNSDir || dir == "/var"+dockerNetNSDir) && base != "." && base != ".." && base != "/"
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
// and does nothing.
type Monitor struct {
	log   *logrus.Entry
	mon   *monitor.Monitor
	met   *metrics.Sandbox // nil without metrics
	netns nsfs.ID          // claimed in watching until Stop or the loop's end

	releaseOnce, unclaimOnce sync.Once
}

// watching holds the netns this process monitors: a second Start for a
// netns already watched would attach every endpoint from two reconcilers
// (and collide in metrics), so it is refused.
var watching = struct {
	sync.Mutex
	m map[nsfs.ID]bool
}{m: map[nsfs.ID]bool{}}

func claimNetNS(id nsfs.ID) bool {
	watching.Lock()
	defer watching.Unlock()
	if watching.m[id] {
		return false
	}
	watching.m[id] = true
	return true
}

func unclaimNetNS(id nsfs.ID) {
	watching.Lock()
	delete(watching.m, id)
	watching.Unlock()
}

var (
	// ErrInvalidConfig is returned (wrapped) for a Config that cannot
	// describe a sandbox.
	ErrInvalidConfig = errors.New("shimhook: invalid config")
	// ErrNotMonitored is wrapped by Start's error when it does not monitor
	// the sandbox by design; the error says why (disabled, not a Docker
	// sandbox, the hypervisor cannot hot-plug NICs, the netns is watched
	// already). It is not a failure: the container starts as it would
	// without kata-netmon.
	ErrNotMonitored = errors.New("kata-netmon does not monitor this sandbox")
	// ErrPanicked is wrapped by Start's error when it panicked; the panic
	// was recovered.
	ErrPanicked = errors.New("kata-netmon panicked")
)

// FailsStart reports whether Start's err must fail the container's Start:
// only a failure (not ErrNotMonitored) while the operator asked for that
// (Settings.FailStartOnAttachError). Every other error is logged and the
// container starts without, or with a partly attached, network.
func FailsStart(err error, s Settings) bool {
	return err != nil && !errors.Is(err, ErrNotMonitored) && s.FailStartOnAttachError
}

// Start starts the monitor for a sandbox whose container is about to start,
// and runs its first reconcile before returning: it waits up to
// Settings.ReadyTimeout for candidate links to become ready and attaches
// them, so the workload starts with its network.
//
// It returns one of:
//   - a monitor and nil: the sandbox is monitored until Stop. A first
//     reconcile that did not attach everything in time is logged and
//     continues in the background, unless FailStartOnAttachError is set;
//   - nil and an error wrapping ErrNotMonitored, which says why: not a
//     failure;
//   - nil and another error: a failure (an invalid Config, a netns that
//     cannot be watched, a recovered panic, or, with
//     FailStartOnAttachError, a first attach that failed). The caller
//     logs it; FailsStart says whether it fails the container's Start.
//
// ctx bounds Start only; the monitor runs until Stop whatever ctx does. A
// panic in Start is recovered and returned as an error wrapping
// ErrPanicked. Start logs the first reconcile; the caller logs the error.
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
			log.WithFields(logrus.Fields{"panic": fmt.Sprint(p), "stack": string(debug.Stack())}).Error("kata-netmon panicked in Start; recovered")
			m, err = nil, fmt.Errorf("%w in Start: %v", ErrPanicked, p)
		}
	}()
	if !cfg.Settings.Enabled {
		return nil, fmt.Errorf("%w: disabled by configuration", ErrNotMonitored)
	}
	if cfg.Sandbox == nil {
		return nil, fmt.Errorf("%w: no sandbox", ErrInvalidConfig)
	}
	cfg.Settings = cfg.Settings.withDefaults()
	if ok, why := IsDocker(cfg); !ok {
		return nil, fmt.Errorf("%w: not a Docker sandbox: %s", ErrNotMonitored, why)
	}
	path, ns, err := sandboxNetNS(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("choose the netns to watch: %w", err)
	}
	defer ns.Close() // netmon keeps its own descriptor
	log = log.WithField("netns", path)
	if !claimNetNS(ns.ID()) {
		return nil, fmt.Errorf("%w: a monitor already watches netns %s in this process (Start called twice?)", ErrNotMonitored, path)
	}
	mon := &Monitor{log: log, netns: ns.ID()}
	// Undone unless Start returns the monitor, also when it panics (this
	// runs before the recover above).
	started := false
	defer func() {
		if !started {
			mon.release()
		}
	}()
	if cfg.Registerer != nil {
		if mon.met, err = metrics.New(cfg.Registerer, cfg.SandboxID); err != nil {
			log.WithError(err).Warn("cannot register metrics; monitoring without them")
			mon.met = nil
		}
	}
	s := cfg.Settings
	mcfg := monitor.Config{
		NetNSPath: path, NetNSFD: ns.FD(), DockerdNetNS: s.DockerdNetNS, DockerNetNSDir: s.DockerNetNSDir, Sandbox: cfg.Sandbox, CallTimeout: s.CallTimeout,
		ExitPID: cfg.HypervisorPID, Log: log,
	}
	if mon.met != nil { // never a typed nil in the interface
		mcfg.Observer = mon.met
	}
	mon.mon, err = monitor.Start(ctx, mcfg)
	if errors.Is(err, hotplug.ErrNoHotplug) {
		return nil, fmt.Errorf("%w: %w: the VM keeps the interfaces it booted with", ErrNotMonitored, err)
	}
	if err != nil {
		return nil, fmt.Errorf("kata-netmon: %w", err)
	}

	begin := time.Now()
	sctx, cancel := context.WithTimeout(ctx, s.ReadyTimeout)
	st, syncErr := mon.mon.Sync(sctx)
	cancel()
	fields := logrus.Fields{"attached": len(st.NICs), "took": time.Since(begin).Round(time.Millisecond)}
	if len(st.Refused) > 0 {
		fields["refused"] = st.Refused
	}
	switch {
	case syncErr != nil && s.FailStartOnAttachError:
		return nil, fmt.Errorf("kata-netmon: first attach: %w", syncErr)
	case syncErr != nil:
		log.WithFields(fields).WithError(syncErr).Error("first reconcile did not attach every endpoint before the workload starts; carrying on in the background")
	default:
		log.WithFields(fields).Info("first reconcile done")
	}
	mon.mon.Run()
	go mon.releaseWhenDone()
	started = true
	return mon, nil
}

// releaseWhenDone gives the netns up once the loop has ended by itself
// (process exit, netns gone, dead sandbox), so a later Start may watch it.
// The metrics stay until Stop: they say why it ended.
func (m *Monitor) releaseWhenDone() {
	<-m.mon.Done()
	m.unclaim()
}

// Stop ends the monitor and unregisters its metrics. It returns by ctx's
// deadline even if a sandbox call hangs (that call is abandoned and
// logged). Safe on nil, idempotent.
func (m *Monitor) Stop(ctx context.Context) error {
	if m == nil {
		return nil
	}
	err := m.mon.Stop(ctx)
	m.release()
	return err
}

// release stops the monitor, unregisters the metrics and gives the netns
// up for another Start. Once.
func (m *Monitor) release() {
	m.releaseOnce.Do(func() {
		if m.mon != nil {
			// Bounded: the loop abandons a hung call when its context
			// ends, and a Stop with a deadline ran first when there was
			// one.
			m.mon.Stop(context.Background())
		}
		m.met.Unregister()
		m.unclaim()
	})
}

// unclaim gives the netns up for another Start. Once.
func (m *Monitor) unclaim() { m.unclaimOnce.Do(func() { unclaimNetNS(m.netns) }) }

// NICNames returns the names of the NICs the guest has now for the
// sandbox's endpoints (for logs and tests).
func (m *Monitor) NICNames() []string {
	if m == nil {
		return nil
	}
	var out []string
	for _, n := range m.mon.NICs() {
		out = append(out, n.Name)
	}
	return out
}

// sandboxNetNS opens the netns to watch and returns it with the path it is
// known by: Kata's netns path, else the hypervisor's; never the shim's own
// (the sandbox then shares the host netns, disable_new_netns, and Docker's
// links are not ours: ErrNotMonitored). The annotation, when trusted, is
// honoured only if it names that same netns, and is then used through the
// descriptor that was checked.
func sandboxNetNS(cfg Config, log *logrus.Entry) (string, *nsfs.File, error) {
	path := cfg.NetNSPath
	if path == "" {
		if cfg.HypervisorPID <= 0 {
			return "", nil, fmt.Errorf("%w: neither a netns path nor a hypervisor pid", ErrInvalidConfig)
		}
		path = "/proc/" + strconv.Itoa(cfg.HypervisorPID) + "/ns/net"
	}
	f, err := nsfs.Open(path)
	if err != nil {
		return "", nil, err
	}
	self, err := nsfs.Stat("/proc/self/ns/net")
	if err != nil {
		f.Close()
		return "", nil, err
	}
	if f.ID() == self {
		f.Close()
		return "", nil, fmt.Errorf("%w: %s is the shim's own netns (disable_new_netns)", ErrNotMonitored, path)
	}
	ann, ok := "", false
	if cfg.Spec != nil {
		ann, ok = cfg.Spec.Annotations[NetNSAnnotation]
	}
	switch {
	case !ok:
		return path, f, nil
	case !cfg.Settings.TrustNetNSAnnotation:
		log.WithField("annotation", NetNSAnnotation).Debug("netns annotation present but not trusted by configuration; ignored")
		return path, f, nil
	}
	af, err := openAnnotatedNetNS(ann, f.ID())
	if err != nil {
		log.WithField("annotation", NetNSAnnotation).WithError(err).Warn("netns annotation refused; watching the sandbox's own netns")
		return path, f, nil
	}
	f.Close()
	return ann, af, nil
}
