package netmon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
)

// Monitor watches one network namespace through netlink.
//
// Goroutines: one, the loop (started by Start, ended by Close or by the
// end of the netns). It reads the one socket, applies, dumps, resolves
// peers and publishes; nothing else runs while the monitor is idle.
//
// Concurrency:
//   - lifeMu serialises Start and Close and guards started and closed.
//   - mu guards snap (the published, immutable view) and err.
//   - hmu guards wh against release: LinkByName reads it under RLock; the
//     loop reads it without the lock because release runs only after the
//     loop has ended (and Start sets it before starting the loop).
//   - sockMu guards sock and sockClosed: the loop replaces sock on a
//     resync, Close closes it to wake the loop, and the test hook closes
//     it behind the loop's back.
//   - st, res, gen, resyncs, rechecks, pending and the rate limiters belong
//     to Start until it starts the loop, then to the loop goroutine alone.
//
// Channels: closing is closed by Close (once); done is closed by finish
// (once), called when the loop returns, or by Close when the loop never
// ran; changed is never closed.
type Monitor struct {
	cfg     Config
	log     *logrus.Entry
	watched *nsfs.File // open from New to Close
	dockerd *nsfs.File

	changed chan struct{}
	closing chan struct{}
	done    chan struct{}

	closeOnce sync.Once
	doneOnce  sync.Once
	wg        sync.WaitGroup // the loop goroutine

	lifeMu  sync.Mutex
	started bool
	closed  bool

	mu   sync.Mutex
	snap *view.Snapshot
	err  error

	hmu sync.RWMutex
	wh  *netlink.Handle // sockets in the watched netns: GETNSID, LinkByIndex, LinkByName, SetLinkUp

	sockMu     sync.Mutex
	sock       *nlSocket
	sockClosed bool // set by Close: no new socket may be installed

	st       *state
	res      *resolver
	gen      uint64
	resyncs  uint64
	rechecks *rechecks // links whose peer facts may still settle
	// pending holds the events read while a dump ran, applied after it;
	// lost, the kinds of those that could not be decoded; resyncDue, why
	// a resync is due (an undecodable link message read during a dump).
	pending   []message
	lost      lostKinds
	resyncDue error
	// Rate limits of the warnings that can repeat.
	resyncWarn, decodeWarn limiter
	// panics counts consecutive panics of the loop (reset by a publish):
	// a panic that repeats at once is retried with backoff.
	panics int
	// Delays (fields, so tests can shorten them): resync retries back off
	// from minBackoff to maxBackoff.
	minBackoff, maxBackoff time.Duration
}

