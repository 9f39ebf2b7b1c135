//go:build linux

// Package watchbin builds the watch command (cmd/kata-netmon) and runs it as
// a process of its own, for the e2e tests that need what only a separate
// process can do (run in another netns, exit when its target exits): its
// JSON lines on stdout are decoded into hotplugtest.Events, the form the
// in-memory FakeSandbox also logs, so one set of checks serves both.
package watchbin

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// Package is the watch command's import path.
const Package = "github.com/kata-netmon/kata-netmon/cmd/kata-netmon"

// Build builds the watch command into t's temporary directory, with -race
// when this test binary has it (the build cache makes it quick).
func Build(t testing.TB) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "kata-netmon")
	args := []string{"build", "-o", out}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	args = append(args, Package)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	// By import path: any directory of the module will do, and the test's
	// own (its package's) is one.
	cmd := exec.CommandContext(ctx, goBin, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	t.Logf("go %s: %v", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	return out
}

// Options say how to run the command.
type Options struct {
	// NetNS, if set, runs the command inside that netns (nsenter --net
	// execs it in place: the process is kata-netmon itself).
	NetNS string
	// Args follow "watch --json".
	Args []string
	// OnEvent is called for each line of stdout, in order, from one
	// goroutine; a line that is not an event arrives as Op "unparsable: "
	// and the line.
	OnEvent func(hotplugtest.Event)
}

// Process is a running watch command.
type Process struct {
	Cmd    *exec.Cmd
	Stderr *netmontest.SyncBuffer
	done   chan struct{} // closed once reaped and stdout drained
	err    error         // Wait's result, valid after done
}

// Start builds and starts `kata-netmon watch --json --log-level debug
// Args...`. The race detector's one-second sleep at exit is switched off
// (GORACE): it is not the command's. The process gets SIGKILL if the test
// binary dies, and is killed on cleanup if still running.
func Start(t testing.TB, opts Options) *Process {
	t.Helper()
	bin := Build(t)
	argv := append([]string{bin, "watch", "--json", "--log-level", "debug"}, opts.Args...)
	if opts.NetNS != "" {
		argv = append([]string{"nsenter", "--net=" + opts.NetNS, "--"}, argv...)
	}
	p := &Process{Cmd: exec.Command(argv[0], argv[1:]...), Stderr: &netmontest.SyncBuffer{}, done: make(chan struct{})}
	p.Cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	p.Cmd.Stderr = p.Stderr
	stdout, err := p.Cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig follows the thread that forked: start and reap from one
	// goroutine locked to its thread, so the Go runtime cannot retire that
	// thread (and kill the child) while the process runs.
	started := make(chan error, 1)
	drained := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := p.Cmd.Start(); err != nil {
			started <- err
			close(p.done)
			return
		}
		started <- nil
		<-drained // Wait closes the pipe: read it all first
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		t.Fatalf("start %v: %v", p.Cmd.Args, err)
	}
	go func() {
		defer close(drained)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e hotplugtest.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				fmt.Fprintf(p.Stderr, "test: stdout line %q: %v\n", sc.Text(), err)
				e = hotplugtest.Event{Op: "unparsable: " + sc.Text()}
			}
			if opts.OnEvent != nil {
				opts.OnEvent(e)
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Logf("started %s", strings.Join(p.Cmd.Args, " "))
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.Cmd.Process.Kill()
		<-p.done
	})
	return p
}

// Done is closed once the process has exited and its stdout was read.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process ended; valid once Done is closed.
func (p *Process) Err() error { return p.err }

// Terminate sends SIGTERM and waits up to timeout for a clean exit.
func (p *Process) Terminate(timeout time.Duration) error {
	select {
	case <-p.done:
		return fmt.Errorf("exited before SIGTERM: %v", p.err)
	default:
	}
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	return p.Wait(timeout)
}

// Wait waits up to timeout for the process to exit on its own and checks
// that it exited with status 0.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return fmt.Errorf("still running %v later", timeout)
	}
	if p.err != nil {
		return fmt.Errorf("exit: %v; stderr:\n%s", p.err, p.Stderr.String())
	}
	return nil
}

// CPU returns the CPU time (user + system) the process has used so far,
// from /proc/<pid>/stat in clock ticks.
func (p *Process) CPU(t testing.TB) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command (which may hold spaces) start after ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz
}
