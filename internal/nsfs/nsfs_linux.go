package nsfs

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNotNetNS is returned (wrapped with the path) for a file that opens but
// is not a network namespace.
var ErrNotNetNS = errors.New("not a network namespace")

// ID identifies a namespace: its nsfs inode and device, as `ip netns
// identify` and lsns compare them.
type ID struct{ Dev, Ino uint64 }

func (id ID) String() string { return fmt.Sprintf("net:[%d] (dev %d)", id.Ino, id.Dev) }

// File is an open network namespace file. The zero value is not usable;
// Close releases it (idempotent).
type File struct {
	fd   int
	path string
	id   ID
}

// Open opens path read-only and checks that it is a network namespace:
// nsfs (statfs magic) and CLONE_NEWNET (NS_GET_NSTYPE, Linux 4.11+). Open
// errors stay *os.PathError, so errors.Is(err, os.ErrNotExist) and
// os.ErrPermission work; a file that opens but is not a netns wraps
// ErrNotNetNS.
func Open(path string) (*File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open netns", Path: path, Err: err}
	}
	f, err := fromFD(fd, path, true)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

// OpenAt opens name in the directory dirfd without following a symlink in
// its last component, and checks it like Open.
func OpenAt(dirfd int, name, path string) (*File, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open netns", Path: path, Err: err}
	}
	f, err := fromFD(fd, path, true)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

// Dup duplicates fd, an open namespace file known by path, and checks the
// copy like Open. The caller keeps fd.
func Dup(fd int, path string) (*File, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "dup netns", Path: path, Err: err}
	}
	f, err := fromFD(nfd, path, true)
	if err != nil {
		unix.Close(nfd)
		return nil, err
	}
	return f, nil
}

// OpenQuiet opens a path expected to be a network namespace (a candidate
// among /run/netns/* and /proc/*/ns/net) and reads its identity, without the
// type checks: cheaper, for scans that compare identities only.
func OpenQuiet(path string) (*File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open netns", Path: path, Err: err}
	}
	f, err := fromFD(fd, path, false)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

// Self opens the calling thread's network namespace (the process's unless
// the caller locked itself into another one).
func Self() (*File, error) {
	h, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("open own netns: %w", err)
	}
	f, err := fromFD(int(h), fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()), false)
	if err != nil {
		h.Close()
		return nil, err
	}
	return f, nil
}

func fromFD(fd int, path string, check bool) (*File, error) {
	f := &File{fd: fd, path: path}
	if check {
		var fs unix.Statfs_t
		if err := unix.Fstatfs(fd, &fs); err != nil {
			return nil, &os.PathError{Op: "statfs netns", Path: path, Err: err}
		}
		if fs.Type != unix.NSFS_MAGIC {
			return nil, fmt.Errorf("netns %q: %w (filesystem magic %#x is not nsfs)", path, ErrNotNetNS, fs.Type)
		}
		typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
		if err != nil {
			return nil, &os.PathError{Op: "NS_GET_NSTYPE", Path: path, Err: err}
		}
		if typ != unix.CLONE_NEWNET {
			return nil, fmt.Errorf("netns %q: %w (namespace type %#x)", path, ErrNotNetNS, typ)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "stat netns", Path: path, Err: err}
	}
	f.id = ID{Dev: uint64(st.Dev), Ino: st.Ino}
	return f, nil
}

// Stat returns the identity of the network namespace at path, checked like
// Open, without keeping it open.
func Stat(path string) (ID, error) {
	f, err := Open(path)
	if err != nil {
		return ID{}, err
	}
	defer f.Close()
	return f.id, nil
}

// FD returns the open descriptor (valid until Close).
func (f *File) FD() int { return f.fd }

// Handle returns the descriptor as a netns handle, for netlink.NewHandleAt
// and Subscribe options. The File still owns it.
func (f *File) Handle() netns.NsHandle { return netns.NsHandle(f.fd) }

// Path returns the path it was opened by (for messages).
func (f *File) Path() string { return f.path }

// ID returns the namespace's identity.
func (f *File) ID() ID { return f.id }

// Same reports whether o is the same namespace.
func (f *File) Same(o *File) bool { return o != nil && f.id == o.id }

// Close releases the descriptor. Idempotent; safe on nil.
func (f *File) Close() error {
	if f == nil || f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	return err
}

// Do runs fn on a fresh goroutine whose locked thread is inside the
// namespace f, and waits for it. The thread switches back before it is
// unlocked; if switching back fails, it stays locked and the runtime
// discards it when the goroutine exits, so no other goroutine ever runs in
// the wrong netns.
func Do(f *File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(f.Handle()); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", f.path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- fmt.Errorf("return from netns %s: %w (after: %w)", f.path, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DoPath opens the namespace at path and runs fn in it (Do).
func DoPath(path string, fn func() error) error {
	f, err := Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return Do(f, fn)
}

// Throwaway runs fn on a new goroutine locked to its OS thread and waits
// for it. The lock is never released, so the runtime destroys the thread
// when the goroutine exits: for library calls that switch the thread's
// netns in and out by themselves and ignore a failed switch back.
func Throwaway(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see above.
		errc <- fn()
	}()
	return <-errc
}
