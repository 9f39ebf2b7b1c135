//go:build linux

package replay

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestResync: the subscription dies mid-stream (a tiny receive
// buffer and a burst of address churn on an ifb the matcher ignores) while
// Docker runs, connects, moves the gateway and deletes an endpoint. The
// monitor must resync, and the end state must be exactly what the netns
// implies: the attached set and the last routes pushed.
func TestResync(t *testing.T) {
	e := newEnv(t)
	n1 := e.newNetwork(t, "172.30.1.0/24", "")
	n2 := e.newNetwork(t, "172.30.2.0/24", "")
	fs, mon := e.startFake(t, func(c *netmon.Config) { c.ReceiveBufferSize = 1 })

	churn := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: netmontest.RandName()}}
	addUp(t, e.Sandbox, churn)
	stop, churnErr := make(chan struct{}), make(chan error, 1)
	var churned int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				churnErr <- nil
				return
			default:
			}
			addr, _ := netlink.ParseAddr(fmt.Sprintf("10.77.%d.%d/32", i/250%250, i%250+1))
			if err := e.Sandbox.AddrAdd(churn, addr); err != nil {
				churnErr <- fmt.Errorf("churn: add %s: %w", addr, err)
				return
			}
			if err := e.Sandbox.AddrDel(churn, addr); err != nil {
				churnErr <- fmt.Errorf("churn: delete %s: %w", addr, err)
				return
			}
			churned++
		}
	}()
	stopChurn := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
		if err := <-churnErr; err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(stopChurn)

	eth0 := e.newEndpoint(t, n1, "eth0", 2, 0, true)
	eth1 := e.newEndpoint(t, n2, "eth1", 2, 0, false)
	eth2 := e.newEndpoint(t, n2, "eth2", 3, 0, false)
	mon.WaitView(t, 30*time.Second, "a resync", func(s *view.Snapshot) bool { return s.Resyncs > 0 })
	// More changes while events keep being lost.
	moveDefault(t, e, eth0, eth1, n2.GW)
	if err := e.Sandbox.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: eth2.Index}}); err != nil {
		t.Fatal(err)
	}
	stopChurn()

	wantMACs := slices.Sorted(slices.Values([]string{eth0.MAC.String(), eth1.MAC.String()}))
	wantRoutes := []hotplugtest.EventRoute{defaultVia(n2.GW, "eth1")}
	// A fresh list of the netns agrees with what was configured...
	if macs, routes := e.implied(t); !slices.Equal(macs, wantMACs) || !slices.Equal(routes, wantRoutes) {
		t.Fatalf("a fresh list implies endpoints %v and routes %v; configured %v and %v", macs, routes, wantMACs, wantRoutes)
	}
	// ...and the resynced monitor got there.
	evs := waitEvents(t, fs, "the attached set and the last routes the netns implies", func(evs []hotplugtest.Event) bool {
		return slices.Equal(fs.GuestMACs(), wantMACs) && lastRoutesAre(wantRoutes...)(evs)
	})
	snap := mon.View()
	t.Logf("%d addresses churned, %d resyncs, %d sandbox events", churned, snap.Resyncs, len(evs))
	if snap.Resyncs == 0 {
		t.Error("no resync recorded")
	}
	select {
	case <-mon.Netmon.Done():
		t.Fatalf("monitor ended: %v", mon.Netmon.Err())
	default:
	}
	// Every attach of eth2 (if it was seen at all) was undone.
	var eth2Attached bool
	for _, ev := range evs {
		if ev.MAC == eth2.MAC.String() {
			eth2Attached = ev.Op == "attach"
		}
	}
	if eth2Attached {
		t.Errorf("eth2 deleted but still attached:%s", formatEvents(evs))
	}
}
