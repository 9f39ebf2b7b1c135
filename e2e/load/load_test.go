//go:build linux

package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
	goleak.VerifyTestMain(m)
}

const (
	defaultMonitors = 200
	defaultCycles   = 3
	loadWait        = 60 * time.Second
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
func procStatus() (rss int64, threads int) {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			rss = kb * 1024
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		}
	}
	return rss, threads
}

func openFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// footprint is what the process holds at one moment, after a GC.
type footprint struct {
	goroutines, threads, fds int
	heap, stacks, rss        int64
}

func measure() footprint {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, threads := procStatus()
	return footprint{goroutines: runtime.NumGoroutine(), threads: threads, fds: openFDs(),
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

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// BenchmarkLoad: 200 monitors on 200 sandbox netns, endpoints churning in
// all of them at once (see the package comment). Run it with -benchtime 1x.
func BenchmarkLoad(b *testing.B) {
	for range b.N {
		runLoad(b)
	}
}

func runLoad(b *testing.B) {
	netmontest.RequireRoot(b)
	n, cycles := envInt("KNM_LOAD_MONITORS", defaultMonitors), envInt("KNM_LOAD_CYCLES", defaultCycles)
	const hold, gap, stagger = 1500 * time.Millisecond, 300 * time.Millisecond, time.Second

	// dockerd's netns with one bridge network, and n sandbox netns.
	dockerdPath, dockerdNS := netmontest.NewNetNS(b)
	dockerd := netmontest.HandleAt(b, dockerdNS)
	br := netmontest.AddBridge(b, dockerd)
	netmontest.AddAddr(b, dockerd, br.Index, "10.64.0.1/10")
	paths := make([]string, n)
	for i := range paths {
		paths[i], _ = netmontest.NewNetNS(b)
	}

	log := logrus.New()
	log.SetOutput(io.Discard) // formatted as in the shim, then dropped
	var logs counter
	log.AddHook(&logs)
	reg := prometheus.NewRegistry()
	sbs := make([]*loadSandbox, n)
	mons := make([]*shimhook.Monitor, n)
	stopAll := func() time.Duration {
		begin := time.Now()
		for i, m := range mons {
			if m == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := m.Stop(ctx); err != nil {
				b.Errorf("Stop monitor %d: %v", i, err)
			}
			cancel()
			mons[i] = nil
		}
		return time.Since(begin)
	}
	b.Cleanup(func() { stopAll() })

	before := measure()
	begin := time.Now()
	for i := range n {
		sbs[i] = newLoadSandbox()
		cfg := shimcfg.Docker(fmt.Sprintf("load-%03d", i), sbs[i], paths[i], dockerdPath)
		cfg.HypervisorPID = os.Getpid() // a pidfd watch each, as in the shim
		cfg.Log = logrus.NewEntry(log)
		cfg.Registerer = reg
		m, err := shimhook.Start(context.Background(), cfg)
		if err != nil || m == nil {
			b.Fatalf("Start monitor %d: %v, %v", i, m, err)
		}
		mons[i] = m
	}
	startTook := time.Since(begin)
	time.Sleep(500 * time.Millisecond)
	idle := measure()

	// Idle cost.
	const idleWindow = 2 * time.Second
	cpu0 := cpuTime()
	time.Sleep(idleWindow)
	idleCPU := cpuTime() - cpu0

	// Churn, from a separate process.
	cfgPath := filepath.Join(b.TempDir(), "driver.json")
	cfgJSON, _ := json.Marshal(driverConfig{Dockerd: dockerdPath, Bridge: br.Name, Sandboxes: paths,
		Cycles: cycles, Hold: hold, Gap: gap, Stagger: stagger})
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
	cpu0 = cpuTime()
	churnBegin := time.Now()
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
		events = append(events, ev)
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("driver: %v\n%s", err, stderr.String())
	}
	var driverCPU time.Duration
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		driverCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}

	// Every endpoint attached and detached by its own monitor.
	want := make([]map[string]int64, n) // per sandbox: MAC -> ready time
	for i := range want {
		want[i] = map[string]int64{}
	}
	for _, ev := range events {
		if ev.MAC != "" && !ev.Removed {
			want[ev.Sandbox][ev.MAC] = ev.Ready
		}
	}
	deadline := time.Now().Add(loadWait)
	for i, s := range sbs {
		if _, err := s.WaitEvents(time.Until(deadline), func(evs []hotplugtest.Event) bool {
			_, removes := s.counts()
			return len(s.GuestMACs()) == 0 && len(removes) >= len(want[i])
		}, "every endpoint attached and detached"); err != nil {
			adds, removes := s.counts()
			b.Fatalf("sandbox %d: %v\n(driver made %d endpoints; guest %v; attached %v; detached %v)", i, err, len(want[i]), s.GuestMACs(), adds, removes)
		}
	}
	churnTook := time.Since(churnBegin)
	churnCPU := cpuTime() - cpu0
	close(stopSampling)
	sampler.Wait()

	var lat []time.Duration
	for i, s := range sbs {
		adds, removes := s.counts()
		if len(adds) != len(want[i]) {
			b.Errorf("sandbox %d attached %d MACs, its driver made %d", i, len(adds), len(want[i]))
		}
		s.mu.Lock()
		for mac, nAdd := range adds {
			ready, own := want[i][mac]
			switch {
			case !own:
				b.Errorf("sandbox %d attached %s, which is not one of its endpoints", i, mac)
			case nAdd != 1 || removes[mac] != 1:
				b.Errorf("sandbox %d: %s attached %d times, detached %d times", i, mac, nAdd, removes[mac])
			default:
				lat = append(lat, time.Duration(s.added[mac]-ready))
			}
		}
		s.mu.Unlock()
	}
	slices.Sort(lat)

	// The shared registry: every sandbox's series, each its own counts.
	gatherBegin := time.Now()
	mfs, err := reg.Gather()
	gatherTook := time.Since(gatherBegin)
	if err != nil {
		b.Fatalf("Gather: %v", err)
	}
	series, sandboxes := 0, map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			series++
			for _, l := range m.GetLabel() {
				if l.GetName() == metrics.SandboxLabel {
					sandboxes[l.GetValue()] = true
				}
			}
			if mf.GetName() == "kata_netmon_sandbox_calls_total" && hasLabel(m.GetLabel(), "op", "AddInterface") &&
				hasLabel(m.GetLabel(), "outcome", "ok") && m.GetCounter().GetValue() != float64(cycles) {
				b.Errorf("%v: %v AddInterface ok, want %d", m.GetLabel(), m.GetCounter().GetValue(), cycles)
			}
		}
	}
	if len(sandboxes) != n {
		b.Errorf("%d sandboxes in the registry, want %d", len(sandboxes), n)
	}

	stopTook := stopAll()
	time.Sleep(200 * time.Millisecond)
	after := measure()
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		b.Errorf("%d metric families left after every Stop", len(mfs))
	}
	if after.goroutines > before.goroutines+2 {
		b.Errorf("%d goroutines after every Stop, %d before the first Start", after.goroutines, before.goroutines)
	}

	per := func(v int64) float64 { return float64(v) / float64(n) }
	churnSecs := churnTook.Seconds()
	b.ReportMetric(per(int64(idle.goroutines-before.goroutines)), "goroutines/monitor")
	b.ReportMetric(per(idle.heap+idle.stacks-before.heap-before.stacks)/1024, "heap+stack-KiB/monitor")
	b.ReportMetric(per(idle.rss-before.rss)/1024, "RSS-KiB/monitor")
	b.ReportMetric(per(int64(idleCPU))/idleWindow.Seconds()/1e3, "idle-CPU-µs/s/monitor")
	b.ReportMetric(per(int64(churnCPU))/churnSecs/1e6, "churn-CPU-ms/s/monitor")
	b.ReportMetric(float64(percentile(lat, .5))/1e6, "p50-ms")
	b.ReportMetric(float64(percentile(lat, .99))/1e6, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/1e6, "max-ms")

	b.Logf("%d monitors, %d endpoints each (hold %v, gap %v), %d CPUs, %s", n, cycles, hold, gap, runtime.NumCPU(), runtime.Version())
	b.Logf("start all: %v (%v each); stop all: %v (%v each)", startTook.Round(time.Millisecond),
		(startTook / time.Duration(n)).Round(time.Microsecond), stopTook.Round(time.Millisecond), (stopTook / time.Duration(n)).Round(time.Microsecond))
	b.Logf("idle, per monitor: %.1f goroutines, %.1f KiB heap+stacks (process %d -> %d KiB), %.1f KiB RSS, %.1f fds, %.2f OS threads (process %d -> %d)",
		per(int64(idle.goroutines-before.goroutines)), per(idle.heap+idle.stacks-before.heap-before.stacks)/1024,
		(before.heap+before.stacks)/1024, (idle.heap+idle.stacks)/1024, per(idle.rss-before.rss)/1024,
		per(int64(idle.fds-before.fds)), per(int64(idle.threads-before.threads)), before.threads, idle.threads)
	b.Logf("idle CPU: %v over %v for all (%.1f µs/s per monitor)", idleCPU.Round(time.Microsecond), idleWindow, per(int64(idleCPU))/idleWindow.Seconds()/1e3)
	b.Logf("churn: %d endpoints in %v; monitors' CPU %v (%.2f ms/s per monitor, %.1f ms per endpoint); driver's CPU %v",
		len(lat), churnTook.Round(time.Millisecond), churnCPU.Round(time.Millisecond), per(int64(churnCPU))/churnSecs/1e6,
		float64(churnCPU)/float64(max(len(lat), 1))/1e6, driverCPU.Round(time.Millisecond))
	b.Logf("churn peaks: %d goroutines, %d KiB heap+stacks", peakG.Load(), peakHeap.Load()/1024)
	b.Logf("decision latency (up -> AddInterface), %d endpoints: p50 %s, p90 %s, p99 %s, max %s",
		len(lat), ms(percentile(lat, .5)), ms(percentile(lat, .9)), ms(percentile(lat, .99)), ms(lat[len(lat)-1]))
	b.Logf("registry: %d series for %d sandboxes (%.0f each), Gather %v; empty after Stop", series, len(sandboxes),
		float64(series)/float64(max(len(sandboxes), 1)), gatherTook.Round(time.Microsecond))
	b.Logf("logs: %d warnings, %d errors", logs.warn.Load(), logs.err.Load())
	b.Logf("after every Stop: %d goroutines (%d before), %d fds (%d before)", after.goroutines, before.goroutines, after.fds, before.fds)
}

func hasLabel(ls []*dto.LabelPair, name, value string) bool {
	for _, l := range ls {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}
