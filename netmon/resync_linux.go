package netmon

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
)

// resync rebuilds the view after cause (an overflow, a failed socket, an
// undecodable link message, a panic): a full list that replaces the state.
// The socket is kept when it is known to be sound (an overflow, a dump
// the kernel interrupted, an undecodable message: it goes on delivering,
// and no dump of it is unfinished); otherwise a new one is opened, joined
// to the groups before it dumps. Failures are retried with a capped
// backoff for as long as the watched path opens to the same netns; the
// error returned is ErrNetNSGone (wrapped), or nil once it succeeded or
// Close has begun.
func (m *Monitor) resync(cause error) error {
	level, quiet := m.resyncWarn.level(time.Now())
	m.log.WithError(cause).WithField("quiet_resyncs", quiet).Log(level, "netlink events lost or unusable: re-listing the netns")
	if errors.Is(cause, errPanicked) && m.panics > 1 {
		// The same panic right after a resync: do not spin.
		if !m.sleep(backoff(m.panics-1, m.minBackoff, m.maxBackoff)) {
			return nil
		}
	}
	fresh := !(errors.Is(cause, errOverflow) || errors.Is(cause, errTruncated) ||
		errors.Is(cause, errDumpInterrupted) || errors.Is(cause, errUndecodable))
	for attempt := 1; ; attempt++ {
		if err := m.checkNetNS(); err != nil {
			return err
		}
		err := m.relistAll(fresh)
		if err == nil {
			if m.cfg.Observer != nil {
				m.cfg.Observer.Resynced()
			}
			m.log.WithFields(logrus.Fields{"resyncs": m.resyncs, "links": len(m.st.links), "attempt": attempt}).Log(level, "resynced")
			return nil
		}
		select {
		case <-m.closing:
			return nil
		default:
		}
		// The next attempt starts from a new socket, whatever failed.
		fresh = true
		delay := backoff(attempt, m.minBackoff, m.maxBackoff)
		wl, wq := m.resyncWarn.level(time.Now())
		m.log.WithError(err).WithFields(logrus.Fields{"attempt": attempt, "retry_in": delay, "quiet_resyncs": wq}).
			Log(wl, "resync failed; retrying")
		if !m.sleep(delay) {
			return nil
		}
	}
}

// testHookResync, set by tests only, can fail resync attempts.
var testHookResync func() error

// sleep waits d, or until Close has begun (false).
func (m *Monitor) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-m.closing:
		return false
	case <-t.C:
		return true
	}
}

// relistAll lists the netns into a new state that replaces the old one
// (keeping link incarnations), reads the peer facts, and publishes.
func (m *Monitor) relistAll(fresh bool) error {
	if testHookResync != nil {
		if err := testHookResync(); err != nil {
			return err
		}
	}
	sock := m.socket()
	if fresh || sock == nil {
		s, err := openSocket(m.watched, m.cfg.ReceiveBufferSize)
		if err != nil {
			return err
		}
		if !m.setSock(s) {
			return ErrClosed
		}
		sock = s
	}
	st, err := m.list(sock)
	if err != nil {
		return err
	}
	st.inherit(m.st)
	m.st = st
	m.resyncs++ // published by settle with the view
	if err := m.settle(); err != nil {
		m.resyncs--
		return err
	}
	if err := m.takeResync(); err != nil {
		m.resyncs--
		return err
	}
	return nil
}

// list dumps links, addresses and routes through sock into a fresh state,
// then applies the messages read meanwhile. Every link's peer facts are
// left to read (peerDirty).
func (m *Monitor) list(sock *nlSocket) (*state, error) {
	// What an earlier, failed list read is older than this one's dumps.
	clear(m.pending)
	m.pending, m.lost = m.pending[:0], lostKinds{}
	links, err := m.dump(sock, unix.RTM_GETLINK)
	if err != nil {
		return nil, err
	}
	addrs, err := m.dump(sock, unix.RTM_GETADDR)
	if err != nil {
		return nil, err
	}
	routes, err := m.dump(sock, unix.RTM_GETROUTE)
	if err != nil {
		return nil, err
	}
	st := newState()
	for i := range links {
		st.setLink(links[i].link)
	}
	st.replaceAddrs(addrs)
	st.replaceRoutes(routes)
	st.changed = true
	m.replay(st)
	return st, nil
}

// dump lists one table through sock, retrying while the kernel reports the
// dump interrupted. Events read meanwhile go to m.pending (applied after
// the dump, in order). Messages it cannot decode are skipped and counted:
// one bad object never fails the dump.
func (m *Monitor) dump(sock *nlSocket, typ uint16) ([]message, error) {
	for attempt := 1; ; attempt++ {
		out, err := m.dumpOnce(sock, typ)
		if err == nil {
			return out, nil
		}
		if !errors.Is(err, errDumpInterrupted) || attempt >= maxDumpAttempts {
			return nil, fmt.Errorf("list %s in netns %q (attempt %d): %w", tableName(typ), m.cfg.NetNSPath, attempt, err)
		}
	}
}

