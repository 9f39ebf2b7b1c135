package kata

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"
	pbTypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// KataSandbox is the part of Kata's virtcontainers.VCSandbox the adapter
// calls. A vc.VCSandbox is one.
type KataSandbox interface {
	AddInterface(ctx context.Context, inf *pbTypes.Interface) (*pbTypes.Interface, error)
	RemoveInterface(ctx context.Context, inf *pbTypes.Interface) (*pbTypes.Interface, error)
	ListInterfaces(ctx context.Context) ([]*pbTypes.Interface, error)
	UpdateRoutes(ctx context.Context, routes []*pbTypes.Route) ([]*pbTypes.Route, error)
}

var _ KataSandbox = vc.VCSandbox(nil)

// Adapter makes a Kata sandbox a hotplug.Sandbox: it converts to and from
// Kata's protocol types (rules in wire.go), refuses requests Kata would
// misread, keeps the monitor out of the way of Kata's RescanNetwork (guard.go)
// and logs the likely cause when it sees a symptom of a known Kata 4.1 bug
// (diagnose.go).
//
// Its methods are safe for concurrent use; mu guards suspectWipe only.
type Adapter struct {
	sb    KataSandbox
	caps  hotplug.Capabilities
	log   *logrus.Entry
	guard *rescanGuard
	// owned reports whether Kata's tc redirect or macvtap is already on the
	// link named name in the sandbox netns (owner_linux.go).
	owned func(name string) (bool, error)
	poll  time.Duration

	mu          sync.Mutex
	suspectWipe bool            // an attach failed inside Kata: its endpoint list may be gone
	baseline    map[string]bool // guest MACs when Kata's Start was passed on
}

// NewAdapter returns the adapter for a Kata sandbox. hypervisor is the
// runtime configuration's HypervisorType; netnsPath the sandbox netns
// (VCSandbox.GetNetNs), where the adapter looks for Kata's own tc redirect;
// log may be nil.
func NewAdapter(sb KataSandbox, hypervisor vc.HypervisorType, netnsPath string, log *logrus.Entry) *Adapter {
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	return &Adapter{
		sb:    sb,
		caps:  capabilitiesFor(string(hypervisor)),
		log:   log,
		guard: newRescanGuard(),
		owned: func(name string) (bool, error) { return kataOwnsLink(netnsPath, name) },
		poll:  guardPoll,
	}
}

var _ hotplug.Sandbox = (*Adapter)(nil)

// Capabilities reports what the hypervisor can hot-plug.
func (a *Adapter) Capabilities() hotplug.Capabilities { return a.caps }

// AddInterface hot-plugs the link named inf.Name. While Kata's RescanNetwork
// may be attaching links it waits; afterwards it adopts (returns without a
// second hotplug) a NIC the guest already has by MAC.
func (a *Adapter) AddInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	n, err := normalizeInterface(inf)
	if err != nil {
		return nil, err
	}
	log := a.log.WithFields(logrus.Fields{"ifname": n.Name, "mac": n.HwAddr})
	afterRescan, release, err := a.guard.acquire(ctx, a.rescanDone)
	if err != nil {
		return nil, fmt.Errorf("attach %q (MAC %s): waiting for Kata's RescanNetwork: %w", n.Name, n.HwAddr, err)
	}
	defer release()

	before, listErr := a.listGuest(ctx)
	if afterRescan {
		if got, err := a.adoptRescanned(ctx, log, n, before, listErr); got != nil || err != nil {
			return got, err
		}
	}
	out, err := a.sb.AddInterface(ctx, toPBInterface(&n))
	if err != nil {
		err = a.wrapErr(err)
		if !errors.Is(err, hotplug.ErrSandboxDead) {
			a.mu.Lock()
			a.suspectWipe = true
			a.mu.Unlock()
			log.WithError(err).Error("AddInterface failed: " + diagnoseAddError(err))
		}
		return nil, fmt.Errorf("attach %q (MAC %s): %w", n.Name, n.HwAddr, err)
	}
	if listErr == nil {
		if after, err := a.listGuest(ctx); err == nil {
			if why := diagnoseAfterAdd(before, after, n.HwAddr); why != "" {
				log.Error("AddInterface returned, but " + why)
			}
		}
	}
	return fromPBInterface(out), nil
}

