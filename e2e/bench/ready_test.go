//go:build linux

package bench

import (
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// readyTracker: when each endpoint became ready, as the tap saw it.

// readyTracker records, per ifindex, when the tap saw the link RUNNING and
// when it saw its first IPv4 address: the later of the two is the event
// that made the endpoint ready (the matcher also wants up, a tied peer and
// a MAC, which Docker sets before).
type readyTracker struct {
	mu      sync.Mutex
	running map[int]time.Time
	addr    map[int]time.Time
	ch      chan struct{}
}

func newReadyTracker() *readyTracker {
	return &readyTracker{running: map[int]time.Time{}, addr: map[int]time.Time{}, ch: make(chan struct{})}
}

func (r *readyTracker) observe(at time.Time, m syscall.NetlinkMessage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch m.Header.Type {
	case unix.RTM_NEWLINK:
		if idx, flags, ok := ifinfo(m); ok && flags&unix.IFF_RUNNING != 0 && r.running[idx].IsZero() {
			r.running[idx] = at
		}
	case unix.RTM_NEWADDR:
		if fam, idx, ok := ifaddr(m); ok && fam == unix.AF_INET && r.addr[idx].IsZero() {
			r.addr[idx] = at
		}
	default:
		return
	}
	close(r.ch)
	r.ch = make(chan struct{})
}

// wait waits until the tracker has what need asks for and returns it.
func (r *readyTracker) wait(b *testing.B, what string, need func(r *readyTracker) (time.Time, bool)) time.Time {
	b.Helper()
	deadline := time.NewTimer(benchWait)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		t, ok := need(r)
		ch := r.ch
		r.mu.Unlock()
		if ok {
			return t
		}
		select {
		case <-ch:
		case <-deadline.C:
			b.Fatalf("tap: timed out waiting for %s", what)
		}
	}
}

func (r *readyTracker) readyAt(b *testing.B, idx int) time.Time {
	return r.wait(b, fmt.Sprintf("ifindex %d running with an address", idx), func(r *readyTracker) (time.Time, bool) {
		run, addr := r.running[idx], r.addr[idx]
		if run.IsZero() || addr.IsZero() {
			return time.Time{}, false
		}
		if addr.After(run) {
			return addr, true
		}
		return run, true
	})
}
