//go:build linux

package benchguest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

const (
	tokenPort = 8080
	// net2's subnet and the address eth1 gets on every connect (fixed, so
	// the probe can start the moment docker returns).
	net2Subnet = "10.213.7.0/24"
	net2IP     = "10.213.7.10"
	// A probe attempt: connect and read the token within probeTimeout;
	// the next attempt probeEvery later. Under TCG the guest answers a
	// SYN in 1-2 ms, so this bounds the probe's own error to ~20 ms.
	probeTimeout = 15 * time.Millisecond
	probeEvery   = 3 * time.Millisecond
)

func rounds() int {
	if n, err := strconv.Atoi(os.Getenv("KNM_BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 10
}

// BenchmarkGuest is a report, not a timed loop: run it with -benchtime 1x.
func BenchmarkGuest(b *testing.B) {
	begin := time.Now()
	env := dockerenv.Start(b)
	img := env.ImportBusybox(b)
	net1 := dockerenv.UniqueName("knm-bench-a")
	net2 := dockerenv.UniqueName("knm-bench-b")
	env.MustDocker(b, "network", "create", "--driver", "bridge", net1)
	env.MustDocker(b, "network", "create", "--driver", "bridge", "--subnet", net2Subnet, net2)
	n := rounds()
	var report strings.Builder
	fmt.Fprintf(&report, "\n%d rounds; QEMU TCG guest behind katasim (Kata 4.1's calls), 2 host cores; durations p50 / p99 (nearest rank) / max (signed: negative = before the reference)\n", n)

	b.Run("ConnectDisconnect", func(b *testing.B) {
		benchConnectDisconnect(b, env, img, net1, net2, n, &report)
	})
	b.Run("FirstAttach", func(b *testing.B) {
		benchFirstAttach(b, env, img, net1, n, &report)
	})
	// Printed, not logged: the log of a benchmark with sub-benchmarks is not shown.
	fmt.Printf("%s\nbenchmark wall time %v\n", report.String(), time.Since(begin).Round(time.Second))
}

// ---------------------------------------------------------------------------
// connect / disconnect

func benchConnectDisconnect(b *testing.B, env *dockerenv.Env, img, net1, net2 string, n int, report *strings.Builder) {
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	sbx := newSandbox(b, ctx, env, img, net1)
	defer sbx.close()
	rec, err := startRecorder(sbx.netns)
	if err != nil {
		b.Fatal(err)
	}
	defer rec.stop()
	mon, hook := startMonitor(b, ctx, env, sbx)
	if mon == nil {
		b.Fatal("shimhook.Start returned no monitor")
	}
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		mon.Stop(sctx)
	}()
	token := "knm-bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := sbx.vm.Agent.ServeToken(ctx, tokenPort, token); err != nil {
		b.Fatal(err)
	}
	br2 := "br-" + env.MustInspectNetwork(b, net2).ID[:12]
	addr := net.JoinHostPort(net2IP, fmt.Sprint(tokenPort))

	var c, d table
	for i := range n {
		// A neighbour entry left by the previous round names the previous
		// MAC: the bridge would send the probe there (an artefact of
		// reusing the address, not of the system).
		if err := flushNeigh(env.NetNSPath(), br2); err != nil {
			b.Fatal(err)
		}
		mark := len(sbx.sb.Calls())
		t0 := time.Now()
		env.MustDocker(b, "network", "connect", "--ip", net2IP, net2, sbx.ctr)
		t1 := time.Now()
		if _, err := readToken(ctx, env.NetNSPath(), br2, addr, token, 20*time.Second); err != nil {
			b.Fatalf("round %d: %v", i, err)
		}
		tAns := time.Now()
		add, err := waitCall(ctx, sbx.sb, mark, "AddInterface", "eth1")
		if err != nil {
			b.Fatalf("round %d: %v", i, err)
		}
		idx := endpointIndex(sbx.sb, "eth1")
		ev, ok := rec.lastBefore(idx, add.Start)
		if !ok {
			b.Fatalf("round %d: no netlink event for eth1 (ifindex %d) before AddInterface", i, idx)
		}
		c.add("docker network connect (the CLI call)", t1.Sub(t0))
		c.add("connect returned -> guest answers on eth1", tAns.Sub(t1))
		c.add("  decision: last netlink event -> AddInterface start", add.Start.Sub(ev.at))
		c.note("  decision: last netlink event -> AddInterface start", ev.what)
		if l, err := waitCall(ctx, sbx.sb, mark, "ListInterfaces", ""); err == nil && l.Start.Before(add.Start) {
			c.add("    of which ListInterfaces (the guest's NICs, before attaching)", l.Took)
		}
		c.add("  connect returned -> AddInterface start", add.Start.Sub(t1))
		c.add("  AddInterface (hot-plug call), total", add.Took)
		c.add("    host: tap + tc mirred", phase(add, "tap+tc"))
		c.add("    host: QMP getfd + netdev_add + device_add", phase(add, "getfd+netdev_add")+phase(add, "device_add"))
		c.add("    guest: NIC probed (agent saw the link)", phase(add, "guest NIC appeared"))
		c.add("    guest: agent update_interface (incl. the wait)", phase(add, "agent update_interface"))
		c.add("  AddInterface returned -> guest answers", tAns.Sub(add.Start.Add(add.Took)))
		settle(ctx, sbx.sb)

		mark = len(sbx.sb.Calls())
		mac := endpointMAC(sbx.sb, "eth1")
		t2 := time.Now()
		env.MustDocker(b, "network", "disconnect", net2, sbx.ctr)
		t3 := time.Now()
		rm, err := waitCall(ctx, sbx.sb, mark, "RemoveInterface", "")
		if err != nil {
			b.Fatalf("round %d: %v", i, err)
		}
		if rm.Err != nil || rm.Swallowed != nil {
			b.Fatalf("round %d: RemoveInterface: %v %v", i, rm.Err, rm.Swallowed)
		}
		if _, err := sbx.vm.Agent.WaitInterfaces(ctx, 5*time.Millisecond, func(infs []*guestproto.Interface) error {
			if guest.FindInterface(infs, mac) != nil {
				return fmt.Errorf("guest still has %s", mac)
			}
			return nil
		}); err != nil {
			b.Fatalf("round %d: %v", i, err)
		}
		tAgent := time.Now()
		ev, ok = rec.lastBefore(idx, rm.Start)
		if !ok {
			b.Fatalf("round %d: no netlink event for ifindex %d before RemoveInterface", i, idx)
		}
		gone := rm.Start.Add(phase(rm, "device_del+DEVICE_DELETED"))
		d.add("docker network disconnect (the CLI call)", t3.Sub(t2))
		d.add("disconnect returned -> NIC gone from the guest (DEVICE_DELETED)", gone.Sub(t3))
		d.add("disconnect returned -> agent lists no such NIC", tAgent.Sub(t3))
		d.add("  decision: last netlink event -> RemoveInterface start", rm.Start.Sub(ev.at))
		d.note("  decision: last netlink event -> RemoveInterface start", ev.what)
		d.add("  disconnect returned -> RemoveInterface start", rm.Start.Sub(t3))
		d.add("  RemoveInterface (unplug call), total", rm.Took)
		d.add("    guest: device_del -> DEVICE_DELETED", phase(rm, "device_del+DEVICE_DELETED"))
		d.add("    host: netdev_del", phase(rm, "netdev_del"))
		d.add("    host: tc filters, qdiscs, tap removed", phase(rm, "tc+tap removed"))
		settle(ctx, sbx.sb)
	}
	if l := strings.ToLower(sbx.vm.QEMULog()); strings.Contains(l, "tap") || strings.Contains(l, "tun") {
		b.Errorf("QEMU logged a tun/tap error:\n%s", sbx.vm.QEMULog())
	}
	noErrors(b, hook)
	fmt.Fprintf(report, "\n## docker network connect (kata-netmon, %d rounds)\n%s", n, c.render())
	fmt.Fprintf(report, "\n## docker network disconnect (kata-netmon, %d rounds)\n%s", n, d.render())
	b.ReportMetric(ms(c.p50("connect returned -> guest answers on eth1")), "connect-p50-ms")
	b.ReportMetric(ms(d.p50("disconnect returned -> NIC gone from the guest (DEVICE_DELETED)")), "disconnect-p50-ms")
}

