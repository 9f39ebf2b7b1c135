package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// series returns the number of series per metric family of reg, and per
// sandbox label value.
func series(t *testing.T, reg prometheus.Gatherer) (byFamily map[string]int, bySandbox map[string]int) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	byFamily, bySandbox = map[string]int{}, map[string]int{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			byFamily[mf.GetName()]++
			for _, l := range m.GetLabel() {
				if l.GetName() == metrics.SandboxLabel {
					bySandbox[l.GetValue()]++
				}
			}
		}
	}
	return byFamily, bySandbox
}

func TestValues(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s, err := metrics.New(reg, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		s.EventSeen("link")
	}
	s.EventSeen("route")
	s.Resynced()
	s.SandboxCall("AddInterface", 20*time.Millisecond, nil)
	s.SandboxCall("AddInterface", 3*time.Second, errors.New("QMP: no free slot"))
	s.SandboxCall("UpdateRoutes", time.Millisecond, fmt.Errorf("UpdateRoutes: %w", hotplug.ErrCallAbandoned))
	s.SandboxCall("RemoveInterface", time.Millisecond, fmt.Errorf("%w: rpc error: Dead agent", hotplug.ErrSandboxDead))
	s.GuestNICs(2)
	s.GuestNICs(1)

	want := `
# HELP kata_netmon_interfaces_attached NICs the guest has now for the sandbox's Docker endpoints (attached or adopted by the monitor).
# TYPE kata_netmon_interfaces_attached gauge
kata_netmon_interfaces_attached{sandbox="sb1"} 1
# HELP kata_netmon_resyncs_total Times the netlink subscription was replaced and the view re-listed (overflow, socket error, interrupted dump).
# TYPE kata_netmon_resyncs_total counter
kata_netmon_resyncs_total{sandbox="sb1"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kata_netmon_interfaces_attached", "kata_netmon_resyncs_total"); err != nil {
		t.Error(err)
	}
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"kata_netmon_netlink_events_total", []string{"kind", "link"}, 3},
		{"kata_netmon_netlink_events_total", []string{"kind", "address"}, 0},
		{"kata_netmon_netlink_events_total", []string{"kind", "route"}, 1},
		{"kata_netmon_sandbox_calls_total", []string{"op", "AddInterface", "outcome", "ok"}, 1},
		{"kata_netmon_sandbox_calls_total", []string{"op", "AddInterface", "outcome", "error"}, 1},
		{"kata_netmon_sandbox_calls_total", []string{"op", "UpdateRoutes", "outcome", "abandoned"}, 1},
		{"kata_netmon_sandbox_calls_total", []string{"op", "RemoveInterface", "outcome", "dead"}, 1},
		{"kata_netmon_sandbox_calls_total", []string{"op", "ListInterfaces", "outcome", "ok"}, 0},
	}
	for _, c := range checks {
		if got := value(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := histCount(t, reg, "AddInterface"); n != 2 {
		t.Errorf("AddInterface latency observations = %d, want 2", n)
	}
	if !s.Unregister() {
		t.Error("Unregister = false")
	}
	if s.Unregister() {
		t.Error("second Unregister = true")
	}
	if fam, _ := series(t, reg); len(fam) != 0 {
		t.Errorf("series left after Unregister: %v", fam)
	}
}

// value returns the counter or gauge value of the series of name whose
// labels include the given pairs.
func value(t *testing.T, reg prometheus.Gatherer, name string, pairs ...string) float64 {
	t.Helper()
	m := find(t, reg, name, pairs...)
	if m == nil {
		t.Fatalf("no series %s%v", name, pairs)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s is neither counter nor gauge", name)
	return 0
}

func histCount(t *testing.T, reg prometheus.Gatherer, op string) uint64 {
	m := find(t, reg, "kata_netmon_sandbox_call_duration_seconds", "op", op)
	if m == nil || m.Histogram == nil {
		return 0
	}
	return m.Histogram.GetSampleCount()
}

func find(t *testing.T, reg prometheus.Gatherer, name string, pairs ...string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(pairs); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == pairs[i] && l.GetValue() == pairs[i+1])
				}
				if !found {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

// TestManySandboxesOneRegistry: 200 monitors register on one registry
// (concurrently, as shims starting at once would), their series do not
// collide, one stopping removes exactly its own, and the registry ends empty.
func TestManySandboxesOneRegistry(t *testing.T) {
	const n = 200
	reg := prometheus.NewPedanticRegistry()
	sbs := make([]*metrics.Sandbox, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			s, err := metrics.New(reg, fmt.Sprintf("sandbox-%03d", i))
			if err != nil {
				errs <- err
				return
			}
			s.EventSeen("link")
			s.SandboxCall("AddInterface", time.Millisecond, nil)
			s.GuestNICs(1)
			sbs[i] = s
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	fam, bySB := series(t, reg)
	if len(bySB) != n {
		t.Fatalf("%d sandboxes in the registry, want %d", len(bySB), n)
	}
	perSB := bySB["sandbox-000"]
	for id, c := range bySB {
		if c != perSB {
			t.Fatalf("sandbox %s has %d series, sandbox-000 %d", id, c, perSB)
		}
	}
	if fam["kata_netmon_interfaces_attached"] != n {
		t.Errorf("interfaces_attached series = %d, want %d", fam["kata_netmon_interfaces_attached"], n)
	}
	t.Logf("%d series per sandbox before any call of other ops", perSB)

	// A second monitor for a registered id is refused, and leaves the
	// first one's series alone.
	if _, err := metrics.New(reg, "sandbox-007"); !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		t.Errorf("duplicate id: err = %v, want AlreadyRegisteredError", err)
	}
	// One stops: exactly its series go.
	sbs[7].Unregister()
	_, bySB = series(t, reg)
	if _, ok := bySB["sandbox-007"]; ok || len(bySB) != n-1 {
		t.Errorf("after one Unregister: %d sandboxes, sandbox-007 present %v", len(bySB), ok)
	}
	if got := value(t, reg, "kata_netmon_interfaces_attached", metrics.SandboxLabel, "sandbox-008"); got != 1 {
		t.Errorf("sandbox-008 attached = %v after sandbox-007 stopped", got)
	}
	// Its id can be registered again (a new sandbox with that id).
	again, err := metrics.New(reg, "sandbox-007")
	if err != nil {
		t.Fatalf("re-register after Unregister: %v", err)
	}
	sbs[7] = again
	for _, s := range sbs {
		wg.Go(func() { s.Unregister() })
	}
	wg.Wait()
	if fam, _ := series(t, reg); len(fam) != 0 {
		t.Errorf("series left after every Unregister: %v", fam)
	}
}

func TestNewRefuses(t *testing.T) {
	if _, err := metrics.New(prometheus.NewRegistry(), ""); !errors.Is(err, metrics.ErrNoSandboxID) {
		t.Errorf("empty id: %v", err)
	}
	if _, err := metrics.New(nil, "x"); err == nil {
		t.Error("nil registerer accepted")
	}
}

func TestNilSandbox(t *testing.T) {
	var s *metrics.Sandbox
	s.EventSeen("link")
	s.Resynced()
	s.SandboxCall("AddInterface", time.Second, nil)
	s.GuestNICs(3)
	if s.Unregister() || s.ID() != "" {
		t.Error("nil Sandbox did something")
	}
}

func TestOutcome(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, metrics.OutcomeOK},
		{errors.New("boom"), metrics.OutcomeError},
		{fmt.Errorf("AddInterface: %w", hotplug.ErrCallAbandoned), metrics.OutcomeAbandoned},
		// Kata's text alone is the adapter's to recognise, not the metrics'.
		{errors.New("rpc error: code = Unavailable desc = Dead agent"), metrics.OutcomeError},
		{fmt.Errorf("x: %w", hotplug.ErrSandboxDead), metrics.OutcomeDead},
		{fmt.Errorf("AddInterface: %w: second NIC", hotplug.ErrRefused), metrics.OutcomeRefused},
		{fmt.Errorf("AddInterface: %w", context.DeadlineExceeded), metrics.OutcomeTimeout},
		{fmt.Errorf("AddInterface: %w", context.Canceled), metrics.OutcomeCanceled},
	}
	for _, tc := range tests {
		if got := metrics.Outcome(tc.err); got != tc.want {
			t.Errorf("Outcome(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
