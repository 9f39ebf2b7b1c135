package hotplug

import "time"

// retry tracks one failing operation: how often it failed in a row and when
// it may be tried again.
type retry struct {
	attempts int
	next     time.Time
}

// scheduler spaces out retries of failed operations with doubling backoff
// between min and max, and remembers, per reconcile pass, the earliest retry
// the pass wanted but could not make yet. Owned by the reconciling goroutine.
type scheduler struct {
	min, max time.Duration
	now      func() time.Time // replaced in tests of the arithmetic
	wake     time.Time        // earliest retry this pass skipped or scheduled; zero when none
}

// beginPass forgets the previous pass's wake-up time. Entries nobody asks
// about in this pass (a link no longer ready, an endpoint no longer gone) do
// not count: a past time there would wake Run every millisecond for nothing.
func (s *scheduler) beginPass() { s.wake = time.Time{} }

// next is when the pass wants to run again for a retry; zero for never.
// Calls skipped because an abandoned call still runs do not count: its
// return wakes Run.
func (s *scheduler) next() time.Time { return s.wake }

func (s *scheduler) note(t time.Time) {
	if s.wake.IsZero() || t.Before(s.wake) {
		s.wake = t
	}
}

// due reports whether the operation f tracks may be tried now; when not, its
// time is noted for next. Ask only for operations wanted now.
func (s *scheduler) due(f *retry) bool {
	if f == nil || !s.now().Before(f.next) {
		return true
	}
	s.note(f.next)
	return false
}

// fail records a failed attempt of f (nil: the first) and schedules the next.
func (s *scheduler) fail(f *retry) *retry {
	if f == nil {
		f = &retry{}
	}
	f.attempts++
	d := s.min << min(f.attempts-1, 20)
	if d > s.max || d <= 0 {
		d = s.max
	}
	f.next = s.now().Add(d)
	s.note(f.next)
	return f
}
