package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/internal/procwatch"
	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon"
)

// Observer receives everything a monitor reports for metrics. Its methods
// must not block.
type Observer interface {
	netmon.Observer
	hotplug.Observer
}

// Config configures a monitor.
type Config struct {
	// NetNSPath is the netns to watch (required), and NetNSFD, when >= 0
	// and not 0, an open descriptor of it to use instead of opening the
	// path (see netmon.Config).
	NetNSPath string
	NetNSFD   int
	// DockerdNetNS, DockerNetNSDir and ScanNetNS say where endpoint peers
	// may live (see netmon.Config).
	DockerdNetNS   string
	DockerNetNSDir string
	ScanNetNS      bool
	// Sandbox is the port to the VM (required).
	Sandbox hotplug.Sandbox
	// CallTimeout bounds each sandbox call (0: hotplug's default).
	CallTimeout time.Duration
	// ExitPID, when > 0, is a process whose exit ends the monitor (the
	// hypervisor in a shim, the container's init for the watch command).
	ExitPID int
	// Observer, when not nil, receives metrics.
	Observer Observer
	// Log carries the caller's fields; nil discards.
	Log *logrus.Entry
}

// Monitor is one assembled monitor. Start returns it subscribed and listed;
// Sync runs the first reconcile; Run starts the background loop; Stop ends
// everything.
type Monitor struct {
	cfg Config
	log *logrus.Entry
	mon *netmon.Monitor
	pw  *procwatch.Watch // nil without ExitPID

	ctx    context.Context // canceled by Stop or the process's exit
	cancel context.CancelFunc
	done   chan struct{} // closed when the loop has returned (or at Stop if it never ran)

	mu  sync.Mutex // guards rec (replaced after a panic) and err
	rec *hotplug.Reconciler
	err error

	lifeMu           sync.Mutex // guards started and stopped
	started, stopped bool
	stopOnce         sync.Once
	stopErr          error
}

// ErrProcessExited is Err's cause when ExitPID exited.
var ErrProcessExited = errors.New("the watched process exited")

// Start opens and subscribes to the netns, lists it, and builds the
// reconciler. It returns hotplug.ErrNoHotplug (unwrapped) when the sandbox
// cannot hot-plug NICs. ctx bounds Start only.
func Start(ctx context.Context, cfg Config) (m *Monitor, err error) {
	if cfg.Sandbox == nil {
		return nil, errors.New("monitor: a Sandbox is required")
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	ncfg := netmon.Config{NetNSPath: cfg.NetNSPath, NetNSFD: cfg.NetNSFD, DockerdNetNS: cfg.DockerdNetNS,
		DockerNetNSDir: cfg.DockerNetNSDir, ScanNetNS: cfg.ScanNetNS, Log: log}
	if cfg.Observer != nil { // never a typed nil in the interfaces
		ncfg.Observer = cfg.Observer
	}
	mon, err := netmon.New(ncfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if m == nil {
			mon.Close()
		}
	}()
	rctx, cancel := context.WithCancel(context.Background())
	m = &Monitor{cfg: cfg, log: log, mon: mon, ctx: rctx, cancel: cancel, done: make(chan struct{})}
	if m.rec, err = m.newReconciler(); err != nil {
		cancel()
		return nil, err
	}
	if err := mon.Start(ctx); err != nil {
		cancel()
		return nil, fmt.Errorf("watch netns %s: %w", cfg.NetNSPath, err)
	}
	if cfg.ExitPID > 0 {
		// procwatch's goroutine cancels the loop itself: no watcher of ours.
		if m.pw, err = procwatch.OpenFunc(cfg.ExitPID, m.exited); err != nil {
			log.WithError(err).WithField("pid", cfg.ExitPID).Warn("cannot watch the process; relying on Stop and the netns")
			m.pw = nil
		}
	}
	return m, nil
}

func (m *Monitor) newReconciler() (*hotplug.Reconciler, error) {
	hcfg := hotplug.Config{Sandbox: m.cfg.Sandbox, Source: m.mon, Log: m.log, CallTimeout: m.cfg.CallTimeout}
	if m.cfg.Observer != nil {
		hcfg.Observer = m.cfg.Observer
	}
	return hotplug.New(hcfg)
}

func (m *Monitor) exited() {
	m.setErr(fmt.Errorf("%w (pid %d)", ErrProcessExited, m.cfg.ExitPID))
	m.log.WithField("pid", m.cfg.ExitPID).Info("the watched process exited; stopping")
	m.cancel()
}

func (m *Monitor) setErr(err error) {
	m.mu.Lock()
	if m.err == nil {
		m.err = err
	}
	m.mu.Unlock()
}

func (m *Monitor) reconciler() *hotplug.Reconciler {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rec
}

// Sync runs the first reconcile until every candidate is attached or ctx
// ends (hotplug.Reconciler.Sync). Call it before Run, from one goroutine.
func (m *Monitor) Sync(ctx context.Context) (st hotplug.Status, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = m.panicked("first reconcile", p)
		}
	}()
	return m.reconciler().Sync(ctx)
}

