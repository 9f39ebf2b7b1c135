//go:build linux

// Command demo shows kata-netmon doing its job end to end, live: a real
// Docker 29, a real QEMU guest, and the monitor started through
// shimhook.Start exactly as a Kata shim starts it.
//
//	make demo   (go run ./e2e/cmd/demo; as root)
//
// The arrangement: with runc, a Docker container's netns receives the same
// netlink sequence a Kata sandbox netns does. The demo runs a busybox
// container, boots a guest with no NIC inside the container's netns (as
// Kata's QEMU runs in the sandbox netns) and lets the monitor hot-plug
// Docker's interfaces into it through katasim, which behaves as Kata 4.1's
// runtime with this project's patch series, tcfilter model, on the real
// guest, whose agent behaves as Kata 4.1's (docs/kata-model.md). A random
// token served by the guest and read from dockerd's netns proves the traffic
// reaches the guest.
//
// Steps: Docker in its own netns; two networks; docker run; guest boot;
// shimhook.Start (eth0 attached before it returns); eth0 reachable; docker
// network connect (eth1, default route moves with --gw-priority); docker
// network disconnect (eth1 unplugged, eth0 still reachable); then, on a
// second container and guest, Kata 4.1 as shipped: a connect refused by the
// monitor with the fix named, and the same connect attached by a naive
// client calling Kata directly; cleanup, also on failure, Ctrl-C or SIGTERM.
// Exit status: 0 done, 1 failed, 130/143 on SIGINT/SIGTERM.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerguest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/e2e/internal/shimcfg"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

func main() {
	os.Exit(run())
}

// tokenPort is where the guest serves its token.
const tokenPort = 8080

func run() int {
	p := newPrinter(os.Stdout)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	r := newRunner(ctx, p.env)
	d := &demo{p: p, r: r, ctx: ctx}
	done := r.run(d.main)

	var sig os.Signal
	select {
	case <-done:
	case sig = <-sigs:
		p.step("%v received: stopping the demo and cleaning up", sig)
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			p.ok("the current step did not stop within 30s; cleaning up under it")
		case s := <-sigs:
			p.ok("%v received again: cleaning up now", s)
		}
	}
	go func() {
		for s := range sigs {
			p.ok("%v received: cleanup is running, it ends on its own (bounded)", s)
		}
	}()

	p.step("cleanup")
	cstart := time.Now()
	r.runCleanups()
	p.ok("cleanup done in %v", time.Since(cstart).Round(time.Millisecond))

	switch {
	case sig != nil:
		p.line("demo", fmt.Sprintf("INTERRUPTED by %v after %s; everything the demo started is gone", sig, strings.TrimSpace(strings.TrimPrefix(p.since(), "+"))))
		if sig == syscall.SIGTERM {
			return 143
		}
		return 130
	case r.Failed():
		msgs := r.Errors()
		if len(msgs) == 0 {
			msgs = []string{"a step failed"}
		}
		p.line("demo", "FAILED: "+strings.Join(msgs, "\n"))
		return 1
	}
	p.line("demo", "DONE: every step passed ("+strings.TrimSpace(strings.TrimPrefix(p.since(), "+"))+" in all)")
	return 0
}

type demo struct {
	p   *printer
	r   *runner
	ctx context.Context

	env  *dockerenv.Env
	img  string
	ctr  string
	vm   *guest.VM
	sb   *katasim.Sandbox
	mon  *shimhook.Monitor
	nets [2]string
}

// must ends the demo with a failure naming what failed.
func (d *demo) must(err error, what string) {
	if err != nil {
		d.r.Fatalf("%s: %v", what, err)
	}
}

