// Package guestproto is the wire format between the e2e test host and the
// test agent inside the QEMU guest: one JSON object per line over a serial
// port (/dev/ttyS1 in the guest, a unix socket on the host).
//
// The host sends a Request with a non-zero ID; the agent answers with a
// Response whose Re is that ID. Lines that are neither (an echo before the
// agent set the port raw, a half line left in the UART) are ignored by both
// sides.
package guestproto

// Interface, IPAddress and Route have the fields of Kata's pbTypes (and of
// the hotplug package's mirrors of them, which this package does not import
// so that the agent builds on its own). The commands that take or return
// them behave as Kata 4.1's agent does, quirks included
// (docs/kata-model.md). Link and KernelRoute are not Kata's: they are the
// guest's state as the kernel has it, for tests to check what the Kata
// calls did.

// IPFamily: v4 is 0, v6 is 1.
type IPFamily int32

const (
	FamilyV4 IPFamily = 0
	FamilyV6 IPFamily = 1
)

// IPAddress is an address; Mask is the prefix length ("24").
type IPAddress struct {
	Family  IPFamily `json:"family"`
	Address string   `json:"address"`
	Mask    string   `json:"mask"`
}

// Interface is a guest NIC as Kata's agent takes and lists it. The agent
// finds it by HwAddr. In list_interfaces replies HwAddr is uppercase,
// Family is inverted and Device, DevicePath, Type and RawFlags are unset
// (Kata's list_interfaces).
type Interface struct {
	Device      string       `json:"device,omitempty"`
	Name        string       `json:"name"`
	IPAddresses []*IPAddress `json:"ip_addresses,omitempty"`
	Mtu         uint64       `json:"mtu"`
	HwAddr      string       `json:"hw_addr"`
	DevicePath  string       `json:"device_path,omitempty"`
	Type        string       `json:"type,omitempty"`
	RawFlags    uint32       `json:"raw_flags,omitempty"`
}

