package hotplugtest

// Event is one change of a FakeSandbox's in-memory guest, in the JSON form
// the watch command prints with --json (so a test can read the watch
// command's output into the same type and check both alike).
type Event struct {
	Op        string       `json:"op"` // "attach", "detach" or "routes"
	Name      string       `json:"name,omitempty"`
	MAC       string       `json:"mac,omitempty"` // lower case
	MTU       uint64       `json:"mtu,omitempty"`
	Addresses []string     `json:"addresses,omitempty"` // CIDR strings
	Routes    []EventRoute `json:"routes,omitempty"`
}

// EventRoute is one route of a "routes" event.
type EventRoute struct {
	Dest    string `json:"dest"` // CIDR, or "default"
	Gateway string `json:"gateway,omitempty"`
	Device  string `json:"device"`
}
