package procwatch

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Watch is an open pidfd on one process.
type Watch struct {
	f       *os.File
	exited  chan struct{}
	once    sync.Once
	closing atomic.Bool   // set by Close before it closes the fd
	done    chan struct{} // closed when the waiting goroutine has returned
}

// Open starts watching pid. It fails if the process does not exist.
func Open(pid int) (*Watch, error) { return OpenFunc(pid, nil) }

// OpenFunc is Open, and calls onExit (when not nil) from the watching
// goroutine right after Exited is closed: a caller that only needs to cancel
// something needs no goroutine of its own to wait for it.
func OpenFunc(pid int, onExit func()) (*Watch, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("watch pid %d: not a process id", pid)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	w := &Watch{
		f:      os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid)),
		exited: make(chan struct{}),
		done:   make(chan struct{}),
	}
	rc, err := w.f.SyscallConn()
	if err != nil {
		w.f.Close()
		return nil, fmt.Errorf("pidfd %d: %w", pid, err)
	}
	go func() {
		defer close(w.done)
		// Read calls fn until it returns true, parking on the poller
		// between calls: no wakeup until the pidfd becomes readable.
		err := rc.Read(func(fd uintptr) bool {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 0)
			return err == nil && n > 0
		})
		// Read fails when Close closed the fd; any other failure is a
		// broken fd, reported as an exit rather than watched forever.
		if err == nil || !w.closing.Load() {
			close(w.exited)
			if onExit != nil {
				onExit()
			}
		}
	}()
	return w, nil
}

// Exited is closed when the process has exited.
func (w *Watch) Exited() <-chan struct{} { return w.exited }

// Close stops watching and waits for the watching goroutine. Idempotent.
func (w *Watch) Close() error {
	var err error
	w.once.Do(func() {
		w.closing.Store(true)
		err = w.f.Close()
		<-w.done
	})
	return err
}