// adoptRescanned handles an attach shortly after Kata's RescanNetwork ran:
// it returns the guest's NIC if Kata plugged the link already, waits for it
// if Kata is plugging it now, and returns (nil, nil) to go on attaching.
func (a *Adapter) adoptRescanned(ctx context.Context, log *logrus.Entry, n hotplug.Interface, before []*hotplug.Interface, listErr error) (*hotplug.Interface, error) {
	if listErr == nil {
		if g := findMAC(before, n.HwAddr); g != nil {
			log.Info("Kata's RescanNetwork attached this link already; adopting it")
			return g, nil
		}
	}
	owned, err := a.owned(n.Name)
	if err != nil {
		log.WithError(err).Debug("cannot tell whether Kata is attaching this link; attaching")
		return nil, nil
	}
	if !owned {
		return nil, nil
	}
	log.Info("Kata's tc redirect is already on this link (RescanNetwork is attaching it); waiting for the guest")
	t := time.NewTicker(a.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("attach %q (MAC %s): Kata's RescanNetwork began attaching it but the guest never showed it "+
				"(its hotplug or agent call failed, or a failed hotplug left Kata's tap behind: %s): %w",
				n.Name, n.HwAddr, causeEndpointWipe, context.Cause(ctx))
		case <-t.C:
		}
		if infs, err := a.listGuest(ctx); err == nil {
			if g := findMAC(infs, n.HwAddr); g != nil {
				log.Info("Kata's RescanNetwork attached this link; adopting it")
				return g, nil
			}
		}
	}
}

// HoldForKataStart is called right before the sandbox container's Start goes
// to Kata. It stops the monitor's AddInterface and RemoveInterface calls,
// waits (until ctx ends) for those in flight, and reports whether Kata's
// RescanNetwork, which Start launches, will poll the netns: not when
// disable_new_netns is set, nor when Kata already has an endpoint, which the
// guest shows as a NIC (unless an attach failed inside Kata since: its
// endpoint list may have been wiped). When unsure it says yes.
func (a *Adapter) HoldForKataStart(ctx context.Context, disableNewNetNS bool) (rescans bool) {
	if err := a.guard.hold(ctx); err != nil {
		a.log.WithError(err).Warn("a monitor call into Kata is still running while Start goes on; Kata's RescanNetwork may race it")
	}
	if disableNewNetNS {
		return false
	}
	infs, err := a.listGuest(ctx)
	if err != nil {
		a.log.WithError(err).Debug("cannot list the guest's NICs before Start; assuming Kata's RescanNetwork will poll")
		return true
	}
	macs := guestMACs(infs)
	a.mu.Lock()
	a.baseline = macs
	wiped := a.suspectWipe
	a.mu.Unlock()
	return len(macs) == 0 || wiped
}

// KataStarted is called when Kata's Start returned, at started. With
// rescans, the monitor's mutating calls wait until RescanNetwork can no
// longer begin an attach (or has visibly finished); otherwise they go on
// now.
func (a *Adapter) KataStarted(started time.Time, rescans bool) {
	if rescans {
		a.log.WithField("window", a.guard.maxWait+a.guard.settle).Debug("Kata's RescanNetwork polls the netns: the monitor's attaches wait for it")
		a.guard.openAfterRescan(started)
		return
	}
	a.guard.open()
}

// rescanDone is the guard's early end of the RescanNetwork window: the guest
// shows a NIC that was not there when the window opened (only RescanNetwork
// can have added it, and it configures the guest after its hotplugs).
func (a *Adapter) rescanDone(ctx context.Context) bool {
	infs, err := a.listGuest(ctx)
	if err != nil {
		return false
	}
	a.mu.Lock()
	baseline := a.baseline
	a.mu.Unlock()
	for mac := range guestMACs(infs) {
		if !baseline[mac] {
			return true
		}
	}
	return false
}

// RemoveInterface unplugs the NIC with inf.HwAddr. Kata returns (nil, nil)
// whether or not it removed anything.
func (a *Adapter) RemoveInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	if inf == nil {
		return nil, fmt.Errorf("%w: nil interface", ErrInvalid)
	}
	// Kata compares endpoint.HardwareAddr() == inf.HwAddr as strings, and
	// its endpoints hold net.HardwareAddr.String(): lower case.
	mac, err := net.ParseMAC(inf.HwAddr)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%w: detach %q: MAC %q is not an EUI-48 address", ErrInvalid, inf.Name, inf.HwAddr)
	}
	_, release, err := a.guard.acquire(ctx, a.rescanDone)
	if err != nil {
		return nil, fmt.Errorf("detach %q (MAC %s): waiting for Kata's RescanNetwork: %w", inf.Name, inf.HwAddr, err)
	}
	defer release()
	pb := &pbTypes.Interface{Device: inf.Device, Name: inf.Name, HwAddr: mac.String(), Type: inf.Type, Mtu: inf.Mtu, RawFlags: inf.RawFlags}
	out, err := a.sb.RemoveInterface(ctx, pb)
	if err != nil {
		err = a.wrapErr(err)
		if !errors.Is(err, hotplug.ErrSandboxDead) {
			a.log.WithFields(logrus.Fields{"ifname": inf.Name, "mac": inf.HwAddr}).WithError(err).Error("RemoveInterface failed: " + diagnoseRemoveError(err))
		}
		return fromPBInterface(out), fmt.Errorf("detach %q (MAC %s): %w", inf.Name, inf.HwAddr, err)
	}
	return fromPBInterface(out), nil
}

