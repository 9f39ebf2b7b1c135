//go:build !linux

package dockerenv

import (
	"os"
	"runtime"
	"testing"
)

// Env is a running private Docker daemon (Linux only).
type Env struct{}

// Prereqs skips the test: the environment needs Linux network namespaces.
// Under CI=true it fails instead.
func Prereqs(t testing.TB) {
	t.Helper()
	msg := "dockerenv: needs Linux, this is " + runtime.GOOS
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Start skips (or under CI=true fails) the test: Linux only.
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	Prereqs(t)
	return nil
}
