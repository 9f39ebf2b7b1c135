//go:build linux

package dockerenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The docker CLI, run against the Env's private daemon.

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

// MustCreateNetwork creates a bridge network named prefix-<8 hex> (args go
// to `docker network create` before the name: --subnet, --opt, --ipv6) and
// returns the name; it fails the test on error. The network lives as long as
// the daemon.
func (e *Env) MustCreateNetwork(t testing.TB, prefix string, args ...string) string {
	t.Helper()
	name := UniqueName(prefix)
	e.MustDocker(t, append(append([]string{"network", "create", "--driver", "bridge"}, args...), name)...)
	return name
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