// New opens and checks the netns paths; it subscribes to nothing (Start
// does). Errors say which path and why: a missing path (os.ErrNotExist), no
// permission (os.ErrPermission), or a path that is not a network namespace
// (ErrNotNetNS). Close must be called to release the open netns.
func New(cfg Config) (*Monitor, error) {
	if cfg.NetNSPath == "" {
		return nil, errors.New("netmon: Config.NetNSPath is required")
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	log = log.WithField("netns", cfg.NetNSPath)

	var watched *nsfs.File
	var err error
	if cfg.NetNSFD > 0 {
		watched, err = nsfs.Dup(cfg.NetNSFD, cfg.NetNSPath)
	} else {
		watched, err = nsfs.Open(cfg.NetNSPath)
	}
	if err != nil {
		return nil, fmt.Errorf("netmon: watched netns: %w", err)
	}
	var dockerd *nsfs.File
	if cfg.DockerdNetNS != "" {
		dockerd, err = nsfs.Open(cfg.DockerdNetNS)
	} else {
		// The caller's own netns: the thread's, which is the process's
		// unless the caller locked itself into another one.
		dockerd, err = nsfs.Self()
	}
	if err != nil {
		watched.Close()
		return nil, fmt.Errorf("netmon: dockerd netns: %w", err)
	}
	m := &Monitor{
		cfg:     cfg,
		log:     log,
		watched: watched,
		dockerd: dockerd,
		changed: make(chan struct{}, 1),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		snap:    &view.Snapshot{Links: map[int]*view.Link{}},
		st:      newState(),
		res:     newResolver(log, watched, dockerd, cfg.DockerNetNSDir, cfg.ScanNetNS),

		rechecks:   newRechecks(defaultRecheck),
		resyncWarn: limiter{every: warnEvery},
		decodeWarn: limiter{every: warnEvery},
		minBackoff: minResyncBackoff,
		maxBackoff: maxResyncBackoff,
	}
	return m, nil
}

// Start opens one netlink socket in the watched netns, joined to link,
// address (IPv4, IPv6) and route (IPv4, IPv6) events, then lists
// everything through it, so no change falls in between; it returns once
// that first view is published (view.Snapshot is complete) and the loop
// runs. ctx bounds Start only: the monitor runs until Close, or until the
// netns can no longer be watched (Done, Err). A failed Start leaves the
// monitor unstarted: Start may be called again.
func (m *Monitor) Start(ctx context.Context) (err error) {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if m.started {
		return errors.New("netmon: already started")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = m.panicked("start", p)
		}
	}()
	if _, err := m.handle(); err != nil {
		return err
	}
	sock, err := openSocket(m.watched, m.cfg.ReceiveBufferSize)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		sock.close()
		return err
	}
	st, err := m.list(sock)
	if err != nil {
		sock.close()
		return err
	}
	if !m.setSock(sock) {
		return ErrClosed
	}
	m.st = st
	if err := m.settle(); err != nil {
		m.setSock(nil)
		return err
	}
	if m.gen == 0 {
		m.publish() // an empty netns changes nothing, but the view is complete
	}
	m.started = true
	m.log.WithField("links", len(st.links)).Debug("watching")
	m.wg.Add(1)
	go m.run()
	return nil
}

// handle returns the watched-netns handle, opening it on first use.
func (m *Monitor) handle() (*netlink.Handle, error) {
	m.hmu.RLock()
	h := m.wh
	m.hmu.RUnlock()
	if h != nil {
		return h, nil
	}
	m.hmu.Lock()
	defer m.hmu.Unlock()
	if m.wh != nil {
		return m.wh, nil
	}
	select {
	case <-m.closing:
		return nil, ErrClosed
	default:
	}
	h, err := newHandleAt(m.watched)
	if err != nil {
		return nil, err
	}
	m.wh = h
	return h, nil
}

// view.Snapshot returns a deep copy of the current view; the caller may keep
// and modify it. Before Start it is empty (Generation 0).
func (m *Monitor) Snapshot() *view.Snapshot {
	m.mu.Lock()
	s := m.snap
	m.mu.Unlock()
	return s.Clone() // the published snapshot is immutable: copy outside the lock
}

// Changed returns a channel with room for one notification: a send happens
// whenever the view changed, and notifications coalesce, so the receiver
// must re-read view.Snapshot. Meant for one consumer. Never closed (see Done).
func (m *Monitor) Changed() <-chan struct{} { return m.changed }

// LinkByName asks the kernel now (not the view) which link of the watched
// netns carries name, and returns its Index, Name, Kind, MAC, MTU and
// RawFlags (no addresses, no peer facts); nil and no error when no link
// has that name. Kata looks links up by name, and names are reused
// quickly, so callers check index and MAC right around each hotplug call.
//
// When the name is still on the link the view has under it (the common
// case), the kernel is asked through ioctls it answers without rtnl_lock
// (see ioctlLink): an RTM_GETLINK queues behind whoever holds that lock, a
// busy dockerd for milliseconds at a time, and this call sits between an
// endpoint's readiness and its AddInterface. Otherwise it is an
// RTM_GETLINK by name. RawFlags then holds only the low 16 bits of the
// link's flags (IFF_UP, IFF_RUNNING, ...; not IFF_LOWER_UP).
func (m *Monitor) LinkByName(name string) (*view.Link, error) {
	if l := m.linkByNameFast(name); l != nil {
		return l, nil
	}
	if _, err := m.handle(); err != nil {
		return nil, err
	}
	m.hmu.RLock()
	defer m.hmu.RUnlock()
	if m.wh == nil {
		return nil, ErrClosed
	}
	l, err := m.wh.LinkByName(name)
	if err != nil {
		if isLinkNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read link %q in netns %q: %w", name, m.cfg.NetNSPath, err)
	}
	return linkFromNetlink(l), nil
}

