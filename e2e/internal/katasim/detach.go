package katasim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// RemoveInterface and HotDetach of Kata 4.1 (virtcontainers/sandbox.go
// RemoveInterface 1291-1307, network_linux.go RemoveEndpoints 664-710,
// removeSingleEndpoint 263-307, veth_endpoint.go HotDetach 158-178).

// RemoveInterface implements hotplug.Sandbox like Sandbox.RemoveInterface:
// the FIRST endpoint whose attach-time MAC equals inf.HwAddr as strings
// (lowercase; an uppercase MAC matches nothing) is hot-detached; the result
// is (nil, nil) whether it was removed, not found, or its detach failed
// (R37, R38). Kata never asks the agent: the guest NIC goes with the PCI
// unplug (R36).
func (s *Sandbox) RemoveInterface(ctx context.Context, inf *hotplug.Interface) (res *hotplug.Interface, err error) {
	c := &Call{Method: "RemoveInterface", Arg: inf.Clone(), Start: time.Now()}
	defer func() { c.Result, c.Err = res.Clone(), err; s.record(c) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ep := range s.eps {
		if ep.HwAddr == inf.HwAddr { // a nil inf panics here, as in Kata
			c.logf("Hot detaching endpoint (type %s)", ep.Kind)
			_ = s.removeEndpoints(ctx, c, []*Endpoint{ep})
			break
		}
	}
	return nil, nil
}

// removeEndpoints is RemoveEndpoints with an explicit list: endpoints not
// in the list (by MAC) are skipped; each failure is logged ("Error removing
// endpoint") and the next goes on; it returns nil. The error returned here
// is only the last failure, for the rollback's log line.
func (s *Sandbox) removeEndpoints(ctx context.Context, c *Call, list []*Endpoint) error {
	var last error
	for _, ep := range list {
		if s.findEndpoint(ep.HwAddr) < 0 {
			continue
		}
		if err := s.removeSingleEndpoint(ctx, c, ep); err != nil {
			c.logf("Error removing endpoint %s : %v", ep.Name, err)
			c.swallow(err)
			last = err
		}
	}
	return last
}

func (s *Sandbox) findEndpoint(mac string) int {
	for i, ep := range s.eps {
		if ep.HwAddr == mac {
			return i
		}
	}
	return -1
}

// removeSingleEndpoint: the endpoint's index by MAC, its HotDetach, and
// only if that worked, out of the list.
func (s *Sandbox) removeSingleEndpoint(ctx context.Context, c *Call, ep *Endpoint) error {
	if s.findEndpoint(ep.HwAddr) < 0 {
		return errors.New("Endpoint not found")
	}
	if err := s.hotDetach(c, ep); err != nil {
		return err
	}
	if i := s.findEndpoint(ep.HwAddr); i >= 0 {
		s.eps = append(s.eps[:i], s.eps[i+1:]...)
	}
	return nil
}

// hotDetach is the endpoint's HotDetach.
//
// As shipped: nothing at all when Kata did not create the netns (R40;
// tap endpoints have no such check); else the tap plumbing is torn down
// first (its failure only logged: "Error un-bridging virtual ep"), which
// finds the link BY NAME and sets it DOWN (R41), and only then is the
// device removed from QEMU, whose tap is already gone (R39).
//
// With FixDetachOrder: QEMU first, then the plumbing (a hypervisor
// failure returns before it, the endpoint kept); FixLinkByIndex finds the
// link by index, FixKeepLinkUp leaves it up, FixDetachNotCreatedNetNS
// detaches in a netns Kata did not create.
func (s *Sandbox) hotDetach(c *Call, ep *Endpoint) error {
	if s.opts.NetNSNotCreated && ep.Kind != "tap" && !s.has(FixDetachNotCreatedNetNS) {
		c.logf("HotDetach: the netns was not created by Kata: nothing done")
		return nil
	}
	t := time.Now()
	unbridge := func() {
		if err := s.xDisconnect(ep, true); err != nil {
			c.logf("Error un-bridging virtual ep: %v", err)
			c.swallow(fmt.Errorf("un-bridging %s: %w", ep.Name, err))
		}
		t = c.phase(map[Model]string{TCFilter: "tc+tap removed", MacVTap: "macvtap removed"}[ep.Model], t)
	}
	if !s.has(FixDetachOrder) {
		unbridge()
	}
	if err := s.hotplugRemoveDevice(c, ep); err != nil {
		c.logf("Error detach virtual ep: %v", err)
		return err
	}
	t = time.Now()
	if s.has(FixDetachOrder) {
		unbridge()
	}
	return nil
}
