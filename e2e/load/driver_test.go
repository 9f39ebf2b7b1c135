//go:build linux

package load

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// driverConfig is what the parent passes to the driver process (as a JSON
// file named by KNM_LOAD_DRIVER).
type driverConfig struct {
	Dockerd   string        // dockerd's netns path (bridge and host ends)
	Bridge    string        // the bridge the host ends join
	Sandboxes []string      // sandbox netns paths, one monitor each
	Cycles    int           // endpoints per sandbox, one after the other
	Hold      time.Duration // how long each endpoint lives once configured
	Gap       time.Duration // pause between two endpoints of a sandbox
	Stagger   time.Duration // the sandboxes' first endpoints spread over this
	// AckWait: after an endpoint's last step, the driver waits for the
	// parent to say (a "sandbox cycle" line on stdin) that the monitor
	// attached it, at most this long, before Hold starts: an endpoint is
	// never deleted before its monitor could attach it, however slow the
	// machine is (a timed hold alone made a stall look like a lost
	// endpoint).
	AckWait time.Duration
}

// driverEvent is one line of the driver's stdout.
type driverEvent struct {
	Sandbox int    `json:"sb"`
	Cycle   int    `json:"cycle"`
	MAC     string `json:"mac,omitempty"`
	Name    string `json:"name,omitempty"`
	Index   int    `json:"idx,omitempty"`      // the sandbox end's ifindex, in the sandbox netns
	Ready   int64  `json:"ready_ns,omitempty"` // CLOCK_MONOTONIC right before the last step (up)
	Removed bool   `json:"removed,omitempty"`
	NoAck   bool   `json:"no_ack,omitempty"` // not acknowledged within AckWait
	Err     string `json:"err,omitempty"`
}

// monotonic reads CLOCK_MONOTONIC, which both processes share.
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// driverMain runs in the re-executed test binary: Docker's endpoint
// sequence (veth with its end created in the sandbox netns, host end on the
// bridge, rename to eth0, MAC, address, up), held, then removed, Cycles
// times in every sandbox at once.
func driverMain(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var cfg driverConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dns, err := netns.GetFromPath(cfg.Dockerd)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer dns.Close()
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(ev driverEvent) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(ev)
	}
	// acks[i] receives the cycles of sandbox i the parent saw attached.
	acks := make([]chan int, len(cfg.Sandboxes))
	for i := range acks {
		acks[i] = make(chan int, cfg.Cycles)
	}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			var sb, cycle int
			if _, err := fmt.Sscan(sc.Text(), &sb, &cycle); err == nil && sb >= 0 && sb < len(acks) {
				acks[sb] <- cycle
			}
		}
	}()
	var wg sync.WaitGroup
	for i, p := range cfg.Sandboxes {
		wg.Go(func() {
			time.Sleep(cfg.Stagger * time.Duration(i) / time.Duration(len(cfg.Sandboxes)))
			if err := driveSandbox(cfg, i, p, dns, emit, acks[i]); err != nil {
				emit(driverEvent{Sandbox: i, Err: err.Error()})
			}
		})
	}
	wg.Wait()
	return 0
}

func driveSandbox(cfg driverConfig, i int, path string, dns netns.NsHandle, emit func(driverEvent), acks <-chan int) error {
	sns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer sns.Close()
	dh, err := netlink.NewHandleAt(dns)
	if err != nil {
		return err
	}
	defer dh.Close()
	sh, err := netlink.NewHandleAt(sns)
	if err != nil {
		return err
	}
	defer sh.Close()
	br, err := dh.LinkByName(cfg.Bridge)
	if err != nil {
		return err
	}
	for c := range cfg.Cycles {
		host, tmp := fmt.Sprintf("kl%03d-%02d", i, c), fmt.Sprintf("veth%03d%02d", i, c)
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: tmp, PeerNamespace: netlink.NsFd(int(sns))}
		if err := dh.LinkAdd(veth); err != nil {
			return fmt.Errorf("add %s: %w", host, err)
		}
		hl, err := dh.LinkByName(host)
		if err != nil {
			return err
		}
		if err := dh.LinkSetMaster(hl, br); err != nil {
			return err
		}
		if err := dh.LinkSetUp(hl); err != nil {
			return err
		}
		sl, err := sh.LinkByName(tmp)
		if err != nil {
			return err
		}
		if err := sh.LinkSetName(sl, "eth0"); err != nil {
			return err
		}
		mac := net.HardwareAddr{0x02, 0x4c, byte(i >> 8), byte(i), byte(c), 0x01}
		if err := sh.LinkSetHardwareAddr(sl, mac); err != nil {
			return err
		}
		k := i*cfg.Cycles + c
		a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, byte(64+k/65000), byte(k/250%260), byte(k%250+2)), Mask: net.CIDRMask(10, 32)}}
		if err := sh.AddrAdd(sl, a); err != nil {
			return err
		}
		ready := monotonic()
		if err := sh.LinkSetUp(sl); err != nil {
			return err
		}
		emit(driverEvent{Sandbox: i, Cycle: c, MAC: mac.String(), Name: "eth0", Index: sl.Attrs().Index, Ready: ready})
		if cfg.AckWait > 0 {
			t := time.NewTimer(cfg.AckWait)
		wait:
			for {
				select {
				case got := <-acks:
					if got == c {
						break wait
					}
				case <-t.C:
					emit(driverEvent{Sandbox: i, Cycle: c, MAC: mac.String(), NoAck: true})
					break wait
				}
			}
			t.Stop()
		}
		time.Sleep(cfg.Hold)
		if err := dh.LinkDel(hl); err != nil {
			return err
		}
		emit(driverEvent{Sandbox: i, Cycle: c, MAC: mac.String(), Removed: true})
		time.Sleep(cfg.Gap)
	}
	return nil
}
