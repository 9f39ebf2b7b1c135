//go:build linux

package dockerenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Env is a running private Docker daemon. All methods are safe for concurrent use.
type Env struct {
	t   testing.TB
	cfg config

	dir            string // short temp dir: /tmp/knm-NNNN
	netns          string // name under /run/netns
	netnsCreated   bool
	dockerBin      string
	containerdSock string
	dockerSock     string

	containerd *daemon
	dockerd    *daemon

	ready bool // Start succeeded

	mu         sync.Mutex
	busyboxRef string
}

// Start runs containerd and dockerd in a fresh network namespace and returns
// when `docker version` answers. Everything is torn down in t.Cleanup, also
// when Start itself fails half-way. Start skips (or, under CI=true, fails)
// the test when Prereqs are not met.
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	Prereqs(t)
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	begin := time.Now()

	// Under /tmp, not t.TempDir(): unix socket paths must stay well below
	// 108 bytes (containerd adds ".ttrpc", shims nest deeper).
	dir, err := os.MkdirTemp("/tmp", "knm-")
	if err != nil {
		t.Fatalf("dockerenv: %v", err)
	}
	e := &Env{
		t:              t,
		cfg:            cfg,
		dir:            dir,
		netns:          "knm-dockerd-" + randHex(4),
		dockerBin:      dockerClient(),
		containerdSock: filepath.Join(dir, "c.sock"),
		dockerSock:     filepath.Join(dir, "d.sock"),
	}
	t.Cleanup(e.cleanup)

	if err := e.start(); err != nil {
		t.Fatalf("dockerenv: %v", err)
	}
	e.ready = true
	t.Logf("dockerenv: dockerd ready in %v (netns %s, dir %s)", time.Since(begin).Round(time.Millisecond), e.netns, e.dir)
	return e
}

func (e *Env) start() error {
	deadline := time.Now().Add(e.cfg.startTimeout)

	if out, err := exec.Command("ip", "netns", "add", e.netns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", e.netns, err, bytes.TrimSpace(out))
	}
	e.netnsCreated = true
	if out, err := exec.Command("nsenter", "--net="+e.NetNSPath(), "--", "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("setting lo up in %s: %v: %s", e.netns, err, bytes.TrimSpace(out))
	}

	// containerd: CRI and NRI are disabled (NRI would share /var/run/nri/nri.sock
	// between environments; CRI wants CNI and listens on a streaming port).
	cdir := filepath.Join(e.dir, "containerd")
	ctoml := filepath.Join(e.dir, "containerd.toml")
	conf := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(cdir, "root"), filepath.Join(cdir, "state"), e.containerdSock, e.containerdSock+".ttrpc", filepath.Join(cdir, "opt"))
	if err := os.WriteFile(ctoml, []byte(conf), 0o644); err != nil {
		return err
	}
	var err error
	e.containerd, err = e.spawn("containerd", filepath.Join(BinDir(), "containerd"), "--config", ctoml)
	if err != nil {
		return err
	}
	if err := e.waitContainerd(deadline); err != nil {
		return err
	}

	// dockerd: an empty config file keeps /etc/docker/daemon.json out; --group=
	// keeps the socket root-owned without looking up a "docker" group.
	djson := filepath.Join(e.dir, "daemon.json")
	if err := os.WriteFile(djson, []byte("{}\n"), 0o644); err != nil {
		return err
	}
	args := []string{
		"--config-file=" + djson,
		"--data-root=" + filepath.Join(e.dir, "docker"),
		"--exec-root=" + filepath.Join(e.dir, "exec"),
		"--pidfile=" + filepath.Join(e.dir, "dockerd.pid"),
		"--host=unix://" + e.dockerSock,
		"--containerd=" + e.containerdSock,
		"--userland-proxy=false",
		"--group=",
	}
	args = append(args, e.cfg.dockerdArgs...)
	e.dockerd, err = e.spawn("dockerd", filepath.Join(BinDir(), "dockerd"), args...)
	if err != nil {
		return err
	}
	return e.waitDockerd(deadline)
}

