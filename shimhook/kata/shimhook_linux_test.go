package kata

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"

	"github.com/kata-netmon/kata-netmon/shimhook"
)

// The wrapper with the real shimhook.Start (the main module's) on a real,
// empty sandbox netns: a Docker sandbox started without a network. The
// monitor starts before Kata's Start, stops on Delete, and leaves no
// goroutine behind (TestMain's goleak). Needs root.
func TestServiceWithShimhook(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ns := fmt.Sprintf("knm-shim-%06x", rand.IntN(1<<24))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })

	e := newEnv(t, "moby", nil)
	e.kata.MockNetNs = "/run/netns/" + ns
	e.kata.hvPID = os.Getpid()
	var monitor Monitor
	e.s.startMonitor = func(ctx context.Context, cfg shimhook.Config) (Monitor, error) {
		e.in.record("monitor.Start")
		m, err := shimhook.Start(ctx, cfg)
		if m != nil {
			monitor = m
			return m, err
		}
		return nil, err
	}
	e.create(sbID)
	if err := e.start(sbID, ""); err != nil {
		t.Fatal(err)
	}
	if monitor == nil {
		t.Fatalf("shimhook.Start did not monitor the Docker sandbox: %v", e.hook.AllEntries())
	}
	if _, err := e.s.Delete(context.Background(), &taskAPI.DeleteRequest{ID: sbID}); err != nil {
		t.Fatal(err)
	}
	e.wantCalls("kata.Create "+sbID, "reach", "monitor.Start", "kata.Start "+sbID+"/", "kata.Delete "+sbID+"/")
	// Stop again (Shutdown after Delete) is a no-op.
	if err := monitor.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}
