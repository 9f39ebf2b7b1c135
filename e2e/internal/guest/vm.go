// Package guest boots a real QEMU guest for the e2e tests: a Debian cloud
// kernel and a small initramfs (scripts/deps-guest.sh) whose /init starts the
// test agent (./agent) on a second serial port. QEMU runs under TCG in a
// given network namespace with pcie-root-ports for NIC hot-plug and a QMP
// socket, as a Kata sandbox's QEMU does.
package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// Options configure Boot. The zero value boots in the test's own netns.
type Options struct {
	// NetNS is the path of the network namespace QEMU runs in (where its
	// tap fds come from), e.g. /run/netns/knm-sbx-1a2b. "" keeps the
	// test's netns.
	NetNS string
	// MemoryMB is the guest's memory (default 256).
	MemoryMB int
	// RootPorts is how many pcie-root-ports to offer for hot-plug
	// (default 4).
	RootPorts int
	// BootTimeout bounds the wait for the agent's first answer (default
	// 60 s; boot takes 2-3 s under TCG).
	BootTimeout time.Duration
	// KernelArgs are appended to the kernel command line.
	KernelArgs string
	// Concurrent skips the machine-wide lock that lets one guest run at a
	// time (TCG on 2 cores: parallel guests skew every timing). Set it in a
	// test that needs two guests at once.
	Concurrent bool
	// Logf receives progress lines (artifact build, boot time, lock
	// waits); nil discards them. Boot defaults it to t.Logf.
	Logf func(format string, args ...any)
}

// RootPort is a hot-pluggable pcie-root-port on pcie.0.
type RootPort struct {
	ID   string // QOM id, the "bus" of a device_add
	Slot int    // its device number on pcie.0
}

// PCIPath is Kata's PCI path ("<root port slot>/<device>", hex) of the
// device at slot 0 behind the port.
func (p RootPort) PCIPath() string { return fmt.Sprintf("%02x/00", p.Slot) }

// VM is a running guest. Boot registers its Stop with t.Cleanup; callers of
// Start call Stop themselves.
type VM struct {
	Pid       int
	NetNS     string
	Dir       string // sockets and logs
	QMP       *QMP
	Agent     *Agent
	RootPorts []RootPort
	// BootTime is from starting QEMU to the agent's first answer.
	BootTime time.Duration
	// KernelVersion is the guest kernel's ("6.12.117+deb12-cloud-amd64").
	KernelVersion string

	lock     *os.File
	proc     *os.Process
	exited   chan struct{}
	waitErr  error
	stopOnce sync.Once
}

// ConsolePath is the guest's console log (ttyS0).
func (vm *VM) ConsolePath() string { return filepath.Join(vm.Dir, "console.log") }

// QEMULogPath is QEMU's own stdout and stderr (tap errors land here).
func (vm *VM) QEMULogPath() string { return filepath.Join(vm.Dir, "qemu.log") }

// Console returns the guest console log.
func (vm *VM) Console() string { b, _ := os.ReadFile(vm.ConsolePath()); return string(b) }

// QEMULog returns QEMU's own output.
func (vm *VM) QEMULog() string { b, _ := os.ReadFile(vm.QEMULogPath()); return string(b) }

// TapError returns QEMU's log lines that mention tun or tap (what Kata
// 4.1's detach order makes it print: "TUNSETOFFLOAD ioctl() failed", the
// tap went before the device), or nil. QEMU's complaint that a macvtap
// queue takes no steering program (TUNSETSTEERINGEBPF, at netdev_add) is
// not one.
func (vm *VM) TapError() error {
	var bad []string
	for _, line := range strings.Split(vm.QEMULog(), "\n") {
		low := strings.ToLower(line)
		if strings.Contains(low, "tunsetsteeringebpf") {
			continue
		}
		if strings.Contains(low, "tap") || strings.Contains(low, "tun") {
			bad = append(bad, line)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("QEMU logged a tun/tap error:\n%s", strings.Join(bad, "\n"))
	}
	return nil
}

// Exited is closed once QEMU has exited.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// ErrNeedRoot is returned by Start when the process is not root.
var ErrNeedRoot = errors.New("booting a guest needs root")

// Boot starts a guest and waits until its agent answers. Any failure is
// fatal to t and reports the tail of the console and of QEMU's log. The VM is
// stopped on t.Cleanup (and killed by the kernel if the test process dies).
// Tests that need root skip without it (and fail under CI=true). The boot wait also ends with
// t.Context().
func Boot(t testing.TB, opts Options) *VM {
	t.Helper()
	netmontest.RequireRoot(t) // skips, or under CI=true fails
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	vm, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err) // the error carries the logs; the VM is stopped
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- QEMU log (tail) ---\n%s\n--- console (tail) ---\n%s", tail(vm.QEMULog(), 20), tail(vm.Console(), 40))
		}
		vm.Stop()
	})
	return vm
}

