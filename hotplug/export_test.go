package hotplug

import "time"

// SetNow replaces the reconciler's clock, for tests of backoff arithmetic.
// Call it before the reconciler runs.
func SetNow(r *Reconciler, now func() time.Time) {
	r.retry.now = now
	r.calls.now = now
}

// HungCall returns the channel closed when the abandoned call returns, or
// nil when none is outstanding. Read it only from the reconciling goroutine
// or after it has finished.
func HungCall(r *Reconciler) <-chan struct{} { return r.calls.hung }
