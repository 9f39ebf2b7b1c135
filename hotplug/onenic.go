package hotplug

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// Rescanner is a sandbox that can attach, in one step, every configured link
// of its netns, announcing each NIC correctly: Kata's RescanNetwork, which
// gives each endpoint its own PCI path. OneNIC uses it for the networks that
// are there when the sandbox starts.
type Rescanner interface {
	RescanNetwork(ctx context.Context) error
}

// OneNIC wraps a sandbox that configures a hot-plugged NIC correctly only
// while the guest has no other NIC. Kata without the PCI-path fix is one:
// Sandbox.AddInterface announces the FIRST endpoint's PCI path with every
// NIC. Its agent then finds a net device at that path at once (eth0) instead
// of waiting for the new NIC; unless the guest has probed the new NIC
// already, agent 4.1's lookup by MAC misses and its fallback by name fails
// ("No such device", not retried), and Kata's rollback sets the container's
// link down. (For a NIC whose netdev sits right under its PCI function, as
// with VFIO, agent 3.32.0 and later also give that NIC, eth0, the new MAC
// and configuration; a virtio-net NIC's netdev sits under virtioN/ and is
// not touched. docs/kata-model.md, R17 and R53-R58.)
//
// Every AddInterface first lists the guest, then:
//   - a NIC the guest already has with that MAC is returned as is (adopted);
//   - into a guest with no NIC (and no earlier AddInterface of ours still
//     unaccounted for), the call goes through; when the sandbox is a
//     Rescanner, its rescan attaches every configured link at once instead
//     and the NIC is returned from the guest's list;
//   - otherwise the sandbox is not called and the error wraps ErrRefused,
//     with why (say which fix is missing and how to get it).
//
// The other methods pass through. Calls must not overlap; the reconciler
// serialises them.
func OneNIC(sb Sandbox, why string) Sandbox {
	o := &oneNIC{Sandbox: sb, why: why, pending: map[string]bool{}}
	if r, ok := sb.(Rescanner); ok {
		o.rescan = r.RescanNetwork
	}
	return o
}

type oneNIC struct {
	Sandbox
	why    string
	rescan func(context.Context) error // nil unless the sandbox is a Rescanner

	mu sync.Mutex
	// pending holds the MACs of AddInterface calls that went through and
	// were not undone by a RemoveInterface since: the runtime may hold an
	// endpoint for each even where the guest shows no NIC (a call that
	// failed half-way), and its next AddInterface would announce that
	// endpoint's path.
	pending map[string]bool
}

func (o *oneNIC) AddInterface(ctx context.Context, inf *Interface) (*Interface, error) {
	if inf == nil {
		return o.Sandbox.AddInterface(ctx, inf)
	}
	mac := strings.ToLower(inf.HwAddr)
	guest, err := o.Sandbox.ListInterfaces(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach %q (MAC %s): list the guest first: %w", inf.Name, mac, err)
	}
	if g := nicWithMAC(guest, mac); g != nil {
		return g, nil
	}
	others := guestNICs(guest)
	o.mu.Lock()
	for m := range o.pending {
		// Not an earlier try of this very NIC, nor one the guest
		// lists already.
		if m != mac && nicWithMAC(guest, m) == nil {
			others = append(others, m+" (an earlier attach)")
		}
	}
	o.mu.Unlock()
	if len(others) > 0 {
		return nil, fmt.Errorf("%w: attach %q (MAC %s) while the guest has NIC %s: %s",
			ErrRefused, inf.Name, mac, strings.Join(others, ", "), o.why)
	}
	o.mu.Lock()
	o.pending[mac] = true
	o.mu.Unlock()
	if o.rescan == nil {
		return o.Sandbox.AddInterface(ctx, inf)
	}
	if err := o.rescan(ctx); err != nil {
		return nil, fmt.Errorf("attach %q (MAC %s) by rescanning the netns: %w", inf.Name, mac, err)
	}
	guest, err = o.Sandbox.ListInterfaces(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach %q (MAC %s): list the guest after the rescan: %w", inf.Name, mac, err)
	}
	if g := nicWithMAC(guest, mac); g != nil {
		return g, nil
	}
	return nil, fmt.Errorf("attach %q (MAC %s): the rescan did not attach it (guest has %s)",
		inf.Name, mac, strings.Join(guestNICs(guest), ", "))
}

func (o *oneNIC) RemoveInterface(ctx context.Context, inf *Interface) (*Interface, error) {
	out, err := o.Sandbox.RemoveInterface(ctx, inf)
	if err == nil && inf != nil {
		o.mu.Lock()
		delete(o.pending, strings.ToLower(inf.HwAddr))
		o.mu.Unlock()
	}
	return out, err
}

// nicWithMAC returns the guest's NIC with mac, or nil.
func nicWithMAC(infs []*Interface, mac string) *Interface {
	for _, g := range infs {
		if g != nil && strings.EqualFold(g.HwAddr, mac) {
			return g
		}
	}
	return nil
}

// guestNICs names the guest's NICs other than loopback ("eth0 (02:42:...)").
func guestNICs(infs []*Interface) []string {
	var out []string
	for _, g := range infs {
		if g == nil || g.Name == "lo" || g.HwAddr == "" || g.HwAddr == "00:00:00:00:00:00" {
			continue
		}
		out = append(out, fmt.Sprintf("%s (%s)", g.Name, strings.ToLower(g.HwAddr)))
	}
	return out
}
