//go:build linux

package nsdo

import (
	"errors"
	"os"
	"testing"

	"github.com/vishvananda/netns"
	"go.uber.org/goleak"

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
	if err := Do(path, func() error {
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
	if err := Do(path, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Do = %v, want %v", err, boom)
	}
}

func TestDoBadPath(t *testing.T) {
	ran := false
	err := Do("/nonexistent/knm-netns", func() error { ran = true; return nil })
	if err == nil || ran {
		t.Fatalf("Do on a missing path: err %v, fn ran %v", err, ran)
	}
	f, err := os.CreateTemp(t.TempDir(), "notns")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if os.Geteuid() == 0 {
		if err := Do(f.Name(), func() error { ran = true; return nil }); err == nil || ran {
			t.Fatalf("Do on a regular file: err %v, fn ran %v", err, ran)
		}
	}
}
