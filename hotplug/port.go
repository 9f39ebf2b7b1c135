package hotplug

import (
	"context"
	"errors"
)

// IPFamily mirrors Kata's pbTypes.IPFamily: v4 is 0, v6 is 1.
type IPFamily int32

const (
	FamilyV4 IPFamily = 0
	FamilyV6 IPFamily = 1
)

// IPAddress mirrors pbTypes.IPAddress. Mask is the prefix length as a decimal
// string ("24"): Kata parses "%s/%s".
type IPAddress struct {
	Family  IPFamily
	Address string
	Mask    string
}

// Interface mirrors pbTypes.Interface. Type must be the netlink kind ("veth",
// "macvlan"): Kata refuses anything else as "Unsupported network interface".
// Kata looks the link up by Name in the sandbox netns.
type Interface struct {
	Device      string
	Name        string
	IPAddresses []*IPAddress
	Mtu         uint64
	HwAddr      string
	DevicePath  string
	Type        string
	RawFlags    uint32
}

// Clone returns a deep copy of inf (nil for nil), so a sandbox can keep what
// it was given without sharing the caller's address list.
func (inf *Interface) Clone() *Interface {
	if inf == nil {
		return nil
	}
	c := *inf
	c.IPAddresses = nil
	for _, a := range inf.IPAddresses {
		if a != nil {
			ac := *a
			c.IPAddresses = append(c.IPAddresses, &ac)
		}
	}
	return &c
}

// Route mirrors pbTypes.Route (plus Metric, which Kata's type lacks). A
// default route has Dest == "" (the agent does not parse "default");
// otherwise Dest is a CIDR. Device is a link name in the guest. Source is a
// source prefix ("2001:db8::/64"): the agent installs it as RTA_SRC, not as
// a preferred source.
type Route struct {
	Dest    string
	Gateway string
	Device  string
	Source  string
	Scope   uint32
	Family  IPFamily
	Flags   uint32
	Mtu     uint32
	// Metric is the route's metric in the netns. Kata's pbTypes.Route has
	// no such field: adapters drop it, and the agent installs the route
	// with the kernel's default metric. It is here for logs and the watch
	// output.
	Metric uint32
}

// Capabilities says what the sandbox can do with NICs at run time, and which
// of its hazards the reconciler must steer around. The zero value of each
// hazard field means the sandbox does not have it.
type Capabilities struct {
	// HotplugNIC and HotUnplugNIC: in Kata 4.1's Go runtime, QEMU both;
	// Cloud Hypervisor plugs but cannot unplug; Firecracker, StratoVirt and
	// remote neither.
	HotplugNIC   bool
	HotUnplugNIC bool

	// DetachByName: RemoveInterface also tears down whatever link holds the
	// endpoint's attach-time name in the netns: it sets that link DOWN (and,
	// with Kata's macvtap model, writes the old MAC and addresses onto it).
	// A link that reuses the name, or the endpoint itself after its MAC
	// changed, would be switched off; the reconciler does not detach while a
	// link holds the name. (Kata 4.1 as shipped: removeTCFiltering and
	// untapNetworkPair look the veth up by name.)
	DetachByName bool
	// ReMACsLink: AddInterface gives the link a new MAC and removes its
	// addresses, while the guest NIC keeps the MAC the link had. (Kata's
	// macvtap internetworking model: tapNetworkPair.)
	ReMACsLink bool
}

// Sandbox is the part of Kata's VCSandbox the monitor uses, plus the
// hypervisor's NIC capabilities. Implementations: the Kata adapter (its own
// module), the QEMU-backed test sandbox (e2e), the recording sandbox of the
// watch command, and fakes in tests.
type Sandbox interface {
	// AddInterface hot-plugs the link named inf.Name in the sandbox netns
	// and configures it in the guest.
	AddInterface(ctx context.Context, inf *Interface) (*Interface, error)
	// RemoveInterface unplugs the NIC whose MAC is inf.HwAddr. Kata returns
	// (nil, nil) whether or not it removed anything.
	RemoveInterface(ctx context.Context, inf *Interface) (*Interface, error)
	// ListInterfaces returns the guest's interfaces, as the agent sees them.
	ListInterfaces(ctx context.Context) ([]*Interface, error)
	// UpdateRoutes adds or replaces routes in the guest; it never deletes
	// one. A route naming a device the guest lacks fails the whole call.
	UpdateRoutes(ctx context.Context, routes []*Route) ([]*Route, error)
	// Capabilities reports what the hypervisor can hot-plug.
	Capabilities() Capabilities
}

// ErrNoHotplug is returned when the sandbox's hypervisor cannot hot-plug NICs:
// the monitor does not start.
var ErrNoHotplug = errors.New("hypervisor cannot hot-plug network interfaces")

// ErrSandboxDead is what a sandbox wraps in the error of a call when its VM or
// agent is gone for good (Kata: "Dead agent", "ttrpc: closed"): the
// reconciler makes no further call. Adapters recognise their runtime's
// errors; the reconciler only tests errors.Is.
var ErrSandboxDead = errors.New("sandbox is dead")

// ErrRefused is what a sandbox wraps in the error of a call it refused
// without doing anything, because doing it would break the guest (OneNIC:
// a second NIC on a runtime that would misconfigure it). Retrying does not
// help until the sandbox changes; the reconciler reports it once per link.
var ErrRefused = errors.New("sandbox refused the request")
