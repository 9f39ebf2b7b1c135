//go:build linux

package benchguest

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
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
	net1 := env.MustCreateNetwork(b, "knm-bench-a")
	net2 := env.MustCreateNetwork(b, "knm-bench-b", "--subnet", net2Subnet)
	n := rounds()
	var report strings.Builder
	fmt.Fprintf(&report, "\n%d rounds; TCG guest, 2 host cores; durations p50 / p99 (nearest rank) / max (signed: negative = before the reference)\n", n)
	fmt.Fprintf(&report, "sandbox: katasim as %s; the upstream rows emulate Kata 4.1's RescanNetwork on it\n", benchOptions().Describe())

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
	sbx := newSandbox(b, env, img, net1)
	defer sbx.close(b)
	rec, err := startRecorder(sbx.NetNS)
	if err != nil {
		b.Fatal(err)
	}
	defer rec.stop()
	_, stop := startMonitor(b, ctx, sbx)
	defer stop()
	token := "knm-bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := sbx.VM.Agent.ServeToken(ctx, tokenPort, token); err != nil {
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
		env.MustDocker(b, "network", "connect", "--ip", net2IP, net2, sbx.Container)
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
		// The monitor asks the guest for its NICs only at start and after
		// a failed call: look for one among the calls made before this
		// AddInterface, without waiting for one.
		if l, ok := callBefore(sbx.sb, mark, "ListInterfaces", add.Start); ok {
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
		env.MustDocker(b, "network", "disconnect", net2, sbx.Container)
		t3 := time.Now()
		rm, err := waitCall(ctx, sbx.sb, mark, "RemoveInterface", "")
		if err != nil {
			b.Fatalf("round %d: %v", i, err)
		}
		if rm.Err != nil || rm.Swallowed != nil {
			b.Fatalf("round %d: RemoveInterface: %v %v", i, rm.Err, rm.Swallowed)
		}
		if _, err := sbx.VM.Agent.WaitLinks(ctx, 5*time.Millisecond, func(infs []*guestproto.Link) error {
			if guest.FindLink(infs, mac) != nil {
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
	if err := sbx.VM.TapError(); err != nil {
		b.Error(err)
	}
	fmt.Fprintf(report, "\nguest kernel %s\n", sbx.VM.KernelVersion)
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
	sbx := newSandbox(b, env, img, net1)
	defer sbx.close(b)
	ep := sbx.Endpoint(b, net1)
	token := "knm-bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := sbx.VM.Agent.ServeToken(ctx, tokenPort, token); err != nil {
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
		_, stop := startMonitor(b, ctx, sbx)
		tReturn = time.Now()
		defer stop()
	case "upstream":
		// The shim's startContainer: `go RescanNetwork()`, then the
		// workload starts.
		rescanDone = make(chan struct{})
		go func() {
			defer close(rescanDone)
			rres, rerr = Rescan(ctx, sbx.NetNS, sbx.sb)
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
		if l, ok := callBefore(sbx.sb, 0, "ListInterfaces", add.Start); ok {
			t.add("    Start -> ListInterfaces start (watch set up, view read)", l.Start.Sub(t0))
			t.add("    ListInterfaces (the guest's NICs, before attaching)", l.Took)
		}
	}
	t.add("  AddInterface (hot-plug call), total", add.Took)
	t.add("  AddInterface returned -> eth0 answers", tUsable.Sub(add.Start.Add(add.Took)))
}
