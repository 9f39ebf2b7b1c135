//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kata-netmon/kata-netmon/e2e/internal/dockerenv"
	"github.com/kata-netmon/kata-netmon/e2e/internal/guest"
	"github.com/kata-netmon/kata-netmon/e2e/internal/katasim"
	"github.com/kata-netmon/kata-netmon/e2e/internal/shimcfg"
	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// shipped is the demo's last step: Kata 4.1 as shipped, on a second
// container and guest. The monitor gets the runtime as production hands it
// (katasim's Port: hotplug.OneNIC, the PCI-path fix being missing): eth0
// comes through Kata's own RescanNetwork; a docker network connect is
// refused with the error naming the fix, and eth0 is untouched. Then the
// same connect is attached by a naive client calling Kata directly: Kata
// tells the agent eth0's PCI path, the agent does not wait for the new NIC,
// fails, and Kata's rollback sets Docker's eth1 down.
func (d *demo) shipped() {
	p := d.p
	// One guest at a time on this machine: the first one goes now.
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	_ = d.mon.Stop(ctx)
	cancel()
	d.vm.Stop()

	p.step("Kata 4.1 AS SHIPPED (no patch series): a second container, a new guest; what a connect does, with and without the monitor")
	ctr := dockerenv.UniqueName("knm-demo")
	id := d.env.MustDocker(d.r, "run", "--detach", "--name", ctr, "--network", d.nets[0], d.img, "sleep", "3600")
	netnsPath := fmt.Sprintf("/proc/%d/ns/net", d.env.ContainerPid(d.r, ctr))
	vm, err := guest.Start(d.ctx, guest.Options{NetNS: netnsPath, Logf: p.env})
	d.must(err, "boot the second guest")
	d.r.Cleanup(func() { vm.Stop() })
	sb, err := katasim.New(vm, katasim.Options{NetNS: netnsPath, Kata: katasim.AsShipped})
	d.must(err, "katasim")
	d.r.Cleanup(func() { sb.Close() })
	port := &refusals{Sandbox: sb.Port()}
	cfg := shimcfg.Docker(id[:12], port, netnsPath, d.env.NetNSPath())
	cfg.HypervisorPID = vm.Pid
	cfg.Log = d.monitorLog()
	mon, err := shimhook.Start(d.ctx, cfg)
	d.must(err, "shimhook.Start")
	if mon == nil {
		d.r.Fatalf("shimhook.Start did not start the monitor")
	}
	d.r.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = mon.Stop(ctx)
	})
	p.ok("the sandbox: katasim as %s; the monitor is handed hotplug.OneNIC over it (what production does without the PCI-path fix)", sb.Options().Describe())
	links, err := vm.Agent.Links(d.ctx)
	d.must(err, "list the guest's links")
	eth0 := guest.LinkNamed(links, "eth0")
	if eth0 == nil || len(sb.CallsOf("RescanNetwork")) != 1 {
		d.r.Fatalf("eth0 did not come through Kata's RescanNetwork (guest: %v)", links)
	}
	p.ok("Start attached eth0 (%s) through Kata's own RescanNetwork, which tells the agent each NIC's own PCI path", eth0.MAC)

	d.env.MustDocker(d.r, "network", "connect", d.nets[1], ctr)
	refusal, err := port.wait(d.waitCtx())
	d.must(err, "the monitor's answer to the connect")
	p.ok("docker network connect %s: the monitor REFUSED eth1, without asking Kata:", d.nets[1])
	p.ok("  %v", refusal)
	links, err = vm.Agent.Links(d.ctx)
	d.must(err, "list the guest's links")
	if k := guest.LinkNamed(links, "eth0"); k == nil || k.MAC != eth0.MAC || !k.Up() {
		d.r.Fatalf("eth0 was disturbed: %v", links)
	}
	p.ok("guest eth0 untouched (MAC %s, up); Docker's eth1 in the container: %s", eth0.MAC, linkState(netnsPath, "eth1"))

	p.ok("the same connect attached by a naive client calling Kata's AddInterface directly:")
	inf := interfaceOf(netnsPath, "eth1")
	_, err = sb.AddInterface(d.waitCtx(), inf)
	adds := sb.CallsOf("AddInterface")
	p.ok("  Kata announced eth1 at PCI path %s: eth0's, the first endpoint's", inf.DevicePath)
	switch {
	case err != nil:
		p.ok("  AddInterface failed: %v", err)
		p.ok("  (the agent found eth0 at that path and did not wait for eth1's NIC, whose MAC it then missed; agent 4.1's fallback by name found no eth1)")
	default:
		p.ok("  AddInterface succeeded: this time the guest had probed eth1's NIC before the agent looked")
	}
	if len(adds) > 0 {
		for _, l := range adds[len(adds)-1].Logs {
			p.ok("  Kata logged: %s", l)
		}
	}
	p.ok("  Docker's eth1 in the container now: %s", linkState(netnsPath, "eth1"))
	links, err = vm.Agent.Links(d.ctx)
	d.must(err, "list the guest's links")
	if k := guest.LinkNamed(links, "eth0"); k != nil && k.MAC == eth0.MAC {
		p.ok("  guest eth0 kept its MAC %s: Kata 4.1's agent re-MACs the netdev at the announced path only when it sits right under the PCI function (VFIO); a virtio-net NIC's sits under virtioN/ (docs/kata-model.md)", eth0.MAC)
	} else {
		p.ok("  guest eth0 is now %v", k)
	}
}

