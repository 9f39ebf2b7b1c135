package metrics

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/netmon"
)

// Namespace prefixes every metric name.
const Namespace = "kata_netmon"

// SandboxLabel is the constant label naming the sandbox on every series.
const SandboxLabel = "sandbox"

// Outcomes of a sandbox call, the "outcome" label of
// kata_netmon_sandbox_calls_total.
const (
	OutcomeOK        = "ok"        // returned nil
	OutcomeError     = "error"     // returned an error (retried with backoff)
	OutcomeTimeout   = "timeout"   // returned its context's deadline error
	OutcomeCanceled  = "canceled"  // returned because the monitor was stopping
	OutcomeAbandoned = "abandoned" // did not return by its deadline: left running
	OutcomeDead      = "dead"      // the agent is gone (hotplug.ErrSandboxDead): the monitor gives up
	OutcomeRefused   = "refused"   // the sandbox refused it without acting (hotplug.ErrRefused), e.g. a second NIC on an unfixed Kata
)

// Sandbox operations the reconciler calls (the "op" label).
var ops = []string{"AddInterface", "RemoveInterface", "ListInterfaces", "UpdateRoutes"}

// Netlink event kinds (the "kind" label).
var kinds = []string{"link", "address", "route"}

// CallBuckets are the upper bounds (seconds) of the sandbox call latency
// histogram: from an in-memory ListInterfaces (well under a millisecond) to
// a QEMU hot-plug with the agent's wait for the NIC (hundreds of ms to
// seconds) and the 30 s default call deadline.
var CallBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// ErrNoSandboxID is returned by New for an empty sandbox id: its series
// would collide with every other monitor's.
var ErrNoSandboxID = errors.New("metrics: a sandbox id is required")

// Sandbox holds one monitor's series. Its observer methods are safe for
// concurrent use, never block, and do nothing on a nil *Sandbox.
type Sandbox struct {
	reg prometheus.Registerer
	id  string

	events  *prometheus.CounterVec   // kind
	skipped *prometheus.CounterVec   // kind
	resyncs prometheus.Counter       //
	calls   *prometheus.CounterVec   // op, outcome
	latency *prometheus.HistogramVec // op
	nics    prometheus.Gauge
	panics  *prometheus.CounterVec // where

	unregisterOnce sync.Once
}

var (
	_ prometheus.Collector = (*Sandbox)(nil)
	_ hotplug.Observer     = (*Sandbox)(nil)
	_ netmon.Observer      = (*Sandbox)(nil)
)

// New creates the series of sandbox id and registers them on reg as one
// collector. A registry refuses a second Sandbox with the same id
// (prometheus.AlreadyRegisteredError, wrapped). Call Unregister when the
// monitor stops.
func New(reg prometheus.Registerer, id string) (*Sandbox, error) {
	if reg == nil {
		return nil, errors.New("metrics: a Registerer is required")
	}
	if id == "" {
		return nil, ErrNoSandboxID
	}
	cl := prometheus.Labels{SandboxLabel: id}
	s := &Sandbox{
		reg: reg,
		id:  id,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "netlink_events_total", ConstLabels: cl,
			Help: "Netlink events from the sandbox netns that the monitor applied to its view, by kind (link, address, route). " +
				"Events lost to a receive buffer overflow are not counted (see resyncs_total), nor undecodable ones (see netlink_undecodable_total).",
		}, []string{"kind"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "netlink_undecodable_total", ConstLabels: cl,
			Help: "Netlink messages skipped because they could not be decoded, by kind (link, address, route); " +
				"the table they belong to is re-listed, and a dump skips the same objects.",
		}, []string{"kind"}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "resyncs_total", ConstLabels: cl,
			Help: "Times the netlink subscription was replaced and the view re-listed (overflow, socket error, interrupted dump).",
		}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "sandbox_calls_total", ConstLabels: cl,
			Help: "Calls to the Kata sandbox, by op (AddInterface = attach, RemoveInterface = detach, UpdateRoutes = route push, " +
				"ListInterfaces) and outcome (ok, error, timeout, canceled, abandoned, dead, refused).",
		}, []string{"op", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "sandbox_call_duration_seconds", ConstLabels: cl, Buckets: CallBuckets,
			Help: "Duration of calls to the Kata sandbox, by op; an abandoned call counts as its deadline.",
		}, []string{"op"}),
		nics: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "interfaces_attached", ConstLabels: cl,
			Help: "NICs the guest has now for the sandbox's Docker endpoints (attached or adopted by the monitor).",
		}),
	}
	s.panics = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "panics_total", ConstLabels: cl,
		Help: "Panics recovered in kata-netmon's goroutines, by where (reconciler, first reconcile, netmon loop, netmon start); the part that panicked starts over from a fresh list.",
	}, []string{"where"})
	// Series that exist from the start, so that rates and alerts see a 0
	// rather than nothing.
	for _, k := range kinds {
		s.events.WithLabelValues(k)
		s.skipped.WithLabelValues(k)
	}
	for _, op := range ops {
		for _, o := range []string{OutcomeOK, OutcomeError} {
			s.calls.WithLabelValues(op, o)
		}
	}
	if err := reg.Register(s); err != nil {
		return nil, fmt.Errorf("metrics: register sandbox %q: %w", id, err)
	}
	return s, nil
}

