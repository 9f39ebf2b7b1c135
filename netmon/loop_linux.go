package netmon

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// updateBuffer is each subscription channel's capacity: the library's
	// reader goroutine parses ahead while the loop applies.
	updateBuffer = 256
	// maxBatch bounds how many events are applied before the view is
	// published even though more are queued.
	maxBatch = 256
	// Resync retry: the delay doubles from minBackoff to maxBackoff; after
	// maxResyncAttempts consecutive failures the loop ends with Err set.
	minBackoff        = 20 * time.Millisecond
	maxBackoff        = 2 * time.Second
	maxResyncAttempts = 10
	// resyncWarnEvery rate-limits the resync warning (see resync).
	resyncWarnEvery = 10 * time.Second
	// An untied veth (see state.setLink) is read again up to maxRequery
	// times, requeryDelay apart, when the first read still finds it untied.
	maxRequery   = 20
	requeryDelay = 50 * time.Millisecond
)

// subscription is one set of the three netlink subscriptions (links,
// addresses, routes), each a socket bound to the watched netns and a reader
// goroutine of the netlink library that closes its channel when its socket
// fails or is closed.
type subscription struct {
	done     chan struct{} // closing it closes the sockets
	doneOnce sync.Once
	links    chan netlink.LinkUpdate
	addrs    chan netlink.AddrUpdate
	routes   chan netlink.RouteUpdate
	errs     chan error // capacity 1: the first error that kills this set
	// started[i]: subscription i returned nil, so its reader goroutine runs
	// and will close its channel. (On error the library starts no reader.)
	started [3]bool
}

// kill closes the sockets; the readers then close their channels.
func (s *subscription) kill() { s.doneOnce.Do(func() { close(s.done) }) }

// stop kills the set and drains its channels until the library's readers
// have closed them: a reader blocked on `ch <-` would never exit otherwise.
// Called only by the owner of the set (Start, the loop, release), once the
// loop no longer reads it.
func (s *subscription) stop() {
	s.kill()
	if s.started[0] {
		for range s.links {
		}
	}
	if s.started[1] {
		for range s.addrs {
		}
	}
	if s.started[2] {
		for range s.routes {
		}
	}
	s.started = [3]bool{}
}

// benign reports ErrorCallback errors that do not mean a lost event. The
// library reports "Wrong sender portid" for messages sent to the group by
// a process rather than the kernel (seen on docker network connect and
// disconnect) and drops them: nothing was missed.
func benign(err error) bool {
	return strings.HasPrefix(err.Error(), "Wrong sender portid")
}

// subscribe opens a new set. Every socket is created on a fresh thread that
// is discarded afterwards (nsfs.Throwaway).
func (m *Monitor) subscribe() (*subscription, error) {
	s := &subscription{
		done:   make(chan struct{}),
		links:  make(chan netlink.LinkUpdate, updateBuffer),
		addrs:  make(chan netlink.AddrUpdate, updateBuffer),
		routes: make(chan netlink.RouteUpdate, updateBuffer),
		errs:   make(chan error, 1),
	}
	// Called from the library's reader goroutines: must not block.
	cb := func(err error) {
		if benign(err) {
			m.log.WithError(err).Debug("netlink: ignored")
			return
		}
		select {
		case s.errs <- err:
		default:
		}
	}
	ns := m.watched.Handle()
	rcv := m.cfg.ReceiveBufferSize
	subs := [3]func() error{
		func() error {
			return netlink.LinkSubscribeWithOptions(s.links, s.done, netlink.LinkSubscribeOptions{
				Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: rcv})
		},
		func() error {
			return netlink.AddrSubscribeWithOptions(s.addrs, s.done, netlink.AddrSubscribeOptions{
				Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: rcv})
		},
		func() error {
			return netlink.RouteSubscribeWithOptions(s.routes, s.done, netlink.RouteSubscribeOptions{
				Namespace: &ns, ErrorCallback: cb, ReceiveBufferSize: rcv})
		},
	}
	for i, sub := range subs {
		if err := nsfs.Throwaway(sub); err != nil {
			s.stop()
			return nil, fmt.Errorf("subscribe to %s events in netns %q: %w",
				[...]string{"link", "address", "route"}[i], m.cfg.NetNSPath, err)
		}
		s.started[i] = true
	}
	return s, nil
}

func (m *Monitor) setSub(s *subscription) {
	m.subMu.Lock()
	m.sub = s
	m.subMu.Unlock()
}

func (m *Monitor) run(sub *subscription) {
	defer m.wg.Done()
	err := m.loop(sub)
	if err != nil {
		m.log.WithError(err).Error("netns watch ended")
	}
	m.finish(err)
}

// loop applies events until Close (nil) or a resync fails for good.
func (m *Monitor) loop(sub *subscription) error {
	for {
		reason := m.apply(sub)
		if reason == "" {
			return nil // closing
		}
		next, err := m.resync(sub, reason)
		if next == nil {
			return err // nil when closing
		}
		sub = next
	}
}