func (d *demo) main() {
	p := d.p
	if os.Geteuid() != 0 {
		d.r.Fatalf("the demo needs root (network namespaces, QEMU taps, dockerd)")
	}

	p.step("start Docker 29 (containerd + dockerd) in a network namespace of its own")
	d.env = dockerenv.Start(d.r)
	// Runs just before the environment's own cleanup (last in, first out).
	d.r.Cleanup(func() { p.ok("removing the containers, stopping dockerd and containerd, deleting their netns") })
	img := d.env.ImportBusybox(d.r)
	d.img = img
	p.ok("dockerd's netns: %s; image %s", d.env.NetNSPath(), img)

	for i := range d.nets {
		d.nets[i] = d.env.MustCreateNetwork(d.r, "knm-demo-"+string(rune('a'+i)))
		n := d.env.MustInspectNetwork(d.r, d.nets[i])
		var sub []string
		for _, c := range n.IPAM.Config {
			sub = append(sub, fmt.Sprintf("%v gw %v", c.Subnet, c.Gateway))
		}
		p.ok("network %s created: %s (bridge br-%s)", d.nets[i], strings.Join(sub, ", "), n.ID[:12])
	}

	p.step("docker run --network %s busybox sleep (runc: its netns stands in for the Kata sandbox netns)", d.nets[0])
	d.ctr = dockerenv.UniqueName("knm-demo")
	t0 := time.Now()
	id := d.env.MustDocker(d.r, "run", "--detach", "--name", d.ctr, "--network", d.nets[0], img, "sleep", "3600")
	pid := d.env.ContainerPid(d.r, d.ctr)
	netnsPath := fmt.Sprintf("/proc/%d/ns/net", pid)
	ep0 := d.endpoint(d.nets[0])
	p.ok("container %s started in %v, pid %d, netns %s", d.ctr, time.Since(t0).Round(time.Millisecond), pid, netnsPath)
	p.ok("Docker configured its eth0 before anything else runs (the Docker 28+ order): mac %s, %v, gateway %v",
		ep0.MacAddress, ep0.IPv4Prefix(), ep0.Gateway)
	p.ok("endpoint seen in the container's netns: %s", d.linkInfo(netnsPath, "eth0"))

	p.step("boot a QEMU guest inside the container's netns, with no NIC (as Kata's QEMU in the sandbox netns)")
	vm, err := guest.Start(d.ctx, guest.Options{NetNS: netnsPath, Logf: p.env})
	d.must(err, "boot the guest")
	d.vm = vm
	d.r.Cleanup(func() {
		p.ok("stopping the guest (QEMU pid %d)", vm.Pid)
		vm.Stop()
	})
	infs, err := vm.Agent.Links(d.ctx)
	d.must(err, "list the guest's interfaces")
	p.ok("guest up in %v (kernel %s); its interfaces: %s", vm.BootTime.Round(time.Millisecond), vm.KernelVersion, dockerguest.Describe(infs))
	d.sb, err = katasim.New(vm, katasim.Options{NetNS: netnsPath})
	d.must(err, "katasim")
	d.r.Cleanup(func() { d.sb.Close() })
	p.ok("the sandbox: katasim as %s (guest kernel %s)", d.sb.Options().Describe(), vm.KernelVersion)

	p.step("shimhook.Start: what the Kata shim calls before it starts the workload")
	cfg := shimcfg.Docker(id[:12], d.sb.Port(), netnsPath, d.env.NetNSPath())
	cfg.HypervisorPID = vm.Pid
	cfg.Log = d.monitorLog()
	t0 = time.Now()
	d.mon, err = shimhook.Start(d.ctx, cfg)
	d.must(err, "shimhook.Start")
	if d.mon == nil {
		d.r.Fatalf("shimhook.Start did not start the monitor (see its log above)")
	}
	d.r.Cleanup(func() {
		p.ok("stopping the monitor")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.mon.Stop(ctx); err != nil {
			d.r.Errorf("monitor Stop: %v", err)
		}
	})
	p.ok("Start returned after %v with %v attached: the workload would start now", time.Since(t0).Round(time.Millisecond), d.mon.NICNames())
	if add := d.sb.CallsOf("AddInterface"); len(add) > 0 {
		p.ok("hot-plug of eth0: %s", phases(add[len(add)-1]))
	}
	infs, err = vm.Agent.Links(d.ctx)
	d.must(err, "list the guest's interfaces")
	d.must(dockerguest.CheckNIC(infs, "eth0", ep0), "guest right after Start")
	p.ok("guest configured: eth0 %s %v, as docker inspect says", ep0.MacAddress, ep0.IPv4Prefix())
	d.waitDefault(ep0.Gateway.String(), "eth0")
	d.reach(ep0.IPAddress.String(), "eth0")

	p.step("docker network connect --gw-priority 10 %s %s", d.nets[1], d.ctr)
	t0 = time.Now()
	d.env.MustDocker(d.r, "network", "connect", "--gw-priority", "10", d.nets[1], d.ctr)
	p.ok("docker returned after %v", time.Since(t0).Round(time.Millisecond))
	ep1 := d.endpoint(d.nets[1])
	_, err = vm.Agent.WaitLinks(d.waitCtx(), 20*time.Millisecond, func(infs []*guestproto.Link) error {
		return dockerguest.CheckNIC(infs, "eth1", ep1)
	})
	d.must(err, "eth1 in the guest")
	p.ok("guest configured: eth1 %s %v, %v after connect", ep1.MacAddress, ep1.IPv4Prefix(), time.Since(t0).Round(time.Millisecond))
	// The guest shows eth1 before AddInterface returns: wait for the
	// second call, or the line would describe eth0's.
	add, err := d.sb.WaitCalls(d.waitCtx(), "AddInterface", 2)
	d.must(err, "AddInterface(eth1) returned")
	p.ok("hot-plug of eth1: %s", phases(add[1]))
	d.reach(ep1.IPAddress.String(), "eth1")
	d.waitDefault(ep1.Gateway.String(), "eth1")

	p.step("docker network disconnect %s %s", d.nets[1], d.ctr)
	t0 = time.Now()
	d.env.MustDocker(d.r, "network", "disconnect", d.nets[1], d.ctr)
	p.ok("docker returned after %v", time.Since(t0).Round(time.Millisecond))
	_, err = vm.Agent.WaitLinks(d.waitCtx(), 20*time.Millisecond, func(infs []*guestproto.Link) error {
		if inf := guest.FindLink(infs, ep1.MacAddress); inf != nil {
			return fmt.Errorf("guest still has %s", inf.Name)
		}
		return nil
	})
	d.must(err, "eth1 unplugged from the guest")
	p.ok("eth1 is gone from the guest, %v after disconnect", time.Since(t0).Round(time.Millisecond))
	// The guest loses eth1 at device_del; the call returns after netdev_del
	// and the tc and tap removal, so wait for it.
	rm, err := d.sb.WaitCalls(d.waitCtx(), "RemoveInterface", 1)
	d.must(err, "RemoveInterface(eth1) returned")
	c := rm[len(rm)-1]
	if c.Err != nil || c.Swallowed != nil {
		d.r.Fatalf("RemoveInterface(eth1): %v %v", c.Err, c.Swallowed)
	}
	p.ok("unplug of eth1: %s", phases(c))
	d.waitDefault(ep0.Gateway.String(), "eth0")
	d.reach(ep0.IPAddress.String(), "eth0")
	if err := vm.TapError(); err != nil {
		d.r.Fatalf("%v", err)
	}
	p.ok("QEMU logged no tun/tap error (the NIC left the guest before its tap was removed)")
	if got := d.mon.NICNames(); !slices.Equal(got, []string{"eth0"}) {
		d.r.Fatalf("monitor has %v attached, want [eth0]", got)
	}

	d.shipped()
}