// ---------------------------------------------------------------------------
// first attach: kata-netmon's synchronous Start against Kata's RescanNetwork

func benchFirstAttach(b *testing.B, env *dockerenv.Env, img, net1 string, n int, report *strings.Builder) {
	br1 := "br-" + env.MustInspectNetwork(b, net1).ID[:12]
	tables := map[string]*table{"kata-netmon": {}, "upstream": {}}
	scans := map[int]int{}
	for i := range n {
		order := []string{"kata-netmon", "upstream"}
		if i%2 == 1 {
			order = []string{"upstream", "kata-netmon"}
		}
		for _, strategy := range order {
			firstAttachRound(b, env, img, net1, br1, strategy, tables[strategy], scans)
		}
	}
	for _, s := range []string{"kata-netmon", "upstream"} {
		fmt.Fprintf(report, "\n## first attach, %s (%d rounds; docker run, then guest boot, then Start)\n%s", s, n, tables[s].render())
	}
	fmt.Fprintf(report, "upstream: netns scans per Rescan: %v (count: rounds)\n", scans)
	b.ReportMetric(ms(tables["kata-netmon"].p50("Start -> eth0 usable in the guest")), "ours-usable-p50-ms")
	b.ReportMetric(ms(tables["upstream"].p50("Start -> eth0 usable in the guest")), "upstream-usable-p50-ms")
}

