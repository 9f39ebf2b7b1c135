//go:build linux

package load

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The tap is a third process (this test binary re-executed with
// KNM_LOAD_TAP) that timestamps, with CLOCK_MONOTONIC, the kernel's netlink
// events that make each endpoint ready: one rtnetlink socket per sandbox
// netns, all read by one thread blocked in epoll_wait, so its stamps do
// not depend on the monitors' process being scheduled. Netlink sockets
// carry no kernel timestamp (SO_TIMESTAMPNS gives no control message on
// them), so this is the closest independent clock on "the kernel sent it".
//
// It splits the decision latency into the kernel's part (the driver's `up`
// to the RUNNING event: linkwatch runs under rtnl_lock, which the driver's
// veth deletions hold) and the monitor's (that event to AddInterface).

// tapConfig is what the parent passes to the tap (a JSON file named by
// KNM_LOAD_TAP).
type tapConfig struct {
	Sandboxes []string
}

// tapEvent is one line of the tap's stdout: the first RUNNING NEWLINK or
// the first IPv4 NEWADDR of an ifindex in sandbox Sandbox, or (Ready) the
// tap's signal that every socket is open.
type tapEvent struct {
	Sandbox  int    `json:"sb"`
	Index    int    `json:"idx,omitempty"`
	Kind     string `json:"kind,omitempty"` // "running" or "addr"
	At       int64  `json:"t,omitempty"`    // CLOCK_MONOTONIC when recvfrom returned
	Ready    bool   `json:"ready,omitempty"`
	Overruns int64  `json:"overruns,omitempty"` // ENOBUFS seen, in the last line
	Err      string `json:"err,omitempty"`
}

// tapMain runs in the re-executed test binary until its stdin closes.
func tapMain(path string) int {
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	fail := func(err error) int {
		_ = enc.Encode(tapEvent{Err: err.Error()})
		_ = out.Flush()
		return 1
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fail(err)
	}
	var cfg tapConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fail(err)
	}
	runtime.LockOSThread() // this thread enters each netns to make its socket; it never unlocks
	self, err := netns.Get()
	if err != nil {
		return fail(err)
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fail(err)
	}
	fds := make([]int, len(cfg.Sandboxes))
	for i, p := range cfg.Sandboxes {
		if fds[i], err = tapSocket(p, self); err != nil {
			return fail(fmt.Errorf("sandbox %d: %w", i, err))
		}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fds[i], &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}); err != nil {
			return fail(err)
		}
	}
	// stdin's EOF (the parent closing it) ends the tap.
	var stop [2]int
	if err := unix.Pipe2(stop[:], unix.O_CLOEXEC); err != nil {
		return fail(err)
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		_, _ = unix.Write(stop[1], []byte{1})
	}()
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, stop[0], &unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}); err != nil {
		return fail(err)
	}
	_ = enc.Encode(tapEvent{Ready: true})
	_ = out.Flush()

	type key struct{ sb, idx int }
	running, addr := map[key]bool{}, map[key]bool{}
	var overruns int64
	buf := make([]byte, 1<<16)
	evs := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(ep, evs, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fail(err)
		}
		for _, ev := range evs[:n] {
			if ev.Fd < 0 {
				_ = enc.Encode(tapEvent{Overruns: overruns})
				_ = out.Flush()
				return 0
			}
			sb := int(ev.Fd)
			for {
				m, _, err := unix.Recvfrom(fds[sb], buf, unix.MSG_DONTWAIT)
				at := monotonic()
				if errors.Is(err, unix.EAGAIN) {
					break
				}
				if errors.Is(err, unix.ENOBUFS) {
					overruns++
					continue
				}
				if err != nil {
					return fail(err)
				}
				msgs, err := syscall.ParseNetlinkMessage(buf[:m])
				if err != nil {
					continue
				}
				for _, msg := range msgs {
					switch msg.Header.Type {
					case unix.RTM_NEWLINK:
						if len(msg.Data) < unix.SizeofIfInfomsg {
							continue
						}
						idx := int(int32(binary.NativeEndian.Uint32(msg.Data[4:8])))
						flags := binary.NativeEndian.Uint32(msg.Data[8:12])
						if k := (key{sb, idx}); flags&unix.IFF_RUNNING != 0 && !running[k] {
							running[k] = true
							_ = enc.Encode(tapEvent{Sandbox: sb, Index: idx, Kind: "running", At: at})
						}
					case unix.RTM_NEWADDR:
						if len(msg.Data) < unix.SizeofIfAddrmsg || msg.Data[0] != unix.AF_INET {
							continue
						}
						idx := int(binary.NativeEndian.Uint32(msg.Data[4:8]))
						if k := (key{sb, idx}); !addr[k] {
							addr[k] = true
							_ = enc.Encode(tapEvent{Sandbox: sb, Index: idx, Kind: "addr", At: at})
						}
					}
				}
			}
		}
		_ = out.Flush()
	}
}

