package netmon

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

const (
	// maxBatch bounds how many messages are applied before the view is
	// published even though more are queued.
	maxBatch = 256
	// Resync retries back off from minResyncBackoff, doubling, to
	// maxResyncBackoff, and go on for as long as the watched netns exists.
	minResyncBackoff = 20 * time.Millisecond
	maxResyncBackoff = 5 * time.Second
	// warnEvery rate-limits the warnings that can repeat (resyncs,
	// undecodable messages): one per period, with the count of the quiet
	// ones since.
	warnEvery = 10 * time.Second
	// maxDumpAttempts bounds the retries of a dump the kernel marked
	// interrupted (NLM_F_DUMP_INTR: the table changed while it was dumped).
	maxDumpAttempts = 8
	// dumpTimeout bounds the wait for each datagram of a dump.
	dumpTimeout = 10 * time.Second
	// maxRelists bounds the re-lists one settle runs: a replayed message
	// can ask for another, and the rest waits for the next settle.
	maxRelists = 4
	// untiedDelay: a veth announced without IFLA_LINK is read again this
	// long after, if no message has tied it meanwhile. Nothing waits for
	// that read (an untied veth is pending, and so is the down link it is
	// until a message says otherwise), and each read is an RTM_GETLINK
	// that queues for the kernel's rtnl_lock behind a busy dockerd: late
	// enough that Docker's rename, which ties it, comes first.
	untiedDelay = 500 * time.Millisecond
)

var (
	// errPanicked: the loop recovered a panic; the state is rebuilt from a
	// fresh list.
	errPanicked = errors.New("netmon loop panicked")
	// errSocket: the socket failed otherwise than by overflow.
	errSocket = errors.New("netlink socket failed")
)

func (m *Monitor) run() {
	defer m.wg.Done()
	err := m.loop()
	if err != nil {
		m.log.WithError(err).Error("netns watch ended")
	}
	m.finish(err)
}

// loop applies messages until Close (nil) or until the watched netns is
// gone (ErrNetNSGone). Anything else that stops serve (an overflow, a
// socket error, an undecodable link message, a panic) is repaired by a
// resync, retried for as long as the netns exists.
func (m *Monitor) loop() error {
	var cause error
	for {
		cause = m.step(cause)
		select {
		case <-m.closing:
			return nil
		default:
		}
		if errors.Is(cause, ErrNetNSGone) {
			return cause
		}
	}
}

// step resyncs when cause is set, then serves until something needs a
// resync, which it returns. A panic is recovered, logged with its stack and
// counted, and becomes the cause of the next step's resync.
func (m *Monitor) step(cause error) (next error) {
	defer func() {
		if p := recover(); p != nil {
			next = m.panicked("loop", p)
		}
	}()
	if cause != nil {
		if err := m.resync(cause); err != nil {
			return err
		}
	}
	return m.serve()
}

// panicked logs and counts a recovered panic and returns it as an error.
func (m *Monitor) panicked(where string, p any) error {
	m.panics++
	m.log.WithFields(logrus.Fields{"where": where, "panic": fmt.Sprint(p), "stack": string(debug.Stack())}).
		Error("netmon panicked; recovered, re-listing the netns")
	if m.cfg.Observer != nil {
		m.cfg.Observer.Panicked("netmon " + where)
	}
	return fmt.Errorf("%w in %s: %v", errPanicked, where, p)
}

