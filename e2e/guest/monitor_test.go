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
	"github.com/kata-netmon/kata-netmon/hotplug"
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
	log := logrec.New(t, logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel, logrus.InfoLevel)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	start := time.Now()
	m, err := shimhook.Start(ctx, s.ShimConfig(sb, log.Log))
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

// remaining is the time left before ctx's deadline (a minute if it has
// none).
func remaining(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return time.Until(d)
	}
	return time.Minute
}
