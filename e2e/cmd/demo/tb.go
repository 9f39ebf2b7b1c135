//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// runner is the testing.TB that dockerenv.Start needs (the package is built
// for tests and takes one). It is not a test: Logf prints a demo line,
// Cleanup collects functions that run (last first) when the demo ends,
// Fatal/Skip record the failure and end the demo goroutine with
// runtime.Goexit, exactly as testing does, so deferred calls still run.
//
// FailNow, Fatal* and Skip* must be called from the goroutine started by
// run, like testing.T's. Everything else is safe from any goroutine.
type runner struct {
	// TB is nil. It is embedded only for the interface's unexported
	// method: every exported method is implemented below, so nothing
	// reaches it.
	testing.TB

	ctx  context.Context
	logf func(format string, args ...any)

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	skipped  bool
	errs     []string
}

var _ testing.TB = (*runner)(nil)

func newRunner(ctx context.Context, logf func(string, ...any)) *runner {
	return &runner{ctx: ctx, logf: logf}
}

// run calls fn on a new goroutine and returns a channel closed once fn has
// returned or called FailNow/SkipNow.
func (r *runner) run(fn func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if p := recover(); p != nil {
				r.fail(fmt.Sprintf("panic: %v", p))
			}
		}()
		fn()
	}()
	return done
}

// runCleanups runs the collected cleanups, last registered first; a
// cleanup that calls FailNow ends only itself.
func (r *runner) runCleanups() {
	for {
		r.mu.Lock()
		n := len(r.cleanups)
		if n == 0 {
			r.mu.Unlock()
			return
		}
		fn := r.cleanups[n-1]
		r.cleanups = r.cleanups[:n-1]
		r.mu.Unlock()
		<-r.run(fn)
	}
}

func (r *runner) fail(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A step cut short by Ctrl-C or SIGTERM (ctx cancelled) is not a
	// failure: Failed stays false, so cleanups do not dump daemon logs.
	if r.ctx.Err() == nil {
		r.failed = true
	}
	if msg != "" {
		r.errs = append(r.errs, msg)
	}
}

// Errors returns every failure message so far.
func (r *runner) Errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

func (r *runner) Cleanup(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, fn)
}

func (r *runner) Error(args ...any) { r.Errorf("%s", strings.TrimSuffix(fmt.Sprintln(args...), "\n")) }
func (r *runner) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.logf("ERROR: %s", msg)
	r.fail(msg)
}
func (r *runner) Fail()    { r.fail("") }
func (r *runner) FailNow() { r.fail(""); runtime.Goexit() }
func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}
func (r *runner) Fatal(args ...any) { r.Fatalf("%s", strings.TrimSuffix(fmt.Sprintln(args...), "\n")) }
func (r *runner) Fatalf(format string, args ...any) {
	r.fail(fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (r *runner) Helper()                         {}
func (r *runner) Log(args ...any)                 { r.logf("%s", strings.TrimSuffix(fmt.Sprintln(args...), "\n")) }
func (r *runner) Logf(format string, args ...any) { r.logf(format, args...) }
func (r *runner) Name() string                    { return "demo" }
func (r *runner) Context() context.Context        { return r.ctx }
func (r *runner) Output() io.Writer               { return os.Stdout }
func (r *runner) Attr(key, value string)          { r.logf("%s=%s", key, value) }
func (r *runner) Skip(args ...any)                { r.Skipf("%s", strings.TrimSuffix(fmt.Sprintln(args...), "\n")) }
func (r *runner) SkipNow()                        { r.Skipf("skipped") }
func (r *runner) Skipf(format string, args ...any) {
	// The demo cannot do without what was skipped: it is a failure.
	r.mu.Lock()
	r.skipped = true
	r.mu.Unlock()
	r.Fatalf(format, args...)
}
func (r *runner) Skipped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.skipped
}

func (r *runner) TempDir() string {
	dir, err := os.MkdirTemp("", "knm-demo-")
	if err != nil {
		r.Fatalf("TempDir: %v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (r *runner) ArtifactDir() string { return r.TempDir() }

func (r *runner) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		r.Fatalf("Setenv: %v", err)
	}
	r.Cleanup(func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	})
}

func (r *runner) Chdir(dir string) {
	old, err := os.Getwd()
	if err != nil {
		r.Fatalf("Chdir: %v", err)
	}
	if err := os.Chdir(dir); err != nil {
		r.Fatalf("Chdir: %v", err)
	}
	r.Cleanup(func() { os.Chdir(old) })
}
