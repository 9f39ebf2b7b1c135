// Kata in the loop for kata-netmon: this file belongs to kata-netmon
// (shimhook/kata/kataloop), not to Kata. shimhook/kata/build.sh copies it
// into the virtcontainers directory of a patched copy of Kata's runtime and
// runs it there with -tags kata_netmon; it is never part of a Kata tree.

//go:build kata_netmon

package virtcontainers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kata-containers/kata-containers/src/runtime/pkg/device/config"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/device/manager"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/uuid"
	"github.com/kata-containers/kata-containers/src/runtime/virtcontainers/persist"
	pbTypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols"
	vctypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/types"
	"github.com/kata-containers/kata-containers/src/runtime/virtcontainers/utils"
)

// NetmonLoop is Kata's real *Sandbox, with its real LinuxNetwork in a
// netns the test made (taps, tc redirect or macvtap done for real by
// network_linux.go), whose hypervisor is Kata's mockHypervisor handing out
// a PCI path per NIC and plugging the NIC into Guest, and whose agent
// applies the guest agent's update_interface and update_routes rules to
// Guest. Nothing else of Kata is replaced.
type NetmonLoop struct {
	Sandbox *Sandbox
	Guest   *NetmonGuest
	HV      *NetmonHypervisor
}

// NetmonLoopOptions configure a NetmonLoop.
type NetmonLoopOptions struct {
	// NetNSPath is the sandbox's netns, created by Kata as far as Kata
	// knows (NetworkCreated, as for a Docker 28+ sandbox).
	NetNSPath string
	// MacVtap selects internetworking_model "macvtap" (else "tcfilter").
	MacVtap bool
	// NetNSGiven: Kata did not create the netns (NetworkCreated false, as
	// when the OCI spec names it: dockerd creating it, moby#52488).
	NetNSGiven bool
}

// NewNetmonLoop builds the sandbox. There is no /dev/vhost-net here:
// disable_vhost_net is set, as a configuration would.
func NewNetmonLoop(t testing.TB, o NetmonLoopOptions) *NetmonLoop {
	t.Helper()
	store, err := persist.GetDriver()
	if err != nil {
		t.Fatalf("persist driver: %v", err)
	}
	model := NetXConnectTCFilterModel
	if o.MacVtap {
		model = NetXConnectMacVtapModel
	}
	g := newNetmonGuest()
	hv := &NetmonHypervisor{mockHypervisor: mockHypervisor{config: HypervisorConfig{DisableVhostNet: true}}, guest: g, slots: map[int]string{}}
	id := uuid.Generate().String()
	s := &Sandbox{
		id:         id,
		ctx:        context.Background(),
		hypervisor: hv,
		agent:      &netmonAgent{guest: g},
		network: &LinuxNetwork{
			netNSPath:         o.NetNSPath,
			eps:               []Endpoint{},
			interworkingModel: model,
			netNSCreated:      !o.NetNSGiven,
		},
		config:     &SandboxConfig{ID: id, HypervisorConfig: HypervisorConfig{DisableVhostNet: true}},
		devManager: manager.NewDeviceManager(config.VirtioSCSI, false, "", 0, nil),
		containers: map[string]*Container{},
		state:      vctypes.SandboxState{BlockIndexMap: make(map[int]struct{})},
		store:      store,
	}
	t.Cleanup(func() {
		// The shim holds the taps' queues (qemu.hotAddNetDevice never
		// closes them); the test must let the netns go.
		for _, ep := range s.network.Endpoints() {
			if pair := ep.NetworkPair(); pair != nil {
				utils.CleanupFds(pair.VMFds, len(pair.VMFds))
			}
		}
		store.Destroy(id)
	})
	return &NetmonLoop{Sandbox: s, Guest: g, HV: hv}
}

// NetmonEndpoint is one of Kata's endpoints, for assertions.
type NetmonEndpoint struct {
	Name    string // the link's name at attach
	MAC     string // HardwareAddr(): what RemoveInterface compares
	Tap     string // tap<N>_kata
	PCIPath string
}

