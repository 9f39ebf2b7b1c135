package netmon

import (
	"context"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// KillSocket closes the monitor's netlink socket behind the loop's back, as
// a socket failing mid-stream would. It reports whether there was one.
func KillSocket(m *Monitor) bool {
	m.sockMu.Lock()
	defer m.sockMu.Unlock()
	if m.sock == nil {
		return false
	}
	m.sock.close()
	return true
}

// FreshSnapshot lists the watched netns now with a second monitor of the
// same configuration (no observer), through the same code as Start.
func FreshSnapshot(m *Monitor) (*view.Snapshot, error) {
	cfg := m.cfg
	cfg.Observer = nil
	fresh, err := New(cfg)
	if err != nil {
		return nil, err
	}
	defer fresh.Close()
	if err := fresh.Start(context.Background()); err != nil {
		return nil, err
	}
	return fresh.Snapshot(), nil
}

// SetRecheck sets the schedule of peer re-reads; call it before Start.
func SetRecheck(m *Monitor, first, most, window time.Duration) {
	m.rechecks = newRechecks(recheckPolicy{first: first, most: most, window: window})
}

// SetBackoff sets the resync backoff; call it before Start.
func SetBackoff(m *Monitor, lo, hi time.Duration) {
	m.minBackoff, m.maxBackoff = lo, hi
}

// SetResyncHook makes every resync attempt call f first and fail with
// its error when it returns one; nil removes it. Call it before Start.
func SetResyncHook(f func() error) { testHookResync = f }

// SetApplyHook makes the loop call f with every event it applies, in
// order; nil removes it. f may panic: the loop recovers. Call it before
// Start.
func SetApplyHook(f func(typ uint16, link *view.Link, addrIndex, routeIndex int)) { testHookApply = f }
