//go:build !linux

package procwatch

import "errors"

// Watch is unavailable on this OS.
type Watch struct{}

// Open fails on this OS.
func Open(pid int) (*Watch, error) { return nil, errors.New("procwatch: pidfd needs Linux") }

// OpenFunc fails on this OS.
func OpenFunc(pid int, onExit func()) (*Watch, error) { return Open(pid) }

// Exited never closes.
func (w *Watch) Exited() <-chan struct{} { return nil }

// Close does nothing.
func (w *Watch) Close() error { return nil }
