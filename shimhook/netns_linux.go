package shimhook

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// dockerNetNSDir is where dockerd bind-mounts container netns (SetKey).
// /var/run/docker/netns reaches the same directory through Debian's
// /var/run -> /run symlink.
const dockerNetNSDir = "/run/docker/netns"

// nsID identifies a netns: the nsfs inode and its device.
type nsID struct{ dev, ino uint64 }

func (n nsID) String() string { return fmt.Sprintf("net:[%d] (dev %d)", n.ino, n.dev) }

// statNetNS opens path and returns its identity, checking it is a netns.
func statNetNS(path string) (nsID, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nsID{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	return fdNetNS(fd, path)
}

func fdNetNS(fd int, path string) (nsID, error) {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return nsID{}, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	if fs.Type != unix.NSFS_MAGIC {
		return nsID{}, fmt.Errorf("%s: %w", path, errNotNetNS)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nsID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	// An nsfs file is a namespace, but not necessarily a network one.
	// ioctls fail on O_PATH fds, so ask through a read-only reopen of the
	// same file (opening an nsfs file has no side effect).
	rfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nsID{}, &os.PathError{Op: "reopen", Path: path, Err: err}
	}
	defer unix.Close(rfd)
	t, err := unix.IoctlRetInt(rfd, unix.NS_GET_NSTYPE)
	if err != nil {
		return nsID{}, &os.PathError{Op: "NS_GET_NSTYPE", Path: path, Err: err}
	}
	if t != unix.CLONE_NEWNET {
		return nsID{}, fmt.Errorf("%s: %w (namespace type %#x)", path, errNotNetNS, t)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

var errNotNetNS = errors.New("not a network namespace")

// validateAnnotatedNetNS checks the netns path from the (untrusted) Docker
// annotation: an absolute path naming one entry directly in
// /run/docker/netns (or /var/run/docker/netns), whose final component is not
// a symlink, that is an nsfs file for the SAME netns as the sandbox's. The
// directory is opened first and checked for where it really is, and the
// entry is opened relative to it with O_NOFOLLOW, so neither `..`, a symlink
// in the last component nor a symlinked directory can redirect it.
func validateAnnotatedNetNS(path string, sandbox nsID) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%q is not an absolute path", path)
	}
	dir, base := filepath.Split(path)
	dir = filepath.Clean(dir)
	if dir != dockerNetNSDir && dir != "/var"+dockerNetNSDir {
		return fmt.Errorf("%q is not directly under %s", path, dockerNetNSDir)
	}
	if base == "" || base == "." || base == ".." || strings.ContainsRune(base, '/') {
		return fmt.Errorf("%q does not name an entry of %s", path, dockerNetNSDir)
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", dfd))
	if err != nil {
		return fmt.Errorf("resolve %s: %w", dir, err)
	}
	if real != dockerNetNSDir {
		return fmt.Errorf("%s resolves to %s, not %s", dir, real, dockerNetNSDir)
	}
	fd, err := unix.Openat(dfd, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %q: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %q: %w", path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%q is a symlink", path)
	}
	id, err := fdNetNS(fd, path)
	if err != nil {
		return err
	}
	if id != sandbox {
		return fmt.Errorf("%q is netns %v, not the sandbox's %v", path, id, sandbox)
	}
	return nil
}