func (m *Monitor) dumpOnce(sock *nlSocket, typ uint16) ([]message, error) {
	seq, err := sock.request(typ)
	if err != nil {
		return nil, err
	}
	var out []message
	var overflow, intr bool
	for {
		dg, err := sock.receive(true, time.Now().Add(dumpTimeout))
		if errors.Is(err, errOverflow) {
			// Events were lost; the dump itself goes on. Finish it, so
			// the socket has none unfinished, then start over.
			overflow = true
			continue
		}
		if err != nil {
			return nil, socketError(err)
		}
		done := false
		var derr error
		for i := range dg.msgs {
			raw := &dg.msgs[i]
			if !sock.isReply(raw, seq) {
				m.queue(raw)
				continue
			}
			if raw.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch raw.Header.Type {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				done = true
				derr = doneError(raw)
			default:
				msg, err := decode(raw)
				if err != nil {
					m.undecodable(msg.kind, err)
					continue
				}
				if msg.keep {
					out = append(out, msg)
				}
			}
		}
		dg.release()
		switch {
		case !done:
			continue
		case derr != nil:
			return nil, fmt.Errorf("%s: %w", msgName(typ), derr)
		case overflow:
			return nil, errOverflow
		case intr:
			return nil, errDumpInterrupted
		}
		return out, nil
	}
}

// queue keeps an event read during a dump for the replay. One that cannot
// be decoded is skipped and counted, and its table re-listed after the
// replay (see replay).
func (m *Monitor) queue(raw *syscall.NetlinkMessage) {
	if kindOf(raw.Header.Type) == "" {
		return
	}
	msg, err := decode(raw)
	if err != nil {
		m.undecodable(msg.kind, err)
		m.lost.add(msg.kind, err)
		return
	}
	m.pending = append(m.pending, msg)
}

// replay applies the events read during dumps to st, in order, and asks
// for what the undecodable ones among them call for: a re-list of their
// table, or (a link) a resync.
func (m *Monitor) replay(st *state) {
	for i := range m.pending {
		m.applyTo(st, &m.pending[i])
	}
	clear(m.pending)
	m.pending = m.pending[:0]
	st.relistAddrs = st.relistAddrs || m.lost.addr
	st.relistRoutes = st.relistRoutes || m.lost.route
	if m.lost.link != nil && m.resyncDue == nil {
		m.resyncDue = m.lost.link
	}
	m.lost = lostKinds{}
}

// takeResync returns (and forgets) the reason a resync is due, if any.
func (m *Monitor) takeResync() error {
	err := m.resyncDue
	m.resyncDue = nil
	return err
}

// lostKinds records the kinds of the undecodable events read during dumps.
type lostKinds struct {
	link        error // the first link message's error
	addr, route bool
}

func (l *lostKinds) add(kind string, err error) {
	switch kind {
	case kindLink:
		if l.link == nil {
			l.link = err
		}
	case kindAddress:
		l.addr = true
	case kindRoute:
		l.route = true
	}
}

// tableName names what a dump request lists.
func tableName(typ uint16) string {
	switch typ {
	case unix.RTM_GETLINK:
		return "links"
	case unix.RTM_GETADDR:
		return "addresses"
	case unix.RTM_GETROUTE:
		return "routes"
	}
	return msgName(typ)
}

// checkNetNS re-opens the watched path: a netns is kept alive by our own
// fd and sockets, so only the path tells that the sandbox is gone (process
// exited, bind mount removed) or that it now names another netns.
func (m *Monitor) checkNetNS() error {
	f, err := nsfs.OpenQuiet(m.cfg.NetNSPath)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNetNSGone, err)
	}
	defer f.Close()
	if !f.Same(m.watched) {
		return fmt.Errorf("%w: %q now names another netns", ErrNetNSGone, m.cfg.NetNSPath)
	}
	return nil
}

// limiter rate-limits a warning: the first in each period is a warning,
// the others debug lines, and each warning counts the quiet ones before.
type limiter struct {
	every time.Duration
	last  time.Time
	quiet int
}

// level returns the level for a line now and the count of quiet lines
// since the last warning.
func (l *limiter) level(now time.Time) (logrus.Level, int) {
	if l.last.IsZero() || now.Sub(l.last) >= l.every {
		q := l.quiet
		l.last, l.quiet = now, 0
		return logrus.WarnLevel, q
	}
	l.quiet++
	return logrus.DebugLevel, 0
}
