package hotplugtest

import (
	"fmt"
	"slices"
	"time"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Calls returns a copy of the call log.
func (f *FakeSandbox) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// CallsOf returns the logged calls of one operation.
func (f *FakeSandbox) CallsOf(op string) []Call {
	var out []Call
	for _, c := range f.Calls() {
		if c.Op == op {
			out = append(out, c)
		}
	}
	return out
}

// Ops returns the logged operations in order, for compact assertions.
func (f *FakeSandbox) Ops() []string {
	var out []string
	for _, c := range f.Calls() {
		out = append(out, c.Op)
	}
	return out
}

// InFlight returns how many calls are running now.
func (f *FakeSandbox) InFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inFlight
}

// MaxInFlight returns the most calls ever running at once: more than 1
// means the caller did not serialise its calls.
func (f *FakeSandbox) MaxInFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxInFlight
}

// WaitCalls waits until at least n calls of op ("" for any) have been logged
// and returns them, or fails after timeout with what was logged.
func (f *FakeSandbox) WaitCalls(op string, n int, timeout time.Duration) ([]Call, error) {
	return f.WaitFor(timeout, func(calls []Call) bool {
		return len(filterOp(calls, op)) >= n
	}, fmt.Sprintf("%d %s call(s)", n, opName(op)))
}

// WaitFor waits until cond holds for the call log (it is checked on every
// call start and end, and on every change of the guest), or fails after
// timeout. what names the condition in the error.
func (f *FakeSandbox) WaitFor(timeout time.Duration, cond func([]Call) bool, what string) ([]Call, error) {
	calls, _, err := f.wait(timeout, func(calls []Call, _ []Event) bool { return cond(calls) })
	if err != nil {
		return calls, fmt.Errorf("fake sandbox: no %s within %v; calls: %v", what, timeout, summary(calls))
	}
	return calls, nil
}

// WaitEvents waits until cond holds for the guest's changes (Events), or
// fails after timeout with the events so far. what names the condition in
// the error.
func (f *FakeSandbox) WaitEvents(timeout time.Duration, cond func([]Event) bool, what string) ([]Event, error) {
	_, evs, err := f.wait(timeout, func(_ []Call, evs []Event) bool { return cond(evs) })
	if err != nil {
		return evs, fmt.Errorf("fake sandbox: no %s within %v; events: %v", what, timeout, evs)
	}
	return evs, nil
}

// wait re-checks cond on copies of the call and event logs after every
// change, until it holds or timeout passes (then the error is non-nil).
func (f *FakeSandbox) wait(timeout time.Duration, cond func([]Call, []Event) bool) ([]Call, []Event, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		calls, evs := slices.Clone(f.calls), slices.Clone(f.events)
		if f.changed == nil {
			f.changed = make(chan struct{})
		}
		ch := f.changed
		f.mu.Unlock()
		if cond(calls, evs) {
			return calls, evs, nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return calls, evs, fmt.Errorf("timed out")
		}
	}
}

func filterOp(calls []Call, op string) []Call {
	if op == "" {
		return calls
	}
	var out []Call
	for _, c := range calls {
		if c.Op == op {
			out = append(out, c)
		}
	}
	return out
}

func opName(op string) string {
	if op == "" {
		return "sandbox"
	}
	return op
}

func summary(calls []Call) []string {
	out := make([]string, 0, len(calls))
	for _, c := range calls {
		if m := c.MAC(); m != "" {
			out = append(out, c.Op+"("+m+")")
			continue
		}
		out = append(out, c.Op)
	}
	return out
}

func copyRoutes(routes []*hotplug.Route) []*hotplug.Route {
	if routes == nil {
		return nil
	}
	out := make([]*hotplug.Route, 0, len(routes))
	for _, r := range routes {
		if r == nil {
			out = append(out, nil)
			continue
		}
		c := *r
		out = append(out, &c)
	}
	return out
}