func (e *Env) waitContainerd(deadline time.Time) error {
	for {
		c, err := net.DialTimeout("unix", e.containerdSock, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if e.containerd.exited() {
			return fmt.Errorf("containerd exited before it listened on %s: %v\n%s", e.containerdSock, e.containerd.err(), e.containerd.tail(40))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not listen on %s within %v: %v\n%s", e.containerdSock, e.cfg.startTimeout, err, e.containerd.tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *Env) waitDockerd(deadline time.Time) error {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := e.Docker(ctx, "version", "--format", "{{.Server.APIVersion}}")
		cancel()
		if err == nil {
			return nil
		}
		if e.dockerd.exited() {
			return fmt.Errorf("dockerd exited during start: %v\n%s", e.dockerd.err(), e.dockerd.tail(40))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd not ready within %v: %v\ndockerd log:\n%s\ncontainerd log:\n%s",
				e.cfg.startTimeout, err, e.dockerd.tail(40), e.containerd.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// NetNSName returns the name of dockerd's network namespace (under /run/netns).
func (e *Env) NetNSName() string { return e.netns }

// NetNSPath returns /run/netns/<name>, the network namespace dockerd and
// containerd run in: docker0, br-* bridges and host-side veths live there.
func (e *Env) NetNSPath() string { return filepath.Join("/run/netns", e.netns) }

// NetNSDir returns dockerd's netns directory, <exec-root>/netns, where it
// bind-mounts container sandboxes and the overlay networks' own netns
// (moby daemon/libnetwork/osl/namespace_linux.go: SetBasePath).
func (e *Env) NetNSDir() string { return filepath.Join(e.dir, "exec", "netns") }

// Host returns the DOCKER_HOST value of this daemon (unix://...).
func (e *Env) Host() string { return "unix://" + e.dockerSock }

// ContainerdAddress returns the path of the private containerd's socket.
func (e *Env) ContainerdAddress() string { return e.containerdSock }

// Dir returns the temporary directory holding every root, state dir, socket
// and daemon log of this environment.
func (e *Env) Dir() string { return e.dir }

// Docker runs the docker client against this daemon and returns its trimmed
// stdout; the error includes stderr.
func (e *Env) Docker(ctx context.Context, args ...string) (string, error) {
	return e.docker(ctx, nil, args...)
}

// MustDocker is Docker with a two-minute bound that fails the test on error.
func (e *Env) MustDocker(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := e.Docker(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *Env) docker(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.dockerBin, args...)
	cmd.Env = append(withoutDockerVars(os.Environ()),
		"DOCKER_HOST="+e.Host(),
		// A config dir of our own: no contexts, credential helpers or
		// cli-plugins from ~/.docker.
		"DOCKER_CONFIG="+filepath.Join(e.dir, "client"),
	)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := strings.TrimSpace(stdout.String())
	if err != nil {
		return out, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// InspectContainer returns `docker inspect --type container` of nameOrID.
func (e *Env) InspectContainer(ctx context.Context, nameOrID string) (*Container, error) {
	out, err := e.Docker(ctx, "inspect", "--type", "container", nameOrID)
	if err != nil {
		return nil, err
	}
	return decodeOne[Container](out, "container "+nameOrID)
}

// MustInspectContainer is InspectContainer that fails the test on error.
func (e *Env) MustInspectContainer(t testing.TB, nameOrID string) *Container {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := e.InspectContainer(ctx, nameOrID)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ContainerPid returns State.Pid of a running container (its init process in
// the machine's pid namespace); /proc/<pid>/ns/net is its sandbox netns.
func (e *Env) ContainerPid(t testing.TB, nameOrID string) int {
	t.Helper()
	c := e.MustInspectContainer(t, nameOrID)
	if !c.State.Running || c.State.Pid <= 0 {
		t.Fatalf("container %s is not running (status %q, pid %d)", nameOrID, c.State.Status, c.State.Pid)
	}
	return c.State.Pid
}

// InspectNetwork returns `docker network inspect` of nameOrID.
func (e *Env) InspectNetwork(ctx context.Context, nameOrID string) (*Network, error) {
	out, err := e.Docker(ctx, "network", "inspect", nameOrID)
	if err != nil {
		return nil, err
	}
	return decodeOne[Network](out, "network "+nameOrID)
}

// MustInspectNetwork is InspectNetwork that fails the test on error.
func (e *Env) MustInspectNetwork(t testing.TB, nameOrID string) *Network {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	n, err := e.InspectNetwork(ctx, nameOrID)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ImportBusybox imports a busybox-static rootfs (/bin/busybox plus a symlink
// per applet: sh, sleep, ip, nc, ...) as an image with CMD ["/bin/sh"] and
// returns its reference. The image is built once per Env.
func (e *Env) ImportBusybox(t testing.TB) string {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.busyboxRef != "" {
		return e.busyboxRef
	}
	tarball, err := busyboxRootfs(busyboxPath)
	if err != nil {
		t.Fatalf("dockerenv: %v", err)
	}
	const ref = "knm-busybox:latest"
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := e.docker(ctx, bytes.NewReader(tarball), "import", "--change", `CMD ["/bin/sh"]`, "-", ref); err != nil {
		t.Fatalf("dockerenv: importing busybox: %v", err)
	}
	e.busyboxRef = ref
	return ref
}

// cleanup tears everything down, in this order: containers, dockerd,
// containerd, leftover shims of this containerd, mounts under the temp dir,
// the netns, the temp dir. It only signals processes this Env started (and
// shims started by its own containerd, identified by its unique address).
func (e *Env) cleanup() {
	t := e.t
	if e.ready {
		for _, d := range []*daemon{e.containerd, e.dockerd} {
			if d.exited() {
				t.Errorf("dockerenv: %s exited during the test: %v\n%s", d.name, d.err(), d.tail(30))
			}
		}
	}
	if t.Failed() {
		for _, d := range []*daemon{e.dockerd, e.containerd} {
			if d != nil {
				t.Logf("dockerenv: last lines of %s:\n%s", d.logPath, d.tail(30))
			}
		}
	}
	if e.dockerd != nil && !e.dockerd.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if ids, err := e.Docker(ctx, "ps", "--all", "--quiet", "--no-trunc"); err != nil {
			t.Errorf("dockerenv cleanup: listing containers: %v", err)
		} else if ids != "" {
			if _, err := e.Docker(ctx, append([]string{"rm", "--force", "--volumes"}, strings.Fields(ids)...)...); err != nil {
				t.Errorf("dockerenv cleanup: removing containers: %v", err)
			}
		}
		cancel()
	}
	for _, d := range []*daemon{e.dockerd, e.containerd} {
		if d == nil {
			continue
		}
		if err := d.stop(e.cfg.stopTimeout); err != nil {
			t.Errorf("dockerenv cleanup: %v", err)
		}
	}
	if e.containerd != nil {
		// Shims exit on their own shortly after their task is deleted.
		deadline := time.Now().Add(5 * time.Second)
		for _, sh := range shimsOf(e.containerdSock) {
			if waitExit(sh.pid, time.Until(deadline)) {
				continue
			}
			// Its children are container inits (pid 1 of their pid namespace:
			// killing one kills its whole container).
			kids := childrenOf(sh.pid)
			t.Errorf("dockerenv cleanup: containerd-shim pid %d of %s outlived its containers; killing it and its children %v", sh.pid, e.containerdSock, kids)
			for _, k := range kids {
				_ = unix.Kill(k, unix.SIGKILL)
			}
			_ = unix.Kill(sh.pid, unix.SIGKILL)
			waitExit(sh.pid, 5*time.Second)
			// A killed shim cannot remove its socket.
			for _, p := range sh.sockets(e.containerdSock) {
				_ = os.Remove(p)
			}
		}
	}
	if err := unmountUnder(e.dir); err != nil {
		t.Errorf("dockerenv cleanup: %v", err)
	}
	if e.netnsCreated {
		if out, err := exec.Command("ip", "netns", "delete", e.netns).CombinedOutput(); err != nil {
			t.Errorf("dockerenv cleanup: ip netns delete %s: %v: %s", e.netns, err, bytes.TrimSpace(out))
		}
	}
	if err := os.RemoveAll(e.dir); err != nil {
		t.Errorf("dockerenv cleanup: %v", err)
	}
}

// daemon is a process started by this package.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has been reaped
	waitErr error         // valid after done is closed
}

// spawn starts bin inside the Env's netns with nsenter, which execs bin in
// place: the pid of the nsenter process is the daemon's pid.
//
// The process is started from a goroutine locked to its OS thread, and that
// thread stays alive until the process has been reaped: Pdeathsig is tied to
// the creating thread, so the daemon gets SIGTERM exactly when the test binary
// dies without running its cleanups (timeout panic, kill), never earlier.
func (e *Env) spawn(name, bin string, args ...string) (*daemon, error) {
	d := &daemon{name: name, logPath: filepath.Join(e.dir, name+".log"), done: make(chan struct{})}
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	d.cmd = exec.Command("nsenter", append([]string{"--net=" + e.NetNSPath(), "--", bin}, args...)...)
	d.cmd.Env = append(withoutDockerVars(os.Environ()), "PATH="+daemonPATH())
	d.cmd.Dir = e.dir
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true, // a ^C to the test's process group must not reach the daemons before cleanup does
		Pdeathsig: syscall.SIGTERM,
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := d.cmd.Start()
		started <- err
		if err != nil {
			logf.Close()
			close(d.done)
			return
		}
		d.waitErr = d.cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return d, nil
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// err returns how the process ended; only meaningful once exited() is true.
func (d *daemon) err() error {
	if !d.exited() {
		return nil
	}
	if d.waitErr == nil {
		return errors.New("exit status 0")
	}
	return d.waitErr
}

// stop sends SIGTERM, waits up to timeout, then SIGKILL. The process is ours
// and not yet reaped while done is open, so its pid cannot have been reused.
func (d *daemon) stop(timeout time.Duration) error {
	if d.exited() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(timeout):
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.done:
		return fmt.Errorf("%s (pid %d) ignored SIGTERM for %v; killed", d.name, d.cmd.Process.Pid, timeout)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL for 10s", d.name, d.cmd.Process.Pid)
	}
}

// tail returns the last n lines of the daemon's log.
func (d *daemon) tail(n int) string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// shim is a containerd-shim-runc-v2 process.
type shim struct {
	pid       int
	namespace string // containerd namespace ("moby")
	id        string // task id
}

// sockets returns the paths the shim listens on, computed as containerd's
// shim.SocketAddress does: /run/containerd/s/<sha256(address/namespace/id)>,
// plus the debug variant.
func (s shim) sockets(address string) []string {
	base := filepath.Join(address, s.namespace, s.id)
	var out []string
	for _, p := range []string{base, filepath.Join(base, "debug")} {
		out = append(out, fmt.Sprintf("/run/containerd/s/%x", sha256.Sum256([]byte(p))))
	}
	return out
}

// shimsOf returns the containerd-shim-runc-v2 processes whose command line
// names address (containerd starts them with "-address <socket>").
func shimsOf(address string) []shim {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var shims []shim
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(argv) == 0 || filepath.Base(argv[0]) != "containerd-shim-runc-v2" {
			continue
		}
		sh := shim{pid: pid}
		ours := false
		for i := 0; i+1 < len(argv); i++ {
			switch strings.TrimLeft(argv[i], "-") {
			case "address":
				ours = argv[i+1] == address
			case "namespace":
				sh.namespace = argv[i+1]
			case "id":
				sh.id = argv[i+1]
			}
		}
		if ours {
			shims = append(shims, sh)
		}
	}
	return shims
}

// childrenOf returns the pids whose parent is ppid.
func childrenOf(ppid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 2 && f[1] == strconv.Itoa(ppid) {
			kids = append(kids, pid)
		}
	}
	return kids
}

// waitExit waits up to timeout for process pid to exit, through a pidfd.
// It returns true when the process is gone.
func waitExit(pid int, timeout time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		ms := int(timeout.Milliseconds())
		if ms < 0 {
			ms = 0
		}
		start := time.Now()
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			timeout -= time.Since(start)
			continue
		}
		return err == nil && n > 0
	}
}

// unmountUnder lazily unmounts every mount point at or below dir, deepest
// first, until none is left (Docker and containerd leave overlay, nsfs and
// bind mounts behind).
func unmountUnder(dir string) error {
	for round := 0; round < 5; round++ {
		mps, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
		for _, mp := range mps {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("unmounting %s: %w", mp, err)
			}
		}
	}
	mps, _ := mountsUnder(dir)
	if len(mps) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, mps)
	}
	return nil
}

func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of mountinfo fields.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// withoutDockerVars drops DOCKER_* (DOCKER_CONTEXT, DOCKER_TLS_VERIFY, ...)
// and NOTIFY_SOCKET from env. Callers append their own values; os/exec keeps
// the last of duplicate keys.
func withoutDockerVars(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if strings.HasPrefix(kv, "DOCKER_") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}