// NetmonEndpoints lists Kata's endpoints. Not safe while a sandbox call
// runs: Kata does not lock its endpoint list.
func NetmonEndpoints(s *Sandbox) []NetmonEndpoint {
	var out []NetmonEndpoint
	for _, ep := range s.network.Endpoints() {
		e := NetmonEndpoint{Name: ep.Name(), MAC: ep.HardwareAddr(), PCIPath: ep.PciPath().String()}
		if pair := ep.NetworkPair(); pair != nil {
			e.Tap = pair.TAPIface.Name
		}
		out = append(out, e)
	}
	return out
}

// NetmonHypervisor is Kata's mockHypervisor, which hot-plugs NICs: each gets
// the PCI path of the lowest free slot of one bridge (02/01, 02/02, ...; a
// freed slot is reused, as qemu's bridge does) and appears in the guest.
// BeforeUnplug, when set, runs before a NIC is removed (a test holds a
// detach with it).
type NetmonHypervisor struct {
	mockHypervisor
	guest *NetmonGuest

	mu           sync.Mutex
	slots        map[int]string // slot -> MAC
	BeforeUnplug func(mac string)
	plugs        []string // "+mac path" / "-mac path", in order
}

func (h *NetmonHypervisor) HotplugAddDevice(ctx context.Context, devInfo interface{}, devType DeviceType) (interface{}, error) {
	if devType != NetDev {
		return h.mockHypervisor.HotplugAddDevice(ctx, devInfo, devType)
	}
	ep := devInfo.(Endpoint)
	h.mu.Lock()
	slot := 1
	for h.slots[slot] != "" {
		slot++
	}
	h.slots[slot] = ep.HardwareAddr()
	path := fmt.Sprintf("02/%02x", slot)
	h.plugs = append(h.plugs, "+"+ep.HardwareAddr()+" "+path)
	h.mu.Unlock()
	p, err := vctypes.PciPathFromString(path)
	if err != nil {
		return nil, err
	}
	ep.SetPciPath(p)
	h.guest.plug(ep.HardwareAddr(), path)
	return nil, nil
}

func (h *NetmonHypervisor) HotplugRemoveDevice(ctx context.Context, devInfo interface{}, devType DeviceType) (interface{}, error) {
	if devType != NetDev {
		return h.mockHypervisor.HotplugRemoveDevice(ctx, devInfo, devType)
	}
	ep := devInfo.(Endpoint)
	h.mu.Lock()
	before := h.BeforeUnplug
	h.mu.Unlock()
	if before != nil {
		before(ep.HardwareAddr())
	}
	path := ep.PciPath().String()
	h.mu.Lock()
	for slot := range h.slots {
		if fmt.Sprintf("02/%02x", slot) == path {
			delete(h.slots, slot)
		}
	}
	h.plugs = append(h.plugs, "-"+ep.HardwareAddr()+" "+path)
	h.mu.Unlock()
	h.guest.unplug(path)
	return nil, nil
}

// SetBeforeUnplug sets BeforeUnplug (nil to clear).
func (h *NetmonHypervisor) SetBeforeUnplug(f func(mac string)) {
	h.mu.Lock()
	h.BeforeUnplug = f
	h.mu.Unlock()
}

// Plugs returns the hot plugs ("+mac path") and unplugs ("-mac path") in
// order.
func (h *NetmonHypervisor) Plugs() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.plugs)
}

// NetmonNIC is a NIC of the guest.
type NetmonNIC struct {
	Index   int
	Name    string
	MAC     string // lower case
	PCIPath string
	Up      bool
	MTU     uint64
	Addrs   []string // "ip/len"
	// Configured: update_interface configured it once; from then on it is
	// an existing NIC, which must never be re-MACed or renamed.
	Configured bool
}

