package netmon

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsFile is an open network namespace file and its identity (nsfs dev and
// inode, as `ip netns identify` and `lsns` compare them).
type nsFile struct {
	fd   int
	path string
	dev  uint64
	ino  uint64
}

func (f nsFile) handle() netns.NsHandle { return netns.NsHandle(f.fd) }

func (f nsFile) same(o nsFile) bool { return f.dev == o.dev && f.ino == o.ino }

func (f *nsFile) close() {
	if f.fd >= 0 {
		unix.Close(f.fd)
		f.fd = -1
	}
}

// openNetNS opens path and checks that it is a network namespace: nsfs
// (statfs magic) and CLONE_NEWNET (NS_GET_NSTYPE, Linux 4.11+). Open errors
// stay *os.PathError so errors.Is(err, os.ErrNotExist / os.ErrPermission)
// works; anything that opens but is not a netns wraps ErrNotNetNS.
func openNetNS(path string) (nsFile, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nsFile{fd: -1}, &os.PathError{Op: "open netns", Path: path, Err: err}
	}
	f := nsFile{fd: fd, path: path}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		f.close()
		return f, &os.PathError{Op: "statfs netns", Path: path, Err: err}
	}
	if fs.Type != unix.NSFS_MAGIC {
		f.close()
		return f, fmt.Errorf("netns %q: %w (filesystem magic %#x is not nsfs)", path, ErrNotNetNS, fs.Type)
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		f.close()
		return f, &os.PathError{Op: "NS_GET_NSTYPE", Path: path, Err: err}
	}
	if typ != unix.CLONE_NEWNET {
		f.close()
		return f, fmt.Errorf("netns %q: %w (namespace type %#x)", path, ErrNotNetNS, typ)
	}
	if err := f.stat(); err != nil {
		f.close()
		return f, err
	}
	return f, nil
}

// openNSQuiet opens a path that is expected to be a netns (scan candidates)
// and reads its identity, without the type checks.
func openNSQuiet(path string) (nsFile, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nsFile{fd: -1}, &os.PathError{Op: "open netns", Path: path, Err: err}
	}
	f := nsFile{fd: fd, path: path}
	if err := f.stat(); err != nil {
		f.close()
		return f, err
	}
	return f, nil
}

func (f *nsFile) stat() error {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return &os.PathError{Op: "stat netns", Path: f.path, Err: err}
	}
	f.dev, f.ino = uint64(st.Dev), st.Ino
	return nil
}

// inFreshThread runs fn on a new goroutine locked to its OS thread and
// waits for it. The netlink library binds sockets to a netns by switching
// the calling thread in and out (setns) and then unlocks it, ignoring a
// failed switch back. Our extra lock is never released, so the runtime
// destroys the thread when the goroutine exits: no goroutine of this
// process ever runs on a thread left in the wrong netns.
func inFreshThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see above.
		errc <- fn()
	}()
	return <-errc
}

// newHandleAt opens a netlink handle whose sockets live in ns.
func newHandleAt(ns nsFile) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := inFreshThread(func() error {
		var err error
		h, err = netlink.NewHandleAt(ns.handle(), unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink handle in netns %q: %w", ns.path, err)
	}
	return h, nil
}

// isLinkNotFound reports the library's not-found error, or a bare ENODEV
// (LinkByIndex only maps an unwrapped errno: with
// netlink.EnableErrorMessageReporting the errno comes wrapped).
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// maxDumpAttempts bounds retries of a dump the kernel marked interrupted
// (NLM_F_DUMP_INTR: the table changed while it was being dumped).
const maxDumpAttempts = 8

// dump runs one netlink list call, retrying it while the kernel reports the
// dump interrupted. Every list in this package goes through it.
func dump[T any](what string, list func() ([]T, error)) ([]T, error) {
	for attempt := 1; ; attempt++ {
		v, err := list()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt >= maxDumpAttempts {
			return nil, fmt.Errorf("list %s (attempt %d): %w", what, attempt, err)
		}
	}
}