// linkByNameFast answers LinkByName through ioctls when the published
// view's link of that name still carries it; nil when it cannot tell.
func (m *Monitor) linkByNameFast(name string) *view.Link {
	m.mu.Lock()
	known := m.snap.LinkByName(name)
	var index int
	var kind string
	if known != nil {
		index, kind = known.Index, known.Kind
	}
	m.mu.Unlock()
	sock := m.socket()
	if known == nil || sock == nil {
		return nil
	}
	l, err := sock.ioctlLink(index, name)
	if err != nil || l == nil {
		return nil
	}
	l.Kind = kind // an ifindex never changes kind
	return l
}

// SetLinkUp sets the link with ifindex index of the watched netns up. It
// is the one change netmon makes to the netns: the reconciler's repair of
// a link Kata 4.1 switched off (hotplug.LinkUpper).
func (m *Monitor) SetLinkUp(index int) error {
	if _, err := m.handle(); err != nil {
		return err
	}
	m.hmu.RLock()
	defer m.hmu.RUnlock()
	if m.wh == nil {
		return ErrClosed
	}
	l, err := m.wh.LinkByIndex(index)
	if err != nil {
		return fmt.Errorf("read ifindex %d in netns %q: %w", index, m.cfg.NetNSPath, err)
	}
	if err := m.wh.LinkSetUp(l); err != nil {
		return fmt.Errorf("set ifindex %d up in netns %q: %w", index, m.cfg.NetNSPath, err)
	}
	return nil
}

// Done is closed when the monitor has stopped: after Close, or when the
// watched netns could no longer be watched (Err says why).
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Err says why the loop ended; nil while it runs and after Close.
func (m *Monitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Close stops the loop, closes every socket, waits for the loop and
// releases the netns. Idempotent; safe before Start and concurrently with
// anything.
func (m *Monitor) Close() error {
	m.closeOnce.Do(func() {
		close(m.closing)
		// Wake the loop: its read fails once the socket is closed.
		m.sockMu.Lock()
		m.sockClosed = true
		if m.sock != nil {
			m.sock.close()
		}
		m.sockMu.Unlock()
		m.lifeMu.Lock() // waits for a Start in progress
		m.closed = true
		started := m.started
		m.lifeMu.Unlock()
		if !started {
			m.finish(nil)
		}
		m.wg.Wait()
		m.release()
	})
	<-m.done
	return nil
}

// finish records why the loop ended and closes done.
func (m *Monitor) finish(err error) {
	m.doneOnce.Do(func() {
		m.mu.Lock()
		m.err = err
		m.mu.Unlock()
		close(m.done)
	})
}

// release frees what outlives the loop. Runs once, after the loop ended.
func (m *Monitor) release() {
	m.setSock(nil)
	m.res.close()
	m.hmu.Lock()
	if m.wh != nil {
		m.wh.Close()
		m.wh = nil
	}
	m.hmu.Unlock()
	m.watched.Close()
	m.dockerd.Close()
}

// setSock installs sock as the loop's socket (nil: none) and closes the
// one it replaces. It refuses (closing sock) once Close has begun.
func (m *Monitor) setSock(sock *nlSocket) bool {
	m.sockMu.Lock()
	defer m.sockMu.Unlock()
	if m.sock != nil && m.sock != sock {
		m.sock.close()
	}
	if m.sockClosed && sock != nil {
		sock.close()
		m.sock = nil
		return false
	}
	m.sock = sock
	return true
}

// socket returns the loop's socket.
func (m *Monitor) socket() *nlSocket {
	m.sockMu.Lock()
	defer m.sockMu.Unlock()
	return m.sock
}

// publish makes the working state the published view and notifies.
func (m *Monitor) publish() {
	m.gen++
	snap := m.st.snapshot()
	snap.Generation, snap.Resyncs = m.gen, m.resyncs
	m.st.changed = false
	m.mu.Lock()
	m.snap = snap
	m.mu.Unlock()
	m.panics = 0
	select {
	case m.changed <- struct{}{}:
	default:
	}
}
