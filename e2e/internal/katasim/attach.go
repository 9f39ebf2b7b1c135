package katasim

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// AddInterface and the endpoint bookkeeping of Kata 4.1
// (virtcontainers/sandbox.go AddInterface 1253-1288, network_linux.go
// addSingleEndpoint 130-261, AddEndpoints 625-660).

// AddInterface implements hotplug.Sandbox like Sandbox.AddInterface:
//   - the request is checked (MAC, addresses) and the link is looked up by
//     inf.Name only inside the endpoint's attach (R14);
//   - a failed attach makes Kata forget every endpoint, as shipped; with
//     FixForgetFailedOnly only the failed one, its tap and tc undone (R15);
//   - inf.DevicePath (the caller's struct) is set to the PCI path of the
//     FIRST endpoint as shipped, of the new one with FixPCIPath (R17);
//   - the agent's update_interface is retried while it says "Link not
//     found" (R46); if it fails, the LAST endpoint is hot-detached as
//     shipped (R16), the one just added with FixForgetFailedOnly;
//   - the result is the agent's answer: the request echoed (R18).
func (s *Sandbox) AddInterface(ctx context.Context, inf *hotplug.Interface) (res *hotplug.Interface, err error) {
	c := &Call{Method: "AddInterface", Arg: inf.Clone(), Start: time.Now()}
	defer func() { c.Result, c.Err = res.Clone(), err; s.record(c) }()
	ni, err := generateNetInfo(inf) // a nil inf panics here, as in Kata
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	added, err := s.addEndpoints(ctx, c, ni)
	if err != nil {
		return nil, err
	}
	if s.has(FixPCIPath) {
		inf.DevicePath = added.PCIPath
	} else {
		inf.DevicePath = s.eps[0].PCIPath
	}
	res, err = s.updateInterface(ctx, c, inf)
	if err != nil {
		s.rollback(ctx, c, added)
		return nil, err
	}
	return res, nil
}

// rollback is AddInterface's deferred undo after the agent failed: hot-
// detach the endpoint just added (FixForgetFailedOnly) or, as shipped, the
// last endpoint of the list (eps[len(eps)-1], which panics on an empty
// list). As shipped the error line is logged even when the detach worked
// (the condition tests err, not errDetach).
func (s *Sandbox) rollback(ctx context.Context, c *Call, added *Endpoint) {
	ep := added
	if !s.has(FixForgetFailedOnly) {
		ep = s.eps[len(s.eps)-1]
	}
	err := s.removeEndpoints(ctx, c, []*Endpoint{ep})
	if err != nil || !s.has(FixForgetFailedOnly) {
		c.logf("rollback hot attaching endpoint failed (endpoint %s): %v", ep.Name, err)
	}
}

// addEndpoints is AddEndpoints with one NetworkInfo: the endpoint added,
// or the error, after which Kata as shipped has forgotten every endpoint
// (n.eps = nil).
func (s *Sandbox) addEndpoints(ctx context.Context, c *Call, ni netInfo) (*Endpoint, error) {
	ep, err := s.addSingleEndpoint(ctx, c, ni)
	if err != nil {
		if !s.has(FixForgetFailedOnly) {
			s.eps = nil
		}
		return nil, err
	}
	return ep, nil
}

