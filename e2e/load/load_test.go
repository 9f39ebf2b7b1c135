//go:build linux

package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/shimcfg"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/metrics"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// TestMain runs the endpoint driver when re-executed as one, and otherwise
// the benchmarks, failing the package if one leaves a goroutine behind.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("KNM_LOAD_DRIVER"); cfg != "" {
		os.Exit(driverMain(cfg))
	}
	if cfg := os.Getenv("KNM_LOAD_TAP"); cfg != "" {
		os.Exit(tapMain(cfg))
	}
	goleak.VerifyTestMain(m)
}

const (
	defaultMonitors   = 200
	defaultCycles     = 3
	defaultLoneCycles = 60
	loadWait          = 60 * time.Second
	// ackWait bounds the driver's wait for an endpoint's attach before
	// its hold starts (see driverConfig.AckWait).
	ackWait = 20 * time.Second
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// loadSandbox is one monitor's in-memory sandbox: the Kata-like
// hotplugtest.FakeSandbox, with each MAC's first AddInterface timestamped on
// entry with CLOCK_MONOTONIC, the driver's clock.
type loadSandbox struct {
	*hotplugtest.FakeSandbox
	mu    sync.Mutex
	added map[string]int64 // first AddInterface per MAC
}

func newLoadSandbox() *loadSandbox {
	s := &loadSandbox{FakeSandbox: &hotplugtest.FakeSandbox{}, added: map[string]int64{}}
	s.AddInterfaceFn = func(_ context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
		now := monotonic()
		mac := strings.ToLower(inf.HwAddr)
		s.mu.Lock()
		if _, ok := s.added[mac]; !ok {
			s.added[mac] = now
		}
		s.mu.Unlock()
		return s.GuestAddInterface(inf)
	}
	return s
}

// counts returns, per MAC, how many times the guest gained and lost it.
func (s *loadSandbox) counts() (adds, removes map[string]int) {
	adds, removes = map[string]int{}, map[string]int{}
	for _, e := range s.Events() {
		switch e.Op {
		case "attach":
			adds[e.MAC]++
		case "detach":
			removes[e.MAC]++
		}
	}
	return adds, removes
}

// procStatus reads VmRSS (bytes) and Threads from /proc/self/status.
func procStatus() (rss int64, threads int, err error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, err
	}
	var haveRSS, haveThreads bool
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("VmRSS %q: %w", line, err)
			}
			rss, haveRSS = kb*1024, true
		case "Threads:":
			if threads, err = strconv.Atoi(f[1]); err != nil {
				return 0, 0, fmt.Errorf("Threads %q: %w", line, err)
			}
			haveThreads = true
		}
	}
	if !haveRSS || !haveThreads {
		return 0, 0, errors.New("/proc/self/status has no VmRSS or Threads line")
	}
	return rss, threads, nil
}

func openFDs() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	return len(ents), err
}

func cpuTime() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

