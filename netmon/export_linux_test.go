package netmon

import "github.com/kata-netmon/kata-netmon/netmon/view"

// KillSubscriptions closes the current subscription sockets behind the
// loop's back, as a socket dying mid-stream would. It reports whether there
// was a subscription to kill.
func KillSubscriptions(m *Monitor) bool {
	m.subMu.Lock()
	s := m.sub
	m.subMu.Unlock()
	if s == nil {
		return false
	}
	s.kill()
	return true
}

// FreshSnapshot lists the watched netns now, with new handles and a new
// resolver, through the same code as Start (Generation and Resyncs zero).
func FreshSnapshot(m *Monitor) (*view.Snapshot, error) {
	wh, err := newHandleAt(m.watched)
	if err != nil {
		return nil, err
	}
	defer wh.Close()
	res := &resolver{log: m.log, watched: m.watched, dockerd: m.dockerd, scan: m.cfg.ScanNetNS}
	defer res.close()
	st, err := listState(wh, res)
	if err != nil {
		return nil, err
	}
	return st.snapshot(), nil
}
