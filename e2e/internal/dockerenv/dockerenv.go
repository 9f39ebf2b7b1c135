// Package dockerenv runs a private, real Docker 29 daemon for end-to-end tests.
//
// Start creates a network namespace of its own (knm-dockerd-<hex>), starts
// containerd and dockerd inside it with every root, state dir and socket in a
// fresh temporary directory, and tears all of it down in t.Cleanup: docker0,
// br-* bridges, host-side veths and iptables rules never touch the machine's
// own network namespace, and nothing outside the temporary directory is used
// except the shim sockets containerd keeps under /run/containerd/s (named by a
// hash that includes the private containerd address).
//
// The binaries come from scripts/deps-docker.sh, which builds them into
// $KNM_CACHE/bin (default /var/cache/kata-netmon/bin). The docker client is
// taken from there if present, otherwise from PATH.
//
// Tests call Prereqs first (Start calls it too): it skips the test when the
// machine cannot run the environment, except under CI=true, where a missing
// prerequisite fails the test (prereq.Missing).
//
// Where things are: env_linux.go starts and tears down an Env (its
// lifecycle); docker_linux.go is the docker CLI run against it (docker,
// inspect, the busybox image); daemon_linux.go supervises the containerd and
// dockerd processes; procfs_linux.go finds the shims, children and mounts
// they leave behind through /proc; prereqs_linux.go checks what the machine
// has; inspect.go decodes docker inspect.
package dockerenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"time"
)

// DefaultCacheDir is the cache directory used when KNM_CACHE is unset.
const DefaultCacheDir = "/var/cache/kata-netmon"

// InstallScript is the script that installs everything Prereqs checks for.
const InstallScript = "scripts/deps-docker.sh"

// CacheDir returns $KNM_CACHE, or DefaultCacheDir when it is unset.
func CacheDir() string {
	if d := os.Getenv("KNM_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// BinDir returns the directory holding dockerd, containerd,
// containerd-shim-runc-v2, runc (and possibly docker): CacheDir()/bin.
func BinDir() string { return filepath.Join(CacheDir(), "bin") }

// UniqueName returns prefix + "-" + 8 random hex digits. Use it for every
// network, container and link name a test creates: other tests may run on the
// same machine.
func UniqueName(prefix string) string { return prefix + "-" + randHex(4) }

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand.Read does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// Option configures Start.
type Option func(*config)

type config struct {
	startTimeout time.Duration
	stopTimeout  time.Duration
	dockerdArgs  []string
}

func defaultConfig() config {
	return config{
		startTimeout: 60 * time.Second,
		stopTimeout:  15 * time.Second,
	}
}

// WithStartTimeout bounds how long Start waits for containerd and dockerd to
// become ready (default 60s).
func WithStartTimeout(d time.Duration) Option { return func(c *config) { c.startTimeout = d } }

// WithStopTimeout bounds how long cleanup waits for each daemon after SIGTERM
// before it sends SIGKILL (default 15s).
func WithStopTimeout(d time.Duration) Option { return func(c *config) { c.stopTimeout = d } }

// WithDockerdArgs appends extra flags to dockerd's command line, for example
// "--ipv6", "--fixed-cidr-v6=fd00:1::/64" or "--log-level=debug".
func WithDockerdArgs(args ...string) Option {
	return func(c *config) { c.dockerdArgs = append(c.dockerdArgs, args...) }
}
