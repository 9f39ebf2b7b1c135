//go:build linux

package faults

import (
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/logrec"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/metrics"
)

// What the fault tests check: the sandbox's calls and guest, the metrics,
// the log fields, goroutines and CPU.

// lastRoutes returns the routes of the last UpdateRoutes call sb received.
func lastRoutes(sb *hotplugtest.FakeSandbox) ([]*hotplug.Route, bool) {
	calls := sb.CallsOf(hotplugtest.OpUpdateRoutes)
	if len(calls) == 0 {
		return nil, false
	}
	return calls[len(calls)-1].Routes, true
}

func formatRoutes(rs []*hotplug.Route) string {
	var parts []string
	for _, r := range rs {
		d := r.Dest
		if d == "" {
			d = "default"
		}
		parts = append(parts, fmt.Sprintf("%s via %q dev %s", d, r.Gateway, r.Device))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

func sameRoutes(a, b []*hotplug.Route) bool {
	return slices.EqualFunc(a, b, func(x, y *hotplug.Route) bool { return *x == *y })
}

// checkInvariants: no MAC is plugged twice, and every RemoveInterface names a
// MAC an AddInterface named before it.
func checkInvariants(t *testing.T, sb *hotplugtest.FakeSandbox) {
	t.Helper()
	macs := sb.GuestMACs()
	if c := slices.Compact(slices.Clone(macs)); len(c) != len(macs) {
		t.Fatalf("a MAC is plugged twice: %v", macs)
	}
	added := map[string]bool{}
	for _, c := range sb.Calls() {
		switch c.Op {
		case hotplugtest.OpAddInterface:
			added[c.MAC()] = true
		case hotplugtest.OpRemoveInterface:
			if !added[c.MAC()] {
				t.Fatalf("RemoveInterface(%s) of a MAC never attached; calls %v", c.MAC(), sb.Ops())
			}
		}
	}
}

// checkLogFields: every entry of a monitor started through shimhook
// names its sandbox and netns, and every entry about one link (ifindex)
// names it too (ifname).
func checkLogFields(t *testing.T, log *logrec.Recorder) {
	t.Helper()
	for _, e := range log.Entries(logrus.TraceLevel, "") {
		if _, ok := e.Data["sandbox"]; !ok {
			t.Errorf("log entry without sandbox: %s %q %v", e.Level, e.Message, e.Data)
		}
		if _, ok := e.Data["netns"]; !ok && !strings.Contains(e.Message, "netns") {
			t.Errorf("log entry without netns: %s %q %v", e.Level, e.Message, e.Data)
		}
		if idx, ok := e.Data["ifindex"]; ok && idx != 0 {
			if _, ok := e.Data["ifname"]; !ok {
				t.Errorf("log entry with ifindex but no ifname: %s %q %v", e.Level, e.Message, e.Data)
			}
		}
	}
}

// metric returns the value of the counter or gauge name{labels...} of
// sandbox id in reg (0 when the series does not exist).
func metric(t testing.TB, reg prometheus.Gatherer, name, id string, pairs ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	pairs = append(pairs, metrics.SandboxLabel, id)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, pairs) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			found = found || (l.GetName() == pairs[i] && l.GetValue() == pairs[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}

// seriesOf counts the series of reg that carry sandbox="id".
func seriesOf(t testing.TB, reg prometheus.Gatherer, id string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if hasLabels(m, []string{metrics.SandboxLabel, id}) {
				n++
			}
		}
	}
	return n
}

// callsTotal is the total of kata_netmon_sandbox_calls_total of sandbox id.
func callsTotal(t testing.TB, reg prometheus.Gatherer, id string) float64 {
	return metric(t, reg, "kata_netmon_sandbox_calls_total", id)
}

// eventsTotal is the total of kata_netmon_netlink_events_total of sandbox id.
func eventsTotal(t testing.TB, reg prometheus.Gatherer, id string) float64 {
	return metric(t, reg, "kata_netmon_netlink_events_total", id)
}

// goroutineStacks returns the stacks of the goroutines running now whose stack
// mentions every one of substrs.
func goroutineStacks(substrs ...string) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range regexp.MustCompile(`\n\n`).Split(string(buf), -1) {
		ok := true
		for _, s := range substrs {
			ok = ok && strings.Contains(g, s)
		}
		if ok {
			out = append(out, g)
		}
	}
	return out
}

// processCPU returns the CPU time (user + system) this process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakGoroutines samples runtime.NumGoroutine until stop is closed and
// returns the largest count seen.
func peakGoroutines(stop <-chan struct{}) func() int {
	var mu sync.Mutex
	peak := runtime.NumGoroutine()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				n := runtime.NumGoroutine()
				mu.Lock()
				peak = max(peak, n)
				mu.Unlock()
			}
		}
	}()
	return func() int {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}
