package kata

// No Kata import: the guard that keeps the monitor and Kata's own
// RescanNetwork goroutine from attaching the same link.
//
// What Kata 4.1 does (pkg/containerd-shim-v2/start.go, startContainer; and
// virtcontainers/sandbox.go, Sandbox.RescanNetwork): right after
// sandbox.Start, the shim runs RescanNetwork in a goroutine. It returns at
// once if Kata already has an endpoint (or disable_new_netns is set);
// otherwise it scans the netns every 50 ms for up to 5 s, hot-plugs every
// addressed link it has not attached yet (LinuxNetwork.scanEndpointsInNs,
// which skips names already in its endpoint list), tells the agent, and
// returns after the first scan that found something. It takes no lock on the
// endpoint list, and our AddInterface appends to that list only after the
// hotplug: a monitor attaching during that window plugs the same link a
// second time (a sandbox started with no network that gets `docker network
// connect` within 5 s).
//
// The wrapper therefore:
//  1. before passing Start on, holds the guard: no new AddInterface or
//     RemoveInterface from the monitor, and waits for those in flight (so
//     Kata's endpoint list is what it will be when RescanNetwork looks);
//  2. after Start, opens the guard at once when RescanNetwork will return at
//     once (the guest already has a NIC, i.e. Kata has an endpoint); else
//     keeps mutating calls waiting until RescanNetwork can no longer begin
//     an attach (Start + 5 s + settle), or until the guest shows a NIC the
//     monitor did not add (RescanNetwork configures the guest only after
//     its hotplugs, and returns right after);
//  3. for a while after that window, an AddInterface first adopts the NIC if
//     the guest has its MAC, and if Kata's tc redirect (or macvtap) is
//     already on the link, waits for the guest to show it and adopts it:
//     that is a RescanNetwork attach still running.

import (
	"context"
	"sync"
	"time"
)

// Timing of Kata 4.1's RescanNetwork (virtcontainers/sandbox.go: maxWait
// 5 s, pollInterval 50 ms), and our margins.
const (
	kataRescanMaxWait = 5 * time.Second
	// rescanSettle covers the last poll after the deadline (the select may
	// take the ticker once more) and the few ms between its scan and the
	// tc redirect it installs before the hotplug.
	rescanSettle = time.Second
	// rescanStraggler is how long after the window an attach that
	// RescanNetwork began before the window closed may still be running
	// (QEMU hotplug plus the agent).
	rescanStraggler = 30 * time.Second
	guardPoll       = 100 * time.Millisecond
)

type guardState int

const (
	guardOpen   guardState = iota
	guardHeld              // Start is being passed to Kata
	guardWindow            // RescanNetwork may begin an attach until windowEnd
)

// rescanGuard serialises the adapter's mutating calls against Kata's
// RescanNetwork. All fields are guarded by mu; wake is closed (and
// replaced) on every change, so waiters re-check.
type rescanGuard struct {
	maxWait, settle, straggler, poll time.Duration
	now                              func() time.Time

	mu           sync.Mutex
	state        guardState
	inflight     int
	windowEnd    time.Time // end of the window (state guardWindow)
	stragglerEnd time.Time // until then, check for RescanNetwork's attaches
	wake         chan struct{}
}

func newRescanGuard() *rescanGuard {
	return &rescanGuard{
		maxWait: kataRescanMaxWait, settle: rescanSettle, straggler: rescanStraggler, poll: guardPoll,
		now: time.Now, wake: make(chan struct{}),
	}
}

// broadcastLocked wakes every waiter. Call with mu held.
func (g *rescanGuard) broadcastLocked() {
	close(g.wake)
	g.wake = make(chan struct{})
}

// acquire waits until a mutating call may go to Kata and counts it in
// flight; the caller must call release. rescanDone, when not nil, is asked
// every poll interval during the window whether RescanNetwork has finished
// (true ends the window early). afterRescan tells the caller to check for
// RescanNetwork's attaches first.
func (g *rescanGuard) acquire(ctx context.Context, rescanDone func(context.Context) bool) (afterRescan bool, release func(), err error) {
	for {
		g.mu.Lock()
		now := g.now()
		if g.state == guardWindow && !now.Before(g.windowEnd) {
			g.state = guardOpen
			g.broadcastLocked()
		}
		switch g.state {
		case guardOpen:
			g.inflight++
			after := !g.stragglerEnd.IsZero() && now.Before(g.stragglerEnd)
			g.mu.Unlock()
			var once sync.Once
			return after, func() { once.Do(g.release) }, nil
		case guardHeld:
			wake := g.wake
			g.mu.Unlock()
			select {
			case <-ctx.Done():
				return false, nil, context.Cause(ctx)
			case <-wake:
			}
		case guardWindow:
			wake, left := g.wake, g.windowEnd.Sub(now)
			g.mu.Unlock()
			t := time.NewTimer(min(left, g.poll))
			select {
			case <-ctx.Done():
				t.Stop()
				return false, nil, context.Cause(ctx)
			case <-wake:
				t.Stop()
			case <-t.C:
				if rescanDone != nil && rescanDone(ctx) {
					g.endWindow()
				}
			}
		}
	}
}

func (g *rescanGuard) release() {
	g.mu.Lock()
	g.inflight--
	g.broadcastLocked()
	g.mu.Unlock()
}

// hold stops new mutating calls and waits for those in flight. On error
// (ctx ended first) the guard stays held; the caller opens it as usual.
func (g *rescanGuard) hold(ctx context.Context) error {
	g.mu.Lock()
	g.state = guardHeld
	g.broadcastLocked()
	for g.inflight > 0 {
		wake := g.wake
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-wake:
		}
		g.mu.Lock()
	}
	g.mu.Unlock()
	return nil
}

// open lets mutating calls through now: RescanNetwork will not attach.
func (g *rescanGuard) open() {
	g.mu.Lock()
	g.state = guardOpen
	g.broadcastLocked()
	g.mu.Unlock()
}

// openAfterRescan starts the window: RescanNetwork was started by Kata's
// Start, which returned at started.
func (g *rescanGuard) openAfterRescan(started time.Time) {
	g.mu.Lock()
	g.state = guardWindow
	g.windowEnd = started.Add(g.maxWait + g.settle)
	g.stragglerEnd = g.windowEnd.Add(g.straggler)
	g.broadcastLocked()
	g.mu.Unlock()
}

// endWindow ends the window early: RescanNetwork has returned.
func (g *rescanGuard) endWindow() {
	g.mu.Lock()
	if g.state == guardWindow {
		g.state = guardOpen
		g.broadcastLocked()
	}
	g.mu.Unlock()
}
