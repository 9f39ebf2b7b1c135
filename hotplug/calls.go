package hotplug

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/sirupsen/logrus"
)

// ErrCallAbandoned is returned when a sandbox call did not return by its
// deadline; the call goroutine is left to finish on its own.
var ErrCallAbandoned = errors.New("sandbox call abandoned after its deadline")

// ErrSandboxPanicked is wrapped by the error of a sandbox call that
// panicked; the panic was recovered and the call counts as failed.
var ErrSandboxPanicked = errors.New("the sandbox panicked")

// errBusy: an abandoned call is still running, so no new call is made.
var errBusy = errors.New("an abandoned sandbox call is still running")

// caller makes sandbox calls one at a time, each bounded by a deadline. A
// call that does not return in time (or whose caller's context ends first)
// is abandoned: it keeps running in its goroutine, and until it returns every
// further call answers errBusy, so the sandbox never sees two of our calls at
// once. Owned by the reconciling goroutine.
type caller struct {
	timeout time.Duration
	log     *logrus.Entry
	obs     Observer // nil: no reports
	now     func() time.Time
	hung    <-chan struct{} // closed when the abandoned call returns; nil when none
}

// hungDone is closed when the abandoned call returns; nil (never ready in a
// select) when no call is abandoned.
func (c *caller) hungDone() <-chan struct{} { return c.hung }

// reap forgets an abandoned call that has returned since.
func (c *caller) reap() {
	if c.hung == nil {
		return
	}
	select {
	case <-c.hung:
		c.hung = nil
		c.log.Info("the abandoned sandbox call has returned; calls resume")
	default:
	}
}

// do runs fn as the sandbox operation op. It returns errBusy (wrapped)
// without calling when an abandoned call still runs, the context's error
// when ctx has ended, ErrCallAbandoned (wrapped) when fn did not return in
// time, and otherwise fn's error wrapped with op.
func (c *caller) do(ctx context.Context, op string, fn func(context.Context) error) error {
	if c.reap(); c.hung != nil {
		return fmt.Errorf("%s: %w", op, errBusy)
	}
	if err := ctx.Err(); err != nil {
		// Stopping: start nothing that would only be abandoned.
		return fmt.Errorf("%s: %w", op, err)
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	done := make(chan struct{})
	var err error // written by the call goroutine before close(done)
	start := c.now()
	go func() {
		defer close(done)
		// A panic in the sandbox (Kata's code runs here) must not take
		// the shim down: it fails this call instead.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%w: %v", ErrSandboxPanicked, p)
				c.log.WithFields(logrus.Fields{"op": op, "panic": fmt.Sprint(p), "stack": string(debug.Stack())}).
					Error("the sandbox panicked during a call; recovered, the call failed")
				if c.obs != nil {
					c.obs.Panicked("sandbox call")
				}
			}
		}()
		err = fn(cctx)
	}()
	select {
	case <-done:
	case <-cctx.Done():
		select {
		case <-done: // returned at the same moment: not abandoned
		default:
			c.hung = done
			c.abandoned(ctx, op, start)
			return fmt.Errorf("%s: %w", op, ErrCallAbandoned)
		}
	}
	c.report(op, c.now().Sub(start), err)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// abandoned logs and reports an abandoned call. The caller's context may
// have ended first (Stop, or the deadline of Start's first reconcile): say
// which, and report it as canceled or timeout, or the log and the metric
// would blame a CallTimeout that never passed.
func (c *caller) abandoned(ctx context.Context, op string, start time.Time) {
	took := c.now().Sub(start)
	log := c.log.WithFields(logrus.Fields{"op": op, "took": took.Round(time.Millisecond)})
	reported := ErrCallAbandoned
	switch cerr := ctx.Err(); {
	case errors.Is(cerr, context.Canceled):
		reported = cerr
		log.Warn("sandbox call still running when the monitor stopped; abandoned")
	case cerr != nil:
		reported = cerr
		log.Warn("sandbox call still running when its caller's deadline passed (the first reconcile's ReadyTimeout); abandoned, no further call until it returns")
	default:
		log.WithField("timeout", c.timeout).Error("sandbox call did not return in time; abandoned, no further call until it returns")
	}
	c.report(op, took, reported)
}

func (c *caller) report(op string, d time.Duration, err error) {
	if c.obs != nil {
		c.obs.SandboxCall(op, d, err)
	}
}
