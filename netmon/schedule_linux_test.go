package netmon

import (
	"slices"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	var got []time.Duration
	for n := 1; n <= 12; n++ {
		got = append(got, backoff(n, minResyncBackoff, maxResyncBackoff))
	}
	ms := time.Millisecond
	want := []time.Duration{20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, 1280 * ms, 2560 * ms,
		5 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("backoff = %v\nwant      %v", got, want)
	}
	if d := backoff(1<<20, minResyncBackoff, maxResyncBackoff); d != maxResyncBackoff {
		t.Errorf("backoff after a million failures = %v, want the cap", d)
	}
}

// TestRechecks: the schedule of peer re-reads: first after 5 ms, then
// doubling to 250 ms, and over after 2 s; the earliest due decides the
// loop's wakeup, and nothing is due when nothing is scheduled.
func TestRechecks(t *testing.T) {
	r := newRechecks(defaultRecheck)
	if !r.next().IsZero() || !r.empty() {
		t.Fatal("empty schedule has a deadline")
	}
	t0 := time.Unix(1000, 0)
	r.add(7, t0)
	r.addAfter(8, t0, 500*time.Millisecond)
	r.add(7, t0.Add(time.Hour)) // already scheduled: unchanged
	if got := r.next(); !got.Equal(t0.Add(5 * time.Millisecond)) {
		t.Fatalf("next = %v, want t0+5ms", got.Sub(t0))
	}
	var reads []time.Duration
	now := t0
	for r.has(7) {
		now = r.next()
		for _, idx := range r.take(now) {
			if idx == 7 {
				reads = append(reads, now.Sub(t0))
				if r.expired(7, now) {
					r.remove(7)
				}
			}
		}
	}
	ms := time.Millisecond
	want := []time.Duration{5 * ms, 15 * ms, 35 * ms, 75 * ms, 155 * ms, 315 * ms, 565 * ms, 815 * ms,
		1065 * ms, 1315 * ms, 1565 * ms, 1815 * ms}
	if !slices.Equal(reads, want) {
		t.Errorf("reads at %v\nwant       %v", reads, want)
	}
	if !r.has(8) {
		t.Error("the other entry went with the first")
	}
}