// Route is a route as Kata's agent takes and lists it; Dest "" is the
// default route, otherwise a CIDR. Device is a link name. In list_routes
// replies Dest is "0.0.0.0" (IPv4) or "::1" (IPv6) for every route with a
// gateway, Source is RTA_SRC as "ip/len", and Family and Flags are unset
// (Kata's list_routes).
type Route struct {
	Dest    string   `json:"dest,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	Device  string   `json:"device"`
	Source  string   `json:"source,omitempty"`
	Scope   uint32   `json:"scope,omitempty"`
	Family  IPFamily `json:"family"`
	Flags   uint32   `json:"flags,omitempty"`
	Mtu     uint32   `json:"mtu,omitempty"`
}

// Commands.
const (
	// CmdPing answers at once: the host uses it to wait for the agent.
	CmdPing = "ping"
	// CmdUpdateInterface is Kata's update_interface: with a DevicePath it
	// waits up to TimeoutMS (Kata's agent.hotplug_timeout) for a net
	// device under that PCI path and gives it HwAddr; then it configures
	// the first link with HwAddr (or, agent 4.1, the link named Name after
	// giving it HwAddr): down, addresses added, renamed (a link holding
	// the name swapped through "<name>_temp"), MTU, ARP, up. It answers
	// with the request.
	CmdUpdateInterface = "update_interface"
	// CmdListInterfaces is Kata's list_interfaces: every link, uppercase
	// MACs, address families inverted.
	CmdListInterfaces = "list_interfaces"
	// CmdUpdateRoutes is Kata's update_routes: routes without a gateway
	// first, then the others, each added with NLM_F_REPLACE (main table,
	// proto boot, the request's scope and flags as the kernel takes them,
	// Source as RTA_SRC unless it is "ip/0"); it never deletes one. The
	// first failure (a Device the guest lacks, a kernel refusal) ends the
	// call; routes before it stay. It answers with list_routes.
	CmdUpdateRoutes = "update_routes"
	// CmdListRoutes is Kata's list_routes (main table, lossy).
	CmdListRoutes = "list_routes"
	// CmdInspectLinks returns every link as the kernel has it (Links).
	// Not Kata's: for tests.
	CmdInspectLinks = "inspect_links"
	// CmdInspectRoutes returns every route of every table as the kernel
	// has it (KernelRoutes). Not Kata's: for tests.
	CmdInspectRoutes = "inspect_routes"
	// CmdServeToken listens on TCP Port (all addresses) and answers every
	// connection with Token and a newline, then closes it. A second call on
	// the same port replaces the token.
	CmdServeToken = "serve_token"
)

// Request is one command from the host.
type Request struct {
	ID        uint64     `json:"id"`
	Cmd       string     `json:"cmd"`
	Interface *Interface `json:"interface,omitempty"`
	// Routes is null for no list and [] for an empty one: Kata tells
	// them apart (an absent list is "empty update routes request").
	Routes []*Route `json:"routes"`
	// TimeoutMS bounds how long update_interface waits for a net device
	// at DevicePath (Kata's agent.hotplug_timeout; 0: 3 s).
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
	Port      int    `json:"port,omitempty"`
	Token     string `json:"token,omitempty"`
}

// Response answers the Request whose ID is Re. Error is empty on success.
type Response struct {
	Re         uint64       `json:"re"`
	Error      string       `json:"error,omitempty"`
	Interface  *Interface   `json:"interface,omitempty"`
	Interfaces []*Interface `json:"interfaces,omitempty"`
	Routes     []*Route     `json:"routes,omitempty"`
	// NICWaitUS is how long update_interface waited for a net device at
	// DevicePath, in microseconds (the guest's side of the hot-plug
	// latency).
	NICWaitUS int64 `json:"nic_wait_us,omitempty"`
	// Notes are what Kata's agent would log at info or warn level during
	// update_interface (the MAC reconciliation at DevicePath).
	Notes        []string       `json:"notes,omitempty"`
	Links        []*Link        `json:"links,omitempty"`
	KernelRoutes []*KernelRoute `json:"kernel_routes,omitempty"`
}

// Link is a guest link as the kernel has it.
type Link struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	MAC   string `json:"mac"` // lowercase, "" without one
	Kind  string `json:"kind,omitempty"`
	Flags uint32 `json:"flags"` // ifi_flags (IFF_UP is 0x1)
	MTU   int    `json:"mtu"`
	// PCI is the sysfs path of the link's PCI device
	// ("/devices/pci0000:00/0000:00:03.0/0000:01:00.0/virtio2"), "" for
	// a link without one: it tells NICs apart whatever their names and
	// MACs.
	PCI   string  `json:"pci,omitempty"`
	Addrs []*Addr `json:"addrs,omitempty"`
}

// Up reports IFF_UP.
func (l *Link) Up() bool { return l.Flags&1 != 0 }

// Addr is an address of a Link.
type Addr struct {
	Family    IPFamily `json:"family"` // not inverted
	Address   string   `json:"address"`
	PrefixLen int      `json:"prefix_len"`
}

// KernelRoute is a route as the kernel has it.
type KernelRoute struct {
	Family   IPFamily `json:"family"`
	Table    uint32   `json:"table"`
	Dst      string   `json:"dst"` // "0.0.0.0/0" or "::/0" for a default route
	Gateway  string   `json:"gateway,omitempty"`
	Device   string   `json:"device,omitempty"`
	Src      string   `json:"src,omitempty"`     // RTA_SRC, "ip/len": a source-specific route
	PrefSrc  string   `json:"prefsrc,omitempty"` // RTA_PREFSRC
	Protocol uint8    `json:"protocol"`          // RTPROT_*
	Scope    uint8    `json:"scope"`
	Type     uint8    `json:"type"`
	Flags    uint32   `json:"flags,omitempty"` // rtm_flags
	MTU      uint32   `json:"mtu,omitempty"`
	Priority uint32   `json:"priority,omitempty"`
}

// Default reports whether r is a default route.
func (r *KernelRoute) Default() bool { return r.Dst == "0.0.0.0/0" || r.Dst == "::/0" }
