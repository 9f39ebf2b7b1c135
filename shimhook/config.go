package shimhook

import (
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// dockerNetNSDir is where dockerd bind-mounts container netns (SetKey), under
// its default exec root /var/run/docker; /var/run/docker/netns reaches the
// same directory through Debian's /var/run -> /run symlink.
const dockerNetNSDir = "/run/docker/netns"

// NetNSAnnotation is the proposed Docker annotation naming the container's
// netns. It is user input (docker run --annotation): honoured only when
// Settings.TrustNetNSAnnotation is set, and only if it names the sandbox's own
// netns under /run/docker/netns.
const NetNSAnnotation = "com.docker.network.namespace.path"

// Settings are the operator's knobs. The zero value is not usable; start from
// DefaultSettings.
type Settings struct {
	// Enabled turns the monitor on for Docker sandboxes.
	Enabled bool
	// DockerNamespaces are the containerd namespaces treated as Docker's.
	DockerNamespaces []string
	// TrustNetNSAnnotation lets NetNSAnnotation name the netns (validated).
	TrustNetNSAnnotation bool
	// FailStartOnAttachError makes a failed first attach fail Start; by
	// default the failure is logged and counted and the container starts.
	FailStartOnAttachError bool
	// ReadyTimeout bounds the synchronous first reconcile: how long Start
	// waits for candidate links to become ready and be attached.
	ReadyTimeout time.Duration
	// CallTimeout bounds each sandbox call.
	CallTimeout time.Duration
	// DockerdNetNS is the path of dockerd's netns, where endpoint peers
	// live; "" means the shim's own netns (the host's, shared with dockerd).
	DockerdNetNS string
	// DockerNetNSDir is Docker's netns directory (<exec-root>/netns), where
	// dockerd bind-mounts the netns it creates: an endpoint whose veth
	// peer is on a bridge in one of them (an overlay network's
	// "1-<network id>") is attached too. "" accepts peers in dockerd's
	// netns only.
	DockerNetNSDir string
}

// DefaultSettings returns safe defaults: enabled, namespace "moby", the
// annotation not trusted, Start never failed by the monitor, 5 s first
// reconcile, 30 s per sandbox call (QEMU hotplug plus the agent), overlay
// peers looked up in Docker's default netns directory.
func DefaultSettings() Settings {
	return Settings{
		Enabled:          true,
		DockerNamespaces: []string{"moby"},
		ReadyTimeout:     5 * time.Second,
		CallTimeout:      30 * time.Second,
		DockerNetNSDir:   DefaultDockerNetNSDir,
	}
}

// DefaultDockerNetNSDir is Docker's netns directory with the default
// exec-root (/var/run/docker, through Debian's /var/run -> /run symlink):
// moby daemon/libnetwork/osl/namespace_linux.go, defaultPrefix and
// SetBasePath.
const DefaultDockerNetNSDir = "/run/docker/netns"

// Config is what the shim knows about one sandbox when its container starts.
type Config struct {
	SandboxID string
	// Namespace is the containerd namespace of the request ("moby" for Docker).
	Namespace string
	// BundlePath is the OCI bundle directory of the sandbox container.
	BundlePath string
	// Spec is the sandbox container's OCI spec.
	Spec *specs.Spec
	// Sandbox is the port to the VM.
	Sandbox hotplug.Sandbox
	// NetNSPath is the sandbox's netns as Kata knows it (VCSandbox.GetNetNs);
	// "" falls back to /proc/<HypervisorPID>/ns/net.
	NetNSPath     string
	HypervisorPID int
	Settings      Settings
	// Log carries the shim's fields; nil discards.
	Log *logrus.Entry
	// Registerer receives the monitor's metrics (package metrics), labelled
	// sandbox=SandboxID, unregistered by Stop; nil means no metrics. The
	// drop-in shim passes prometheus.DefaultRegisterer, which Kata's shim
	// metrics endpoint serves. A registration failure (no SandboxID, or
	// that id registered already) is logged and the monitor runs without.
	Registerer prometheus.Registerer
}

// withDefaults fills zero durations and an empty namespace list from
// DefaultSettings, so a partly filled Settings still behaves safely.
func (s Settings) withDefaults() Settings {
	d := DefaultSettings()
	if len(s.DockerNamespaces) == 0 {
		s.DockerNamespaces = d.DockerNamespaces
	}
	if s.ReadyTimeout <= 0 {
		s.ReadyTimeout = d.ReadyTimeout
	}
	if s.CallTimeout <= 0 {
		s.CallTimeout = d.CallTimeout
	}
	return s
}