// apply reads sub's channels and applies each event to the state,
// publishing whenever no event is queued (or every maxBatch events). It
// returns why the subscription must be replaced, or "" on Close. A closed
// channel means its socket failed (ENOBUFS, ...) or was closed: the whole
// set is replaced and everything re-listed, so this is where it ends.
func (m *Monitor) apply(sub *subscription) (reason string) {
	n := 0
	var retry *time.Timer
	var retryC <-chan time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		if len(m.st.requery) > 0 && retryC == nil {
			// Left by a list (Start, resync): no event may come to settle it.
			m.later, m.st.requery = m.st.requery, map[int]struct{}{}
		}
		if len(m.later) > 0 && retryC == nil {
			retry = time.NewTimer(requeryDelay)
			retryC = retry.C
		}
		select {
		case <-m.closing:
			return ""
		case <-retryC:
			retryC = nil
			for idx := range m.later {
				m.st.requery[idx] = struct{}{}
			}
			clear(m.later)
			n = 0
			if err := m.settle(); err != nil {
				return err.Error()
			}
			continue
		case err := <-sub.errs:
			if errors.Is(err, netlink.ErrDumpInterrupted) {
				return "subscription reported an interrupted dump"
			}
			return err.Error()
		case u, ok := <-sub.links:
			if !ok {
				return "link subscription closed"
			}
			m.observe("link")
			m.applyLink(u)
		case u, ok := <-sub.addrs:
			if !ok {
				return "address subscription closed"
			}
			m.observe("address")
			m.applyAddr(u)
		case u, ok := <-sub.routes:
			if !ok {
				return "route subscription closed"
			}
			m.observe("route")
			m.applyRoute(u)
		}
		n++
		if n >= maxBatch || len(sub.links)+len(sub.addrs)+len(sub.routes) == 0 {
			n = 0
			if err := m.settle(); err != nil {
				return err.Error()
			}
		}
	}
}

// observe reports one netlink message to the Observer, if any.
func (m *Monitor) observe(kind string) {
	if m.cfg.Observer != nil {
		m.cfg.Observer.EventSeen(kind)
	}
}

func (m *Monitor) applyLink(u netlink.LinkUpdate) {
	// RTNLGRP_LINK also carries AF_BRIDGE messages about bridge ports; a
	// port leaving its bridge is an AF_BRIDGE RTM_DELLINK of a link that
	// still exists. Only AF_UNSPEC messages describe links.
	if u.IfInfomsg.Family != unix.AF_UNSPEC {
		return
	}
	l := linkFromNetlink(u.Link)
	switch u.Header.Type {
	case unix.RTM_NEWLINK:
		if m.debug() {
			m.log.WithFields(logrus.Fields{"ifindex": l.Index, "ifname": l.Name, "kind": l.Kind,
				"flags": fmt.Sprintf("%#x", l.RawFlags), "link": l.ParentIndex, "link-netnsid": l.LinkNetNSID}).
				Debug("netlink: NEWLINK")
		}
		m.st.setLink(l)
	case unix.RTM_DELLINK:
		if m.debug() {
			m.log.WithFields(logrus.Fields{"ifindex": l.Index, "ifname": l.Name}).Debug("netlink: DELLINK")
		}
		m.st.delLink(l.Index)
	}
}

// debug reports whether debug lines would be written: the per-message
// lines build their fields only then, since every netlink message passes
// here (tens of thousands a second in a burst).
func (m *Monitor) debug() bool { return m.log.Logger.IsLevelEnabled(logrus.DebugLevel) }

func (m *Monitor) applyAddr(u netlink.AddrUpdate) {
	p, ok := prefixFromIPNet(&u.LinkAddress)
	if !ok {
		return
	}
	if m.debug() {
		m.log.WithFields(logrus.Fields{"ifindex": u.LinkIndex, "ifname": m.ifname(u.LinkIndex), "addr": p, "new": u.NewAddr}).Debug("netlink: address")
	}
	if u.NewAddr {
		m.st.setAddr(u.LinkIndex, view.Addr{Prefix: p, Scope: u.Scope, Flags: u.Flags})
	} else {
		m.st.delAddr(u.LinkIndex, p)
	}
}

