// Package logrec records what a monitor logs, for e2e tests that check its
// log lines and wait for them: a debug-level logrus logger whose entries are
// kept, searched by level and message, and waited for on a deadline (every
// entry wakes the waiters; nothing polls).
//
// With KNM_TEST_LOG set every entry is also written to the test's log
// (netmontest.LogWriter); the levels passed to New go there always.
package logrec

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// Recorder keeps every entry logged through Log. Safe for concurrent use.
type Recorder struct {
	// Log is the entry to hand to the monitor.
	Log *logrus.Entry

	hook *logtest.Hook
	mu   sync.Mutex
	// changed is closed and replaced on every entry; nil until someone waits.
	changed chan struct{}
}

// New returns a recorder logging at debug level. Entries at the echo levels
// also go to t.Log as they come, one line each, without the fields every
// line has (component, sandbox, netns).
func New(t testing.TB, echo ...logrus.Level) *Recorder {
	l := logrus.New()
	l.SetLevel(logrus.DebugLevel)
	l.SetOutput(netmontest.LogWriter(t))
	r := &Recorder{Log: logrus.NewEntry(l), hook: logtest.NewLocal(l)}
	l.AddHook(wake{r})
	if len(echo) > 0 {
		l.AddHook(&echoHook{t: t, levels: echo})
	}
	return r
}

// Entries returns the entries at level or more severe whose message
// contains substr, oldest first.
func (r *Recorder) Entries(level logrus.Level, substr string) []*logrus.Entry {
	var out []*logrus.Entry
	for _, e := range r.hook.AllEntries() {
		if e.Level <= level && strings.Contains(e.Message, substr) {
			out = append(out, e)
		}
	}
	return out
}

// Find returns the first of Entries(level, substr), or nil.
func (r *Recorder) Find(level logrus.Level, substr string) *logrus.Entry {
	if es := r.Entries(level, substr); len(es) > 0 {
		return es[0]
	}
	return nil
}

// Wait waits until at least n entries match (level or more severe, message
// containing substr) and returns them, or fails after timeout saying what
// was logged at warning level and above.
func (r *Recorder) Wait(timeout time.Duration, level logrus.Level, substr string, n int) ([]*logrus.Entry, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		ch := r.changed
		r.mu.Unlock()
		if es := r.Entries(level, substr); len(es) >= n {
			return es, nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return nil, fmt.Errorf("no %d %s log line(s) containing %q within %v; logged:%s", n, level, substr, timeout, r.Dump(logrus.WarnLevel))
		}
	}
}

// Dump renders the entries at level or more severe, one per line.
func (r *Recorder) Dump(level logrus.Level) string {
	var b strings.Builder
	for _, e := range r.hook.AllEntries() {
		if e.Level <= level {
			fmt.Fprintf(&b, "\n  %s %s%s", strings.ToUpper(e.Level.String()), e.Message, Fields(e.Data))
		}
	}
	return b.String()
}

// Reset forgets the entries so far.
func (r *Recorder) Reset() { r.hook.Reset() }

// NoErrors fails t for every entry at error level or above.
func (r *Recorder) NoErrors(t testing.TB) {
	t.Helper()
	for _, e := range r.Entries(logrus.ErrorLevel, "") {
		t.Errorf("monitor logged an error: %s%s", e.Message, Fields(e.Data))
	}
}

// Fields renders logrus fields as " k=v", sorted, leaving out the ones
// every line of a monitor has (component, sandbox, netns).
func Fields(d logrus.Fields) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		switch k {
		case "component", "sandbox", "netns":
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, d[k])
	}
	return b.String()
}

// wake wakes the recorder's waiters on every entry.
type wake struct{ r *Recorder }

func (w wake) Levels() []logrus.Level { return logrus.AllLevels }

func (w wake) Fire(*logrus.Entry) error {
	w.r.mu.Lock()
	if w.r.changed != nil {
		close(w.r.changed)
		w.r.changed = nil
	}
	w.r.mu.Unlock()
	return nil
}

// echoHook copies entries of some levels to t.Log.
type echoHook struct {
	t      testing.TB
	levels []logrus.Level
}

func (h *echoHook) Levels() []logrus.Level { return h.levels }

func (h *echoHook) Fire(e *logrus.Entry) error {
	h.t.Logf("monitor %s: %s%s", strings.ToUpper(e.Level.String()), e.Message, Fields(e.Data))
	return nil
}
