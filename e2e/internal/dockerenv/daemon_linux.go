//go:build linux

package dockerenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Supervision of the containerd and dockerd processes an Env starts.

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