// serve reads the socket and applies each message in the kernel's order,
// settling (re-lists, peer facts, publish) whenever nothing is queued or
// every maxBatch messages. It parks on the poller while idle, waking for a
// message, a scheduled re-read, or Close. It returns why the view must be
// re-listed; anything it returns once Close has begun is ignored.
func (m *Monitor) serve() error {
	sock := m.socket()
	if sock == nil {
		return fmt.Errorf("%w: no socket", errSocket)
	}
	n := 0
	for {
		dg, err := sock.receive(false, time.Time{})
		if errors.Is(err, errWouldBlock) {
			n = 0
			if err := m.settle(); err != nil {
				return err
			}
			if err := m.takeResync(); err != nil {
				return err
			}
			dg, err = sock.receive(true, m.rechecks.next())
			if errors.Is(err, os.ErrDeadlineExceeded) {
				m.recheckDue()
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("read netlink events: %w", socketError(err))
		}
		for i := range dg.msgs {
			if err := m.handleEvent(&dg.msgs[i]); err != nil {
				dg.release()
				return err
			}
			n++
		}
		dg.release()
		if n >= maxBatch {
			n = 0
			if err := m.settle(); err != nil {
				return err
			}
		}
	}
}

// socketError marks a receive error that is not a loss of messages.
func socketError(err error) error {
	if errors.Is(err, errOverflow) || errors.Is(err, errTruncated) || errors.Is(err, errUndecodable) {
		return err
	}
	return fmt.Errorf("%w: %w", errSocket, err)
}

// handleEvent decodes and applies one event. An undecodable one is skipped
// (counted, warned at a limited rate) and the table it belongs to re-listed
// at the next settle; for a link, whose messages carry everything the view
// keeps of it, the returned error asks for a resync.
func (m *Monitor) handleEvent(raw *syscall.NetlinkMessage) error {
	if kindOf(raw.Header.Type) == "" {
		return nil // a late reply of an abandoned dump, or a type not subscribed to
	}
	msg, err := decode(raw)
	if err != nil {
		m.undecodable(msg.kind, err)
		switch msg.kind {
		case kindLink:
			return err
		case kindAddress:
			m.st.relistAddrs = true
		case kindRoute:
			m.st.relistRoutes = true
		}
		return nil
	}
	m.applyTo(m.st, &msg)
	return nil
}

// applyTo applies one decoded event to st and reports it.
func (m *Monitor) applyTo(st *state, msg *message) {
	if m.cfg.Observer != nil {
		m.cfg.Observer.EventSeen(msg.kind)
	}
	if testHookApply != nil {
		testHookApply(msg.typ, msg.link, msg.addrIndex, msg.route.LinkIndex)
	}
	if m.debug() && msg.keep {
		m.logMessage(msg)
	}
	st.apply(msg)
}

// testHookApply, set by tests only, sees every event applied, in order.
var testHookApply func(typ uint16, link *view.Link, addrIndex, routeIndex int)

// undecodable counts and (rate-limited) warns about a skipped message.
func (m *Monitor) undecodable(kind string, err error) {
	if m.cfg.Observer != nil {
		m.cfg.Observer.Undecodable(kind)
	}
	level, quiet := m.decodeWarn.level(time.Now())
	e := m.log.WithError(err).WithFields(logrus.Fields{"kind": kind, "quiet_skipped": quiet})
	var de *decodeError
	if errors.As(err, &de) && de.stack != nil {
		e = e.WithField("stack", string(de.stack))
	}
	e.Log(level, "netlink message skipped: cannot decode it")
}

// debug reports whether debug lines would be written: the per-message
// lines build their fields only then, since every netlink message passes
// here (tens of thousands a second in a burst).
func (m *Monitor) debug() bool { return m.log.Logger.IsLevelEnabled(logrus.DebugLevel) }

func (m *Monitor) logMessage(msg *message) {
	switch msg.kind {
	case kindLink:
		l := msg.link
		m.log.WithFields(logrus.Fields{"type": msgName(msg.typ), "ifindex": l.Index, "ifname": l.Name, "kind": l.Kind,
			"flags": fmt.Sprintf("%#x", l.RawFlags), "link": l.ParentIndex, "link-netnsid": l.LinkNetNSID}).
			Debug("netlink: link")
	case kindAddress:
		m.log.WithFields(logrus.Fields{"type": msgName(msg.typ), "ifindex": msg.addrIndex, "ifname": m.ifname(msg.addrIndex),
			"addr": msg.addr.Prefix}).Debug("netlink: address")
	case kindRoute:
		r := msg.route
		m.log.WithFields(logrus.Fields{"type": msgName(msg.typ), "ifindex": r.LinkIndex, "ifname": m.ifname(r.LinkIndex),
			"dst": r.Dst, "table": r.Table, "nlflags": msg.nlflags}).Debug("netlink: route")
	}
}

// ifname is the name the view has for ifindex, for logs ("" when the link
// is unknown or the index is 0).
func (m *Monitor) ifname(index int) string {
	if l := m.st.links[index]; l != nil {
		return l.Name
	}
	return ""
}

// settle runs what messages deferred (re-lists, untied veths, peer facts)
// and publishes the view if it changed.
func (m *Monitor) settle() error {
	st := m.st
	for i := 0; i < maxRelists && (st.relistAddrs || st.relistRoutes); i++ {
		if err := m.relist(); err != nil {
			return err
		}
	}
	now := time.Now()
	for idx := range st.untied {
		// Read it again only if no message ties it meanwhile (Docker's
		// rename does, at once).
		m.rechecks.addAfter(idx, now, untiedDelay)
	}
	clear(st.untied)
	for idx := range st.peerDirty {
		if l := st.links[idx]; l != nil {
			m.readPeer(l, now)
		}
	}
	clear(st.peerDirty)
	if st.changed {
		m.publish()
	}
	return nil
}

// relist re-lists the tables the state asked for, then applies the
// messages read meanwhile.
func (m *Monitor) relist() error {
	st, sock := m.st, m.socket()
	if sock == nil {
		return fmt.Errorf("%w: no socket", errSocket)
	}
	if st.relistAddrs {
		addrs, err := m.dump(sock, unix.RTM_GETADDR)
		if err != nil {
			return err
		}
		st.replaceAddrs(addrs)
	}
	if st.relistRoutes {
		routes, err := m.dump(sock, unix.RTM_GETROUTE)
		if err != nil {
			return err
		}
		st.replaceRoutes(routes)
	}
	m.replay(st)
	return nil
}

// readUntied reads again a veth announced without IFLA_LINK (see
// state.setLink). One that has it now is applied as a NEWLINK would be;
// one that still has none stays on the recheck schedule until it ends.
func (m *Monitor) readUntied(idx int, now time.Time) {
	nl, err := m.wh.LinkByIndex(idx)
	if err != nil {
		if !isLinkNotFound(err) { // else its RTM_DELLINK is on the way
			m.log.WithError(err).WithField("ifindex", idx).Warn("cannot read an untied veth again; waiting for its next message")
		}
		m.rechecks.remove(idx)
		return
	}
	l := linkFromNetlink(nl)
	if l.Kind == "veth" && l.ParentIndex == 0 {
		if m.rechecks.expired(idx, now) {
			m.rechecks.remove(idx)
			m.log.WithFields(logrus.Fields{"ifindex": idx, "ifname": l.Name}).Warn("veth still has no peer index; waiting for its next message")
		}
		return
	}
	m.log.WithFields(logrus.Fields{"ifindex": idx, "ifname": l.Name, "link": l.ParentIndex}).Debug("veth tied to its peer")
	m.rechecks.remove(idx)
	m.st.setLink(l)
}

// readPeer reads l's peer facts and keeps the recheck schedule: facts
// that are not yet those of an endpoint but may become so without any
// message in the watched netns (see settling) are read again until they
// settle or the schedule's window ends; the view says which (Rechecking).
func (m *Monitor) readPeer(l *view.Link, now time.Time) {
	p := m.res.resolve(m.wh, l)
	if l.Kind != "veth" || l.ParentIndex != 0 { // an untied veth keeps the schedule of its re-reads
		if settling(l.Kind, p, m.cfg.DockerNetNSDir != "") {
			m.rechecks.add(l.Index, now)
			if m.rechecks.expired(l.Index, now) {
				m.rechecks.remove(l.Index)
				m.log.WithFields(logrus.Fields{"ifindex": l.Index, "ifname": l.Name, "peer": peerString(p)}).
					Debug("peer facts still not those of an endpoint; no longer re-read")
			} else {
				p.Rechecking = true
			}
		} else {
			m.rechecks.remove(l.Index)
		}
	}
	if !samePeer(p, l.Peer) {
		m.log.WithFields(logrus.Fields{"ifindex": l.Index, "ifname": l.Name, "peer": peerString(p)}).Debug("peer facts")
		l.Peer = p
		m.st.changed = true
	}
}

// settling reports peer facts that are not yet those of an endpoint but
// may become so with no message in the watched netns: a read that failed,
// a veth peer that points back but is on no bridge yet (its host end is
// enslaved in dockerd's netns, which netmon does not watch), or, when
// Docker's netns directory is searched (dirScan), a veth peer in a netns
// not found there yet (a bind mount made after the link arrived). Facts
// that no later change makes an endpoint (same netns, a foreign netns
// without dirScan, a peer that is not a veth or does not point back) are
// final.
func settling(kind string, p *view.Peer, dirScan bool) bool {
	if p == nil {
		return false
	}
	switch p.State {
	case view.PeerError:
		return true
	case view.PeerForeignNetNS:
		return dirScan && kind == "veth"
	case view.PeerResolved:
		return kind == "veth" && p.Found && p.Kind == "veth" && p.PointsBack && p.MasterIndex == 0
	}
	return false
}

// recheckDue re-reads the untied veths due and marks the peers due for
// the settle that follows.
func (m *Monitor) recheckDue() {
	now := time.Now()
	for _, idx := range m.rechecks.take(now) {
		l := m.st.links[idx]
		switch {
		case l == nil:
			m.rechecks.remove(idx)
		case l.Kind == "veth" && l.ParentIndex == 0:
			m.readUntied(idx, now)
		case l.Peer != nil && l.Peer.Rechecking:
			m.st.peerDirty[idx] = struct{}{}
		default:
			m.rechecks.remove(idx) // tied, or settled, meanwhile
		}
	}
}

func peerString(p *view.Peer) string {
	if p == nil {
		return "none"
	}
	return fmt.Sprintf("%+v", *p)
}
