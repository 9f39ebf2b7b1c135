package guest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/internal/nsfs"
)

// The client side of Agent.ServeToken: a test proves that traffic reached
// the guest (and not the sandbox netns' own stack, where nothing listens) by
// reading a random token the guest alone knows, from another netns.

// DialFrom connects to addr over TCP from the network namespace at nsPath.
// The socket is created on a fresh goroutine locked to its thread, which
// enters the netns and goes back before it is unlocked (a socket stays in
// the netns it was created in); if going back fails the thread stays locked
// and dies with its goroutine. timeout bounds the connect.
func DialFrom(ctx context.Context, nsPath, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := nsfs.DoPath(nsPath, func() error {
		dctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var d net.Dialer
		var err error
		c, err = d.DialContext(dctx, "tcp", addr)
		return err
	})
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	return c, nil
}

// ProbeToken makes one attempt: connect from nsPath to addr within timeout
// and read one line (the token) within the same bound.
func ProbeToken(ctx context.Context, nsPath, addr string, timeout time.Duration) (string, error) {
	start := time.Now()
	c, err := DialFrom(ctx, nsPath, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(start.Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

// ReadToken reads the token served at addr from nsPath, retrying every
// `every` until one attempt succeeds or ctx ends. Each attempt's connect
// and read are bounded by attempt. The first SYN may wait for ARP; until
// the NIC is plugged the sandbox netns answers with a reset.
func ReadToken(ctx context.Context, nsPath, addr string, attempt, every time.Duration) (string, error) {
	var last error
	for {
		tok, err := ProbeToken(ctx, nsPath, addr, attempt)
		if err == nil {
			return tok, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("read token from %s in %s: %w (last error: %v)", addr, nsPath, ctx.Err(), last)
		case <-time.After(every):
		}
	}
}

// WaitInterfaces asks the agent for the guest's interfaces every `every`
// until ok returns nil, and returns that list; at ctx's end it returns ok's
// last complaint.
func (a *Agent) WaitInterfaces(ctx context.Context, every time.Duration, ok func([]*guestproto.Interface) error) ([]*guestproto.Interface, error) {
	var last error
	for {
		infs, err := a.ListInterfaces(ctx)
		if err == nil {
			if err = ok(infs); err == nil {
				return infs, nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return infs, fmt.Errorf("guest interfaces: %w (last: %v)", ctx.Err(), last)
		case <-time.After(every):
		}
	}
}

// WaitLinks asks the guest's kernel for its links every `every` until ok
// returns nil, and returns that list; at ctx's end it returns ok's last
// complaint.
func (a *Agent) WaitLinks(ctx context.Context, every time.Duration, ok func([]*guestproto.Link) error) ([]*guestproto.Link, error) {
	var last error
	for {
		ls, err := a.Links(ctx)
		if err == nil {
			if err = ok(ls); err == nil {
				return ls, nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return ls, fmt.Errorf("guest links: %w (last: %v)", ctx.Err(), last)
		case <-time.After(every):
		}
	}
}

// WaitRoutes is WaitLinks for the guest's routes (every table).
func (a *Agent) WaitRoutes(ctx context.Context, every time.Duration, ok func([]*guestproto.KernelRoute) error) ([]*guestproto.KernelRoute, error) {
	var last error
	for {
		rs, err := a.KernelRoutes(ctx)
		if err == nil {
			if err = ok(rs); err == nil {
				return rs, nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return rs, fmt.Errorf("guest routes: %w (last: %v)", ctx.Err(), last)
		case <-time.After(every):
		}
	}
}

// FindInterface returns the interface with this MAC (any case), or nil.
func FindInterface(infs []*guestproto.Interface, mac string) *guestproto.Interface {
	for _, inf := range infs {
		if inf != nil && strings.EqualFold(inf.HwAddr, mac) {
			return inf
		}
	}
	return nil
}

// FindLink returns the guest link with this MAC (any case) and the lowest
// index, or nil.
func FindLink(ls []*guestproto.Link, mac string) *guestproto.Link {
	for _, l := range ls {
		if l != nil && strings.EqualFold(l.MAC, mac) {
			return l
		}
	}
	return nil
}

// LinkNamed returns the guest link named name, or nil.
func LinkNamed(ls []*guestproto.Link, name string) *guestproto.Link {
	for _, l := range ls {
		if l != nil && l.Name == name {
			return l
		}
	}
	return nil
}

// LinkHasAddress reports whether l carries address/prefixLen.
func LinkHasAddress(l *guestproto.Link, address string, prefixLen int) bool {
	if l == nil {
		return false
	}
	for _, a := range l.Addrs {
		if a != nil && a.Address == address && a.PrefixLen == prefixLen {
			return true
		}
	}
	return false
}

// HasAddress reports whether inf carries address/prefixLen.
func HasAddress(inf *guestproto.Interface, address string, prefixLen int) bool {
	if inf == nil {
		return false
	}
	for _, a := range inf.IPAddresses {
		if a != nil && a.Address == address && a.Mask == fmt.Sprint(prefixLen) {
			return true
		}
	}
	return false
}
