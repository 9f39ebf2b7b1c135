//go:build !linux

package netmon

import (
	"context"
	"errors"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// errUnsupported is what every Monitor operation returns off Linux.
var errUnsupported = errors.New("netmon: network namespaces are Linux-only")

// Monitor watches one network namespace. Off Linux it cannot be created.
type Monitor struct{}

// New fails off Linux.
func New(cfg Config) (*Monitor, error) { return nil, errUnsupported }

// Start fails off Linux.
func (m *Monitor) Start(ctx context.Context) error { return errUnsupported }

// view.Snapshot returns an empty view.
func (m *Monitor) Snapshot() *view.Snapshot { return &view.Snapshot{Links: map[int]*view.Link{}} }

// Changed never fires off Linux.
func (m *Monitor) Changed() <-chan struct{} { return nil }

// LinkByName fails off Linux.
func (m *Monitor) LinkByName(name string) (*view.Link, error) { return nil, errUnsupported }

// SetLinkUp fails off Linux.
func (m *Monitor) SetLinkUp(int) error { return errUnsupported }

// Done is closed off Linux: there is nothing to watch.
func (m *Monitor) Done() <-chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

// Err reports that netmon is unsupported.
func (m *Monitor) Err() error { return errUnsupported }

// Close does nothing off Linux.
func (m *Monitor) Close() error { return nil }