// ID returns the sandbox id the series carry.
func (s *Sandbox) ID() string {
	if s == nil {
		return ""
	}
	return s.id
}

// Unregister removes every series of this sandbox from the registry. It
// reports whether they were registered; idempotent and safe on nil.
func (s *Sandbox) Unregister() bool {
	if s == nil {
		return false
	}
	ok := false
	s.unregisterOnce.Do(func() { ok = s.reg.Unregister(s) })
	return ok
}

// Describe implements prometheus.Collector.
func (s *Sandbox) Describe(ch chan<- *prometheus.Desc) {
	s.events.Describe(ch)
	s.skipped.Describe(ch)
	s.resyncs.Describe(ch)
	s.calls.Describe(ch)
	s.latency.Describe(ch)
	s.nics.Describe(ch)
	s.panics.Describe(ch)
}

// Collect implements prometheus.Collector.
func (s *Sandbox) Collect(ch chan<- prometheus.Metric) {
	s.events.Collect(ch)
	s.skipped.Collect(ch)
	s.resyncs.Collect(ch)
	s.calls.Collect(ch)
	s.latency.Collect(ch)
	s.nics.Collect(ch)
	s.panics.Collect(ch)
}

// EventSeen implements netmon.Observer.
func (s *Sandbox) EventSeen(kind string) {
	if s == nil {
		return
	}
	s.events.WithLabelValues(kind).Inc()
}

// Undecodable implements netmon.Observer.
func (s *Sandbox) Undecodable(kind string) {
	if s == nil {
		return
	}
	s.skipped.WithLabelValues(kind).Inc()
}

// Resynced implements netmon.Observer.
func (s *Sandbox) Resynced() {
	if s == nil {
		return
	}
	s.resyncs.Inc()
}

// SandboxCall implements hotplug.Observer.
func (s *Sandbox) SandboxCall(op string, d time.Duration, err error) {
	if s == nil {
		return
	}
	s.calls.WithLabelValues(op, Outcome(err)).Inc()
	s.latency.WithLabelValues(op).Observe(d.Seconds())
}

// Panicked implements hotplug.Observer and netmon.Observer.
func (s *Sandbox) Panicked(where string) {
	if s == nil {
		return
	}
	s.panics.WithLabelValues(where).Inc()
}

// GuestNICs implements hotplug.Observer.
func (s *Sandbox) GuestNICs(n int) {
	if s == nil {
		return
	}
	s.nics.Set(float64(n))
}

// Outcome classifies a sandbox call's error for the "outcome" label.
func Outcome(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, hotplug.ErrCallAbandoned):
		return OutcomeAbandoned
	case errors.Is(err, hotplug.ErrSandboxDead):
		return OutcomeDead
	case errors.Is(err, hotplug.ErrRefused):
		return OutcomeRefused
	case errors.Is(err, context.DeadlineExceeded):
		return OutcomeTimeout
	case errors.Is(err, context.Canceled):
		return OutcomeCanceled
	}
	return OutcomeError
}