// NetmonGuest is the guest's network as the agent (>= 3.32, 4.1) leaves it.
type NetmonGuest struct {
	mu         sync.Mutex
	nics       []*NetmonNIC
	routes     []*pbTypes.Route
	next       int
	violations []string
	log        []string
	changed    chan struct{}
}

func newNetmonGuest() *NetmonGuest { return &NetmonGuest{next: 2, changed: make(chan struct{})} }

// changedLocked wakes the waiters.
func (g *NetmonGuest) changedLocked(what string) {
	g.log = append(g.log, what)
	close(g.changed)
	g.changed = make(chan struct{})
}

// Changed is closed at the guest's next change.
func (g *NetmonGuest) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// NICs returns a copy of the guest's NICs in ifindex order.
func (g *NetmonGuest) NICs() []NetmonNIC {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []NetmonNIC
	for _, n := range g.nics {
		c := *n
		c.Addrs = slices.Clone(n.Addrs)
		out = append(out, c)
	}
	return out
}

// Routes returns a copy of the guest's main table (what the agent added).
func (g *NetmonGuest) Routes() []*pbTypes.Route {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*pbTypes.Route
	for _, r := range g.routes {
		out = append(out, &pbTypes.Route{Dest: r.Dest, Gateway: r.Gateway, Device: r.Device, Family: r.Family})
	}
	return out
}

// Violations are the re-MACs and renames of existing NICs seen so far.
func (g *NetmonGuest) Violations() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.violations)
}

// Log is what happened to the guest, in order.
func (g *NetmonGuest) Log() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.log)
}

// plug adds a NIC as the guest kernel probes it: the next ifindex, the
// lowest free ethN (net.ifnames=0), down, no address.
func (g *NetmonGuest) plug(mac, path string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	name := ""
	for i := 0; name == ""; i++ {
		if g.byNameLocked(fmt.Sprintf("eth%d", i)) == nil {
			name = fmt.Sprintf("eth%d", i)
		}
	}
	n := &NetmonNIC{Index: g.next, Name: name, MAC: strings.ToLower(mac), PCIPath: path, MTU: 1500}
	g.next++
	g.nics = append(g.nics, n)
	g.changedLocked(fmt.Sprintf("plug %s %s as %s", mac, path, name))
}

// unplug removes the NIC at path; its routes go with it.
func (g *NetmonGuest) unplug(path string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, n := range g.nics {
		if n.PCIPath == path {
			g.nics = append(g.nics[:i], g.nics[i+1:]...)
			g.dropRoutesLocked(n.Name)
			g.changedLocked(fmt.Sprintf("unplug %s %s (%s)", n.MAC, path, n.Name))
			return
		}
	}
	g.changedLocked("unplug of " + path + ": no such NIC")
}