// addSingleEndpoint picks the tap index and the endpoint kind, hot-attaches
// it (xConnect, then the hypervisor) and appends it to the list.
func (s *Sandbox) addSingleEndpoint(ctx context.Context, c *Call, ni netInfo) (*Endpoint, error) {
	idx, err := s.tapIndex()
	if err != nil {
		return nil, err
	}
	ep := &Endpoint{
		ID: newUUID(), Model: s.opts.Model, Name: ni.name, TapIndex: idx,
		TapName: fmt.Sprintf("tap%d_kata", idx), NetdevID: fmt.Sprintf("br%d_kata", idx),
		VirtMAC: randomPrivateMAC(), props: ni,
	}
	ep.DeviceID = "virtio-" + ep.ID
	if ep.Name == "" {
		ep.Name = fmt.Sprintf("eth%d", idx)
	}
	if vhostUserSocket(ni) != "" {
		// A vhost-user endpoint cannot be hot-attached.
		return nil, fmt.Errorf("VhostUserEndpoint does not support Hot attach")
	}
	switch ni.kind {
	case "veth", "device":
		ep.Kind = "virtual"
	case "macvlan":
		ep.Kind = "macvlan"
	case "ipvlan":
		ep.Kind, ep.Model = "ipvlan", TCFilter // ipvlan_endpoint.go: the TC model, always
	case "macvtap":
		return nil, fmt.Errorf("MacvtapEndpoint does not support Hot attach")
	case "tap":
		ep.Kind = "tap"
	case "tuntap":
		if ni.scanned {
			// A scan knows the link: Kata makes a TuntapEndpoint of a
			// tap-mode tun. Not modelled (Docker makes no such link).
			return nil, fmt.Errorf("katasim: tuntap endpoints found by a scan are not modelled (%s)", ni.name)
		}
		if s.has(FixNoTuntapPanic) {
			return nil, fmt.Errorf("tuntap interface %s: link unknown, cannot tell its tun/tap mode", ni.name)
		}
		// generateNetInfo never sets Link, so Kata's tuntap branch
		// leaves the endpoint nil and calls SetProperties on it (R23).
		var nilEndpoint *Endpoint
		nilEndpoint.props = ni
	default:
		return nil, fmt.Errorf("Unsupported network interface: %s", ni.kind)
	}
	if err := s.hotAttach(ctx, c, ep); err != nil {
		return nil, err
	}
	s.eps = append(s.eps, ep)
	return ep, nil
}

// hotAttach is the endpoint's HotAttach (veth_endpoint.go 140-155): the
// tap plumbing, then the hypervisor. An error in either is returned; as
// shipped nothing is undone, with FixForgetFailedOnly a failed hot-plug
// undoes the plumbing (the link stays up), with FixUndoPartialTap a failed
// plumbing undoes itself (setupTCFiltering, tapNetworkPair).
func (s *Sandbox) hotAttach(ctx context.Context, c *Call, ep *Endpoint) error {
	t := time.Now()
	if err := s.xConnect(c, ep); err != nil {
		c.logf("Error bridging virtual ep: %v", err)
		return err
	}
	t = c.phase(map[Model]string{TCFilter: "tap+tc", MacVTap: "macvtap"}[ep.Model], t)
	if err := s.hotplugAddDevice(ctx, c, ep); err != nil {
		c.logf("Error attach virtual ep: %v", err)
		if s.has(FixForgetFailedOnly) {
			if uerr := s.xDisconnect(ep, false); uerr != nil {
				c.logf("Error un-bridging virtual ep: %v", uerr)
			}
		}
		return err
	}
	return nil
}

var digits = regexp.MustCompile("[0-9]+")

// tapIndex is addSingleEndpoint's index rule (R12): len(eps), or the first
// run of digits in the LAST endpoint's name plus one if that is larger; a
// last name without digits is an error. Live taps can collide with it
// without any failure: [eth0 tap0, eth1 tap1] - eth0 + eth0 gives tap2,
// then eth2 gives tap2 again. With FixFreeTapIndex: the lowest index no
// endpoint's tap or netdev uses; with FixSkipExistingTap too, whose tap
// name no link of the netns has (a tap a failed attach left, a stale one).
func (s *Sandbox) tapIndex() (int, error) {
	if s.has(FixFreeTapIndex) {
		used := map[int]bool{}
		for _, ep := range s.eps {
			used[ep.TapIndex] = true
		}
		for idx := 0; ; idx++ {
			if used[idx] {
				continue
			}
			if s.has(FixSkipExistingTap) {
				name := fmt.Sprintf("tap%d_kata", idx)
				_, err := s.handle.LinkByName(name)
				if err == nil {
					continue
				}
				if !linkGone(err) {
					return 0, fmt.Errorf("Could not look up link %s: %w", name, err)
				}
			}
			return idx, nil
		}
	}
	idx := len(s.eps)
	if len(s.eps) > 0 {
		n, err := strconv.ParseInt(digits.FindString(s.eps[len(s.eps)-1].Name), 10, 64)
		if err != nil {
			return 0, err
		}
		if idx <= int(n) {
			idx = int(n) + 1
		}
	}
	return idx, nil
}

// vhostUserSocket is vhostUserSocketPath: a vhost-user socket named after
// one of the request's addresses, in the shim's /tmp.
func vhostUserSocket(ni netInfo) string {
	for _, a := range ni.addrs {
		p := fmt.Sprintf("/tmp/vhostuser_%s/vhu.sock", a.Address)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
