package katarules

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// fakeKata is Kata's sandbox as the adapter sees it: a guest whose NICs
// AddInterface adds (as the agent reports them: upper-case MACs, inverted
// families, R68), RescanNetwork attaching every link in links, and hooks
// that make a call fail. It records every call.
type fakeKata struct {
	mu    sync.Mutex
	calls []string
	guest []*hotplug.Interface
	// links are the netns's links RescanNetwork finds.
	links []*hotplug.Interface
	// fail, if set, is asked before every call; an error is returned.
	fail func(op string) error
	// lastRemove is the last RemoveInterface request; lastRoutes the last
	// UpdateRoutes request.
	lastRemove *hotplug.Interface
	lastRoutes []*hotplug.Route
}

var _ Kata = (*fakeKata)(nil)

func (k *fakeKata) call(op string) error {
	k.calls = append(k.calls, op)
	if k.fail != nil {
		return k.fail(op)
	}
	return nil
}

// asAgentReports returns inf as the agent lists it.
func asAgentReports(inf *hotplug.Interface) *hotplug.Interface {
	g := inf.Clone()
	g.HwAddr = strings.ToUpper(g.HwAddr)
	for _, a := range g.IPAddresses {
		a.Family = 1 - a.Family
	}
	return g
}

func (k *fakeKata) AddInterface(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call("AddInterface " + inf.Name); err != nil {
		return nil, err
	}
	k.guest = append(k.guest, asAgentReports(inf))
	return inf.Clone(), nil
}

func (k *fakeKata) RemoveInterface(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lastRemove = inf.Clone()
	if err := k.call("RemoveInterface " + inf.HwAddr); err != nil {
		return nil, err
	}
	for i, g := range k.guest {
		// Kata compares the MAC as a string (sandbox.go:1293).
		if strings.ToLower(g.HwAddr) == inf.HwAddr {
			k.guest = append(k.guest[:i], k.guest[i+1:]...)
			break
		}
	}
	return nil, nil
}

func (k *fakeKata) ListInterfaces(context.Context) ([]*hotplug.Interface, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call("ListInterfaces"); err != nil {
		return nil, err
	}
	out := []*hotplug.Interface{{Name: "lo", HwAddr: "00:00:00:00:00:00"}}
	for _, g := range k.guest {
		out = append(out, g.Clone())
	}
	return out, nil
}

func (k *fakeKata) UpdateRoutes(_ context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lastRoutes = routes
	if err := k.call(fmt.Sprintf("UpdateRoutes %d", len(routes))); err != nil {
		return nil, err
	}
	return routes, nil
}

// RescanNetwork does what Kata's does (sandbox.go:341): nothing when Kata
// has an endpoint, else attach every link of the netns.
func (k *fakeKata) RescanNetwork(context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.call("RescanNetwork"); err != nil {
		return err
	}
	if len(k.guest) > 0 {
		return nil
	}
	for _, l := range k.links {
		k.guest = append(k.guest, asAgentReports(l))
	}
	return nil
}

func (k *fakeKata) Calls() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.calls...)
}
