//go:build linux

package nsfs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDoRunsInTargetAndComesBack(t *testing.T) {
	netmontest.RequireRoot(t)
	path, _ := netmontest.NewNetNS(t)
	want, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	self, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()

	var inside bool
	if err := DoPath(path, func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		inside = cur.Equal(want)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !inside {
		t.Fatal("fn did not run in the target netns")
	}
	// This goroutine never moved.
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if !cur.Equal(self) {
		t.Fatal("caller's netns changed")
	}
}

func TestDoReturnsFnError(t *testing.T) {
	netmontest.RequireRoot(t)
	path, _ := netmontest.NewNetNS(t)
	boom := errors.New("boom")
	if err := DoPath(path, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Do = %v, want %v", err, boom)
	}
}

func TestDoBadPath(t *testing.T) {
	ran := false
	err := DoPath("/nonexistent/knm-netns", func() error { ran = true; return nil })
	if err == nil || ran {
		t.Fatalf("Do on a missing path: err %v, fn ran %v", err, ran)
	}
	f, err := os.CreateTemp(t.TempDir(), "notns")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if os.Geteuid() == 0 {
		if err := DoPath(f.Name(), func() error { ran = true; return nil }); err == nil || ran {
			t.Fatalf("Do on a regular file: err %v, fn ran %v", err, ran)
		}
	}
}

func TestOpenChecksTheType(t *testing.T) {
	netmontest.RequireRoot(t)
	path, _ := netmontest.NewNetNS(t)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := Stat(path)
	if err != nil || id != f.ID() {
		t.Fatalf("Stat = %v, %v; want %v", id, err, f.ID())
	}
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if self.Same(f) {
		t.Fatal("a new netns has the identity of our own")
	}
	// Another kind of namespace: nsfs, but not a network one.
	if _, err := Open("/proc/self/ns/uts"); !errors.Is(err, ErrNotNetNS) {
		t.Errorf("Open(uts namespace) = %v, want ErrNotNetNS", err)
	}
	if _, err := Open("/proc/self/status"); !errors.Is(err, ErrNotNetNS) {
		t.Errorf("Open(a proc file) = %v, want ErrNotNetNS", err)
	}
	if _, err := Open("/nonexistent/knm-netns"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want os.ErrNotExist", err)
	}
	if err := f.Close(); err != nil || f.Close() != nil {
		t.Errorf("Close twice: %v", err)
	}
}

// TestOpenFIFODoesNotBlock: a FIFO put where a netns file was expected (a
// swap between a caller's check and the open) is refused at once, not
// waited on for a writer. (OpenQuiet checks no type: it only must not
// block.)
func TestOpenFIFODoesNotBlock(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "netns")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(filepath.Dir(fifo))
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for name, open := range map[string]func() (*File, error){
		"Open":      func() (*File, error) { return Open(fifo) },
		"OpenQuiet": func() (*File, error) { return OpenQuiet(fifo) },
		"OpenAt":    func() (*File, error) { return OpenAt(int(dir.Fd()), "netns", fifo) },
	} {
		done := make(chan error, 1)
		go func() {
			f, err := open()
			if err == nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if name != "OpenQuiet" && !errors.Is(err, ErrNotNetNS) {
				t.Errorf("%s(FIFO) = %v, want ErrNotNetNS", name, err)
			}
		case <-time.After(10 * time.Second):
			// Unblock the open so that the goroutine ends.
			if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
				w.Close()
			}
			t.Fatalf("%s(FIFO) still blocked after 10s", name)
		}
	}
}

func TestThrowawayThreadIsNotReused(t *testing.T) {
	netmontest.RequireRoot(t)
	path, _ := netmontest.NewNetNS(t)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Switch the thread in and never back, as a library might: the thread
	// must die with the goroutine, leaving every other goroutine's netns as
	// it was.
	if err := Throwaway(func() error { return netns.Set(f.Handle()) }); err != nil {
		t.Fatal(err)
	}
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	for range 50 {
		done := make(chan bool)
		go func() {
			cur, err := Self()
			if err != nil {
				done <- false
				return
			}
			defer cur.Close()
			done <- cur.Same(self)
		}()
		if !<-done {
			t.Fatal("a goroutine ran in the namespace a throwaway thread entered")
		}
	}
}
