package katasim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/hotplug"
)

// The runtime's side of the agent calls (virtcontainers/kata_agent.go).

// RPCError is an error the agent answered, as Kata's runtime returns it: a
// ttrpc status ("rpc error: code = Internal desc = update interface: ...").
type RPCError struct {
	Code string // "Internal", "InvalidArgument"
	Desc string
}

func (e *RPCError) Error() string { return "rpc error: code = " + e.Code + " desc = " + e.Desc }

// rpcError turns the test agent's error into the one Kata's runtime sees:
// the agent's messages are Kata's, the status code is Internal except for
// an empty request (map_ttrpc_err in rpc.rs).
func rpcError(err error) error {
	var ae *guest.AgentError
	if !errors.As(err, &ae) {
		return err
	}
	code := "Internal"
	if strings.HasPrefix(ae.Msg, "empty ") {
		code = "InvalidArgument"
	}
	return &RPCError{Code: code, Desc: ae.Msg}
}

// Kata's updateInterface retry (kata_agent.go 614-657, utils/retry): while
// the agent's error says "Link not found", up to 20 attempts, sleeping
// 20 ms * 2^n plus up to 100 ms of jitter after attempt n. The sleep does
// not watch the context; a cancelled context ends the loop at the next
// attempt (its error is not "Link not found").
const (
	updateInterfaceAttempts = 20
	retryDelay              = 20 * time.Millisecond
	retryMaxJitter          = 100 * time.Millisecond
)

// updateInterface is kataAgent.updateInterface: the agent call with Kata's
// retry. It returns the agent's answer (the request echoed).
func (s *Sandbox) updateInterface(ctx context.Context, c *Call, inf *hotplug.Interface) (*hotplug.Interface, error) {
	for n := 0; ; n++ {
		t := time.Now()
		got, resp, err := s.vm.Agent.UpdateInterface(ctx, toGuestInterface(inf), s.opts.NICWait)
		if resp != nil {
			c.Phases = append(c.Phases, Phase{Name: "guest NIC appeared", Took: guest.NICWait(resp)})
			for _, note := range resp.Notes {
				c.logf("agent: %s", note)
			}
		}
		c.phase("agent update_interface", t)
		if err == nil {
			return fromGuestInterface(got), nil
		}
		err = rpcError(err)
		if !strings.Contains(err.Error(), "Link not found") || n == updateInterfaceAttempts-1 {
			c.logf("update interface request failed: %v", err)
			return nil, err
		}
		time.Sleep(retryDelay<<n + rand.N(retryMaxJitter))
	}
}

// netInfo is what Kata's runtime knows of an endpoint's link before it
// attaches it: generateNetInfo's for AddInterface (from the request), the
// scan's for RescanNetwork (from the link).
type netInfo struct {
	name   string
	mac    string // the request's HwAddr (unused by the runtime but for tap endpoints)
	mtu    uint64
	kind   string // the request's Type, or the link's kind in a scan
	flags  uint32 // the link's flags (scan) or the request's RawFlags
	addrs  []*hotplug.IPAddress
	routes []*hotplug.Route // scan only: the link's main-table routes, as Kata converts them
	// scanned: from a scan (the link itself is known); configured: the
	// link has an address (the scan skips it otherwise).
	scanned, configured bool
}

// generateNetInfo is Sandbox.generateNetInfo (sandbox.go 1222-1250): the
// MAC must parse; each address must parse as "%s/%s". Nothing is looked up.
func generateNetInfo(inf *hotplug.Interface) (netInfo, error) {
	if _, err := net.ParseMAC(inf.HwAddr); err != nil {
		return netInfo{}, err
	}
	for _, a := range inf.IPAddresses {
		str := fmt.Sprintf("%s/%s", a.Address, a.Mask)
		if _, err := netlink.ParseAddr(str); err != nil {
			return netInfo{}, fmt.Errorf("could not parse %q: %v", str, err)
		}
	}
	return netInfo{name: inf.Name, mac: inf.HwAddr, mtu: inf.Mtu, kind: inf.Type, flags: inf.RawFlags, addrs: inf.IPAddresses}, nil
}