// Run starts the background loop: the reconciler until Stop, the end of the
// netns watch, the process's exit or a dead sandbox. Once.
func (m *Monitor) Run() {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.started || m.stopped {
		return
	}
	m.started = true
	go m.loop()
}

func (m *Monitor) loop() {
	defer close(m.done)
	// Whatever ended the loop, the netns watch has no reader any more.
	defer m.mon.Close()
	for {
		restart, err := m.runRecovering()
		switch {
		case restart && m.ctx.Err() == nil:
			rec, nerr := m.newReconciler()
			if nerr != nil {
				m.setErr(nerr)
				m.log.WithError(nerr).Error("cannot restart the reconciler; monitoring stops")
				return
			}
			m.mu.Lock()
			m.rec = rec
			m.mu.Unlock()
			continue
		case err != nil:
			m.setErr(err)
			m.log.WithError(err).Error("monitoring stops")
		}
		if err := m.mon.Err(); err != nil {
			m.setErr(err)
			m.log.WithError(err).Warn("netns watch ended")
		}
		return
	}
}

// runRecovering runs the reconciler; restart reports a recovered panic.
func (m *Monitor) runRecovering() (restart bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			restart, err = true, m.panicked("reconciler", p)
		}
	}()
	return false, m.reconciler().Run(m.ctx)
}

func (m *Monitor) panicked(where string, p any) error {
	m.log.WithFields(logrus.Fields{"where": where, "panic": fmt.Sprint(p), "stack": string(debug.Stack())}).
		Error("kata-netmon panicked; recovered (the sandbox carries on)")
	if m.cfg.Observer != nil {
		m.cfg.Observer.Panicked(where)
	}
	return fmt.Errorf("kata-netmon panicked in the %s: %v", where, p)
}

// Stop ends the monitor and waits for the loop, but not past ctx: a hung
// sandbox call is abandoned (and logged). Safe before Run; idempotent.
func (m *Monitor) Stop(ctx context.Context) error {
	m.stopOnce.Do(func() {
		m.cancel()
		m.lifeMu.Lock()
		m.stopped = true
		started := m.started
		m.lifeMu.Unlock()
		if !started {
			m.mon.Close()
			close(m.done)
		} else {
			select {
			case <-m.done:
			case <-ctx.Done():
				m.stopErr = fmt.Errorf("kata-netmon: stop: the loop is still busy: %w", context.Cause(ctx))
				m.log.WithError(m.stopErr).Warn("abandoning the monitor loop")
				// The netns watch holds no sandbox call: release it now.
				m.mon.Close()
			}
		}
		if m.pw != nil {
			m.pw.Close()
		}
	})
	return m.stopErr
}

// Done is closed when the loop has returned (after Stop, or by itself: see
// Err).
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Err says why the loop ended by itself (the process exited, the netns
// watch ended, the sandbox is dead); nil while it runs and after Stop.
func (m *Monitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// NICs returns what the guest has now (for logs and tests).
func (m *Monitor) NICs() []matcher.GuestNIC { return m.reconciler().NICs() }
