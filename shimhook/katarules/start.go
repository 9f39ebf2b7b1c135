package katarules

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/shimhook"
)

// StartConfig is what Kata's shim hands its NetworkMonitorFactory (the
// series' patch 0010, containerdshim.NetworkMonitorConfig), in hotplug's and
// shimhook's terms.
type StartConfig struct {
	// Kata is the sandbox; Config its configuration and tree.
	Kata   Kata
	Config Config
	// ConfigPath is the configuration file Kata loaded for this sandbox
	// (the hook keeps the path loadRuntimeConfig resolved): the [netmon]
	// table is read from it and its config.d. It is not resolved again:
	// Kata 4.0.0 and later accept KATA_CONF_FILE only when it names one of
	// their shipped paths, and only Kata knows which file it took.
	ConfigPath string
	// Getenv reads the KATA_NETMON_* variables; nil means os.LookupEnv.
	Getenv func(string) (string, bool)
	// SandboxID, Namespace (containerd's), Bundle and Spec are the sandbox
	// container's.
	SandboxID, Namespace, Bundle string
	Spec                         *specs.Spec
	// NetNSPath is Kata's netns (VCSandbox.GetNetNs); HypervisorPID the
	// hypervisor's pid, whose exit ends the monitor.
	NetNSPath     string
	HypervisorPID int
	// Log is the shim's logger (nil discards); Registerer receives the
	// monitor's metrics (nil: none).
	Log        *logrus.Entry
	Registerer prometheus.Registerer
}

// Start starts kata-netmon for a sandbox whose sandbox container Kata is
// about to start, and maps the result to what Kata's factory returns:
//   - the monitor, after its first reconcile (Kata then does not run its own
//     RescanNetwork: the monitor attaches the network);
//   - (nil, nil) when the sandbox is not monitored by design
//     (shimhook.ErrNotMonitored: disabled, not Docker's, no NIC hotplug...),
//     logged at Info, or when starting failed in a way that must not fail
//     the container, logged at Error: the container starts as it would
//     without kata-netmon, and Kata runs its RescanNetwork;
//   - (nil, err) only when the operator asked for a failed first attach to
//     fail Start (fail_start_on_attach_error, shimhook.FailsStart): Kata
//     then fails the Start of the sandbox container.
//
// A panic is recovered and treated as a failure that does not fail Start.
func Start(ctx context.Context, cfg StartConfig) (m *shimhook.Monitor, err error) {
	log := Logger(cfg.Log, "").WithField("component", "kata-netmon")
	if cfg.SandboxID != "" {
		log = log.WithField("sandbox", cfg.SandboxID)
	}
	defer func() {
		if p := recover(); p != nil {
			log.WithFields(logrus.Fields{"panic": fmt.Sprint(p), "stack": string(debug.Stack())}).
				Error("kata-netmon panicked while starting; the container starts without it")
			m, err = nil, nil
		}
	}()
	settings, warnings := LoadSettings(cfg.ConfigPath, cfg.Getenv)
	if settings.LogLevel != "" {
		log = Logger(cfg.Log, settings.LogLevel).WithField("component", "kata-netmon")
		if cfg.SandboxID != "" {
			log = log.WithField("sandbox", cfg.SandboxID)
		}
	}
	for _, w := range warnings {
		log.WithField("config", cfg.ConfigPath).Warn("settings: " + w)
	}
	if cfg.Kata == nil {
		log.Error("Kata gave no sandbox; the container starts without kata-netmon")
		return nil, nil
	}
	// A netns the spec names is one Kata did not create (NetworkCreated
	// false), which decides whether this Kata can unplug at all.
	cfg.Config.NetNSGiven = specNetNSPath(cfg.Spec) != ""
	if missing := cfg.Config.Fixes.Missing(); missing != "" {
		log.WithField("missing_fixes", missing).Debug("this Kata lacks fixes of kata-netmon's patch series; steering around them")
	}
	m, err = shimhook.Start(ctx, shimhook.Config{
		SandboxID:     cfg.SandboxID,
		Namespace:     cfg.Namespace,
		BundlePath:    cfg.Bundle,
		Spec:          cfg.Spec,
		Sandbox:       NewSandbox(cfg.Kata, cfg.Config, log),
		NetNSPath:     cfg.NetNSPath,
		HypervisorPID: cfg.HypervisorPID,
		Settings:      settings.Settings,
		Log:           log,
		Registerer:    cfg.Registerer,
	})
	switch {
	case err == nil:
		return m, nil
	case errors.Is(err, shimhook.ErrNotMonitored):
		log.WithError(err).Info("kata-netmon does not monitor this sandbox; Kata's own network rescan runs")
		return nil, nil
	case shimhook.FailsStart(err, settings.Settings):
		return nil, fmt.Errorf("kata-netmon: the sandbox's network could not be attached before the workload starts "+
			"(fail_start_on_attach_error is set): %w", err)
	default:
		log.WithError(err).Error("kata-netmon did not start; the container starts without it, and Kata's own network rescan runs")
		return nil, nil
	}
}

// specNetNSPath returns the path of the network namespace entry of spec,
// "" when it has none or an empty one (Kata then creates the netns).
func specNetNSPath(spec *specs.Spec) string {
	if spec == nil || spec.Linux == nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}
