package hotplugtest

import (
	"fmt"
	"sync"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// FakeSource is a hotplug.Source for tests: a snapshot the test replaces
// (Set, Update), a capacity-1 Changed channel that coalesces signals like
// netmon's, a Done channel closed by Close, and a by-name lookup that reads
// the current snapshot unless LinkByNameFn overrides it (to model a view
// that lags the kernel).
//
// All methods are safe for concurrent use. Set LinkByNameFn only while no
// reconciler is running.
type FakeSource struct {
	LinkByNameFn func(name string) (*view.Link, error)

	changed   chan struct{} // capacity 1; sent to by Set, never closed
	done      chan struct{} // closed by Close
	closeOnce sync.Once

	mu    sync.Mutex // guards snap, reads and ups
	snap  *view.Snapshot
	reads int
	ups   int
}

var (
	_ hotplug.Source    = (*FakeSource)(nil)
	_ hotplug.LinkUpper = (*FakeSource)(nil)
)

// NewFakeSource returns a source whose first snapshot holds links (and no
// routes), at generation 1.
func NewFakeSource(links ...*view.Link) *FakeSource {
	s := &FakeSource{
		changed: make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	snap := Snapshot(links...)
	snap.Generation = 1
	s.snap = snap
	return s
}

// Snapshot implements hotplug.Source. Callers must not modify the result.
func (s *FakeSource) Snapshot() *view.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	return s.snap
}

// Reads returns how many times Snapshot was called: one per reconcile pass.
func (s *FakeSource) Reads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// Changed implements hotplug.Source.
func (s *FakeSource) Changed() <-chan struct{} { return s.changed }

// Done implements hotplug.Source.
func (s *FakeSource) Done() <-chan struct{} { return s.done }

// Close ends the watch: Done is closed. Idempotent.
func (s *FakeSource) Close() { s.closeOnce.Do(func() { close(s.done) }) }

// LinkByName implements hotplug.Source: LinkByNameFn when set, otherwise a
// copy of the current snapshot's link of that name (nil when none).
func (s *FakeSource) LinkByName(name string) (*view.Link, error) {
	if s.LinkByNameFn != nil {
		return s.LinkByNameFn(name)
	}
	s.mu.Lock()
	l := s.snap.LinkByName(name)
	s.mu.Unlock()
	if l == nil {
		return nil, nil
	}
	return l.Clone(), nil
}

// SetLinkUp implements hotplug.LinkUpper: it sets the flags of the link at
// index up in the view (as the kernel would then report) and counts.
func (s *FakeSource) SetLinkUp(index int) error {
	found := false
	s.Update(func(snap *view.Snapshot) {
		if l := snap.Links[index]; l != nil {
			l.RawFlags |= view.FlagUp | view.FlagRunning | view.FlagLowerUp
			found = true
		}
	})
	if !found {
		return fmt.Errorf("no link with ifindex %d", index)
	}
	s.mu.Lock()
	s.ups++
	s.mu.Unlock()
	return nil
}

// Ups returns how many times SetLinkUp succeeded.
func (s *FakeSource) Ups() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ups
}

// Set replaces the view with snap (which the source now owns), with the
// generation after the current one, and signals Changed.
func (s *FakeSource) Set(snap *view.Snapshot) {
	if snap.Links == nil {
		snap.Links = map[int]*view.Link{}
	}
	s.mu.Lock()
	snap.Generation = s.snap.Generation + 1
	s.snap = snap
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default: // a signal is pending already: coalesce
	}
}

// Update applies fn to a deep copy of the current view and Sets the result:
// snapshots handed out earlier stay untouched.
func (s *FakeSource) Update(fn func(*view.Snapshot)) {
	s.mu.Lock()
	c := s.snap.Clone()
	s.mu.Unlock()
	fn(c)
	s.Set(c)
}

// Snapshot builds a snapshot of links (keyed by their Index) and no routes.
func Snapshot(links ...*view.Link) *view.Snapshot {
	s := &view.Snapshot{Links: make(map[int]*view.Link, len(links))}
	for _, l := range links {
		s.Links[l.Index] = l
	}
	return s
}