// Start is Boot for callers without a testing.TB (the demo, benchmarks that
// boot one guest per round): it returns the running VM, which the caller
// must Stop, or an error that carries the tails of QEMU's log and of the
// console. ctx bounds the boot wait only (together with opts.BootTimeout),
// not the VM's life. On error nothing is left running.
func Start(ctx context.Context, opts Options) (_ *VM, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNeedRoot
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if opts.MemoryMB == 0 {
		opts.MemoryMB = 256
	}
	if opts.RootPorts == 0 {
		opts.RootPorts = 4
	}
	if opts.BootTimeout == 0 {
		opts.BootTimeout = 60 * time.Second
	}
	art, plog, err := Prepare()
	if plog != "" {
		logf("%s", strings.TrimSpace(plog))
	}
	if err != nil {
		return nil, fmt.Errorf("guest artifacts: %w", err)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("qemu-system-x86_64: %w (scripts/deps-guest.sh installs it)", err)
	}
	if opts.NetNS != "" {
		if _, err := os.Stat(opts.NetNS); err != nil {
			return nil, fmt.Errorf("netns: %w", err)
		}
	}
	vm := &VM{NetNS: opts.NetNS, KernelVersion: art.KernelVersion, exited: make(chan struct{})}
	defer func() {
		if err != nil {
			vm.Stop()
		}
	}()
	if !opts.Concurrent {
		if vm.lock, err = lockVMs(ctx, logf); err != nil {
			return nil, err
		}
	}
	// Unix socket paths must stay short: not under t.TempDir().
	if vm.Dir, err = os.MkdirTemp("", "knm-vm-"); err != nil {
		return nil, err
	}
	dir := vm.Dir
	qmpSock, agentSock := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "agent.sock")

	args := []string{
		qemu, "-name", "knm-guest",
		"-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", fmt.Sprint(opts.MemoryMB), "-smp", "1",
		"-nographic", "-nodefaults", "-no-user-config", "-no-reboot",
		"-kernel", art.Kernel, "-initrd", art.Initrd,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 " + opts.KernelArgs),
		"-chardev", "file,id=console,path=" + vm.ConsolePath(),
		"-device", "isa-serial,chardev=console,index=0",
		"-chardev", "socket,id=agent,path=" + agentSock + ",server=on,wait=off",
		"-device", "isa-serial,chardev=agent,index=1",
		"-chardev", "socket,id=qmp,path=" + qmpSock + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	}
	for i := 0; i < opts.RootPorts; i++ {
		p := RootPort{ID: fmt.Sprintf("rp%d", i), Slot: 3 + i}
		vm.RootPorts = append(vm.RootPorts, p)
		args = append(args, "-device", fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,chassis=%d,addr=0x%x", p.ID, i+1, p.Slot))
	}
	if opts.NetNS != "" {
		// nsenter execs QEMU: only the child enters the netns, no Go thread does.
		args = append([]string{"nsenter", "--net=" + opts.NetNS, "--"}, args...)
	}
	qlog, err := os.Create(vm.QEMULogPath())
	if err != nil {
		return nil, err
	}
	defer qlog.Close()

	start := time.Now()
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked QEMU exits: keep this
		// goroutine on its own thread, alive for as long as QEMU runs. The
		// thread is never unlocked, so it dies with the goroutine, after
		// QEMU has gone.
		runtime.LockOSThread()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = qlog, qlog
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Pdeathsig: syscall.SIGKILL,
			// A ^C in the terminal goes to the whole foreground process
			// group: QEMU must not die under a test or the demo before
			// their cleanup detaches and stops it.
			Setpgid: true,
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		vm.proc, vm.Pid = cmd.Process, cmd.Process.Pid
		started <- nil
		vm.waitErr = cmd.Wait()
		close(vm.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start QEMU: %w", err)
	}

	bctx, cancel := context.WithTimeout(ctx, opts.BootTimeout)
	defer cancel()
	go func() {
		select {
		case <-vm.exited:
			cancel()
		case <-bctx.Done():
		}
	}()
	fail := func(format string, a ...any) error {
		msg := fmt.Sprintf(format, a...)
		select {
		case <-vm.exited:
			msg += fmt.Sprintf("\nQEMU exited: %v", vm.waitErr)
		default:
		}
		return fmt.Errorf("boot guest: %s\n--- QEMU log (tail) ---\n%s\n--- console (tail) ---\n%s", msg, tail(vm.QEMULog(), 20), tail(vm.Console(), 40))
	}
	if vm.QMP, err = DialQMP(bctx, qmpSock); err != nil {
		return nil, fail("%v", err)
	}
	if vm.Agent, err = dialAgent(bctx, agentSock); err != nil {
		return nil, fail("%v", err)
	}
	if err := vm.Agent.waitReady(bctx); err != nil {
		return nil, fail("%v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	vm.BootTime = time.Since(start)
	logf("guest booted in %v (kernel %s, QEMU pid %d, netns %q, dir %s)", vm.BootTime.Round(time.Millisecond), vm.KernelVersion, vm.Pid, opts.NetNS, dir)
	return vm, nil
}

// Stop kills QEMU by pid, waits for it to exit and removes its directory.
// It is idempotent and safe on every path.
func (vm *VM) Stop() {
	vm.stopOnce.Do(func() {
		if vm.proc != nil {
			_ = vm.proc.Kill()
			select {
			case <-vm.exited:
			case <-time.After(10 * time.Second):
			}
		}
		if vm.QMP != nil {
			vm.QMP.Close()
		}
		if vm.Agent != nil {
			vm.Agent.Close()
		}
		if os.Getenv("KNM_GUEST_KEEP") == "" && vm.Dir != "" {
			os.RemoveAll(vm.Dir)
		}
		if vm.lock != nil {
			vm.lock.Close() // releases the flock
		}
	})
}

// lockVMs takes the machine-wide guest lock (flock on a file in the cache
// dir; also between VMs of one process), waiting up to 10 minutes or until
// ctx ends.
func lockVMs(ctx context.Context, logf func(string, ...any)) (*os.File, error) {
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(CacheDir(), ".vm.lock"), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			if logged {
				logf("waited %v for another guest to stop", time.Since(start).Round(time.Millisecond))
			}
			return f, nil
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", f.Name(), err)
		}
		if time.Since(start) > 10*time.Minute {
			f.Close()
			return nil, fmt.Errorf("another guest has held %s for 10 minutes", f.Name())
		}
		if !logged {
			logf("waiting for another guest to stop (%s)", f.Name())
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the guest lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