// tapSocket opens an rtnetlink socket in the netns at path, joined to the
// link and IPv4 address groups, and returns to self.
func tapSocket(path string, self netns.NsHandle) (int, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return -1, err
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return -1, err
	}
	fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err := netns.Set(self); err != nil {
		return -1, fmt.Errorf("back to own netns: %w", err)
	}
	if serr != nil {
		return -1, serr
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// tap is the running tap process, seen from the parent.
type tap struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	done   chan struct{} // closed when the tap's stdout has ended
	events []tapEvent    // everything after the ready line; read after done
}

// startTap starts the tap on paths and returns once every socket is open.
func startTap(b *testing.B, cfgPath string, paths []string) *tap {
	b.Helper()
	cfgJSON, err := json.Marshal(tapConfig{Sandboxes: paths})
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, cfgJSON, 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KNM_LOAD_TAP="+cfgPath, "GORACE=atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	t := &tap{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(t.done)
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			var ev tapEvent
			err := json.Unmarshal(sc.Bytes(), &ev)
			if err == nil && ev.Err != "" {
				err = errors.New(ev.Err)
			}
			if first {
				first = false
				if err == nil && !ev.Ready {
					err = fmt.Errorf("tap: first line %q is not its ready signal", sc.Text())
				}
				ready <- err
				continue
			}
			if err != nil {
				ev = tapEvent{Err: fmt.Sprintf("tap: %q: %v", sc.Text(), err)}
			}
			t.events = append(t.events, ev)
		}
		if first {
			ready <- errors.New("tap: ended before its ready signal")
		}
	}()
	if err := <-ready; err != nil {
		_ = stdin.Close()
		_ = cmd.Wait()
		b.Fatal(err)
	}
	return t
}

// stop ends the tap and returns every event it printed: per sandbox, the
// ready time of each ifindex (the later of its RUNNING and IPv4 address
// events), and the overruns it saw.
func (t *tap) stop(b *testing.B, n int) (ready []map[int]int64, overruns int64) {
	b.Helper()
	_ = t.stdin.Close()
	running, addr := make([]map[int]int64, n), make([]map[int]int64, n)
	for i := range n {
		running[i], addr[i] = map[int]int64{}, map[int]int64{}
	}
	<-t.done
	for _, ev := range t.events {
		switch {
		case ev.Err != "":
			b.Errorf("%s", ev.Err)
		case ev.Kind == "running":
			running[ev.Sandbox][ev.Index] = ev.At
		case ev.Kind == "addr":
			addr[ev.Sandbox][ev.Index] = ev.At
		default:
			overruns = ev.Overruns
		}
	}
	if err := t.cmd.Wait(); err != nil {
		b.Errorf("tap: %v", err)
	}
	ready = make([]map[int]int64, n)
	for i := range n {
		ready[i] = map[int]int64{}
		for idx, r := range running[i] {
			if a, ok := addr[i][idx]; ok {
				ready[i][idx] = max(r, a)
			}
		}
	}
	return ready, overruns
}
