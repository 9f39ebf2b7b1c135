package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// TestMain fails the package when a test leaves a goroutine behind: the
// watch command runs a monitor, a reconciler and a pidfd watch.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const watchWait = 10 * time.Second

// watchLine is the documented JSON of one line of `watch --json`; decoding
// rejects any other field.
type watchLine struct {
	Op        string       `json:"op"`
	Name      string       `json:"name"`
	MAC       string       `json:"mac"`
	MTU       uint64       `json:"mtu"`
	Addresses []string     `json:"addresses"`
	Routes    []watchRoute `json:"routes"`
}

type watchRoute struct {
	Dest    string `json:"dest"`
	Gateway string `json:"gateway"`
	Device  string `json:"device"`
	Metric  uint32 `json:"metric"`
}

// watchKeys says which keys each op's line carries (and no others).
var watchKeys = map[string][]string{
	"attach": {"addresses", "mac", "mtu", "name", "op"},
	"detach": {"mac", "name", "op"},
	"routes": {"op", "routes"},
}

// watchOut collects the command's stdout lines as they come.
type watchOut struct {
	mu    sync.Mutex
	lines []string
	ch    chan struct{} // closed and replaced on every line
	done  chan struct{} // closed when stdout is closed
}

func newWatchOut(r io.Reader) *watchOut {
	o := &watchOut{ch: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(o.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			o.mu.Lock()
			o.lines = append(o.lines, sc.Text())
			close(o.ch)
			o.ch = make(chan struct{})
			o.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	return o
}

// next waits for a line after the first from lines matching match, checks
// its JSON and returns it with its position.
func (o *watchOut) next(t *testing.T, from int, what string, match func(watchLine) bool) (watchLine, int) {
	t.Helper()
	deadline := time.NewTimer(watchWait)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		lines, ch := slices.Clone(o.lines), o.ch
		o.mu.Unlock()
		for i := from; i < len(lines); i++ {
			if l := watchParse(t, lines[i]); match(l) {
				return l, i
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; output:\n%s", watchWait, what, strings.Join(lines, "\n"))
		}
	}
}

func (o *watchOut) all() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.lines)
}

// watchParse decodes one line strictly: known fields only, and exactly
// the keys its op carries.
func watchParse(t *testing.T, line string) watchLine {
	t.Helper()
	var l watchLine
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(line), &raw); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if want, ok := watchKeys[l.Op]; !ok || !slices.Equal(keys, want) {
		t.Fatalf("line %q: keys %v, want %v for op %q", line, keys, want, l.Op)
	}
	return l
}

func sortedRoutes(rs []watchRoute) []watchRoute {
	out := slices.Clone(rs)
	sort.Slice(out, func(i, j int) bool {
		return fmt.Sprint(out[i]) < fmt.Sprint(out[j])
	})
	return out
}

// routesAre matches a routes line carrying exactly want.
func routesAre(want ...watchRoute) func(watchLine) bool {
	want = sortedRoutes(want)
	return func(l watchLine) bool { return l.Op == "routes" && slices.Equal(sortedRoutes(l.Routes), want) }
}

// watchEnv is a dockerd netns with two bridges (Docker networks) and a
// sandbox netns with a process in it, the way `watch --pid` finds a VM.
type watchEnv struct {
	netmontest.Pair
}

func newWatchEnv(t *testing.T) *watchEnv {
	t.Helper()
	e := &watchEnv{}
	e.Pair = netmontest.NewPair(t)
	return e
}

// bridge adds a Docker network's bridge with gateway address gw/prefix.
func (e *watchEnv) bridge(t *testing.T, gws ...string) string {
	t.Helper()
	br := netmontest.AddBridge(t, e.Dockerd)
	for _, gw := range gws {
		netmontest.AddAddr(t, e.Dockerd, br.Index, gw)
	}
	return br.Name
}

// process starts `sleep` inside the sandbox netns and returns it; cleanup
// kills and reaps it. The child is forked from a thread switched into the
// netns (it inherits the thread's netns).
func (e *watchEnv) process(t *testing.T) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	cmd := exec.Command("sleep", "3600")
	if err := nsfs.DoPath(e.SandboxPath, cmd.Start); err != nil {
		t.Fatalf("start a process in the sandbox netns: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	want, err := os.Stat(e.SandboxPath)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)); err != nil || !os.SameFile(got, want) {
		t.Fatalf("pid %d is not in %s: %v", cmd.Process.Pid, e.SandboxPath, err)
	}
	return cmd, exited
}

// endpoint replays Docker 29's sequence for one endpoint: a veth whose
// sandbox end is created there as vethXXXXXXX, a custom MTU, the rename,
// a MAC, the addresses, up.
func (e *watchEnv) endpoint(t *testing.T, bridge, name string, mtu int, cidrs ...string) *netmontest.Endpoint {
	t.Helper()
	ep := netmontest.VethPeerInNetNS(t, e.DockerdNS, e.SandboxNS, bridge)
	if mtu > 0 {
		for _, h := range []struct {
			h   *netlink.Handle
			idx int
		}{{ep.Host, ep.HostIndex}, {ep.Sandbox, ep.Index}} {
			l, err := h.h.LinkByIndex(h.idx)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.h.LinkSetMTU(l, mtu); err != nil {
				t.Fatal(err)
			}
		}
	}
	ep.Rename(name)
	ep.SetMAC(netmontest.RandMAC().String())
	for _, c := range cidrs {
		ep.AddAddr(c)
	}
	ep.Up()
	return ep
}

