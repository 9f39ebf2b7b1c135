//go:build linux

package guest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Sandboxes wrapped around the port for one scenario each: faults the
// monitor has to live with, injected between it and katasim.

// errGate is the error a gatedRemove returns.
var errGate = errors.New("test gate: this RemoveInterface is held back")

// gatedRemove fails every RemoveInterface, without asking the sandbox,
// until open is called: a detach that keeps failing while the test
// rearranges the netns. failed is closed at the first failure.
type gatedRemove struct {
	hotplug.Sandbox
	mu       sync.Mutex
	opened   bool
	failed   chan struct{}
	failOnce sync.Once
}

func newGatedRemove(sb hotplug.Sandbox) *gatedRemove {
	return &gatedRemove{Sandbox: sb, failed: make(chan struct{})}
}

func (g *gatedRemove) open() {
	g.mu.Lock()
	g.opened = true
	g.mu.Unlock()
}

func (g *gatedRemove) RemoveInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	g.mu.Lock()
	opened := g.opened
	g.mu.Unlock()
	if !opened {
		g.failOnce.Do(func() { close(g.failed) })
		return nil, fmt.Errorf("detach %s: %w", inf.HwAddr, errGate)
	}
	return g.Sandbox.RemoveInterface(ctx, inf)
}

// capsOverride changes what the sandbox says it can do (a monitor
// configured without one of the hazards).
type capsOverride struct {
	hotplug.Sandbox
	change func(*hotplug.Capabilities)
}

func (c capsOverride) Capabilities() hotplug.Capabilities {
	caps := c.Sandbox.Capabilities()
	c.change(&caps)
	return caps
}

// mtuZeroOnce sends the first AddInterface with MTU 0: Kata takes it, the
// guest's kernel refuses it in the agent's last request, and Kata rolls the
// hot-plug back. A real agent failure after a real hot-plug.
type mtuZeroOnce struct {
	hotplug.Sandbox
	once sync.Once
}

func (m *mtuZeroOnce) AddInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	m.once.Do(func() {
		inf = inf.Clone()
		inf.Mtu = 0
	})
	return m.Sandbox.AddInterface(ctx, inf)
}

// asError is the error a log entry carries, if any.
func asError(e *logrus.Entry) error {
	err, _ := e.Data[logrus.ErrorKey].(error)
	return err
}