func mustCPU(b *testing.B) time.Duration {
	b.Helper()
	d, err := cpuTime()
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// footprint is what the process holds at one moment, after a GC.
type footprint struct {
	goroutines, threads, fds int
	heap, stacks, rss        int64
}

func measure(b *testing.B) footprint {
	b.Helper()
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, threads, err := procStatus()
	if err != nil {
		b.Fatal(err)
	}
	fds, err := openFDs()
	if err != nil {
		b.Fatal(err)
	}
	return footprint{goroutines: runtime.NumGoroutine(), threads: threads, fds: fds,
		heap: int64(ms.HeapInuse), stacks: int64(ms.StackInuse), rss: rss}
}

// counter counts log entries by level.
type counter struct{ warn, err atomic.Int64 }

func (c *counter) Levels() []logrus.Level { return logrus.AllLevels }
func (c *counter) Fire(e *logrus.Entry) error {
	switch {
	case e.Level <= logrus.ErrorLevel:
		c.err.Add(1)
	case e.Level == logrus.WarnLevel:
		c.warn.Add(1)
	}
	return nil
}

// percentile returns the p-th quantile (0 < p <= 1, nearest rank) of
// sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// BenchmarkLoad: 200 monitors on 200 sandbox netns, endpoints churning in
// all of them at once, beside a lone monitor measured the same way in the
// same run (see the package comment). Run it with -benchtime 1x.
func BenchmarkLoad(b *testing.B) {
	for range b.N {
		runLoad(b)
	}
}

// startMonitors starts one monitor per path the shim's way, on one shared
// registry, and returns them with their sandboxes; stop stops them all
// (also on cleanup) and returns how long that took.
func startMonitors(b *testing.B, prefix string, paths []string, dockerdPath string, log *logrus.Logger, reg prometheus.Registerer) (sbs []*loadSandbox, stop func() time.Duration) {
	b.Helper()
	sbs = make([]*loadSandbox, len(paths))
	mons := make([]*shimhook.Monitor, len(paths))
	stop = func() time.Duration {
		begin := time.Now()
		for i, m := range mons {
			if m == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := m.Stop(ctx); err != nil {
				b.Errorf("Stop monitor %s-%03d: %v", prefix, i, err)
			}
			cancel()
			mons[i] = nil
		}
		return time.Since(begin)
	}
	b.Cleanup(func() { stop() })
	for i, p := range paths {
		sbs[i] = newLoadSandbox()
		cfg := shimcfg.Docker(fmt.Sprintf("%s-%03d", prefix, i), sbs[i], p, dockerdPath)
		cfg.HypervisorPID = os.Getpid() // a pidfd watch each, as in the shim
		cfg.Log = logrus.NewEntry(log)
		cfg.Registerer = reg
		m, err := shimhook.Start(context.Background(), cfg)
		if err != nil || m == nil {
			b.Fatalf("Start monitor %s-%03d: %v, %v", prefix, i, m, err)
		}
		mons[i] = m
	}
	return sbs, stop
}

// churnPlan is one churn phase: the driver's endpoints in every sandbox.
type churnPlan struct {
	dockerd, bridge    string
	paths              []string
	cycles             int
	hold, gap, stagger time.Duration
}

// churnResult is what one phase measured. Latencies are sorted.
type churnResult struct {
	endpoints int
	// total: the driver's `up` to AddInterface; kernel: `up` to the
	// RUNNING event the tap saw (linkwatch, run under rtnl_lock);
	// decision: that event to AddInterface (the monitor's part).
	total, kernel, decision []time.Duration
	noEvent                 int // endpoints the tap saw no ready event for
	tapOverruns             int64
	took, cpu, driverCPU    time.Duration
}

// churn runs plan with the tap beside it, waits until every sandbox has
// attached and detached every one of its endpoints, and checks that each
// attached only its own, once.
func churn(b *testing.B, plan churnPlan, sbs []*loadSandbox) churnResult {
	b.Helper()
	dir := b.TempDir()
	tp := startTap(b, filepath.Join(dir, "tap.json"), plan.paths)
	cfgJSON, err := json.Marshal(driverConfig{Dockerd: plan.dockerd, Bridge: plan.bridge, Sandboxes: plan.paths,
		Cycles: plan.cycles, Hold: plan.hold, Gap: plan.gap, Stagger: plan.stagger, AckWait: ackWait})
	if err != nil {
		b.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "driver.json")
	if err := os.WriteFile(cfgPath, cfgJSON, 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KNM_LOAD_DRIVER="+cfgPath, "GORACE=atexit_sleep_ms=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	ackPipe, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	// Tell the driver when each endpoint is attached (see AckWait); one
	// not attached in time is not acknowledged, and the driver reports it
	// (NoAck).
	var ackMu sync.Mutex
	var acking sync.WaitGroup
	ack := func(ev driverEvent) {
		if _, err := sbs[ev.Sandbox].WaitEvents(ackWait, func(evs []hotplugtest.Event) bool {
			return slices.ContainsFunc(evs, func(e hotplugtest.Event) bool { return e.Op == "attach" && e.MAC == ev.MAC })
		}, "attach of "+ev.MAC); err != nil {
			return
		}
		ackMu.Lock()
		fmt.Fprintf(ackPipe, "%d %d\n", ev.Sandbox, ev.Cycle)
		ackMu.Unlock()
	}
	cpu0 := mustCPU(b)
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var events []driverEvent
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var ev driverEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			b.Fatalf("driver: %q: %v", sc.Text(), err)
		}
		if ev.Err != "" {
			b.Errorf("driver, sandbox %d: %s", ev.Sandbox, ev.Err)
		}
		if ev.NoAck {
			b.Errorf("sandbox %d: %s not attached within %v of its last step", ev.Sandbox, ev.MAC, ackWait)
		}
		if ev.MAC != "" && !ev.Removed && !ev.NoAck {
			acking.Go(func() { ack(ev) })
		}
		events = append(events, ev)
	}
	acking.Wait()
	ackPipe.Close()
	if err := cmd.Wait(); err != nil {
		b.Fatalf("driver: %v\n%s", err, stderr.String())
	}
	var r churnResult
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.driverCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}

	// Every endpoint attached and detached by its own monitor.
	type ep struct {
		index int
		up    int64
	}
	want := make([]map[string]ep, len(sbs)) // per sandbox: MAC -> endpoint
	for i := range want {
		want[i] = map[string]ep{}
	}
	for _, ev := range events {
		if ev.MAC != "" && !ev.Removed {
			want[ev.Sandbox][ev.MAC] = ep{index: ev.Index, up: ev.Ready}
		}
	}
	deadline := time.Now().Add(loadWait)
	for i, s := range sbs {
		if _, err := s.WaitEvents(time.Until(deadline), func([]hotplugtest.Event) bool {
			_, removes := s.counts()
			return len(s.GuestMACs()) == 0 && len(removes) >= len(want[i])
		}, "every endpoint attached and detached"); err != nil {
			adds, removes := s.counts()
			var missing []string
			for mac, e := range want[i] {
				if adds[mac] != 1 || removes[mac] != 1 {
					missing = append(missing, fmt.Sprintf("%s (ifindex %d): attached %d, detached %d", mac, e.index, adds[mac], removes[mac]))
				}
			}
			b.Fatalf("sandbox %d: %v\n(driver made %d endpoints, guest has %v; %v)", i, err, len(want[i]), s.GuestMACs(), missing)
		}
	}
	r.took = time.Since(begin)
	r.cpu = mustCPU(b) - cpu0
	ready, overruns := tp.stop(b, len(sbs))
	r.tapOverruns = overruns

	for i, s := range sbs {
		adds, removes := s.counts()
		if len(adds) != len(want[i]) {
			b.Errorf("sandbox %d attached %d MACs, its driver made %d", i, len(adds), len(want[i]))
		}
		s.mu.Lock()
		for mac, nAdd := range adds {
			e, own := want[i][mac]
			switch {
			case !own:
				b.Errorf("sandbox %d attached %s, which is not one of its endpoints", i, mac)
			case nAdd != 1 || removes[mac] != 1:
				b.Errorf("sandbox %d: %s attached %d times, detached %d times", i, mac, nAdd, removes[mac])
			default:
				added := s.added[mac]
				r.total = append(r.total, time.Duration(added-e.up))
				if at, ok := ready[i][e.index]; ok {
					r.kernel = append(r.kernel, time.Duration(at-e.up))
					r.decision = append(r.decision, time.Duration(added-at))
				} else {
					r.noEvent++
				}
			}
		}
		s.mu.Unlock()
	}
	r.endpoints = len(r.total)
	for _, ds := range [][]time.Duration{r.total, r.kernel, r.decision} {
		slices.Sort(ds)
	}
	return r
}

