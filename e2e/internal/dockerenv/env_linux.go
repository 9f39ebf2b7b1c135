//go:build linux

package dockerenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