// refusals is the port with the monitor's refused attaches reported.
type refusals struct {
	hotplug.Sandbox
	mu   sync.Mutex
	errs []error
	wake chan struct{}
}

func (r *refusals) AddInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	got, err := r.Sandbox.AddInterface(ctx, inf)
	if errors.Is(err, hotplug.ErrRefused) {
		r.mu.Lock()
		r.errs = append(r.errs, err)
		if r.wake != nil {
			close(r.wake)
			r.wake = nil
		}
		r.mu.Unlock()
	}
	return got, err
}

// wait returns the first refusal, waiting for it until ctx ends.
func (r *refusals) wait(ctx context.Context) (error, error) {
	for {
		r.mu.Lock()
		if len(r.errs) > 0 {
			err := r.errs[0]
			r.mu.Unlock()
			return err, nil
		}
		if r.wake == nil {
			r.wake = make(chan struct{})
		}
		wake := r.wake
		r.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// interfaceOf describes a container link as the monitor hands it to Kata.
func interfaceOf(nsPath, name string) *hotplug.Interface {
	h, l, err := linkIn(nsPath, name)
	if err != nil {
		return &hotplug.Interface{Name: name}
	}
	defer h.Close()
	a := l.Attrs()
	inf := &hotplug.Interface{Device: name, Name: name, HwAddr: a.HardwareAddr.String(), Mtu: uint64(a.MTU), Type: l.Type(), RawFlags: a.RawFlags}
	if addrs, err := h.AddrList(l, netlink.FAMILY_V4); err == nil {
		for _, ad := range addrs {
			ones, _ := ad.Mask.Size()
			inf.IPAddresses = append(inf.IPAddresses, &hotplug.IPAddress{Family: hotplug.FamilyV4, Address: ad.IP.String(), Mask: fmt.Sprint(ones)})
		}
	}
	return inf
}

// linkState is "UP" or "DOWN" and the addresses of a container link.
func linkState(nsPath, name string) string {
	h, l, err := linkIn(nsPath, name)
	if err != nil {
		return err.Error()
	}
	defer h.Close()
	state := "DOWN"
	if l.Attrs().Flags&1 != 0 {
		state = "UP"
	}
	var addrs []string
	if as, err := h.AddrList(l, netlink.FAMILY_V4); err == nil {
		for _, a := range as {
			addrs = append(addrs, a.IPNet.String())
		}
	}
	return fmt.Sprintf("%s %s, mac %s", state, strings.Join(addrs, " "), l.Attrs().HardwareAddr)
}

func linkIn(nsPath, name string) (*netlink.Handle, netlink.Link, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, nil, err
	}
	l, err := h.LinkByName(name)
	if err != nil {
		h.Close()
		return nil, nil, err
	}
	return h, l, nil
}
