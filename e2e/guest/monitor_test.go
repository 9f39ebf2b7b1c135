//go:build linux

package guest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerguest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/logrec"
	"github.com/kata-netmon/kata-netmon/e2e/internal/shimcfg"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// shimMonitor is a shimhook.Start result with everything it logged.
type shimMonitor struct {
	m    *shimhook.Monitor // nil when Start decided not to monitor
	log  *logrec.Recorder
	took time.Duration // Start's duration
	// notMonitored is Start's ErrNotMonitored error (nil when monitored).
	notMonitored error
}

// startMonitor calls shimhook.Start as a shim would for this sandbox: the
// production entry point, with Docker's containerd namespace and spec and
// dockerd's netns as the peer netns. The monitor's log is recorded at debug
// level; info and above also go to t.Log. It is stopped on t's cleanup.
func startMonitor(t *testing.T, s *dockerguest.Sandbox, sb hotplug.Sandbox) *shimMonitor {
	t.Helper()
	return startMonitorWith(t, func(log *logrus.Entry) shimhook.Config { return s.ShimConfig(sb, log) })
}

// startMonitorWith is startMonitor with the config cfg returns for the
// recorded log.
func startMonitorWith(t *testing.T, cfg func(*logrus.Entry) shimhook.Config) *shimMonitor {
	t.Helper()
	log := logrec.New(t, logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel, logrus.InfoLevel)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	start := time.Now()
	m, err := shimhook.Start(ctx, cfg(log.Log))
	took := time.Since(start)
	if err != nil && !errors.Is(err, shimhook.ErrNotMonitored) {
		t.Fatalf("shimhook.Start: %v", err)
	}
	t.Logf("shimhook.Start returned after %v (monitor running: %v, attached %v, not monitored: %v)", took.Round(time.Millisecond), m != nil, m.NICNames(), err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			t.Errorf("monitor Stop: %v", err)
		}
	})
	return &shimMonitor{m: m, log: log, took: took, notMonitored: err}
}

// startLabMonitor starts the monitor on a lab's sandbox netns, driving sb,
// with the lab's dockerd netns as the peer netns.
func startLabMonitor(t *testing.T, l *lab, sb hotplug.Sandbox) *shimMonitor {
	t.Helper()
	return startMonitorWith(t, func(log *logrus.Entry) shimhook.Config {
		cfg := shimcfg.Docker(netmontest.RandName(), sb, l.SandboxPath, l.DockerdPath)
		cfg.HypervisorPID = l.vm.Pid
		cfg.Log = log
		return cfg
	})
}

// remaining is the time left before ctx's deadline (a minute if it has
// none).
func remaining(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return time.Until(d)
	}
	return time.Minute
}