// ListInterfaces returns the guest's interfaces, as the agent sees them.
func (a *Adapter) ListInterfaces(ctx context.Context) ([]*hotplug.Interface, error) {
	infs, err := a.listGuest(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the guest's interfaces: %w", err)
	}
	return infs, nil
}

func (a *Adapter) listGuest(ctx context.Context) ([]*hotplug.Interface, error) {
	pbs, err := a.sb.ListInterfaces(ctx)
	if err != nil {
		return nil, a.wrapErr(err)
	}
	out := make([]*hotplug.Interface, 0, len(pbs))
	for _, p := range pbs {
		if p != nil {
			out = append(out, fromPBInterface(p))
		}
	}
	return out, nil
}

// UpdateRoutes adds or replaces routes in the guest.
func (a *Adapter) UpdateRoutes(ctx context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error) {
	pbs := make([]*pbTypes.Route, 0, len(routes))
	for _, r := range routes {
		n, err := normalizeRoute(r)
		if err != nil {
			return nil, err
		}
		pbs = append(pbs, toPBRoute(&n))
	}
	out, err := a.sb.UpdateRoutes(ctx, pbs)
	if err != nil {
		err = a.wrapErr(err)
		if why := diagnoseRoutesError(err); why != "" {
			a.log.WithError(err).Error("UpdateRoutes failed: " + why)
		}
		return nil, fmt.Errorf("update %d routes: %w", len(pbs), err)
	}
	res := make([]*hotplug.Route, 0, len(out))
	for _, r := range out {
		if r != nil {
			res = append(res, fromPBRoute(r))
		}
	}
	return res, nil
}

// wrapErr marks Kata's errors that mean the sandbox is gone.
func (a *Adapter) wrapErr(err error) error {
	if deadError(err) && !errors.Is(err, hotplug.ErrSandboxDead) {
		return fmt.Errorf("%w: %w", hotplug.ErrSandboxDead, err)
	}
	return err
}

// SuspectEndpointWipe reports that an attach failed inside Kata since the
// adapter was made: Kata 4.1 may then have forgotten its endpoint list.
func (a *Adapter) SuspectEndpointWipe() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.suspectWipe
}

// Field copies between hotplug's types and Kata's. pbTypes are protobuf
// messages: never copy them by value.

func toPBInterface(in *hotplug.Interface) *pbTypes.Interface {
	out := &pbTypes.Interface{
		Device:     in.Device,
		Name:       in.Name,
		Mtu:        in.Mtu,
		HwAddr:     in.HwAddr,
		DevicePath: in.DevicePath,
		Type:       in.Type,
		RawFlags:   in.RawFlags,
	}
	for _, a := range in.IPAddresses {
		if a != nil {
			out.IPAddresses = append(out.IPAddresses, &pbTypes.IPAddress{Family: pbTypes.IPFamily(a.Family), Address: a.Address, Mask: a.Mask})
		}
	}
	return out
}

func fromPBInterface(in *pbTypes.Interface) *hotplug.Interface {
	if in == nil {
		return nil
	}
	out := &hotplug.Interface{
		Device:     in.Device,
		Name:       in.Name,
		Mtu:        in.Mtu,
		HwAddr:     in.HwAddr,
		DevicePath: in.DevicePath,
		Type:       in.Type,
		RawFlags:   in.RawFlags,
	}
	for _, a := range in.IPAddresses {
		if a != nil {
			out.IPAddresses = append(out.IPAddresses, &hotplug.IPAddress{Family: hotplug.IPFamily(a.Family), Address: a.Address, Mask: a.Mask})
		}
	}
	return out
}

func toPBRoute(in *hotplug.Route) *pbTypes.Route {
	return &pbTypes.Route{
		Dest:    in.Dest,
		Gateway: in.Gateway,
		Device:  in.Device,
		Source:  in.Source,
		Scope:   in.Scope,
		Family:  pbTypes.IPFamily(in.Family),
		Flags:   in.Flags,
		Mtu:     in.Mtu,
	}
}

func fromPBRoute(in *pbTypes.Route) *hotplug.Route {
	return &hotplug.Route{
		Dest:    in.Dest,
		Gateway: in.Gateway,
		Device:  in.Device,
		Source:  in.Source,
		Scope:   in.Scope,
		Family:  hotplug.IPFamily(in.Family),
		Flags:   in.Flags,
		Mtu:     in.Mtu,
	}
}
