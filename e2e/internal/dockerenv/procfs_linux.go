//go:build linux

package dockerenv

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Cleanup through /proc: the containerd shims an Env's containerd left,
// their children, and the mounts Docker and containerd leave under the
// Env's directory.

// shim is a containerd-shim-runc-v2 process.
type shim struct {
	pid       int
	namespace string // containerd namespace ("moby")
	id        string // task id
}

// sockets returns the paths the shim listens on, computed as containerd's
// shim.SocketAddress does: /run/containerd/s/<sha256(address/namespace/id)>,
// plus the debug variant.
func (s shim) sockets(address string) []string {
	base := filepath.Join(address, s.namespace, s.id)
	var out []string
	for _, p := range []string{base, filepath.Join(base, "debug")} {
		out = append(out, fmt.Sprintf("/run/containerd/s/%x", sha256.Sum256([]byte(p))))
	}
	return out
}

// shimsOf returns the containerd-shim-runc-v2 processes whose command line
// names address (containerd starts them with "-address <socket>").
func shimsOf(address string) []shim {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var shims []shim
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(argv) == 0 || filepath.Base(argv[0]) != "containerd-shim-runc-v2" {
			continue
		}
		sh := shim{pid: pid}
		ours := false
		for i := 0; i+1 < len(argv); i++ {
			switch strings.TrimLeft(argv[i], "-") {
			case "address":
				ours = argv[i+1] == address
			case "namespace":
				sh.namespace = argv[i+1]
			case "id":
				sh.id = argv[i+1]
			}
		}
		if ours {
			shims = append(shims, sh)
		}
	}
	return shims
}

// childrenOf returns the pids whose parent is ppid.
func childrenOf(ppid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 2 && f[1] == strconv.Itoa(ppid) {
			kids = append(kids, pid)
		}
	}
	return kids
}

// waitExit waits up to timeout for process pid to exit, through a pidfd.
// It returns true when the process is gone.
func waitExit(pid int, timeout time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		ms := int(timeout.Milliseconds())
		if ms < 0 {
			ms = 0
		}
		start := time.Now()
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			timeout -= time.Since(start)
			continue
		}
		return err == nil && n > 0
	}
}

// unmountUnder lazily unmounts every mount point at or below dir, deepest
// first, until none is left (Docker and containerd leave overlay, nsfs and
// bind mounts behind).
func unmountUnder(dir string) error {
	for round := 0; round < 5; round++ {
		mps, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
		for _, mp := range mps {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("unmounting %s: %w", mp, err)
			}
		}
	}
	mps, _ := mountsUnder(dir)
	if len(mps) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, mps)
	}
	return nil
}

func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of mountinfo fields.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