// monitorLog is a logger for a monitor, printed by the demo's printer.
func (d *demo) monitorLog() *logrus.Entry {
	logger := logrus.New()
	logger.Level = logrus.DebugLevel
	logger.Formatter = monitorFormatter{p: d.p}
	logger.Out = printerWriter{p: d.p}
	return logrus.NewEntry(logger)
}

// linkInfo describes a link of the netns at nsPath as netlink shows it (a
// socket bound to that netns; no thread enters it).
func (d *demo) linkInfo(nsPath, name string) string {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return err.Error()
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err.Error()
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return err.Error()
	}
	a := l.Attrs()
	var flags []string
	for _, f := range []struct {
		bit  uint32
		name string
	}{{unix.IFF_UP, "UP"}, {unix.IFF_RUNNING, "RUNNING"}} {
		if a.RawFlags&f.bit != 0 {
			flags = append(flags, f.name)
		}
	}
	var addrs []string
	if as, err := h.AddrList(l, netlink.FAMILY_V4); err == nil {
		for _, ad := range as {
			addrs = append(addrs, ad.IPNet.String())
		}
	}
	return fmt.Sprintf("%s (ifindex %d) kind %s, %s, %s, mac %s, peer ifindex %d behind link-netnsid %d",
		name, a.Index, l.Type(), strings.Join(flags, ","), strings.Join(addrs, " "), a.HardwareAddr, a.ParentIndex, a.NetNsID)
}

// waitCtx bounds one wait on the guest.
func (d *demo) waitCtx() context.Context {
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	d.r.Cleanup(cancel)
	return ctx
}

func (d *demo) endpoint(network string) *dockerenv.Endpoint {
	c := d.env.MustInspectContainer(d.r, d.ctr)
	ep := c.NetworkSettings.Networks[network]
	if ep == nil || ep.MacAddress == "" || !ep.IPAddress.IsValid() {
		d.r.Fatalf("docker inspect %s: no configured endpoint on %s", d.ctr, network)
	}
	return ep
}

// reach serves a fresh random token in the guest and reads it from
// dockerd's netns at ip: nothing listens in the container's own netns, so
// the answer comes from the guest.
func (d *demo) reach(ip, dev string) {
	token := fmt.Sprintf("knm-%x", time.Now().UnixNano())
	ctx := d.waitCtx()
	d.must(d.vm.Agent.ServeToken(ctx, tokenPort, token), "serve a token in the guest")
	addr := net.JoinHostPort(ip, fmt.Sprint(tokenPort))
	t0 := time.Now()
	got, err := guest.ReadToken(ctx, d.env.NetNSPath(), addr, 2*time.Second, 50*time.Millisecond)
	d.must(err, "reach the guest from dockerd's netns")
	if got != token {
		d.r.Fatalf("read %q from %s, want the guest's token %q", got, addr, token)
	}
	d.p.ok("reachable: dockerd's netns read the guest's token %q from %s (%s) in %v", token, addr, dev, time.Since(t0).Round(100*time.Microsecond))
}

// waitDefault waits until the guest's only IPv4 default route is via gw on dev.
func (d *demo) waitDefault(gw, dev string) {
	_, err := d.vm.Agent.WaitRoutes(d.waitCtx(), 20*time.Millisecond, dockerguest.DefaultRouteIs(gw, dev))
	d.must(err, "the guest's default route")
	d.p.ok("guest default route: via %s dev %s", gw, dev)
}

func phases(c katasim.Call) string {
	return fmt.Sprintf("%v (%s)", c.Took.Round(100*time.Microsecond), c.PhasesString())
}
