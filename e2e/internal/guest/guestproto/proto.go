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
// so that the agent builds on its own).

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

// Interface is a guest NIC. The agent finds it by HwAddr. In replies Type
// is the netlink kind and RawFlags the link flags.
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

// Route is a route; Dest "" is the default route, otherwise a CIDR.
// Device is a link name.
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
	// CmdUpdateInterface finds the NIC by Interface.HwAddr (waiting up to
	// TimeoutMS for it to appear), renames it to Interface.Name, sets MTU
	// and ARP, adds the addresses and brings it up, as Kata's agent does.
	CmdUpdateInterface = "update_interface"
	// CmdListInterfaces lists every link with its addresses.
	CmdListInterfaces = "list_interfaces"
	// CmdUpdateRoutes adds or replaces each route (main table, proto boot),
	// routes without a gateway first; it never deletes one. The first route
	// whose Device the guest lacks fails the call (routes before it stay).
	CmdUpdateRoutes = "update_routes"
	// CmdListRoutes lists the main table.
	CmdListRoutes = "list_routes"
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
	Routes    []*Route   `json:"routes,omitempty"`
	// TimeoutMS bounds how long update_interface waits for the NIC.
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
	// NICWaitUS is how long update_interface waited for the NIC to
	// appear, in microseconds (the guest's side of the hot-plug latency).
	NICWaitUS int64 `json:"nic_wait_us,omitempty"`
}
