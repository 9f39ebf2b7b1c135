package kata

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func fastGuard() *rescanGuard {
	g := newRescanGuard()
	g.maxWait, g.settle, g.straggler, g.poll = 150*time.Millisecond, 50*time.Millisecond, time.Second, 5*time.Millisecond
	return g
}

func TestGuardHoldWaitsForCallsInFlight(t *testing.T) {
	g := fastGuard()
	_, release, err := g.acquire(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() { held <- g.hold(context.Background()) }()
	select {
	case <-held:
		t.Fatal("hold returned while a call was in flight")
	case <-time.After(30 * time.Millisecond):
	}
	release()
	release() // idempotent
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	// Held: a new call waits until open.
	var got atomic.Bool
	go func() {
		_, rel, err := g.acquire(context.Background(), nil)
		if err == nil {
			got.Store(true)
			rel()
		}
	}()
	time.Sleep(30 * time.Millisecond)
	if got.Load() {
		t.Fatal("a call went through a held guard")
	}
	g.open()
	deadline := time.Now().Add(time.Second)
	for !got.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !got.Load() {
		t.Fatal("open did not let the call through")
	}
}

func TestGuardHoldTimesOut(t *testing.T) {
	g := fastGuard()
	_, release, _ := g.acquire(context.Background(), nil)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := g.hold(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hold: %v", err)
	}
}

func TestGuardWindow(t *testing.T) {
	t.Run("waits for the end of the window", func(t *testing.T) {
		g := fastGuard()
		start := time.Now()
		g.openAfterRescan(start)
		after, release, err := g.acquire(context.Background(), func(context.Context) bool { return false })
		if err != nil {
			t.Fatal(err)
		}
		release()
		if el := time.Since(start); el < g.maxWait+g.settle {
			t.Errorf("went through after %v, window is %v", el, g.maxWait+g.settle)
		}
		if !after {
			t.Error("afterRescan = false inside the straggler period")
		}
	})
	t.Run("ends early when RescanNetwork visibly finished", func(t *testing.T) {
		g := fastGuard()
		start := time.Now()
		g.openAfterRescan(start)
		var asked atomic.Int32
		_, release, err := g.acquire(context.Background(), func(context.Context) bool { return asked.Add(1) >= 3 })
		if err != nil {
			t.Fatal(err)
		}
		release()
		if el := time.Since(start); el >= g.maxWait {
			t.Errorf("early end took %v", el)
		}
	})
	t.Run("ctx ends the wait", func(t *testing.T) {
		g := fastGuard()
		g.openAfterRescan(time.Now())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, _, err := g.acquire(ctx, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err %v", err)
		}
	})
	t.Run("no window: straight through, no adoption checks", func(t *testing.T) {
		g := fastGuard()
		if err := g.hold(context.Background()); err != nil {
			t.Fatal(err)
		}
		g.open()
		after, release, err := g.acquire(context.Background(), nil)
		if err != nil || after {
			t.Fatalf("after %v err %v", after, err)
		}
		release()
	})
}