// kernelLink reads MAC, MTU and non-link-local addresses (sorted CIDRs) of
// a sandbox link from the kernel.
func (e *watchEnv) kernelLink(t *testing.T, name string) (string, uint64, []string) {
	t.Helper()
	l, err := e.Sandbox.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	as, err := e.Sandbox.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, a := range as {
		if !a.IP.IsLinkLocalUnicast() {
			addrs = append(addrs, a.IPNet.String())
		}
	}
	sort.Strings(addrs)
	return l.Attrs().HardwareAddr.String(), uint64(l.Attrs().MTU), addrs
}

// checkAttach compares an attach line with the kernel's view of the link.
func (e *watchEnv) checkAttach(t *testing.T, l watchLine, name string, wantMTU int, wantAddrs ...string) {
	t.Helper()
	mac, mtu, addrs := e.kernelLink(t, name)
	got := slices.Sorted(slices.Values(l.Addresses))
	if l.Name != name || l.MAC != mac || l.MTU != mtu || !slices.Equal(got, addrs) {
		t.Errorf("attach line %+v; the kernel says %s mac %s mtu %d addresses %v", l, name, mac, mtu, addrs)
	}
	if mtu != uint64(wantMTU) || !slices.Equal(addrs, slices.Sorted(slices.Values(wantAddrs))) {
		t.Errorf("kernel: %s mtu %d addresses %v; configured %d %v", name, mtu, addrs, wantMTU, wantAddrs)
	}
}

// TestWatchJSON runs `kata-netmon watch --pid PID --json` through a run, a
// connect that moves the gateway, and Docker's disconnect, then lets the
// process exit: the command stops by itself and exits 0. Peers are
// resolved by scanning the named netns (the command's default) or in the
// dockerd netns given.
func TestWatchJSON(t *testing.T) {
	t.Run("scan", func(t *testing.T) { testWatchJSON(t, false) })
	t.Run("dockerd-netns", func(t *testing.T) { testWatchJSON(t, true) })
}

func testWatchJSON(t *testing.T, explicit bool) {
	e := newWatchEnv(t)
	br1 := e.bridge(t, "172.28.1.1/24", "fd28:1::1/64")
	br2 := e.bridge(t, "172.28.2.1/24")
	proc, exited := e.process(t)

	pr, pw := io.Pipe()
	out := newWatchOut(pr)
	var stderr netmontest.SyncBuffer
	code := make(chan int, 1)
	args := []string{"watch", "--pid", fmt.Sprint(proc.Process.Pid), "--json", "--log-level", "debug"}
	if explicit {
		args = append(args, "--dockerd-netns", e.DockerdPath)
	}
	go func() {
		code <- run(args, pw, &stderr)
		pw.Close()
	}()
	finished := false
	t.Cleanup(func() {
		if !finished { // a failed test: end the command through its pid
			_ = proc.Process.Kill()
			select {
			case <-code:
			case <-time.After(watchWait):
				t.Errorf("watch did not stop")
			}
		}
		<-out.done
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr.String())
		}
	})

	// docker run: eth0, dual stack, custom MTU, default routes.
	eth0 := e.endpoint(t, br1, "eth0", 1450, "172.28.1.2/24", "fd28:1::2/64")
	eth0.AddDefaultRoute("172.28.1.1")
	eth0.AddDefaultRoute("fd28:1::1")
	l, at := out.next(t, 0, "attach eth0", func(l watchLine) bool { return l.Op == "attach" })
	e.checkAttach(t, l, "eth0", 1450, "172.28.1.2/24", "fd28:1::2/64")
	def4 := watchRoute{Dest: "default", Gateway: "172.28.1.1", Device: "eth0"}
	// The kernel gives an IPv6 route metric 1024 when none is set.
	def6 := watchRoute{Dest: "default", Gateway: "fd28:1::1", Device: "eth0", Metric: 1024}
	_, at = out.next(t, at+1, "default routes via eth0", routesAre(def4, def6))

	// docker network connect: eth1, which becomes the IPv4 gateway.
	eth1 := e.endpoint(t, br2, "eth1", 0, "172.28.2.2/24")
	l, at = out.next(t, at+1, "attach eth1", func(l watchLine) bool { return l.Op == "attach" })
	e.checkAttach(t, l, "eth1", 1500, "172.28.2.2/24")
	if err := e.Sandbox.RouteDel(&netlink.Route{LinkIndex: eth0.Index, Gw: net.ParseIP("172.28.1.1"), Protocol: unix.RTPROT_BOOT}); err != nil {
		t.Fatal(err)
	}
	eth1.AddDefaultRoute("172.28.2.1")
	_, at = out.next(t, at+1, "IPv4 default via eth1", routesAre(watchRoute{Dest: "default", Gateway: "172.28.2.1", Device: "eth1"}, def6))

	// docker network disconnect, Docker's way: down, renamed back, DELADDR,
	// moved out; then the default via the remaining gateway.
	mac1, _, _ := e.kernelLink(t, "eth1")
	link1, err := e.Sandbox.LinkByIndex(eth1.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Sandbox.LinkSetDown(link1); err != nil {
		t.Fatal(err)
	}
	eth1.Rename("veth" + hex.EncodeToString([]byte{byte(eth1.Index), 1, 2, 3})[:7])
	a, _ := netlink.ParseAddr("172.28.2.2/24")
	if err := e.Sandbox.AddrDel(link1, a); err != nil {
		t.Fatal(err)
	}
	eth1.MoveTo(e.DockerdNS)
	l, at = out.next(t, at+1, "detach eth1", func(l watchLine) bool { return l.Op == "detach" })
	if l.Name != "eth1" || l.MAC != mac1 {
		t.Errorf("detach line %+v, want eth1 %s", l, mac1)
	}
	eth0.AddDefaultRoute("172.28.1.1")
	out.next(t, at+1, "default routes via eth0 again", routesAre(def4, def6))

	// The process exits: the command stops by itself.
	if err := proc.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	select {
	case c := <-code:
		finished = true
		if c != 0 {
			t.Errorf("exit code %d, want 0", c)
		}
	case <-time.After(watchWait):
		t.Fatal("watch still running after its process exited")
	}
	<-out.done
	var ops []string
	for _, line := range out.all() {
		if l := watchParse(t, line); l.Op != "routes" {
			ops = append(ops, l.Op+" "+l.Name)
		}
	}
	if want := []string{"attach eth0", "attach eth1", "detach eth1"}; !slices.Equal(ops, want) {
		t.Errorf("attach/detach lines %q, want %q", ops, want)
	}
	if !strings.Contains(stderr.String(), "process exited; stopping") {
		t.Errorf("no log of the exit in stderr")
	}
}

