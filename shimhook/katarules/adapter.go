package katarules

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// Kata is the part of Kata's virtcontainers.VCSandbox the adapter calls, in
// hotplug's types: shimhook/kata copies the fields to and from Kata's
// protocol types and nothing else.
type Kata interface {
	AddInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error)
	RemoveInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error)
	ListInterfaces(ctx context.Context) ([]*hotplug.Interface, error)
	UpdateRoutes(ctx context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error)
	// RescanNetwork is Sandbox.RescanNetwork (Kata 3.29.0 and later,
	// sandbox.go:341): when Kata has no endpoint, it polls the netns for up
	// to 5 s, attaches every link with an address it finds there and
	// announces each NIC with its own PCI path.
	RescanNetwork(ctx context.Context) error
}

// NewSandbox returns the hotplug.Sandbox for a Kata sandbox: the adapter,
// and on a Kata without the PCI-path fix the adapter wrapped in
// hotplug.OneNIC, so that no AddInterface reaches Kata while the guest has
// a NIC. With the tcfilter model the first attach is Kata's own
// RescanNetwork, which attaches every network present (at start: all of
// Docker's) and announces each NIC correctly. With macvtap it is a plain
// AddInterface, and the other networks are refused: RescanNetwork would
// give links the monitor has not attached yet a new MAC and take their
// addresses (tapNetworkPair), and the monitor could then neither recognise
// their NICs nor detach them. log may be nil.
func NewSandbox(k Kata, cfg Config, log *logrus.Entry) hotplug.Sandbox {
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	a := &adapter{k: k, caps: Capabilities(cfg), log: log}
	switch {
	case cfg.Fixes.PCIPath:
		return a
	case a.caps.ReMACsLink:
		return hotplug.OneNIC(a, OneNICReason())
	default:
		return hotplug.OneNIC(rescanner{a}, OneNICReason())
	}
}

// adapter makes Kata's sandbox a hotplug.Sandbox: it checks and encodes
// requests the way Kata and its agent read them (wire.go), refuses what Kata
// would misread, puts right what the agent reports wrong, and marks Kata's
// errors for a gone sandbox with hotplug.ErrSandboxDead. It keeps no state:
// safe for concurrent use if k is.
type adapter struct {
	k    Kata
	caps hotplug.Capabilities
	log  *logrus.Entry
}

var _ hotplug.Sandbox = (*adapter)(nil)

// rescanner is the adapter with Kata's RescanNetwork, for hotplug.OneNIC
// only: with the PCI-path fix the monitor attaches every NIC itself, and
// with macvtap RescanNetwork would re-MAC links behind the monitor's back.
type rescanner struct{ *adapter }

var _ hotplug.Rescanner = rescanner{}

// RescanNetwork runs Kata's Sandbox.RescanNetwork.
func (r rescanner) RescanNetwork(ctx context.Context) error {
	if err := r.k.RescanNetwork(ctx); err != nil {
		return fmt.Errorf("Kata's RescanNetwork: %w", markDead(err))
	}
	return nil
}

// Capabilities reports what the hypervisor can hot-plug and which of Kata's
// hazards the reconciler must steer around.
func (a *adapter) Capabilities() hotplug.Capabilities { return a.caps }

// AddInterface hot-plugs the link named inf.Name. A request Kata would not
// attach as that link, or would misread, is refused (hotplug.ErrRefused and
// ErrInvalid) without calling Kata.
func (a *adapter) AddInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	n, err := normalizeInterface(inf)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", hotplug.ErrRefused, err)
	}
	out, err := a.k.AddInterface(ctx, &n)
	if err != nil {
		err = markDead(err)
		if !errors.Is(err, hotplug.ErrSandboxDead) {
			a.log.WithFields(logrus.Fields{"ifname": n.Name, "mac": n.HwAddr}).WithError(err).Error("Kata's AddInterface failed" + hint(err))
		}
		return nil, fmt.Errorf("attach %q (MAC %s): %w", n.Name, n.HwAddr, err)
	}
	return out, nil
}

// RemoveInterface unplugs the NIC whose MAC is inf.HwAddr. Kata compares
// the MAC as a string with its endpoints' (net.HardwareAddr.String(): lower
// case; sandbox.go:1293), so it is sent in that form. Kata returns (nil,
// nil) whether or not it removed anything.
func (a *adapter) RemoveInterface(ctx context.Context, inf *hotplug.Interface) (*hotplug.Interface, error) {
	if inf == nil {
		return nil, fmt.Errorf("%w: nil interface", ErrInvalid)
	}
	mac, err := net.ParseMAC(inf.HwAddr)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%w: detach %q: MAC %q is not an EUI-48 address", ErrInvalid, inf.Name, inf.HwAddr)
	}
	req := inf.Clone()
	req.HwAddr = mac.String()
	out, err := a.k.RemoveInterface(ctx, req)
	if err != nil {
		err = markDead(err)
		if !errors.Is(err, hotplug.ErrSandboxDead) {
			a.log.WithFields(logrus.Fields{"ifname": inf.Name, "mac": req.HwAddr}).WithError(err).Error("Kata's RemoveInterface failed")
		}
		return out, fmt.Errorf("detach %q (MAC %s): %w", inf.Name, req.HwAddr, err)
	}
	return out, nil
}

// ListInterfaces returns the guest's interfaces as the agent sees them,
// with lower-case MACs and each address's family read from the address
// (fromGuest).
func (a *adapter) ListInterfaces(ctx context.Context) ([]*hotplug.Interface, error) {
	infs, err := a.k.ListInterfaces(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the guest's interfaces: %w", markDead(err))
	}
	return fromGuest(infs), nil
}

// UpdateRoutes adds or replaces routes in the guest.
func (a *adapter) UpdateRoutes(ctx context.Context, routes []*hotplug.Route) ([]*hotplug.Route, error) {
	req := make([]*hotplug.Route, 0, len(routes))
	for _, r := range routes {
		n, err := normalizeRoute(r)
		if err != nil {
			return nil, err
		}
		req = append(req, &n)
	}
	out, err := a.k.UpdateRoutes(ctx, req)
	if err != nil {
		err = markDead(err)
		if !errors.Is(err, hotplug.ErrSandboxDead) {
			a.log.WithError(err).Error("Kata's UpdateRoutes failed" + hint(err))
		}
		return nil, fmt.Errorf("update %d routes: %w", len(req), err)
	}
	return out, nil
}
