//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/shimcfg"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

const benchWait = 10 * time.Second

// env is a dockerd netns with one bridge network (172.27.0.0/16, gateway
// .0.1) and a sandbox netns.
type env struct {
	netmontest.Pair
	bridge string
	log    *logCounter
	reg    *prometheus.Registry // the monitor's metrics: what it applied, skipped, resynced
}

const gateway = "172.27.0.1"

func newEnv(b *testing.B) *env {
	b.Helper()
	e := &env{log: newLogCounter(), reg: prometheus.NewRegistry()}
	e.Pair = netmontest.NewPair(b)
	br := netmontest.AddBridge(b, e.Dockerd)
	e.bridge = br.Name
	netmontest.AddAddr(b, e.Dockerd, br.Index, gateway+"/16")
	return e
}

// hostAddr returns the i-th endpoint address of the network (i >= 2).
func hostAddr(i int) string {
	return fmt.Sprintf("172.27.%d.%d/16", i/250, i%250+2)
}

// start is what the Kata shim does for a Docker sandbox: shimhook.Start,
// stopped on cleanup.
func (e *env) start(b *testing.B, sb hotplug.Sandbox) *shimhook.Monitor {
	b.Helper()
	cfg := shimcfg.Docker("knm-bench", sb, e.SandboxPath, e.DockerdPath)
	// Watched by a pidfd as the shim's hypervisor would be (this process:
	// it never exits while the monitor runs).
	cfg.HypervisorPID = os.Getpid()
	cfg.Log = e.log.entry
	cfg.Registerer = e.reg
	m, err := shimhook.Start(context.Background(), cfg)
	if err != nil || m == nil {
		b.Fatalf("shimhook.Start = %v, %v", m, err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), benchWait)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			b.Errorf("Stop: %v", err)
		}
	})
	return m
}

// endpoint replays Docker's sequence up to (not including) the address and
// `up`: veth with its sandbox end created there, rename, MAC.
func (e *env) endpoint(b *testing.B, name string) (*netmontest.Endpoint, net.HardwareAddr) {
	b.Helper()
	ep := netmontest.VethPeerInNetNS(b, e.DockerdNS, e.SandboxNS, e.bridge)
	mac := netmontest.RandMAC()
	ep.Rename(name)
	ep.SetMAC(mac.String())
	return ep, mac
}

// sandbox is the in-memory Kata-like sandbox every test uses
// (hotplugtest.FakeSandbox); each call's time is its Call.At, read on entry.
type sandbox struct{ *hotplugtest.FakeSandbox }

func newSandbox() sandbox { return sandbox{&hotplugtest.FakeSandbox{}} }

// waitCall waits for the first call of op naming mac and returns when it
// was made.
func (s sandbox) waitCall(b *testing.B, op string, mac net.HardwareAddr) time.Time {
	b.Helper()
	calls, err := s.WaitFor(benchWait, func(calls []hotplugtest.Call) bool {
		return slices.ContainsFunc(calls, func(c hotplugtest.Call) bool { return c.Op == op && c.MAC() == mac.String() })
	}, op+" "+mac.String())
	if err != nil {
		b.Fatal(err)
	}
	return calls[slices.IndexFunc(calls, func(c hotplugtest.Call) bool { return c.Op == op && c.MAC() == mac.String() })].At
}

// waitAdded waits for AddInterface of mac and returns when it was called.
func (s sandbox) waitAdded(b *testing.B, mac net.HardwareAddr) time.Time {
	b.Helper()
	return s.waitCall(b, hotplugtest.OpAddInterface, mac)
}

// waitRemoved waits for RemoveInterface of mac.
func (s sandbox) waitRemoved(b *testing.B, mac net.HardwareAddr) {
	b.Helper()
	s.waitCall(b, hotplugtest.OpRemoveInterface, mac)
}

// callCount is how many calls the sandbox has received.
func (s sandbox) callCount() int { return len(s.Calls()) }