func firstAttachRound(b *testing.B, env *dockerenv.Env, img, net1, br1, strategy string, t *table, scans map[int]int) {
	ctx, cancel := context.WithTimeout(b.Context(), 3*time.Minute)
	defer cancel()
	sbx := newSandbox(b, ctx, env, img, net1)
	defer sbx.close()
	ep := sbx.endpoint(b, net1)
	token := "knm-bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := sbx.vm.Agent.ServeToken(ctx, tokenPort, token); err != nil {
		b.Fatal(err)
	}
	if err := flushNeigh(env.NetNSPath(), br1); err != nil {
		b.Fatal(err)
	}
	addr := net.JoinHostPort(ep.IPAddress.String(), fmt.Sprint(tokenPort))

	usable := make(chan error, 1)
	var tUsable time.Time
	t0 := time.Now()
	go func() {
		_, err := readToken(ctx, env.NetNSPath(), br1, addr, token, 20*time.Second)
		tUsable = time.Now()
		usable <- err
	}()
	var tReturn time.Time
	var rescanDone chan struct{}
	var rres RescanResult
	var rerr error
	switch strategy {
	case "kata-netmon":
		mon, hook := startMonitor(b, ctx, env, sbx)
		tReturn = time.Now()
		if mon == nil {
			b.Fatal("shimhook.Start returned no monitor")
		}
		defer func() {
			sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer scancel()
			mon.Stop(sctx)
			noErrors(b, hook)
		}()
	case "upstream":
		// The shim's startContainer: `go RescanNetwork()`, then the
		// workload starts.
		rescanDone = make(chan struct{})
		go func() {
			defer close(rescanDone)
			rres, rerr = Rescan(ctx, sbx.netns, sbx.sb)
		}()
		tReturn = time.Now()
	}
	if err := <-usable; err != nil {
		b.Fatalf("%s: %v", strategy, err)
	}
	if rescanDone != nil {
		<-rescanDone
		if rerr != nil || len(rres.Attached) != 1 {
			b.Fatalf("upstream rescan: %+v, %v", rres, rerr)
		}
		scans[rres.Scans]++
	}
	add, err := waitCall(ctx, sbx.sb, 0, "AddInterface", "eth0")
	if err != nil {
		b.Fatal(err)
	}
	gap := max(tUsable.Sub(tReturn), 0)
	t.add("Start -> Start returns (the workload starts)", tReturn.Sub(t0))
	t.add("Start -> eth0 usable in the guest", tUsable.Sub(t0))
	t.add("workload runs without network (usable - returns, >= 0)", gap)
	t.add("  Start -> AddInterface start (detection)", add.Start.Sub(t0))
	if strategy == "kata-netmon" {
		// What detection is made of: the netns watch and the first view,
		// then the guest's list (adopt what it has rather than attach twice).
		if l, err := waitCall(ctx, sbx.sb, 0, "ListInterfaces", ""); err == nil && l.Start.Before(add.Start) {
			t.add("    Start -> ListInterfaces start (watch set up, view read)", l.Start.Sub(t0))
			t.add("    ListInterfaces (the guest's NICs, before attaching)", l.Took)
		}
	}
	t.add("  AddInterface (hot-plug call), total", add.Took)
	t.add("  AddInterface returned -> eth0 answers", tUsable.Sub(add.Start.Add(add.Took)))
}

