package shimhook

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
)

// openAnnotatedNetNS opens the netns path from the (untrusted) Docker
// annotation and returns it open, so the monitor watches the very file that
// was checked: an absolute path naming one entry directly in
// /run/docker/netns (or /var/run/docker/netns), whose final component is not
// a symlink, that is an nsfs file for the SAME netns as the sandbox's. The
// directory is opened first and checked for where it really is, and the
// entry is opened relative to it with O_NOFOLLOW, so neither `..`, a symlink
// in the last component nor a symlinked directory can redirect it.
func openAnnotatedNetNS(path string, sandbox nsfs.ID) (*nsfs.File, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%q is not an absolute path", path)
	}
	dir, base := filepath.Split(path)
	dir = filepath.Clean(dir)
	if dir != dockerNetNSDir && dir != "/var"+dockerNetNSDir {
		return nil, fmt.Errorf("%q is not directly under %s", path, dockerNetNSDir)
	}
	if base == "" || base == "." || base == ".." || strings.ContainsRune(base, '/') {
		return nil, fmt.Errorf("%q does not name an entry of %s", path, dockerNetNSDir)
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", dfd))
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", dir, err)
	}
	if real != dockerNetNSDir {
		return nil, fmt.Errorf("%s resolves to %s, not %s", dir, real, dockerNetNSDir)
	}
	// O_NOFOLLOW: a symlink as the last component fails with ELOOP. Opening
	// a FIFO read-only would block: refuse anything that is not a regular
	// file first (an nsfs bind mount stats as one).
	pfd, err := unix.Openat(dfd, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	err = unix.Fstat(pfd, &st)
	unix.Close(pfd)
	if err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK:
		return nil, fmt.Errorf("%q is a symlink", path)
	default:
		return nil, fmt.Errorf("%q is not a network namespace file (mode %#o)", path, st.Mode&unix.S_IFMT)
	}
	f, err := nsfs.OpenAt(dfd, base, path)
	if err != nil {
		return nil, err
	}
	if f.ID() != sandbox {
		f.Close()
		return nil, fmt.Errorf("%q is netns %v, not the sandbox's %v", path, f.ID(), sandbox)
	}
	return f, nil
}
