package hotplug_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/matcher"
)

// MACs of test endpoints: random locally-administered, as Docker 28+ makes.
const (
	macA = "02:42:ac:12:00:02"
	macB = "5e:1f:00:aa:bb:01"
	macC = "5e:1f:00:aa:bb:02"
	macD = "5e:1f:00:aa:bb:03"
)

// waitLong bounds every wait for something that should happen at once.
const waitLong = 5 * time.Second

// fakeClock is the reconciler's clock in tests of backoff arithmetic.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// harness is a reconciler wired to fakes, with a fake clock and a log hook.
type harness struct {
	t     *testing.T
	sb    *hotplugtest.FakeSandbox
	src   *hotplugtest.FakeSource
	r     *hotplug.Reconciler
	clock *fakeClock
	hook  *logtest.Hook
}

// newHarness builds a reconciler with CallTimeout 10 s, backoff 1..8 ms and
// a fake clock; cfg functions adjust the config first.
func newHarness(t *testing.T, sb *hotplugtest.FakeSandbox, src *hotplugtest.FakeSource, cfg ...func(*hotplug.Config)) *harness {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	c := hotplug.Config{
		Sandbox:     sb,
		Source:      src,
		Log:         logger.WithField("sandbox", t.Name()),
		CallTimeout: 10 * time.Second,
		MinBackoff:  time.Millisecond,
		MaxBackoff:  8 * time.Millisecond,
	}
	for _, f := range cfg {
		f(&c)
	}
	r, err := hotplug.New(c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h := &harness{t: t, sb: sb, src: src, r: r, clock: newFakeClock(), hook: hook}
	hotplug.SetNow(r, h.clock.Now)
	return h
}

// realClock puts the reconciler back on wall time (for Run and Sync, whose
// timers run on it).
func (h *harness) realClock() { hotplug.SetNow(h.r, time.Now) }

// reconcile runs one pass and fails the test on an error.
func (h *harness) reconcile() hotplug.Status {
	h.t.Helper()
	st, err := h.r.Reconcile(context.Background())
	if err != nil {
		h.t.Fatalf("Reconcile: %v", err)
	}
	return st
}

// opsDuring returns the sandbox operations fn caused.
func (h *harness) opsDuring(fn func()) []string {
	before := len(h.sb.Calls())
	fn()
	return h.sb.Ops()[before:]
}

// run starts Run and returns its result channel.
func (h *harness) run(ctx context.Context) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- h.r.Run(ctx) }()
	return errc
}

// logged reports a log entry at level whose message contains msg.
// logged reports a line at level whose message contains msg and whose
// fields include every one of fields (compared as printed).
func (h *harness) logged(level logrus.Level, msg string, fields ...logrus.Fields) bool {
	for _, e := range h.hook.AllEntries() {
		if e.Level == level && strings.Contains(e.Message, msg) && hasFields(e.Data, fields...) {
			return true
		}
	}
	return false
}

// count returns how many lines at level contain msg.
func (h *harness) count(level logrus.Level, msg string) int {
	n := 0
	for _, e := range h.hook.AllEntries() {
		if e.Level == level && strings.Contains(e.Message, msg) {
			n++
		}
	}
	return n
}

func hasFields(data logrus.Fields, want ...logrus.Fields) bool {
	for _, w := range want {
		for k, v := range w {
			if got, ok := data[k]; !ok || fmt.Sprint(got) != fmt.Sprint(v) {
				return false
			}
		}
	}
	return true
}

func (h *harness) wantLogged(level logrus.Level, msg string, fields ...logrus.Fields) {
	h.t.Helper()
	if !h.logged(level, msg, fields...) {
		var got []string
		for _, e := range h.hook.AllEntries() {
			got = append(got, fmt.Sprintf("%s: %s %v", e.Level, e.Message, e.Data))
		}
		h.t.Errorf("no %s log containing %q with %v; logged:\n%s", level, msg, fields, strings.Join(got, "\n"))
	}
}

// recvErr waits for Run's result.
func recvErr(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(waitLong):
		t.Fatalf("Run did not return within %v", waitLong)
		return nil
	}
}

// waitFor polls cond until it holds or waitLong passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitLong, what)
		}
		time.Sleep(time.Millisecond)
	}
}

func waitCalls(t *testing.T, sb *hotplugtest.FakeSandbox, op string, n int) []hotplugtest.Call {
	t.Helper()
	calls, err := sb.WaitCalls(op, n, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	return calls
}

// macsOf returns the MACs of calls of op, in order.
func macsOf(sb *hotplugtest.FakeSandbox, op string) []string {
	var out []string
	for _, c := range sb.CallsOf(op) {
		out = append(out, c.MAC())
	}
	return out
}

func attachedMACs(as []matcher.GuestNIC) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.MAC)
	}
	slices.Sort(out)
	return out
}

func ops(o ...string) []string { return o }

// prefixes parses CIDRs, for the Addrs of expected guest NICs.
func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

const (
	opAdd    = hotplugtest.OpAddInterface
	opRemove = hotplugtest.OpRemoveInterface
	opList   = hotplugtest.OpListInterfaces
	opRoutes = hotplugtest.OpUpdateRoutes
)

func newNullLogger() (*logrus.Entry, *logtest.Hook) {
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	return logrus.NewEntry(logger), hook
}
