package netmon

import (
	"maps"
	"slices"
	"time"
)

// This file is bookkeeping only (delays, deadlines); what is retried and
// why is decided in the loop.

// backoff returns the delay before retry n (n >= 1): lo doubled n-1
// times, capped at hi.
func backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// recheckPolicy says how often and how long a link whose peer facts are
// not yet those of an endpoint is read again: first after it was found so,
// then at intervals doubling up to most, until window has passed.
type recheckPolicy struct {
	first, most, window time.Duration
}

// defaultRecheck: a peer enslaved to its bridge a moment after the sandbox
// end is configured is seen within a few milliseconds (reads 5, 15, 35,
// 75, ... ms after); one still on no bridge after 2 s is taken as final
// (the matcher then ignores it, and a first reconcile stops waiting for
// it). 12 reads in all.
var defaultRecheck = recheckPolicy{first: 5 * time.Millisecond, most: 250 * time.Millisecond, window: 2 * time.Second}

// rechecks is the schedule of the links being re-read, by ifindex.
type rechecks struct {
	policy recheckPolicy
	m      map[int]*recheck
}

type recheck struct {
	start, due time.Time
	n          int // reads so far
}

func newRechecks(p recheckPolicy) *rechecks {
	return &rechecks{policy: p, m: map[int]*recheck{}}
}

// add schedules idx, just read, for its first re-read, unless it is
// scheduled already.
func (r *rechecks) add(idx int, now time.Time) {
	if r.m[idx] == nil {
		r.restart(idx, now)
	}
}

// restart schedules idx, just read, anew: a new window.
func (r *rechecks) restart(idx int, now time.Time) {
	r.m[idx] = &recheck{start: now, due: now.Add(r.policy.first)}
}

// addAfter schedules idx for a first read after d, unless it is
// scheduled already.
func (r *rechecks) addAfter(idx int, now time.Time, d time.Duration) {
	if r.m[idx] == nil {
		r.m[idx] = &recheck{start: now, due: now.Add(d)}
	}
}

func (r *rechecks) remove(idx int) { delete(r.m, idx) }

func (r *rechecks) has(idx int) bool { return r.m[idx] != nil }

func (r *rechecks) empty() bool { return len(r.m) == 0 }

// next returns when the earliest read is due; zero when none is scheduled.
func (r *rechecks) next() time.Time {
	var t time.Time
	for _, c := range r.m {
		if t.IsZero() || c.due.Before(t) {
			t = c.due
		}
	}
	return t
}

// take returns the ifindexes due at now, in order, and schedules each one's
// next read.
func (r *rechecks) take(now time.Time) []int {
	var out []int
	for _, idx := range slices.Sorted(maps.Keys(r.m)) {
		c := r.m[idx]
		if c.due.After(now) {
			continue
		}
		c.n++
		c.due = now.Add(backoff(c.n+1, r.policy.first, r.policy.most))
		out = append(out, idx)
	}
	return out
}

// expired reports whether idx's window has passed: its next read would
// come after it.
func (r *rechecks) expired(idx int, now time.Time) bool {
	c := r.m[idx]
	return c != nil && c.due.Sub(c.start) > r.policy.window
}