func (g *NetmonGuest) byNameLocked(name string) *NetmonNIC {
	for _, n := range g.nics {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// byMACLocked is the agent's try_find_link by address: the first link in
// dump order, i.e. the lowest ifindex (R55, R61).
func (g *NetmonGuest) byMACLocked(mac string) *NetmonNIC {
	for _, n := range g.nics {
		if strings.EqualFold(n.MAC, mac) {
			return n
		}
	}
	return nil
}

func (g *NetmonGuest) dropRoutesLocked(dev string) {
	g.routes = slices.DeleteFunc(g.routes, func(r *pbTypes.Route) bool { return r.Device == dev })
}

// setMACLocked is set_link_mac_by_name (R54): a link that is up is set
// down and up again around the change, which flushes its routes (R74).
func (g *NetmonGuest) setMACLocked(n *NetmonNIC, mac, why string) {
	if strings.EqualFold(n.MAC, mac) {
		return
	}
	if n.Configured {
		g.violations = append(g.violations, fmt.Sprintf("%s: existing NIC %s (%s) re-MACed to %s", why, n.Name, n.MAC, mac))
	}
	if n.Up {
		g.dropRoutesLocked(n.Name)
	}
	n.MAC = strings.ToLower(mac)
}

func (g *NetmonGuest) renameLocked(n *NetmonNIC, name, why string) {
	if n.Name == name {
		return
	}
	if n.Configured {
		g.violations = append(g.violations, fmt.Sprintf("%s: existing NIC %s (%s) renamed to %s", why, n.Name, n.MAC, name))
	}
	g.dropRoutesLocked(n.Name)
	n.Name = name
}

// updateInterface is the agent's update_interface (rpc.rs 1212-1300,
// netlink.rs 110-248, agent 4.1): the PCI path wait, the re-MAC of the
// netdev at that path (since 3.32.0), the by-MAC lookup with 4.1's by-name
// fallback, then the configuration of the link found: down, addresses
// added (never removed), renamed (swapping with a link holding the name),
// MTU, up.
func (g *NetmonGuest) updateInterface(inf *pbTypes.Interface) (*pbTypes.Interface, error) {
	if inf == nil {
		return nil, errors.New("empty update interface request")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	defer g.changedLocked("update_interface " + inf.Name + " " + inf.HwAddr + " path " + inf.DevicePath)
	why := fmt.Sprintf("update_interface(%s, %s, path %q)", inf.Name, inf.HwAddr, inf.DevicePath)
	if inf.DevicePath != "" {
		var at *NetmonNIC
		for _, n := range g.nics {
			if n.PCIPath == inf.DevicePath {
				at = n
			}
		}
		if at == nil {
			return nil, fmt.Errorf("interface not available: Timeout after 3s waiting for uevent for PCI path %s", inf.DevicePath)
		}
		if inf.HwAddr != "" {
			g.setMACLocked(at, inf.HwAddr, why)
		}
	}
	n := g.byMACLocked(inf.HwAddr)
	if n == nil {
		// Agent 4.1: re-MAC the link named like the request.
		named := g.byNameLocked(inf.Name)
		if named == nil {
			return nil, fmt.Errorf("Link not found (Name: %s)", inf.Name)
		}
		g.setMACLocked(named, inf.HwAddr, why)
		n = named
	}
	if n.Up {
		g.dropRoutesLocked(n.Name)
	}
	n.Up = false
	for _, a := range inf.IPAddresses {
		s := a.Address + "/" + a.Mask
		if !slices.Contains(n.Addrs, s) {
			n.Addrs = append(n.Addrs, s)
		}
	}
	if n.Name != inf.Name {
		old := n.Name
		holder := g.byNameLocked(inf.Name)
		if holder != nil {
			g.renameLocked(holder, inf.Name+"_temp", why)
		}
		g.renameLocked(n, inf.Name, why)
		if holder != nil {
			g.renameLocked(holder, old, why)
			holder.Up = true
		}
	}
	n.MTU = inf.Mtu
	n.Up = true
	n.Configured = true
	return inf, nil
}

// updateRoutes is the agent's update_routes (netlink.rs 509-658): routes
// without a gateway first, then with one; each added or replaced (same
// family and destination), never deleted; a device the guest lacks fails
// the call, the routes added before it stay; IPv4 refuses the linkdown and
// dead flags (R65).
func (g *NetmonGuest) updateRoutes(routes []*pbTypes.Route) ([]*pbTypes.Route, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer g.changedLocked(fmt.Sprintf("update_routes %d", len(routes)))
	ordered := slices.Clone(routes)
	sort.SliceStable(ordered, func(i, j int) bool { return ordered[i].Gateway == "" && ordered[j].Gateway != "" })
	for _, r := range ordered {
		if g.byNameLocked(r.Device) == nil {
			return g.routesLocked(), fmt.Errorf("Failed to update routes: Link not found (Name: %s)", r.Device)
		}
		if r.Family != pbTypes.IPFamily_v6 && r.Flags&0x11 != 0 {
			return g.routesLocked(), fmt.Errorf("Failed to add IP v4 route (dst: %s, gtw: %s, Err: EINVAL)", r.Dest, r.Gateway)
		}
		if r.Dest != "" {
			if _, err := netip.ParsePrefix(r.Dest); err != nil {
				if _, err := netip.ParseAddr(r.Dest); err != nil {
					return g.routesLocked(), fmt.Errorf("Failed to parse route destination %q", r.Dest)
				}
			}
		}
		c := &pbTypes.Route{Dest: r.Dest, Gateway: r.Gateway, Device: r.Device, Family: r.Family}
		if i := slices.IndexFunc(g.routes, func(o *pbTypes.Route) bool { return o.Family == c.Family && o.Dest == c.Dest }); i >= 0 {
			g.routes[i] = c
		} else {
			g.routes = append(g.routes, c)
		}
	}
	return g.routesLocked(), nil
}

func (g *NetmonGuest) routesLocked() []*pbTypes.Route {
	var out []*pbTypes.Route
	for _, r := range g.routes {
		out = append(out, &pbTypes.Route{Dest: r.Dest, Gateway: r.Gateway, Device: r.Device, Family: r.Family})
	}
	return out
}

// listInterfaces is the agent's list_interfaces (netlink.rs 310-336, R68):
// every link in ifindex order, MACs in upper case, each address's family
// inverted.
func (g *NetmonGuest) listInterfaces() []*pbTypes.Interface {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := []*pbTypes.Interface{{Name: "lo", HwAddr: "00:00:00:00:00:00", Mtu: 65536}}
	for _, n := range g.nics {
		inf := &pbTypes.Interface{Name: n.Name, HwAddr: strings.ToUpper(n.MAC), Mtu: n.MTU}
		for _, a := range n.Addrs {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				continue
			}
			fam := pbTypes.IPFamily_v6 // inverted: IPv4 reported as v6
			if !p.Addr().Is4() {
				fam = pbTypes.IPFamily_v4
			}
			inf.IPAddresses = append(inf.IPAddresses, &pbTypes.IPAddress{Family: fam, Address: p.Addr().String(), Mask: fmt.Sprint(p.Bits())})
		}
		out = append(out, inf)
	}
	return out
}

// netmonAgent is Kata's mockAgent with the guest agent's network calls.
type netmonAgent struct {
	mockAgent
	guest *NetmonGuest
}

func (a *netmonAgent) updateInterface(ctx context.Context, inf *pbTypes.Interface) (*pbTypes.Interface, error) {
	return a.guest.updateInterface(inf)
}

func (a *netmonAgent) listInterfaces(ctx context.Context) ([]*pbTypes.Interface, error) {
	return a.guest.listInterfaces(), nil
}

func (a *netmonAgent) updateRoutes(ctx context.Context, routes []*pbTypes.Route) ([]*pbTypes.Route, error) {
	if routes == nil {
		return nil, nil // kata_agent.go updateRoutes: no RPC for nil (R44)
	}
	return a.guest.updateRoutes(routes)
}

// Probes: build.sh runs these against the tree before building, and sets
// the adapter's fix flags from the outcome (a fix counts only when its
// probe passes). Each checks one fix of kata-netmon's series by behaviour.

// netmonProbeVeth creates, in the netns at nsPath, an up veth named name
// with addr, and returns the request to attach it.
func netmonProbeVeth(t *testing.T, h *netlink.Handle, name, addr string) *pbTypes.Interface {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500}, PeerName: fmt.Sprintf("p%s%d", name, time.Now().UnixNano()%100000)}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	ones, _ := a.Mask.Size()
	return &pbTypes.Interface{Device: name, Name: name, HwAddr: l.Attrs().HardwareAddr.String(), Mtu: 1500, Type: "veth",
		IPAddresses: []*pbTypes.IPAddress{{Family: pbTypes.IPFamily_v4, Address: a.IP.String(), Mask: fmt.Sprint(ones)}}}
}

func netmonLinkUp(t *testing.T, h *netlink.Handle, name string) bool {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("look up %s: %v", name, err)
	}
	return l.Attrs().Flags&net.FlagUp != 0
}
