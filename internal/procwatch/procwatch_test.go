//go:build linux

package procwatch

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestExitIsSeen(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	called := make(chan struct{})
	w, err := OpenFunc(cmd.Process.Pid, func() { close(called) })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	select {
	case <-w.Exited():
		t.Fatal("reported exit of a running process")
	case <-called:
		t.Fatal("onExit called for a running process")
	default:
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, ch := range []<-chan struct{}{w.Exited(), called} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("exit not reported within 10s")
		}
	}
}

func TestCloseWhileRunning(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	w, err := Open(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	select {
	case <-w.Exited():
		t.Fatal("Close reported as exit")
	default:
	}
}

func TestOpenMissingProcess(t *testing.T) {
	// No process can have a pid above pid_max.
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{max + 1, 0, -1} {
		if w, err := Open(pid); err == nil {
			w.Close()
			t.Errorf("Open(%d) succeeded", pid)
		}
	}
}