// ---------------------------------------------------------------------------
// sandbox: a container whose netns plays the Kata sandbox netns, a guest
// booted in it, katasim on the guest

type sandbox struct {
	env   *dockerenv.Env
	ctr   string
	id    string
	netns string
	vm    *guest.VM
	sb    *katasim.Sandbox
}

func newSandbox(b *testing.B, ctx context.Context, env *dockerenv.Env, img, network string) *sandbox {
	b.Helper()
	s := &sandbox{env: env, ctr: dockerenv.UniqueName("knm-bench")}
	s.id = env.MustDocker(b, "run", "--detach", "--name", s.ctr, "--network", network, img, "sleep", "3600")
	s.netns = fmt.Sprintf("/proc/%d/ns/net", env.ContainerPid(b, s.ctr))
	vm, err := guest.Start(ctx, guest.Options{NetNS: s.netns})
	if err != nil {
		s.close()
		b.Fatal(err)
	}
	s.vm = vm
	if s.sb, err = katasim.New(vm, katasim.Options{NetNS: s.netns}); err != nil {
		s.close()
		b.Fatal(err)
	}
	return s
}

func (s *sandbox) endpoint(b *testing.B, network string) *dockerenv.Endpoint {
	c := s.env.MustInspectContainer(b, s.ctr)
	ep := c.NetworkSettings.Networks[network]
	if ep == nil || !ep.IPAddress.IsValid() {
		b.Fatalf("container %s: no endpoint on %s", s.ctr, network)
	}
	return ep
}

func (s *sandbox) close() {
	if s.sb != nil {
		s.sb.Close()
	}
	if s.vm != nil {
		s.vm.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s.env.Docker(ctx, "rm", "--force", s.ctr)
}

func startMonitor(b *testing.B, ctx context.Context, env *dockerenv.Env, s *sandbox) (*shimhook.Monitor, *logtest.Hook) {
	logger := logrus.New()
	logger.Out = io.Discard
	hook := logtest.NewLocal(logger)
	settings := shimhook.DefaultSettings()
	settings.DockerdNetNS = env.NetNSPath()
	m, err := shimhook.Start(ctx, shimhook.Config{
		SandboxID:     s.id[:12],
		Namespace:     "moby",
		Spec:          &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}},
		Sandbox:       s.sb,
		NetNSPath:     s.netns,
		HypervisorPID: s.vm.Pid,
		Settings:      settings,
		Log:           logrus.NewEntry(logger),
	})
	if err != nil {
		b.Fatal(err)
	}
	return m, hook
}

func noErrors(b *testing.B, h *logtest.Hook) {
	for _, e := range h.AllEntries() {
		if e.Level <= logrus.ErrorLevel {
			b.Errorf("monitor logged an error: %s %v", e.Message, e.Data)
		}
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
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
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
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
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

// ---------------------------------------------------------------------------
// recorder: the sandbox netns' netlink events, timestamped on receipt (the
// monitor receives the same multicast at the same moment)

type event struct {
	at   time.Time
	idx  int
	what string
}

type recorder struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	evs  []event
}

func startRecorder(nsPath string) (*recorder, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	r := &recorder{done: make(chan struct{})}
	lch := make(chan netlink.LinkUpdate, 256)
	ach := make(chan netlink.AddrUpdate, 256)
	rch := make(chan netlink.RouteUpdate, 256)
	ignore := func(error) {}
	if err := netlink.LinkSubscribeWithOptions(lch, r.done, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: ignore}); err != nil {
		close(r.done)
		return nil, err
	}
	if err := netlink.AddrSubscribeWithOptions(ach, r.done, netlink.AddrSubscribeOptions{Namespace: &ns, ErrorCallback: ignore}); err != nil {
		close(r.done)
		return nil, err
	}
	if err := netlink.RouteSubscribeWithOptions(rch, r.done, netlink.RouteSubscribeOptions{Namespace: &ns, ErrorCallback: ignore}); err != nil {
		close(r.done)
		return nil, err
	}
	r.wg.Add(3)
	go func() {
		defer r.wg.Done()
		for u := range lch {
			if u.IfInfomsg.Family != unix.AF_UNSPEC {
				continue
			}
			kind := "NEWLINK"
			if u.Header.Type == unix.RTM_DELLINK {
				kind = "DELLINK"
			}
			a := u.Link.Attrs()
			st := "down"
			if a.RawFlags&unix.IFF_RUNNING != 0 {
				st = "running"
			} else if a.RawFlags&unix.IFF_UP != 0 {
				st = "up"
			}
			r.add(a.Index, fmt.Sprintf("%s %s", kind, st))
		}
	}()
	go func() {
		defer r.wg.Done()
		for u := range ach {
			kind := "NEWADDR"
			if !u.NewAddr {
				kind = "DELADDR"
			}
			r.add(u.LinkIndex, kind)
		}
	}()
	go func() {
		defer r.wg.Done()
		for u := range rch {
			kind := "NEWROUTE"
			if u.Type == unix.RTM_DELROUTE {
				kind = "DELROUTE"
			}
			if u.Dst == nil || isDefault(u.Dst) {
				kind += " default"
			}
			r.add(u.LinkIndex, kind)
		}
	}()
	return r, nil
}

