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
// Concurrency:
//   - lifeMu serialises Start and Close and guards started and closed.
//   - mu guards snap (the published, immutable view) and err.
//   - hmu guards wh against release: LinkByName reads it under RLock; the
//     loop reads it without the lock because release runs only after the
//     loop has ended (and Start sets it before starting the loop).
//   - subMu guards sub, which the loop replaces on every resync and which
//     only the test hook reads from another goroutine.
//   - st, res, gen and resyncs belong to Start until it starts the loop,
//     then to the loop goroutine alone.
//
// Channels: closing is closed by Close (once); done is closed by finish
// (once), called when the loop returns, or by Close when the loop never
// ran; changed is never closed. Each subscription's done channel is closed
// by subscription.stop (or the test hook), its update channels by the
// netlink library's reader goroutines.
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
	wh  *netlink.Handle // sockets in the watched netns: lists, GETNSID, LinkByName

	subMu sync.Mutex
	sub   *subscription

	st      *state
	res     *resolver
	gen     uint64
	resyncs uint64
	// lastResyncWarn and quietResyncs rate-limit the resync warning.
	lastResyncWarn time.Time
	quietResyncs   int
	// Untied veths re-read later (see settle): attempts so far, and the
	// ones waiting for the retry timer.
	retries map[int]int
	later   map[int]struct{}
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
		retries: map[int]int{},
		later:   map[int]struct{}{},
	}
	m.res = &resolver{log: log, watched: watched, dockerd: dockerd, scan: cfg.ScanNetNS}
	return m, nil
}

// Start subscribes to link, address (IPv4, IPv6) and route (IPv4, IPv6)
// events in the watched netns, then lists everything, so no change falls in
// between; it returns once that first view is published (view.Snapshot is
// complete) and the loop runs. ctx bounds Start only: the monitor runs
// until Close, or until the netns can no longer be watched (Done, Err). A
// failed Start leaves the monitor unstarted: Start may be called again.
func (m *Monitor) Start(ctx context.Context) error {
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
	if _, err := m.handle(); err != nil {
		return err
	}
	sub, err := m.subscribe()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		sub.stop()
		return err
	}
	st, err := m.listAll()
	if err != nil {
		sub.stop()
		return err
	}
	m.st = st
	m.setSub(sub)
	m.publish()
	m.started = true
	m.log.WithField("links", len(st.links)).Debug("watching")
	m.wg.Add(1)
	go m.run(sub)
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
// netns carries name, and returns it without addresses or peer facts; nil
// and no error when no link has that name. Kata looks links up by name, and
// names are reused quickly, so callers check index and MAC right around each
// hotplug call.
func (m *Monitor) LinkByName(name string) (*view.Link, error) {
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

// Close stops the loop, closes every socket (draining the subscription
// channels so the netlink library's goroutines can exit), waits for every
// goroutine and releases the netns. Idempotent; safe before Start and
// concurrently with anything.
func (m *Monitor) Close() error {
	m.closeOnce.Do(func() {
		close(m.closing)
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
	m.subMu.Lock()
	if m.sub != nil {
		m.sub.stop()
	}
	m.subMu.Unlock()
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

// publish makes the working state the published view and notifies.
func (m *Monitor) publish() {
	m.gen++
	snap := m.st.snapshot()
	snap.Generation, snap.Resyncs = m.gen, m.resyncs
	m.st.changed = false
	m.mu.Lock()
	m.snap = snap
	m.mu.Unlock()
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// listAll lists links, addresses and routes (all tables) in the watched
// netns into a fresh state and reads every link's peer facts.
func (m *Monitor) listAll() (*state, error) {
	return listState(m.wh, m.res)
}

func listState(wh *netlink.Handle, res *resolver) (*state, error) {
	links, err := dump("links", wh.LinkList)
	if err != nil {
		return nil, err
	}
	addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return wh.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	routes, err := dump("routes", func() ([]netlink.Route, error) {
		return wh.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, err
	}
	st := newState()
	for _, nl := range links {
		l := linkFromNetlink(nl)
		l.Peer = res.resolve(wh, l)
		st.incarnations++
		l.Incarnation = st.incarnations
		st.links[l.Index] = l
		if l.Kind == "veth" && l.ParentIndex == 0 {
			st.requery[l.Index] = struct{}{} // listed mid-creation (see setLink)
		}
	}
	st.replaceAddrs(addrs)
	st.replaceRoutes(routes)
	st.changed = true
	return st, nil
}
