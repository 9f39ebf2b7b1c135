//go:build linux

package replay

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
)

// The sandbox side: a FakeSandbox (Kata's semantics, in memory) whose
// guest changes (hotplugtest.Event) the tests wait for.

// waitEvents waits until cond holds for the sandbox's events and returns
// them.
func waitEvents(t *testing.T, fs *hotplugtest.FakeSandbox, what string, cond func([]hotplugtest.Event) bool) []hotplugtest.Event {
	t.Helper()
	evs, err := fs.WaitEvents(waitTimeout, cond, what)
	if err != nil {
		t.Fatalf("%v:%s", err, formatEvents(evs))
	}
	return evs
}

// waitEvent waits for an event matching match after the first skip events
// and returns it with its position.
func waitEvent(t *testing.T, fs *hotplugtest.FakeSandbox, what string, skip int, match func(hotplugtest.Event) bool) (hotplugtest.Event, int) {
	t.Helper()
	evs := waitEvents(t, fs, what, func(evs []hotplugtest.Event) bool {
		return len(evs) > skip && slices.ContainsFunc(evs[skip:], match)
	})
	i := skip + slices.IndexFunc(evs[skip:], match)
	return evs[i], i
}

// formatEvents renders events one per line, for failure messages.
func formatEvents(evs []hotplugtest.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %+v", e)
	}
	return b.String()
}

// isAttach matches the attach of mac under name.
func isAttach(name, mac string) func(hotplugtest.Event) bool {
	return func(e hotplugtest.Event) bool { return e.Op == "attach" && e.Name == name && e.MAC == mac }
}

// isDetach matches the detach of mac.
func isDetach(mac string) func(hotplugtest.Event) bool {
	return func(e hotplugtest.Event) bool { return e.Op == "detach" && e.MAC == mac }
}

// lastRoutes returns the routes of the last "routes" event, sorted,
// and whether there was one.
func lastRoutes(evs []hotplugtest.Event) ([]hotplugtest.EventRoute, bool) {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Op == "routes" {
			return sortRoutes(evs[i].Routes), true
		}
	}
	return nil, false
}

// sortRoutes returns rs sorted by destination, gateway and device.
func sortRoutes(rs []hotplugtest.EventRoute) []hotplugtest.EventRoute {
	out := slices.Clone(rs)
	slices.SortFunc(out, func(a, b hotplugtest.EventRoute) int {
		return strings.Compare(a.Dest+"|"+a.Gateway+"|"+a.Device, b.Dest+"|"+b.Gateway+"|"+b.Device)
	})
	return out
}

// lastRoutesAre is a wait condition: the last routes pushed are want.
func lastRoutesAre(want ...hotplugtest.EventRoute) func([]hotplugtest.Event) bool {
	want = sortRoutes(want)
	return func(evs []hotplugtest.Event) bool {
		got, ok := lastRoutes(evs)
		return ok && slices.Equal(got, want)
	}
}

// defaultVia is the route event a default route via gw through dev
// becomes.
func defaultVia(gw netip.Addr, dev string) hotplugtest.EventRoute {
	return hotplugtest.EventRoute{Dest: "default", Gateway: gw.String(), Device: dev}
}

// count returns how many events have op.
func count(evs []hotplugtest.Event, op string) int {
	n := 0
	for _, e := range evs {
		if e.Op == op {
			n++
		}
	}
	return n
}
