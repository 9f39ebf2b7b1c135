package kata

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	containerdshim "github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2"
	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"

	"github.com/kata-netmon/kata-netmon/shimhook/katarules"
)

// Options configure a factory. The zero value is the shim's.
type Options struct {
	// Registerer receives each monitor's metrics; nil means
	// prometheus.DefaultRegisterer, which Kata's shim serves on its metrics
	// endpoint.
	Registerer prometheus.Registerer
	// Getenv reads the KATA_NETMON_* settings; nil means os.LookupEnv.
	Getenv func(string) (string, bool)
}

// Factory is kata-netmon's containerdshim.NetworkMonitorFactory: register
// it with containerdshim.SetNetworkMonitorFactory before shim.Run (package
// register does).
func Factory(ctx context.Context, cfg containerdshim.NetworkMonitorConfig) (containerdshim.NetworkMonitor, error) {
	return NewFactory(Options{})(ctx, cfg)
}

// NewFactory returns a factory with opts. What it returns, and when it
// fails Kata's Start, is katarules.Start's: the monitor; (nil, nil) when the
// sandbox is not monitored or kata-netmon could not start (Kata then runs
// its own RescanNetwork); an error only with fail_start_on_attach_error.
// It never panics.
func NewFactory(opts Options) containerdshim.NetworkMonitorFactory {
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	return func(ctx context.Context, cfg containerdshim.NetworkMonitorConfig) (m containerdshim.NetworkMonitor, err error) {
		defer func() {
			if p := recover(); p != nil {
				log := cfg.Logger
				if log == nil {
					log = logrus.NewEntry(logrus.StandardLogger())
				}
				log.WithFields(logrus.Fields{"panic": fmt.Sprint(p), "stack": string(debug.Stack())}).
					Error("kata-netmon panicked while starting; the container starts without it")
				m, err = nil, nil
			}
		}()
		sc := katarules.StartConfig{
			ConfigPath:    cfg.ConfigPath,
			Getenv:        opts.Getenv,
			SandboxID:     cfg.ContainerID,
			Namespace:     cfg.Namespace,
			Bundle:        cfg.Bundle,
			Spec:          cfg.Spec,
			HypervisorPID: cfg.HypervisorPID,
			Log:           cfg.Logger,
			Registerer:    reg,
		}
		if cfg.Sandbox != nil && cfg.RuntimeConfig != nil {
			sc.Kata = kataPort{cfg.Sandbox}
			sc.NetNSPath = cfg.Sandbox.GetNetNs()
			sc.Config = katarules.Config{
				HypervisorType:    string(cfg.RuntimeConfig.HypervisorType),
				InterworkingModel: modelName(cfg.RuntimeConfig.InterNetworkModel),
				Fixes:             TreeFixes(),
			}
		}
		mon, err := katarules.Start(ctx, sc)
		if mon == nil {
			return nil, err // never a typed nil in the interface
		}
		return mon, err
	}
}

// modelName spells the interworking model the sandbox uses, Kata's default
// resolved (NetInterworkingModel.GetModel would say "default" for tcfilter).
func modelName(m vc.NetInterworkingModel) string {
	if m == vc.NetXConnectDefaultModel {
		m = vc.DefaultNetInterworkingModel
	}
	switch m {
	case vc.NetXConnectMacVtapModel:
		return katarules.ModelMacVtap
	case vc.NetXConnectTCFilterModel:
		return katarules.ModelTCFilter
	case vc.NetXConnectNoneModel:
		return "none"
	}
	return "unknown"
}
