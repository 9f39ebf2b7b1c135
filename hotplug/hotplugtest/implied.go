package hotplugtest

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon"
)

// Implied reads the sandbox netns from scratch (a fresh monitor's first
// list) and returns what a correct monitor must have done by now: the MACs of
// the ready Docker endpoints, sorted, and the routes through them in the
// form and order the reconciler pushes them. It is the oracle the end-state
// tests compare a running monitor against.
func Implied(t testing.TB, sandboxPath, dockerdPath string) (macs []string, routes []*hotplug.Route) {
	t.Helper()
	mon, err := netmon.New(netmon.Config{NetNSPath: sandboxPath, DockerdNetNS: dockerdPath})
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	if err := mon.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap := mon.Snapshot()
	devices, names := map[int][]netip.Prefix{}, map[int]string{}
	for _, d := range matcher.Endpoints(snap) {
		if d.State == matcher.Ready {
			devices[d.Index] = matcher.RoutableAddrs(snap.Links[d.Index])
			names[d.Index] = d.Name
			macs = append(macs, snap.Links[d.Index].MAC.String())
		}
	}
	slices.Sort(macs)
	keep, _ := matcher.Routes(snap, devices)
	for _, r := range keep {
		routes = append(routes, hotplug.RouteFromView(r, names[r.LinkIndex]))
	}
	return macs, routes
}
