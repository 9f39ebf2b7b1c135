package monitor_test

import (
	"bytes"
	"context"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/internal/monitor"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// goroutines returns the stacks of all goroutines by id.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := map[string]string{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if m := goroutineID.FindSubmatch(g); m != nil {
			out[string(m[1])] = string(g)
		}
	}
	return out
}

var (
	goroutineID = regexp.MustCompile(`^goroutine (\d+) \[`)
	createdBy   = regexp.MustCompile(`created by (\S+)`)
)

// started describes the goroutines in now that are not in before, by the
// function that created them.
func started(before, now map[string]string) []string {
	var out []string
	for id, s := range now {
		if _, ok := before[id]; ok {
			continue
		}
		by := "?"
		if m := createdBy.FindStringSubmatch(s); m != nil {
			by = m[1]
		}
		out = append(out, by)
	}
	sort.Strings(out)
	return out
}

// TestIdleGoroutines: one idle monitor (eth0 attached, a pidfd on its
// process) runs at most 4 goroutines: netmon's loop, the reconciler's and
// procwatch's wait (and nothing else that would wake it).
func TestIdleGoroutines(t *testing.T) {
	e := newEnv(t)
	cmd := exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	before := goroutines()
	sb := &hotplugtest.FakeSandbox{}
	cfg := e.config(sb, netmontest.Log(t))
	cfg.ExitPID = cmd.Process.Pid
	m, err := monitor.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if st, err := m.Sync(ctx); err != nil || len(st.NICs) != 1 {
		t.Fatalf("Sync: %+v, %v", st, err)
	}
	m.Run()
	// The sandbox calls of the first reconcile ran on goroutines of their
	// own, which end once the calls have returned: wait for the count to
	// come down to the idle one.
	var now []string
	deadline := time.Now().Add(wait)
	for {
		now = started(before, goroutines())
		if len(now) <= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond) // polling a state, with a deadline
	}
	t.Logf("goroutines of an idle monitor: %d: %v", len(now), now)
	if len(now) > 4 {
		t.Fatalf("%d goroutines, want at most 4: %v", len(now), now)
	}
	for _, want := range []string{"netmon.(*Monitor).Start", "monitor.(*Monitor).Run", "procwatch.OpenFunc"} {
		if !slices.ContainsFunc(now, func(s string) bool { return strings.HasSuffix(s, want) }) {
			t.Errorf("no goroutine created by %s among %v", want, now)
		}
	}
}

// TestPeerEnslavedLate: an endpoint fully configured in the sandbox whose
// host end joins its bridge only later (Docker does it first; a slower
// driver may not). The first reconcile waits for it (pending while netmon
// re-reads the peer) instead of ignoring it, and attaches it once the peer
// is on its bridge; nothing is attached before.
func TestPeerEnslavedLate(t *testing.T) {
	e := &env{Pair: netmontest.NewPair(t)}
	br := netmontest.AddBridge(t, e.Dockerd)
	e.ep = netmontest.VethToNetNS(t, e.DockerdNS, e.SandboxNS, "")
	e.mac = netmontest.RandMAC().String()
	e.ep.Configure("eth0", e.mac, "172.30.0.2/24", "")

	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	sb := &hotplugtest.FakeSandbox{}
	m, err := monitor.Start(context.Background(), e.config(sb, logrus.NewEntry(logger)))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(context.Background())
	type result struct {
		nics int
		err  error
	}
	synced := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		st, err := m.Sync(ctx)
		synced <- result{len(st.NICs), err}
	}()
	// netmon has read the peer on no bridge and re-reads it.
	deadline := time.Now().Add(wait)
	for !slices.ContainsFunc(hook.AllEntries(), func(en *logrus.Entry) bool {
		p, _ := en.Data["peer"].(string)
		return en.Message == "peer facts" && strings.Contains(p, "MasterIndex:0") && strings.Contains(p, "Rechecking:true")
	}) {
		if time.Now().After(deadline) {
			t.Fatal("netmon never reported the peer on no bridge, re-read")
		}
		time.Sleep(time.Millisecond) // polling a state, with a deadline
	}
	select {
	case r := <-synced:
		t.Fatalf("Sync returned before the peer joined its bridge: %d NICs, %v", r.nics, r.err)
	default:
	}
	if adds := sb.CallsOf(hotplugtest.OpAddInterface); len(adds) != 0 {
		t.Fatalf("attached before the peer joined its bridge: %v", sb.Ops())
	}
	host, err := e.ep.Host.LinkByIndex(e.ep.HostIndex)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ep.Host.LinkSetMaster(host, br); err != nil {
		t.Fatal(err)
	}
	r := <-synced
	if r.err != nil || r.nics != 1 {
		t.Fatalf("Sync after the peer joined: %d NICs, %v", r.nics, r.err)
	}
	if got := sb.GuestMACs(); !slices.Equal(got, []string{e.mac}) {
		t.Errorf("guest MACs %v, want %s", got, e.mac)
	}
}
