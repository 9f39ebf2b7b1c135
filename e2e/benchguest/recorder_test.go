//go:build linux

package benchguest

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ---------------------------------------------------------------------------
// recorder: the sandbox netns' netlink events, timestamped on receipt (the
// monitor receives the same multicast at the same moment)

type event struct {
	at   time.Time
	idx  int
	what string
}

type recorder struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	evs  []event
}

func startRecorder(nsPath string) (*recorder, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	r := &recorder{done: make(chan struct{})}
	lch := make(chan netlink.LinkUpdate, 256)
	ach := make(chan netlink.AddrUpdate, 256)
	rch := make(chan netlink.RouteUpdate, 256)
	ignore := func(error) {}
	if err := netlink.LinkSubscribeWithOptions(lch, r.done, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: ignore}); err != nil {
		close(r.done)
		return nil, err
	}
	if err := netlink.AddrSubscribeWithOptions(ach, r.done, netlink.AddrSubscribeOptions{Namespace: &ns, ErrorCallback: ignore}); err != nil {
		close(r.done)
		return nil, err
	}
	if err := netlink.RouteSubscribeWithOptions(rch, r.done, netlink.RouteSubscribeOptions{Namespace: &ns, ErrorCallback: ignore}); err != nil {
		close(r.done)
		return nil, err
	}
	r.wg.Add(3)
	go func() {
		defer r.wg.Done()
		for u := range lch {
			if u.IfInfomsg.Family != unix.AF_UNSPEC {
				continue
			}
			kind := "NEWLINK"
			if u.Header.Type == unix.RTM_DELLINK {
				kind = "DELLINK"
			}
			a := u.Link.Attrs()
			st := "down"
			if a.RawFlags&unix.IFF_RUNNING != 0 {
				st = "running"
			} else if a.RawFlags&unix.IFF_UP != 0 {
				st = "up"
			}
			r.add(a.Index, fmt.Sprintf("%s %s", kind, st))
		}
	}()
	go func() {
		defer r.wg.Done()
		for u := range ach {
			kind := "NEWADDR"
			if !u.NewAddr {
				kind = "DELADDR"
			}
			r.add(u.LinkIndex, kind)
		}
	}()
	go func() {
		defer r.wg.Done()
		for u := range rch {
			kind := "NEWROUTE"
			if u.Type == unix.RTM_DELROUTE {
				kind = "DELROUTE"
			}
			if u.Dst == nil || isDefault(u.Dst) {
				kind += " default"
			}
			r.add(u.LinkIndex, kind)
		}
	}()
	return r, nil
}

func isDefault(n *net.IPNet) bool { ones, _ := n.Mask.Size(); return ones == 0 }

func (r *recorder) add(idx int, what string) {
	at := time.Now()
	r.mu.Lock()
	r.evs = append(r.evs, event{at: at, idx: idx, what: what})
	r.mu.Unlock()
}

// lastBefore returns the last event about ifindex idx received before t.
func (r *recorder) lastBefore(idx int, t time.Time) (event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.evs) - 1; i >= 0; i-- {
		if e := r.evs[i]; e.idx == idx && e.at.Before(t) {
			return e, true
		}
	}
	return event{}, false
}

func (r *recorder) stop() {
	close(r.done)
	r.wg.Wait()
}
