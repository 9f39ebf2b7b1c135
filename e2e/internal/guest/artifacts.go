package guest

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// AgentPackage is the import path of the guest agent.
const AgentPackage = "github.com/kata-netmon/kata-netmon/e2e/internal/guest/agent"

// Artifacts are the files a guest boots from.
type Artifacts struct {
	Kernel string // vmlinuz
	Initrd string // base initramfs + a cpio archive holding /agent
	// KernelVersion is the guest kernel's ("6.12.117+deb12-cloud-amd64").
	KernelVersion string
}

// guestLayout is INITRAMFS_LAYOUT of scripts/deps-guest.sh: the script
// writes what to boot to guest-<layout>.env in the cache dir.
const guestLayout = "2"

var (
	artOnce sync.Once
	art     Artifacts
	artErr  error
	artLog  string
	artMu   sync.Mutex
)

// CacheDir is where scripts/deps-guest.sh keeps the guest files:
// ${KNM_CACHE:-/var/cache/kata-netmon}/guest.
func CacheDir() string {
	c := os.Getenv("KNM_CACHE")
	if c == "" {
		c = "/var/cache/kata-netmon"
	}
	return filepath.Join(c, "guest")
}

// Prepare returns the kernel and an initramfs with a freshly built agent,
// once per process. When the kernel or the base initramfs is missing it runs
// scripts/deps-guest.sh (root only; set KNM_GUEST_NO_INSTALL=1 to forbid).
// The log says what it did and how long it took (only to the first caller).
func Prepare() (Artifacts, string, error) {
	artOnce.Do(func() { art, artLog, artErr = prepare() })
	artMu.Lock()
	defer artMu.Unlock()
	l := artLog
	artLog = "" // said once per process
	return art, l, artErr
}

func prepare() (Artifacts, string, error) {
	var logb strings.Builder
	dir := CacheDir()
	root, err := moduleRoot()
	if err != nil {
		return Artifacts{}, "", err
	}
	envFile := filepath.Join(dir, "guest-"+guestLayout+".env")
	kver, kernel, base := readGuestEnv(envFile)
	_, qerr := exec.LookPath("qemu-system-x86_64")
	if kernel == "" || !exists(kernel) || !exists(base) || qerr != nil {
		if os.Getenv("KNM_GUEST_NO_INSTALL") != "" {
			return Artifacts{}, "", fmt.Errorf("%s does not name an installed guest kernel and initramfs: run scripts/deps-guest.sh", envFile)
		}
		start := time.Now()
		cmd := exec.Command("bash", filepath.Join(root, "scripts", "deps-guest.sh"))
		out, err := cmd.CombinedOutput()
		fmt.Fprintf(&logb, "scripts/deps-guest.sh took %v:\n%s", time.Since(start).Round(time.Millisecond), out)
		if err != nil {
			return Artifacts{}, logb.String(), fmt.Errorf("scripts/deps-guest.sh: %v\n%s", err, out)
		}
		if kver, kernel, base = readGuestEnv(envFile); kernel == "" || !exists(kernel) || !exists(base) {
			return Artifacts{}, logb.String(), fmt.Errorf("scripts/deps-guest.sh ran but %s names no kernel and initramfs", envFile)
		}
	}

	// Build the agent (the go build cache makes this quick after the first
	// time) and append it to the base initramfs as a second cpio archive.
	start := time.Now()
	tmp, err := os.MkdirTemp("", "knm-agent-")
	if err != nil {
		return Artifacts{}, "", err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, AgentPackage)
	cmd.Dir = root
	// GOFLAGS may carry -race, which needs cgo.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Artifacts{}, "", fmt.Errorf("build guest agent: %v\n%s", err, out)
	}
	agent, err := os.ReadFile(bin)
	if err != nil {
		return Artifacts{}, "", err
	}
	baseData, err := os.ReadFile(base)
	if err != nil {
		return Artifacts{}, "", err
	}
	overlay, err := gzipCPIO([]cpioFile{{Name: "agent", Mode: 0o100755, Data: agent}})
	if err != nil {
		return Artifacts{}, "", err
	}
	sum := sha256.New()
	sum.Write(baseData)
	sum.Write(overlay)
	initrd := filepath.Join(dir, "initramfs-agent-"+hex.EncodeToString(sum.Sum(nil))[:16]+".cpio.gz")
	if !exists(initrd) {
		// Drop the ones of older agents (an hour old: another test process
		// may still boot from one).
		old, _ := filepath.Glob(filepath.Join(dir, "initramfs-agent-*.cpio.gz"))
		for _, o := range old {
			if st, err := os.Stat(o); err == nil && time.Since(st.ModTime()) > time.Hour {
				os.Remove(o)
			}
		}
		f, err := os.CreateTemp(dir, ".initrd-")
		if err != nil {
			return Artifacts{}, "", err
		}
		_, err = f.Write(append(baseData, overlay...))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(f.Name(), initrd)
		}
		if err != nil {
			os.Remove(f.Name())
			return Artifacts{}, "", err
		}
	}
	fmt.Fprintf(&logb, "guest agent built and packed in %v: %s (kernel %s)\n", time.Since(start).Round(time.Millisecond), initrd, kver)
	return Artifacts{Kernel: kernel, Initrd: initrd, KernelVersion: kver}, logb.String(), nil
}

// readGuestEnv reads the kernel version, kernel and base initramfs that
// scripts/deps-guest.sh wrote to path ("" for what it does not say).
func readGuestEnv(path string) (kver, kernel, base string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "KNM_GUEST_KVER":
			kver = v
		case "KNM_GUEST_KERNEL":
			kernel = v
		case "KNM_GUEST_INITRD_BASE":
			base = v
		}
	}
	return kver, kernel, base
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// moduleRoot is the directory of this module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the kata-netmon module")
	}
	return filepath.Dir(gomod), nil
}

type cpioFile struct {
	Name string
	Mode uint32 // with the file type bits
	Data []byte
}

// gzipCPIO writes a gzip-compressed cpio archive in the "newc" format the
// kernel unpacks into its initramfs.
func gzipCPIO(files []cpioFile) ([]byte, error) {
	var raw bytes.Buffer
	pad := func() {
		for raw.Len()%4 != 0 {
			raw.WriteByte(0)
		}
	}
	entry := func(ino int, name string, mode uint32, nlink int, data []byte) {
		fmt.Fprintf(&raw, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		raw.WriteString(name)
		raw.WriteByte(0)
		pad()
		raw.Write(data)
		pad()
	}
	for i, f := range files {
		entry(i+1, f.Name, f.Mode, 1, f.Data)
	}
	entry(0, "TRAILER!!!", 0, 1, nil)
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
