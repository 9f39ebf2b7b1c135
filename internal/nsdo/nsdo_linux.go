package nsdo

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a fresh goroutine locked to its OS thread, with that thread
// in the netns at path, and waits for it. The thread goes back to its
// original netns before it is unlocked; if going back fails, the thread
// stays locked and the runtime discards it when the goroutine exits, so no
// other goroutine ever runs in the wrong netns. Sockets and devices fn
// creates stay bound to the target netns.
func Do(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		back, err := enter(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := back(); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- fmt.Errorf("return from netns %s: %w (after: %v)", path, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// enter switches the calling (locked) thread into the netns at path and
// returns how to switch back.
func enter(path string) (back func() error, err error) {
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("current netns: %w", err)
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		orig.Close()
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		orig.Close()
		return nil, fmt.Errorf("enter netns %s: %w", path, err)
	}
	return func() error {
		defer orig.Close()
		return netns.Set(orig)
	}, nil
}
