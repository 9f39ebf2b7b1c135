package kata

import (
	"context"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// Kata's RescanNetwork (scaled: 300 ms instead of 5 s, 10 ms instead of
// 50 ms) against the monitor, through the wrapper. The monitor is modelled as
// the reconciler reacts: it calls AddInterface as soon as the link is
// configured. Every link must be hot-plugged exactly once.
const (
	raceMaxWait = 300 * time.Millisecond // the guard's window adds 100 ms
	raceTick    = 10 * time.Millisecond
)

var (
	macA = "02:42:ac:12:00:02"
	macB = "02:42:ac:13:00:02"
)

func vethInf(name, mac string) *hotplug.Interface {
	return &hotplug.Interface{Name: name, HwAddr: mac, Type: "veth", Mtu: 1500,
		IPAddresses: []*hotplug.IPAddress{{Address: "172.18.0.2", Mask: "16"}}}
}

// raceEnv starts a Docker sandbox through the wrapper; Kata's Start runs
// the fake RescanNetwork. It returns the adapter the monitor was given and
// when Kata's Start returned.
func raceEnv(t *testing.T, delay time.Duration, before func(e *env)) (*env, hotplug.Sandbox, time.Time) {
	t.Helper()
	e := newEnv(t, "moby", nil)
	e.kata.delay = delay
	e.in.onStart = func() { e.kata.rescan(raceMaxWait, raceTick) }
	if before != nil {
		before(e)
	}
	e.create(sbID)
	if err := e.start(sbID, ""); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if len(e.cfgs) != 1 {
		t.Fatal("monitor not started")
	}
	return e, e.cfgs[0].Sandbox, started
}

// connectAt does `docker network connect` at started+at; the monitor calls
// AddInterface right away (as the reconciler does on the netlink event).
func connectAt(e *env, sb hotplug.Sandbox, started time.Time, at time.Duration, name, mac string) <-chan *hotplug.Interface {
	out := make(chan *hotplug.Interface, 1)
	go func() {
		time.Sleep(time.Until(started.Add(at)))
		e.kata.connect(name, mac)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := sb.AddInterface(ctx, vethInf(name, mac))
		if err != nil {
			e.t.Errorf("AddInterface(%s): %v", name, err)
		}
		out <- got
	}()
	return out
}

func wantOnce(t *testing.T, e *env, got *hotplug.Interface, mac string) {
	t.Helper()
	// Count only once Kata's RescanNetwork has returned.
	select {
	case <-e.kata.rescanEnd:
	case <-time.After(10 * time.Second):
		t.Fatal("RescanNetwork did not return")
	}
	if got == nil || got.HwAddr != mac {
		t.Errorf("AddInterface returned %+v, want MAC %s", got, mac)
	}
	if n := e.kata.attachCount(mac); n != 1 {
		t.Errorf("%s hot-plugged %d times, want once", mac, n)
	}
}

func kataAddCalls(e *env) int {
	e.kata.mu.Lock()
	defer e.kata.mu.Unlock()
	n := 0
	for _, c := range e.kata.calls {
		if len(c) > 12 && c[:12] == "AddInterface" {
			n++
		}
	}
	return n
}

// Control: without the wrapper's guard the fake reproduces the race (both
// attach the link), so the tests below mean something.
func TestRescanRaceExistsWithoutGuard(t *testing.T) {
	k := newFakeKata(sbID)
	k.delay = 30 * time.Millisecond
	a := NewAdapter(k, "qemu", "", nil)
	go k.rescan(raceMaxWait, raceTick)
	time.Sleep(50 * time.Millisecond)
	k.connect("eth0", macA)
	if _, err := a.AddInterface(context.Background(), vethInf("eth0", macA)); err != nil {
		t.Fatal(err)
	}
	<-k.rescanEnd
	if n := k.attachCount(macA); n != 2 {
		t.Fatalf("attached %d times; the fake no longer models the race", n)
	}
}

func TestRescanRace(t *testing.T) {
	t.Run("connect inside the window: Kata's rescan attaches, the monitor adopts", func(t *testing.T) {
		e, sb, started := raceEnv(t, 30*time.Millisecond, nil)
		got := <-connectAt(e, sb, started, 50*time.Millisecond, "eth0", macA)
		wantOnce(t, e, got, macA)
		if n := kataAddCalls(e); n != 0 {
			t.Errorf("the monitor called Kata's AddInterface %d times", n)
		}
		if el := time.Since(started); el > raceMaxWait {
			t.Errorf("the window did not end early (%v): the guest showed Kata's NIC", el)
		}
	})
	t.Run("Kata still hot-plugging when the window closes: the monitor waits and adopts", func(t *testing.T) {
		// Kata's hotplug runs from ~100 ms to ~700 ms; the window closes at
		// 400 ms, with the guest not showing the NIC yet.
		e, sb, started := raceEnv(t, 600*time.Millisecond, nil)
		got := <-connectAt(e, sb, started, 100*time.Millisecond, "eth0", macA)
		wantOnce(t, e, got, macA)
		if n := kataAddCalls(e); n != 0 {
			t.Errorf("the monitor called Kata's AddInterface %d times", n)
		}
	})
	t.Run("connect after RescanNetwork gave up: the monitor attaches", func(t *testing.T) {
		e, sb, started := raceEnv(t, 20*time.Millisecond, nil)
		<-e.kata.rescanEnd
		got := <-connectAt(e, sb, started, time.Since(started), "eth0", macA)
		wantOnce(t, e, got, macA)
		if n := kataAddCalls(e); n != 1 {
			t.Errorf("Kata's AddInterface called %d times, want 1", n)
		}
	})
	t.Run("sandbox started with a network: no window, RescanNetwork returns at once", func(t *testing.T) {
		e, sb, started := raceEnv(t, 20*time.Millisecond, func(e *env) {
			e.kata.connect("eth0", macA)
			e.firstReconcile = func(cfg shimhook.Config) error {
				_, err := cfg.Sandbox.AddInterface(context.Background(), vethInf("eth0", macA))
				return err
			}
		})
		got := <-connectAt(e, sb, started, 20*time.Millisecond, "eth1", macB)
		if el := time.Since(started); el > raceMaxWait {
			t.Errorf("the second network waited %v: there was no rescan to wait for", el)
		}
		wantOnce(t, e, got, macB)
		if n := e.kata.attachCount(macA); n != 1 {
			t.Errorf("eth0 attached %d times", n)
		}
	})
	t.Run("an attach in flight when Start arrives finishes before Kata's Start", func(t *testing.T) {
		inflight := make(chan *hotplug.Interface, 1)
		e, _, _ := raceEnv(t, 150*time.Millisecond, func(e *env) {
			e.kata.connect("eth0", macA)
			// The background loop is attaching eth0 when Start goes on.
			e.firstReconcile = func(cfg shimhook.Config) error {
				go func() {
					got, err := cfg.Sandbox.AddInterface(context.Background(), vethInf("eth0", macA))
					if err != nil {
						t.Error(err)
					}
					inflight <- got
				}()
				time.Sleep(20 * time.Millisecond)
				return nil
			}
		})
		got := <-inflight
		wantOnce(t, e, got, macA)
		e.kata.mu.Lock()
		defer e.kata.mu.Unlock()
		if e.kata.rescans != 1 {
			t.Errorf("rescans %d", e.kata.rescans)
		}
	})
}