func runLoad(b *testing.B) {
	netmontest.RequireRoot(b)
	n, cycles := envInt("KNM_LOAD_MONITORS", defaultMonitors), envInt("KNM_LOAD_CYCLES", defaultCycles)
	loneCycles := envInt("KNM_LOAD_LONE_CYCLES", defaultLoneCycles)
	const hold, gap, stagger = 1500 * time.Millisecond, 300 * time.Millisecond, time.Second

	// dockerd's netns with one bridge network, a netns for the lone
	// monitor and n sandbox netns.
	dockerdPath, dockerdNS := netmontest.NewNetNS(b)
	dockerd := netmontest.HandleAt(b, dockerdNS)
	br := netmontest.AddBridge(b, dockerd)
	netmontest.AddAddr(b, dockerd, br.Index, "10.64.0.1/10")
	lonePath, _ := netmontest.NewNetNS(b)
	paths := make([]string, n)
	for i := range paths {
		paths[i], _ = netmontest.NewNetNS(b)
	}

	log := logrus.New()
	log.SetOutput(io.Discard) // formatted as in the shim, then dropped
	var logs counter
	log.AddHook(&logs)

	// The lone monitor: one endpoint at a time, nothing else running.
	loneReg := prometheus.NewRegistry()
	loneSBs, stopLone := startMonitors(b, "lone", []string{lonePath}, dockerdPath, log, loneReg)
	lone := churn(b, churnPlan{dockerd: dockerdPath, bridge: br.Name, paths: []string{lonePath},
		cycles: loneCycles, hold: 20 * time.Millisecond, gap: 10 * time.Millisecond}, loneSBs)
	stopLone()

	reg := prometheus.NewRegistry()
	before := measure(b)
	begin := time.Now()
	sbs, stopAll := startMonitors(b, "load", paths, dockerdPath, log, reg)
	startTook := time.Since(begin)
	time.Sleep(500 * time.Millisecond) // let the start-up settle before measuring (a report, not an assertion)
	idle := measure(b)

	// Idle cost.
	const idleWindow = 2 * time.Second
	cpu0 := mustCPU(b)
	time.Sleep(idleWindow)
	idleCPU := mustCPU(b) - cpu0

	// Churn, from a separate process.
	stopSampling := make(chan struct{})
	var peakG, peakHeap atomic.Int64
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tk.C:
				var msStats runtime.MemStats
				runtime.ReadMemStats(&msStats)
				peakG.Store(max(peakG.Load(), int64(runtime.NumGoroutine())))
				peakHeap.Store(max(peakHeap.Load(), int64(msStats.HeapInuse+msStats.StackInuse)))
			}
		}
	})
	load := churn(b, churnPlan{dockerd: dockerdPath, bridge: br.Name, paths: paths,
		cycles: cycles, hold: hold, gap: gap, stagger: stagger}, sbs)
	close(stopSampling)
	sampler.Wait()

	// The shared registry: every sandbox's series, each its own counts.
	gatherBegin := time.Now()
	mfs, err := reg.Gather()
	gatherTook := time.Since(gatherBegin)
	if err != nil {
		b.Fatalf("Gather: %v", err)
	}
	series, sandboxes := 0, map[string]bool{}
	var applied, skipped, resyncs float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			series++
			for _, l := range m.GetLabel() {
				if l.GetName() == metrics.SandboxLabel {
					sandboxes[l.GetValue()] = true
				}
			}
			switch mf.GetName() {
			case "kata_netmon_sandbox_calls_total":
				if hasLabel(m.GetLabel(), "op", "AddInterface") && hasLabel(m.GetLabel(), "outcome", "ok") &&
					m.GetCounter().GetValue() != float64(cycles) {
					b.Errorf("%v: %v AddInterface ok, want %d", m.GetLabel(), m.GetCounter().GetValue(), cycles)
				}
			case "kata_netmon_netlink_events_total":
				applied += m.GetCounter().GetValue()
			case "kata_netmon_netlink_undecodable_total":
				skipped += m.GetCounter().GetValue()
			case "kata_netmon_resyncs_total":
				resyncs += m.GetCounter().GetValue()
			}
		}
	}
	if len(sandboxes) != n {
		b.Errorf("%d sandboxes in the registry, want %d", len(sandboxes), n)
	}
	seriesAtRest := series / max(len(sandboxes), 1)

	stopTook := stopAll()
	time.Sleep(200 * time.Millisecond) // let the monitors' goroutines finish exiting (a report, not an assertion)
	after := measure(b)
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		b.Errorf("%d metric families left after every Stop", len(mfs))
	}
	if after.goroutines > before.goroutines+2 {
		b.Errorf("%d goroutines after every Stop, %d before the first Start", after.goroutines, before.goroutines)
	}

	per := func(v int64) float64 { return float64(v) / float64(n) }
	churnSecs := load.took.Seconds()
	p99, loneP99 := percentile(load.decision, .99), percentile(lone.decision, .99)
	ratio := float64(p99) / float64(max(loneP99, time.Microsecond))
	b.ReportMetric(per(int64(idle.goroutines-before.goroutines)), "goroutines/monitor")
	b.ReportMetric(per(idle.heap+idle.stacks-before.heap-before.stacks)/1024, "heap+stack-KiB/monitor")
	b.ReportMetric(per(idle.rss-before.rss)/1024, "RSS-KiB/monitor")
	b.ReportMetric(per(int64(idleCPU))/idleWindow.Seconds()/1e3, "idle-CPU-µs/s/monitor")
	b.ReportMetric(per(int64(load.cpu))/churnSecs/1e6, "churn-CPU-ms/s/monitor")
	b.ReportMetric(float64(percentile(load.decision, .5))/1e6, "p50-ms")
	b.ReportMetric(float64(p99)/1e6, "p99-ms")
	b.ReportMetric(float64(loneP99)/1e6, "lone-p99-ms")
	b.ReportMetric(ratio, "p99/lone-p99")
	b.ReportMetric(float64(percentile(load.total, .99))/1e6, "up-to-add-p99-ms")

	// The report goes to stdout: b.Log keeps only the first lines of a
	// benchmark's log.
	report := func(format string, args ...any) { fmt.Printf("  "+format+"\n", args...) }
	fmt.Printf("\nload: %d monitors beside a lone one\n", n)
	report("%d monitors, %d endpoints each (hold %v, gap %v), %d CPUs, %s; in-memory sandboxes (Kata's semantics, no VM)",
		n, cycles, hold, gap, runtime.NumCPU(), runtime.Version())
	report("start all: %v (%v each); stop all: %v (%v each)", startTook.Round(time.Millisecond),
		(startTook / time.Duration(n)).Round(time.Microsecond), stopTook.Round(time.Millisecond), (stopTook / time.Duration(n)).Round(time.Microsecond))
	report("idle, per monitor: %.1f goroutines, %.1f KiB heap+stacks (process %d -> %d KiB), %.1f KiB RSS, %.1f fds, %.2f OS threads (process %d -> %d)",
		per(int64(idle.goroutines-before.goroutines)), per(idle.heap+idle.stacks-before.heap-before.stacks)/1024,
		(before.heap+before.stacks)/1024, (idle.heap+idle.stacks)/1024, per(idle.rss-before.rss)/1024,
		per(int64(idle.fds-before.fds)), per(int64(idle.threads-before.threads)), before.threads, idle.threads)
	report("idle CPU: %v over %v for all (%.1f µs/s per monitor)", idleCPU.Round(time.Microsecond), idleWindow, per(int64(idleCPU))/idleWindow.Seconds()/1e3)
	report("churn: %d endpoints in %v; monitors' CPU %v (%.2f ms/s per monitor, %.1f ms per endpoint); driver's CPU %v",
		load.endpoints, load.took.Round(time.Millisecond), load.cpu.Round(time.Millisecond), per(int64(load.cpu))/churnSecs/1e6,
		float64(load.cpu)/float64(max(load.endpoints, 1))/1e6, load.driverCPU.Round(time.Millisecond))
	report("churn peaks: %d goroutines, %d KiB heap+stacks", peakG.Load(), peakHeap.Load()/1024)
	report("events the monitors applied: %.0f (%.0f skipped as undecodable), %.0f resyncs", applied, skipped, resyncs)
	report("latency, ms:                                       endpoints      p50      p90      p99      max")
	row := func(what string, ds []time.Duration) {
		report("  %-48s %9d %8.2f %8.2f %8.2f %8.2f", what, len(ds), msf(percentile(ds, .5)), msf(percentile(ds, .9)),
			msf(percentile(ds, .99)), msf(percentile(ds, 1)))
	}
	row("decision, lone monitor (RUNNING event -> Add)", lone.decision)
	row(fmt.Sprintf("decision, %d monitors", n), load.decision)
	row("kernel, lone (driver's up -> RUNNING event)", lone.kernel)
	row(fmt.Sprintf("kernel, %d monitors", n), load.kernel)
	row("end to end, lone (up -> AddInterface)", lone.total)
	row(fmt.Sprintf("end to end, %d monitors", n), load.total)
	report("decision p99 under load / lone: %.1fx (target: at most 3x, and under 5 ms)", ratio)
	report("tap: %d + %d endpoints without a ready event, %d + %d overruns (lone + load)", lone.noEvent, load.noEvent, lone.tapOverruns, load.tapOverruns)
	report("registry: %d series for %d sandboxes (%d each), Gather %v; empty after Stop", series, len(sandboxes),
		seriesAtRest, gatherTook.Round(time.Microsecond))
	report("logs: %d warnings, %d errors", logs.warn.Load(), logs.err.Load())
	report("after every Stop: %d goroutines (%d before), %d fds (%d before)", after.goroutines, before.goroutines, after.fds, before.fds)
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func hasLabel(ls []*dto.LabelPair, name, value string) bool {
	for _, l := range ls {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}
