package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
)

// Agent talks to the guest agent over the serial port's host-side socket.
type Agent struct {
	conn net.Conn

	wmu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan *guestproto.Response
	readErr error
	closed  chan struct{}
}

// AgentError is an error the guest agent reported.
type AgentError struct {
	Cmd string
	Msg string
}

func (e *AgentError) Error() string { return "guest agent " + e.Cmd + ": " + e.Msg }

// dialAgent connects to QEMU's listening chardev socket, retrying until ctx
// ends.
func dialAgent(ctx context.Context, path string) (*Agent, error) {
	conn, err := dialUnixRetry(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("dial agent socket: %w", err)
	}
	a := &Agent{conn: conn, pending: map[uint64]chan *guestproto.Response{}, closed: make(chan struct{})}
	go a.read()
	return a, nil
}

func (a *Agent) read() {
	r := bufio.NewReaderSize(a.conn, 1<<16)
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var resp guestproto.Response
		if json.Unmarshal(line, &resp) != nil || resp.Re == 0 {
			continue // an echo or noise from before the agent set the port raw
		}
		a.mu.Lock()
		ch := a.pending[resp.Re]
		delete(a.pending, resp.Re)
		a.mu.Unlock()
		if ch != nil {
			ch <- &resp
		}
	}
	a.mu.Lock()
	a.readErr = fmt.Errorf("guest agent connection: %w", err)
	for id, ch := range a.pending {
		close(ch)
		delete(a.pending, id)
	}
	close(a.closed)
	a.mu.Unlock()
}

// Call sends req (its ID is set here) and waits for the answer until ctx
// ends. An error the agent reported is an *AgentError.
func (a *Agent) Call(ctx context.Context, req *guestproto.Request) (*guestproto.Response, error) {
	ch := make(chan *guestproto.Response, 1)
	a.mu.Lock()
	if a.readErr != nil {
		err := a.readErr
		a.mu.Unlock()
		return nil, err
	}
	a.nextID++
	req.ID = a.nextID
	a.pending[req.ID] = ch
	a.mu.Unlock()
	forget := func() {
		a.mu.Lock()
		delete(a.pending, req.ID)
		a.mu.Unlock()
	}
	b, err := json.Marshal(req)
	if err != nil {
		forget()
		return nil, err
	}
	// A leading newline ends any half line still sitting in the UART.
	b = append(append([]byte{'\n'}, b...), '\n')
	a.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = a.conn.SetWriteDeadline(dl)
	} else {
		_ = a.conn.SetWriteDeadline(time.Time{})
	}
	_, err = a.conn.Write(b)
	a.wmu.Unlock()
	if err != nil {
		forget()
		return nil, fmt.Errorf("guest agent %s: %w", req.Cmd, err)
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			a.mu.Lock()
			err := a.readErr
			a.mu.Unlock()
			return nil, fmt.Errorf("guest agent %s: %w", req.Cmd, err)
		}
		if resp.Error != "" {
			return resp, &AgentError{Cmd: req.Cmd, Msg: resp.Error}
		}
		return resp, nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("guest agent %s: %w", req.Cmd, ctx.Err())
	}
}

// waitReady pings until the agent answers or ctx ends. Pings sent before the
// agent opened its port are lost or arrive garbled: each attempt has its own
// short deadline.
func (a *Agent) waitReady(ctx context.Context) error {
	for {
		pctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		_, err := a.Call(pctx, &guestproto.Request{Cmd: guestproto.CmdPing})
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("guest agent did not answer: %w", ctx.Err())
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
	}
}

// Ping checks that the agent answers.
func (a *Agent) Ping(ctx context.Context) error {
	_, err := a.Call(ctx, &guestproto.Request{Cmd: guestproto.CmdPing})
	return err
}

// UpdateInterface is Kata's update_interface (guestproto.CmdUpdateInterface;
// wait is the agent's hotplug timeout for a DevicePath, 0: its default of
// 3 s). It returns the agent's answer (the request echoed), what the agent
// logged about the MAC reconciliation, and how long it waited for the NIC.
func (a *Agent) UpdateInterface(ctx context.Context, inf *guestproto.Interface, wait time.Duration) (*guestproto.Interface, *guestproto.Response, error) {
	resp, err := a.Call(ctx, &guestproto.Request{Cmd: guestproto.CmdUpdateInterface, Interface: inf, TimeoutMS: wait.Milliseconds()})
	if resp == nil {
		return nil, nil, err
	}
	return resp.Interface, resp, err
}

// NICWait is how long update_interface waited for the NIC at DevicePath.
func NICWait(resp *guestproto.Response) time.Duration {
	if resp == nil {
		return 0
	}
	return time.Duration(resp.NICWaitUS) * time.Microsecond
}

// ListInterfaces is Kata's list_interfaces: every link, uppercase MACs,
// address families inverted.
func (a *Agent) ListInterfaces(ctx context.Context) ([]*guestproto.Interface, error) {
	resp, err := a.Call(ctx, &guestproto.Request{Cmd: guestproto.CmdListInterfaces})
	if err != nil {
		return nil, err
	}
	return resp.Interfaces, nil
}

// UpdateRoutes is Kata's update_routes: it adds or replaces routes and
// returns Kata's list_routes.
func (a *Agent) UpdateRoutes(ctx context.Context, routes []*guestproto.Route) ([]*guestproto.Route, error) {
	resp, err := a.Call(ctx, &guestproto.Request{Cmd: guestproto.CmdUpdateRoutes, Routes: routes})
	if err != nil {
		return nil, err
	}
	return resp.Routes, nil
}

// ListRoutes is Kata's list_routes: the main table, with every gateway
// route's Dest rewritten to "0.0.0.0" or "::1" (guestproto.Route).
func (a *Agent) ListRoutes(ctx context.Context) ([]*guestproto.Route, error) {
	resp, err := a.Call(ctx, &guestproto.Request{Cmd: guestproto.CmdListRoutes})
	if err != nil {
		return nil, err
	}
	return resp.Routes, nil
}

// Links returns the guest's links as its kernel has them (not Kata's
// view).
func (a *Agent) Links(ctx context.Context) ([]*guestproto.Link, error) {
	resp, err := a.Call(ctx, &guestproto.Request{Cmd: guestproto.CmdInspectLinks})
	if err != nil {
		return nil, err
	}
	return resp.Links, nil
}

// KernelRoutes returns every route of every table of the guest as its
// kernel has them (not Kata's view).
func (a *Agent) KernelRoutes(ctx context.Context) ([]*guestproto.KernelRoute, error) {
	resp, err := a.Call(ctx, &guestproto.Request{Cmd: guestproto.CmdInspectRoutes})
	if err != nil {
		return nil, err
	}
	return resp.KernelRoutes, nil
}

// ServeToken makes the guest listen on TCP port and answer every connection
// with token and a newline. It returns once the guest listens.
func (a *Agent) ServeToken(ctx context.Context, port int, token string) error {
	_, err := a.Call(ctx, &guestproto.Request{Cmd: guestproto.CmdServeToken, Port: port, Token: token})
	return err
}

// Close closes the connection.
func (a *Agent) Close() error { return a.conn.Close() }
