//go:build !linux

package dockerenv

import (
	"runtime"
	"testing"

	"github.com/kata-netmon/kata-netmon/e2e/internal/prereq"
)

// Env is a running private Docker daemon (Linux only).
type Env struct{}

// Prereqs skips the test: the environment needs Linux network namespaces.
// Under CI=true it fails instead.
func Prereqs(t testing.TB) {
	t.Helper()
	prereq.Missing(t, "dockerenv: needs Linux, this is "+runtime.GOOS)
}

// Start skips (or under CI=true fails) the test: Linux only.
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	Prereqs(t)
	return nil
}