func isDefault(n *net.IPNet) bool { ones, _ := n.Mask.Size(); return ones == 0 }

func (r *recorder) add(idx int, what string) {
	at := time.Now()
	r.mu.Lock()
	r.evs = append(r.evs, event{at: at, idx: idx, what: what})
	r.mu.Unlock()
}

// lastBefore returns the last event about ifindex idx received before t.
func (r *recorder) lastBefore(idx int, t time.Time) (event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.evs) - 1; i >= 0; i-- {
		if e := r.evs[i]; e.idx == idx && e.at.Before(t) {
			return e, true
		}
	}
	return event{}, false
}

func (r *recorder) stop() {
	close(r.done)
	r.wg.Wait()
}

// ---------------------------------------------------------------------------
// table: named series of durations, rendered as p50 / max

type table struct {
	order []string
	vals  map[string][]time.Duration
	notes map[string]map[string]int
}

func (t *table) add(name string, d time.Duration) {
	if t.vals == nil {
		t.vals = map[string][]time.Duration{}
	}
	if _, ok := t.vals[name]; !ok {
		t.order = append(t.order, name)
	}
	t.vals[name] = append(t.vals[name], d)
}

func (t *table) note(name, what string) {
	if t.notes == nil {
		t.notes = map[string]map[string]int{}
	}
	if t.notes[name] == nil {
		t.notes[name] = map[string]int{}
	}
	t.notes[name][what]++
}

func (t *table) p50(name string) time.Duration {
	v := slices.Clone(t.vals[name])
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// p99 is the nearest-rank 99th percentile (the maximum below 100 rounds).
func (t *table) p99(name string) time.Duration {
	v := slices.Clone(t.vals[name])
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[max(0, (len(v)*99+99)/100-1)]
}

func (t *table) max(name string) time.Duration {
	if len(t.vals[name]) == 0 {
		return 0
	}
	return slices.Max(t.vals[name])
}

func (t *table) render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| %-66s | %9s | %9s | %9s |\n|%s|%s|%s|%s|\n", "", "p50", "p99", "max", strings.Repeat("-", 68),
		strings.Repeat("-", 11), strings.Repeat("-", 11), strings.Repeat("-", 11))
	for _, name := range t.order {
		label := strings.ReplaceAll(name, "  ", "\u00a0\u00a0")
		fmt.Fprintf(&b, "| %-66s | %9s | %9s | %9s |\n", label, fmtDur(t.p50(name)), fmtDur(t.p99(name)), fmtDur(t.max(name)))
		if ns := t.notes[name]; len(ns) > 0 {
			var parts []string
			for w, c := range ns {
				parts = append(parts, fmt.Sprintf("%s x%d", w, c))
			}
			sort.Strings(parts)
			fmt.Fprintf(&b, "| %-66s | %9s | %9s | %9s |\n", "\u00a0\u00a0\u00a0\u00a0(last event: "+strings.Join(parts, ", ")+")", "", "", "")
		}
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