func (m *Monitor) applyRoute(u netlink.RouteUpdate) {
	r, k, ok := routeFromNetlink(u.Route)
	if !ok {
		return
	}
	if m.debug() {
		m.log.WithFields(logrus.Fields{"ifindex": r.LinkIndex, "ifname": m.ifname(r.LinkIndex), "dst": r.Dst, "table": r.Table,
			"type": u.Type, "nlflags": u.NlFlags}).Debug("netlink: route")
	}
	// What the key cannot follow: a replace (the kernel swaps one route of
	// that identity for another), IPv6 appends (to an ECMP group, the event
	// holds only the new nexthop) and multipath routes.
	if u.NlFlags&unix.NLM_F_REPLACE != 0 || len(u.MultiPath) > 0 ||
		(r.Family == view.FamilyV6 && u.NlFlags&unix.NLM_F_APPEND != 0) {
		m.st.relistRoutes = true
	}
	switch u.Type {
	case unix.RTM_NEWROUTE:
		m.st.setRoute(k, r)
	case unix.RTM_DELROUTE:
		m.st.delRoute(k)
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

// settle runs what events deferred (re-lists, peer facts) and publishes the
// view if it changed.
func (m *Monitor) settle() error {
	st := m.st
	if st.relistAddrs {
		addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return m.wh.AddrList(nil, netlink.FAMILY_ALL) })
		if err != nil {
			return err
		}
		st.replaceAddrs(addrs)
	}
	if st.relistRoutes {
		routes, err := dump("routes", func() ([]netlink.Route, error) {
			return m.wh.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return err
		}
		st.replaceRoutes(routes)
	}
	for idx := range st.requery {
		if st.links[idx] == nil {
			delete(m.retries, idx)
			continue
		}
		nl, err := m.wh.LinkByIndex(idx)
		if err != nil {
			if isLinkNotFound(err) {
				continue // its RTM_DELLINK is on the way
			}
			return fmt.Errorf("read ifindex %d: %w", idx, err)
		}
		l := linkFromNetlink(nl)
		if l.ParentIndex == 0 && l.Kind == "veth" {
			// Still mid-creation: try again a little later.
			if m.retries[idx]++; m.retries[idx] <= maxRequery {
				m.later[idx] = struct{}{}
			} else {
				m.log.WithFields(logrus.Fields{"ifindex": idx, "ifname": l.Name}).Warn("veth still has no peer index; waiting for its next NEWLINK")
			}
			continue
		}
		delete(m.retries, idx)
		if l.ParentIndex != 0 {
			m.log.WithFields(logrus.Fields{"ifindex": idx, "ifname": l.Name, "link": l.ParentIndex}).Debug("veth tied to its peer")
			st.setLink(l)
		}
	}
	clear(st.requery)
	for idx := range st.peerDirty {
		if l := st.links[idx]; l != nil {
			if p := m.res.resolve(m.wh, l); !samePeer(p, l.Peer) {
				m.log.WithFields(logrus.Fields{"ifindex": idx, "ifname": l.Name, "peer": peerString(p)}).Debug("peer facts")
				l.Peer = p
				st.changed = true
			}
		}
	}
	clear(st.peerDirty)
	if st.changed {
		m.publish()
	}
	return nil
}

func peerString(p *view.Peer) string {
	if p == nil {
		return "none"
	}
	return fmt.Sprintf("%+v", *p)
}

// resync replaces a dead subscription: new sockets first, then a full list
// that replaces the state. It retries with a bounded backoff and gives up
// (returning the error) after maxResyncAttempts, or at once when the
// watched netns path no longer opens to the same netns. Returns (nil, nil)
// on Close.
func (m *Monitor) resync(old *subscription, reason string) (*subscription, error) {
	// Overflow comes in storms (tens of resyncs a second under a burst of
	// unrelated events): warn at most once per resyncWarnEvery, with the
	// count of the quiet ones since, and log the rest at debug level.
	level := logrus.DebugLevel
	if now := time.Now(); now.Sub(m.lastResyncWarn) >= resyncWarnEvery {
		level = logrus.WarnLevel
		m.lastResyncWarn = now
	}
	m.log.WithFields(logrus.Fields{"reason": reason, "quiet_resyncs": m.quietResyncs}).
		Log(level, "netlink subscription lost: resubscribing and re-listing")
	if level == logrus.WarnLevel {
		m.quietResyncs = 0
	} else {
		m.quietResyncs++
	}
	old.stop()
	m.setSub(nil)
	backoff := minBackoff
	for attempt := 1; ; attempt++ {
		if err := m.checkNetNS(); err != nil {
			return nil, err
		}
		sub, err := m.subscribe()
		if err == nil {
			var st *state
			if st, err = m.listAll(); err == nil {
				st.inherit(m.st)
				m.st = st
				m.resyncs++
				m.setSub(sub)
				m.publish()
				if m.cfg.Observer != nil {
					m.cfg.Observer.Resynced()
				}
				m.log.WithFields(logrus.Fields{"resyncs": m.resyncs, "links": len(st.links)}).Log(level, "resynced")
				return sub, nil
			}
			sub.stop()
		}
		if attempt >= maxResyncAttempts {
			return nil, fmt.Errorf("netmon: resync after %q failed %d times: %w", reason, attempt, err)
		}
		m.log.WithError(err).WithField("attempt", attempt).Warn("resync failed; retrying")
		t := time.NewTimer(backoff)
		select {
		case <-m.closing:
			t.Stop()
			return nil, nil
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
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
