//go:build linux

package benchguest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerguest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/e2e/internal/logrec"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// ---------------------------------------------------------------------------
// sandbox: a guest behind a container (dockerguest), katasim on the guest

type sandbox struct {
	*dockerguest.Sandbox
	sb *katasim.Sandbox
}

// newSandbox runs the container and boots the guest; close (or the
// benchmark's end) stops both. One guest runs at a time: close each round's.
func newSandbox(b *testing.B, env *dockerenv.Env, img, network string) *sandbox {
	b.Helper()
	s := &sandbox{Sandbox: dockerguest.Run(b, env, img, network)}
	opts := benchOptions()
	opts.NetNS = s.NetNS
	sb, err := katasim.New(s.VM, opts)
	if err != nil {
		s.close(b)
		b.Fatal(err)
	}
	s.sb = sb
	return s
}

// benchOptions is the runtime the benchmark measures: Kata 4.1 with this
// project's patch series, tcfilter model (katasim's default). Kata 4.1 as
// shipped refuses a second NIC (the monitor's OneNIC), so the connect
// rounds cannot run on it.
func benchOptions() katasim.Options {
	return katasim.Options{Kata: katasim.Patched, Model: katasim.TCFilter}
}

func (s *sandbox) close(b *testing.B) {
	if s.sb != nil {
		s.sb.Close()
	}
	s.Sandbox.Close(b)
}

// startMonitor calls shimhook.Start as the shim would for s, recording the
// monitor's log; stop stops it and fails b for every error it logged.
func startMonitor(b *testing.B, ctx context.Context, s *sandbox) (m *shimhook.Monitor, stop func()) {
	log := logrec.New(b)
	m, err := shimhook.Start(ctx, s.ShimConfig(s.sb, log.Log))
	if err != nil {
		b.Fatal(err)
	}
	if m == nil {
		b.Fatal("shimhook.Start returned no monitor")
	}
	return m, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m.Stop(ctx)
		log.NoErrors(b)
	}
}

// ---------------------------------------------------------------------------
// helpers

// readToken probes addr from nsPath until it answers with token. Before
// every attempt it deletes the bridge's neighbour entry for the address, so
// that each attempt asks "would a client that starts now get an answer":
// without that, an ARP request that arrives while the NIC is being plugged
// (tc already redirects to the tap, the guest has no address yet) goes
// unanswered and the bridge asks again only after retrans_time (1 s), which
// would measure the kernel's ARP timer instead of the guest.
func readToken(ctx context.Context, nsPath, bridge, addr, token string, limit time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	forget, closeFn, err := neighForgetter(nsPath, bridge, addr)
	if err != nil {
		return time.Time{}, err
	}
	defer closeFn()
	var last error
	for {
		if err := forget(); err != nil {
			return time.Time{}, err
		}
		got, err := guest.ProbeToken(ctx, nsPath, addr, probeTimeout)
		if err == nil && got == token {
			return time.Now(), nil
		}
		if err == nil {
			err = fmt.Errorf("token %q, want %q", got, token)
		}
		last = err
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("probe %s from %s: %w (last: %v)", addr, nsPath, ctx.Err(), last)
		case <-time.After(probeEvery):
		}
	}
}

// neighForgetter returns a function that deletes the neighbour entry of
// addr's IP on bridge (a netlink socket bound to nsPath: no thread enters
// the netns).
func neighForgetter(nsPath, bridge, addr string) (forget func() error, closeFn func(), err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	ip := net.ParseIP(host)
	h, err := handleAt(nsPath)
	if err != nil {
		return nil, nil, err
	}
	br, err := h.LinkByName(bridge)
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	nb := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip}
	forget = func() error {
		if err := h.NeighDel(nb); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete neighbour %v on %s: %w", ip, bridge, err)
		}
		return nil
	}
	return forget, h.Close, nil
}

// waitCall waits for the first recorded call of method after index mark
// (whose interface is named name, if name is set).
func waitCall(ctx context.Context, sb *katasim.Sandbox, mark int, method, name string) (katasim.Call, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		calls := sb.Calls()
		for _, c := range calls[min(mark, len(calls)):] {
			if c.Method != method {
				continue
			}
			if name != "" && argName(c) != name {
				continue
			}
			return c, nil
		}
		select {
		case <-ctx.Done():
			return katasim.Call{}, fmt.Errorf("no %s(%s) call: %w", method, name, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// callBefore returns the first recorded call of method after index mark
// that started before t, without waiting.
func callBefore(sb *katasim.Sandbox, mark int, method string, t time.Time) (katasim.Call, bool) {
	calls := sb.Calls()
	for _, c := range calls[min(mark, len(calls)):] {
		if c.Method == method && c.Start.Before(t) {
			return c, true
		}
	}
	return katasim.Call{}, false
}

// settle waits until the sandbox has had no call for 250 ms (the route
// update that follows an attach or a detach), so rounds do not overlap.
func settle(ctx context.Context, sb *katasim.Sandbox) {
	n, since := len(sb.Calls()), time.Now()
	for time.Since(since) < 250*time.Millisecond && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		if m := len(sb.Calls()); m != n {
			n, since = m, time.Now()
		}
	}
}

func argName(c katasim.Call) string {
	if inf, ok := c.Arg.(*hotplug.Interface); ok && inf != nil {
		return inf.Name
	}
	return ""
}

func endpointIndex(sb *katasim.Sandbox, name string) int {
	for _, ep := range sb.Endpoints() {
		if ep.Name == name {
			return ep.LinkIndex
		}
	}
	return -1
}

func endpointMAC(sb *katasim.Sandbox, name string) string {
	for _, ep := range sb.Endpoints() {
		if ep.Name == name {
			return ep.HwAddr
		}
	}
	return ""
}

func phase(c katasim.Call, name string) time.Duration {
	for _, p := range c.Phases {
		if p.Name == name {
			return p.Took
		}
	}
	return 0
}

// flushNeigh deletes the IPv4 neighbour entries of bridge in the netns.
func flushNeigh(nsPath, bridge string) error {
	h, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	br, err := h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	neighs, err := h.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, nb := range neighs {
		if nb.State&netlink.NUD_PERMANENT != 0 {
			continue
		}
		if err := h.NeighDel(&nb); err != nil && err != unix.ENOENT {
			return fmt.Errorf("delete neighbour %v on %s: %w", nb.IP, bridge, err)
		}
	}
	return nil
}