// TestWatchErrors: a path that cannot be watched gives exactly one error
// line naming the path and why, and a non-zero exit.
func TestWatchErrors(t *testing.T) {
	netmontest.RequireRoot(t)
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("not a netns"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := "/run/netns/knm-missing-" + hex.EncodeToString([]byte{1, 2, 3, 4})
	tests := []struct {
		name string
		args []string
		code int
		want []string // in the one line
	}{
		{"missing path", []string{"watch", "--netns", missing}, 1, []string{missing, "no such file or directory"}},
		{"a regular file", []string{"watch", "--netns", regular}, 1, []string{regular, "not a network namespace"}},
		{"a directory", []string{"watch", "--netns", dir}, 1, []string{dir, "not a network namespace"}},
		{"the uts namespace", []string{"watch", "--netns", "/proc/self/ns/uts"}, 1, []string{"/proc/self/ns/uts", "not a network namespace"}},
		{"no such process", []string{"watch", "--pid", "2147483646"}, 1, []string{"2147483646", "no such process"}},
		{"bad dockerd netns", []string{"watch", "--netns", "/proc/self/ns/net", "--dockerd-netns", regular}, 1, []string{regular, "not a network namespace"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			checkOneErrorLine(t, code, tc.code, stdout.String(), stderr.String(), tc.want)
		})
	}
	t.Run("usage", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			say  string
		}{
			{nil, "usage:"},
			{[]string{"watch"}, "usage:"},
			{[]string{"watch", "--netns", "x", "--pid", "1"}, "usage:"},
			{[]string{"frob"}, "usage:"},
			{[]string{"watch", "--bogus"}, "flag provided but not defined: -bogus"},
		} {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.say) {
				t.Errorf("run(%q) = %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.say)
			}
		}
	})
}

func checkOneErrorLine(t *testing.T, code, wantCode int, stdout, stderr string, want []string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("exit code %d, want %d", code, wantCode)
	}
	if stdout != "" {
		t.Errorf("stdout %q, want nothing", stdout)
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "kata-netmon: ") {
		t.Fatalf("stderr %q, want one line starting with \"kata-netmon: \"", stderr)
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Errorf("error line %q does not say %q", lines[0], w)
		}
	}
	t.Logf("%s", lines[0])
}

// TestWatchNoPermission runs the built command as an unprivileged user on
// a netns it may not open.
func TestWatchNoPermission(t *testing.T) {
	netmontest.RequireRoot(t)
	bin := buildWatch(t)
	target := fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	cmd := exec.Command(bin, "watch", "--netns", target)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("run as nobody: %v (stderr %q)", err, stderr.String())
	}
	checkOneErrorLine(t, ee.ExitCode(), 1, stdout.String(), stderr.String(), []string{target, "permission denied"})
}

// buildWatch builds the command into a directory an unprivileged user can
// reach.
func buildWatch(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir, err := os.MkdirTemp("", "knm-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "kata-netmon")
	build := exec.Command(goBin, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
