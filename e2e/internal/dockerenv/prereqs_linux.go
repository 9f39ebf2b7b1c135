//go:build linux

package dockerenv

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/e2e/internal/prereq"
)

// busyboxPath is where Debian's busybox-static installs its binary.
const busyboxPath = "/bin/busybox"

// daemonBinaries are built by scripts/deps-docker.sh into BinDir().
var daemonBinaries = []string{"dockerd", "containerd", "containerd-shim-runc-v2", "runc"}

// Prereqs skips the test unless it can run a private Docker daemon: root,
// the daemon binaries in BinDir(), a docker client, ip, nsenter, iptables and
// a static busybox. When the environment variable CI is "true" a missing
// prerequisite fails the test instead, naming what is missing and the script
// that installs it.
func Prereqs(t testing.TB) {
	t.Helper()
	missing := missingPrereqs()
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("dockerenv: missing prerequisites: %s (run the tests as root; %s installs the binaries and packages into KNM_CACHE=%s)",
		strings.Join(missing, "; "), InstallScript, CacheDir())
	prereq.Missing(t, msg)
}

func missingPrereqs() []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, fmt.Sprintf("not running as root (euid %d)", os.Geteuid()))
	}
	for _, b := range daemonBinaries {
		if !isExecutable(filepath.Join(BinDir(), b)) {
			missing = append(missing, fmt.Sprintf("%s not found in %s", b, BinDir()))
		}
	}
	if dockerClient() == "" {
		missing = append(missing, fmt.Sprintf("docker client not found in %s or on PATH", BinDir()))
	}
	for _, b := range []string{"ip", "nsenter", "iptables"} {
		if lookPathIn(b, daemonPATH()) == "" {
			missing = append(missing, fmt.Sprintf("%s not found on PATH", b))
		}
	}
	if err := checkStatic(busyboxPath); err != nil {
		missing = append(missing, fmt.Sprintf("busybox-static: %v", err))
	}
	return missing
}

// dockerClient returns BinDir()/docker if it exists (built by the script when
// the machine has no client), else docker from PATH, else "".
func dockerClient() string {
	if p := filepath.Join(BinDir(), "docker"); isExecutable(p) {
		return p
	}
	if p, err := exec.LookPath("docker"); err == nil {
		return p
	}
	return ""
}

// daemonPATH is the PATH containerd and dockerd run with: the cache's bin dir
// first (runc, containerd-shim-runc-v2), then the caller's PATH, then the sbin
// directories where Debian keeps ip and iptables.
func daemonPATH() string {
	return strings.Join([]string{BinDir(), os.Getenv("PATH"), "/usr/local/sbin", "/usr/sbin", "/sbin"}, ":")
}

func lookPathIn(name, path string) string {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// checkStatic reports an error unless p is an ELF executable without an
// interpreter (a dynamic busybox from the "busybox" package would not run in
// an image that holds nothing else).
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (install busybox-static, not busybox)", p)
		}
	}
	return nil
}

// busyboxRootfs returns an uncompressed tar of a minimal root filesystem:
// /bin/busybox, a /bin symlink per applet, and the empty directories and
// /etc files a container expects.
func busyboxRootfs(busybox string) ([]byte, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	hdr := func(h *tar.Header) error {
		h.ModTime, h.Format = mtime, tar.FormatPAX
		return tw.WriteHeader(h)
	}
	dirs := []struct {
		name string
		mode int64
	}{{"bin/", 0o755}, {"dev/", 0o755}, {"etc/", 0o755}, {"proc/", 0o555}, {"root/", 0o700},
		{"run/", 0o755}, {"sys/", 0o555}, {"tmp/", 0o1777}, {"var/", 0o755}}
	for _, d := range dirs {
		if err := hdr(&tar.Header{Typeflag: tar.TypeDir, Name: d.name, Mode: d.mode}); err != nil {
			return nil, err
		}
	}
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"bin/busybox", 0o755, bin},
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{"etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, f := range files {
		if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	for _, a := range applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
