package shimhook

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

func uniqueName(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

// newNamedNetNS makes a netns with `ip netns add` and returns its path.
func newNamedNetNS(t *testing.T) string {
	t.Helper()
	name := uniqueName(t, "knm-shk-")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

// dockerNetNSEntry creates a uniquely named entry in /run/docker/netns, made
// by mk, and removes it (unmounting first) on cleanup. It creates the
// directory when missing and removes it again if it made it and it is empty.
func dockerNetNSEntry(t *testing.T, mk func(path string) error) string {
	t.Helper()
	if _, err := os.Stat(dockerNetNSDir); os.IsNotExist(err) {
		if err := os.MkdirAll(dockerNetNSDir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Remove(dockerNetNSDir) }) // fails harmlessly if not empty
	}
	p := filepath.Join(dockerNetNSDir, uniqueName(t, "knm-"))
	t.Cleanup(func() {
		_ = unix.Unmount(p, unix.MNT_DETACH)
		_ = os.Remove(p)
	})
	if err := mk(p); err != nil {
		t.Fatalf("make %s: %v", p, err)
	}
	return p
}

func bindAt(src string) func(string) error {
	return func(dst string) error {
		if err := os.WriteFile(dst, nil, 0o444); err != nil {
			return err
		}
		return unix.Mount(src, dst, "", unix.MS_BIND, "")
	}
}

func TestOpenAnnotatedNetNS(t *testing.T) {
	netmontest.RequireRoot(t)
	sandboxNS := newNamedNetNS(t)
	otherNS := newNamedNetNS(t)
	sandbox, err := nsfs.Stat(sandboxNS)
	if err != nil {
		t.Fatal(err)
	}

	good := dockerNetNSEntry(t, bindAt(sandboxNS))
	other := dockerNetNSEntry(t, bindAt(otherNS))
	uts := dockerNetNSEntry(t, bindAt("/proc/self/ns/uts"))
	regular := dockerNetNSEntry(t, func(p string) error { return os.WriteFile(p, []byte("x"), 0o644) })
	fifo := dockerNetNSEntry(t, func(p string) error { return unix.Mkfifo(p, 0o600) })
	dev := dockerNetNSEntry(t, func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))) })
	linkHost := dockerNetNSEntry(t, func(p string) error { return os.Symlink("/proc/1/ns/net", p) })
	linkGood := dockerNetNSEntry(t, func(p string) error { return os.Symlink(good, p) })
	subdir := dockerNetNSEntry(t, func(p string) error { return os.Mkdir(p, 0o755) })

	tests := []struct {
		name, path string
		ok         bool
		why        string
	}{
		{"the sandbox's own netns", good, true, ""},
		{"through /var/run", "/var" + good, true, ""},
		{"relative", strings.TrimPrefix(good, "/"), false, "not an absolute path"},
		{"dot-dot out", dockerNetNSDir + "/../../../proc/1/ns/net", false, "not directly under"},
		{"dot-dot back in", dockerNetNSDir + "/../netns/" + filepath.Base(good), true, ""},
		{"host netns", "/proc/1/ns/net", false, "not directly under"},
		{"outside the directory", sandboxNS, false, "not directly under"},
		{"another sandbox's netns", other, false, "not the sandbox's"},
		{"a uts namespace", uts, false, "not a network namespace"},
		{"regular file", regular, false, "not a network namespace"},
		{"fifo", fifo, false, "not a network namespace"},
		{"device node", dev, false, "not a network namespace"},
		{"symlink to the host netns", linkHost, false, "symlink"},
		{"symlink to the good entry", linkGood, false, "symlink"},
		{"a directory", subdir, false, "not a network namespace"},
		{"nested below", subdir + "/x", false, "not directly under"},
		{"missing", filepath.Join(dockerNetNSDir, "knm-missing-entry"), false, "no such file"},
		{"the directory itself", dockerNetNSDir + "/", false, "does not name an entry"},
		{"empty", "", false, "not an absolute path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := openAnnotatedNetNS(tc.path, sandbox)
			if tc.ok {
				if err != nil {
					t.Fatalf("validate(%q) = %v, want ok", tc.path, err)
				}
				defer f.Close()
				if f.ID() != sandbox {
					t.Fatalf("validate(%q) opened %v, want the sandbox's %v", tc.path, f.ID(), sandbox)
				}
				return
			}
			if err == nil {
				t.Fatalf("validate(%q) accepted it", tc.path)
			}
			if !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("validate(%q) = %q, want it to say %q", tc.path, err, tc.why)
			}
		})
	}
}