// counter returns the sum of a counter family of the monitor's metrics
// (all label values); 0 when the family is absent (an older monitor
// without it).
func (e *env) counter(b *testing.B, name string) float64 {
	b.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		b.Fatalf("gather metrics: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// logCounter counts the monitor's log messages (resyncs, errors).
type logCounter struct {
	entry *logrus.Entry
	mu    sync.Mutex
	n     map[string]int
	warn  int
}

func newLogCounter() *logCounter {
	c := &logCounter{n: map[string]int{}}
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.InfoLevel)
	// KNM_BENCH_LOG=file: the monitor's debug log, for investigating.
	if p := os.Getenv("KNM_BENCH_LOG"); p != "" {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			l.SetOutput(f)
			l.SetLevel(logrus.DebugLevel)
			l.Formatter = &logrus.TextFormatter{TimestampFormat: "15:04:05.000000", FullTimestamp: true}
		}
	}
	l.AddHook(c)
	c.entry = logrus.NewEntry(l)
	return c
}

func (c *logCounter) Levels() []logrus.Level { return logrus.AllLevels }

func (c *logCounter) Fire(e *logrus.Entry) error {
	c.mu.Lock()
	c.n[e.Message]++
	if e.Level <= logrus.WarnLevel {
		c.warn++
	}
	c.mu.Unlock()
	return nil
}

func (c *logCounter) count(msg string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[msg]
}

func (c *logCounter) warnings() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.warn
}

// tap is a raw rtnetlink socket in a netns, read by a goroutine locked to
// its own thread in a blocking recvfrom: each message is timestamped as
// soon as the kernel hands it over, without going through Go's poller.
// It stands beside the monitor's sockets, an independent observer of the
// same events.
type tap struct {
	fd       int
	stop     atomic.Bool
	done     chan struct{}
	overruns atomic.Int64 // ENOBUFS seen
}

func openTap(b *testing.B, nsPath string, groups uint32) *tap {
	b.Helper()
	t := &tap{fd: -1, done: make(chan struct{})}
	err := nsfs.DoPath(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		t.fd = fd
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups})
	})
	if err != nil {
		if t.fd >= 0 {
			unix.Close(t.fd)
		}
		b.Fatalf("netlink tap: %v", err)
	}
	_ = unix.SetsockoptInt(t.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	// The reader checks for stop this often (only while a tap is open).
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(t.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		b.Fatal(err)
	}
	return t
}

// run reads until close, calling fn for each message.
func (t *tap) run(b *testing.B, fn func(at time.Time, m syscall.NetlinkMessage)) {
	go func() {
		defer close(t.done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		buf := make([]byte, 1<<20)
		for !t.stop.Load() {
			n, _, err := unix.Recvfrom(t.fd, buf, 0)
			at := time.Now()
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.ENOBUFS):
				t.overruns.Add(1)
				continue
			case err != nil:
				return
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				continue
			}
			for _, m := range msgs {
				fn(at, m)
			}
		}
	}()
	b.Cleanup(t.close)
}

func (t *tap) close() {
	if t.stop.Swap(true) {
		return
	}
	<-t.done
	unix.Close(t.fd)
}

// ifinfo returns the ifindex and IFF_* flags of an RTM_NEWLINK/DELLINK.
func ifinfo(m syscall.NetlinkMessage) (index int, flags uint32, ok bool) {
	if len(m.Data) < unix.SizeofIfInfomsg {
		return 0, 0, false
	}
	return int(int32(binary.NativeEndian.Uint32(m.Data[4:8]))), binary.NativeEndian.Uint32(m.Data[8:12]), true
}

// ifaddr returns the family and ifindex of an RTM_NEWADDR/DELADDR.
func ifaddr(m syscall.NetlinkMessage) (family, index int, ok bool) {
	if len(m.Data) < unix.SizeofIfAddrmsg {
		return 0, 0, false
	}
	return int(m.Data[0]), int(binary.NativeEndian.Uint32(m.Data[4:8])), true
}

// percentile returns the p-th percentile (nearest rank) of sorted ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(float64(len(ds))*p/100+0.999999) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

func sortDurations(ds []time.Duration) []time.Duration {
	out := append([]time.Duration(nil), ds...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

// rusage is the process's CPU time and context switches so far (all
// threads, including those that exited).
type rusage struct {
	cpu     time.Duration
	vcsw    int64
	ivcsw   int64
	takenAt time.Time
}

func getRusage() rusage {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return rusage{
		cpu:     time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		vcsw:    ru.Nvcsw,
		ivcsw:   ru.Nivcsw,
		takenAt: time.Now(),
	}
}

func (r rusage) sub(o rusage) rusage {
	return rusage{cpu: r.cpu - o.cpu, vcsw: r.vcsw - o.vcsw, ivcsw: r.ivcsw - o.ivcsw, takenAt: r.takenAt}
}
