package kata

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	cdshim "github.com/containerd/containerd/runtime/v2/shim"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	emptypb "google.golang.org/protobuf/types/known/emptypb"

	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"
	pbTypes "github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/agent/protocols"
	"github.com/kata-containers/kata-containers/src/runtime/virtcontainers/pkg/vcmock"
)

// fakeKata models what matters of a Kata 4.1 sandbox: its endpoint list,
// the guest's NICs, the links of its netns, Kata's tc redirect on a link
// being attached, and RescanNetwork. vcmock.Sandbox supplies the rest of
// vc.VCSandbox (its network methods return (nil, nil), so they are
// overridden here).
type fakeKata struct {
	*vcmock.Sandbox

	delay time.Duration // a hotplug takes this long
	hvPID int           // GetHypervisorPid; 4242 when zero

	mu       sync.Mutex
	eps      []string                      // Kata's endpoint list (link names)
	guest    map[string]*pbTypes.Interface // by MAC
	links    map[string]string             // netns: name -> MAC (with an address)
	owned    map[string]bool               // Kata's tc redirect is on the link
	attaches map[string]int                // hotplugs per MAC
	calls    []string
	addErr   error
	rmErr    error
	routeErr error
	listErr  error
	rescans  int

	rescanEnd chan struct{} // closed when rescan returns
}

func newFakeKata(id string) *fakeKata {
	return &fakeKata{
		Sandbox:   &vcmock.Sandbox{MockID: id, MockNetNs: "/run/netns/fake-" + id},
		guest:     map[string]*pbTypes.Interface{},
		links:     map[string]string{},
		owned:     map[string]bool{},
		attaches:  map[string]int{},
		rescanEnd: make(chan struct{}),
	}
}

func (k *fakeKata) GetHypervisorPid() (int, error) {
	if k.hvPID != 0 {
		return k.hvPID, nil
	}
	return 4242, nil
}

func (k *fakeKata) record(s string) {
	k.mu.Lock()
	k.calls = append(k.calls, s)
	k.mu.Unlock()
}

// connect is `docker network connect`: a configured link appears.
func (k *fakeKata) connect(name, mac string) {
	k.mu.Lock()
	k.links[name] = mac
	k.mu.Unlock()
}

// hotplug attaches one link as Kata does: tc redirect first, then the slow
// hypervisor step, then the endpoint is appended. Call with mu held; it
// releases mu while "hot-plugging".
func (k *fakeKata) hotplugLocked(name, mac string) {
	k.owned[name] = true
	k.mu.Unlock()
	time.Sleep(k.delay)
	k.mu.Lock()
	k.attaches[mac]++
	k.eps = append(k.eps, name)
}

func (k *fakeKata) AddInterface(ctx context.Context, inf *pbTypes.Interface) (*pbTypes.Interface, error) {
	k.record("AddInterface " + inf.Name)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.addErr != nil {
		k.eps = nil // Kata 4.1's LinuxNetwork.AddEndpoints
		return nil, k.addErr
	}
	// Like Kata: no check whether the link is attached already.
	k.hotplugLocked(inf.Name, inf.HwAddr)
	k.guest[strings.ToLower(inf.HwAddr)] = &pbTypes.Interface{Name: inf.Name, Device: inf.Name, HwAddr: inf.HwAddr,
		IPAddresses: inf.IPAddresses, Mtu: inf.Mtu, Type: inf.Type, DevicePath: "02/01"}
	return k.guest[strings.ToLower(inf.HwAddr)], nil
}

func (k *fakeKata) RemoveInterface(ctx context.Context, inf *pbTypes.Interface) (*pbTypes.Interface, error) {
	k.record("RemoveInterface " + inf.HwAddr)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.rmErr != nil {
		return inf, k.rmErr
	}
	delete(k.guest, strings.ToLower(inf.HwAddr))
	return nil, nil
}

func (k *fakeKata) ListInterfaces(ctx context.Context) ([]*pbTypes.Interface, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.listErr != nil {
		return nil, k.listErr
	}
	out := []*pbTypes.Interface{{Name: "lo", Device: "lo", HwAddr: "00:00:00:00:00:00"}}
	macs := make([]string, 0, len(k.guest))
	for m := range k.guest {
		macs = append(macs, m)
	}
	sort.Strings(macs)
	for _, m := range macs {
		out = append(out, k.guest[m])
	}
	return out, nil
}

func (k *fakeKata) UpdateRoutes(ctx context.Context, routes []*pbTypes.Route) ([]*pbTypes.Route, error) {
	k.record(fmt.Sprintf("UpdateRoutes %d", len(routes)))
	if k.routeErr != nil {
		return nil, k.routeErr
	}
	return routes, nil
}

// RescanNetwork as Kata 4.1 does it (virtcontainers/sandbox.go), with its
// timing scaled: return at once if there is an endpoint; else scan every
// tick until maxWait, attach every link not in the list, configure the
// guest and return after the first scan that found something.
func (k *fakeKata) rescan(maxWait, tick time.Duration) {
	defer close(k.rescanEnd)
	k.mu.Lock()
	k.rescans++
	if len(k.eps) > 0 {
		k.mu.Unlock()
		return
	}
	k.mu.Unlock()
	deadline := time.Now().Add(maxWait)
	for {
		k.mu.Lock()
		names := make([]string, 0, len(k.links))
		for n := range k.links {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if !slicesContains(k.eps, n) {
				k.hotplugLocked(n, k.links[n])
			}
		}
		if len(k.eps) > 0 {
			for _, n := range k.eps {
				mac := k.links[n]
				k.guest[mac] = &pbTypes.Interface{Name: n, Device: n, HwAddr: mac, Type: "veth"}
			}
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(tick)
	}
}

func (k *fakeKata) isOwned(name string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.owned[name], nil
}

func (k *fakeKata) attachCount(mac string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.attaches[mac]
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

var _ vc.VCSandbox = (*fakeKata)(nil)

// fakeInner stands in for Kata's shim service: vcmock cannot, because the
// shim picks its sandbox implementation through an unexported package
// variable. Unexpected RPCs hit the nil embedded Shim and panic.
type fakeInner struct {
	cdshim.Shim

	kata    *fakeKata // "created" by Create of the sandbox container
	onStart func()    // what Kata's startContainer launches (RescanNetwork)

	mu        sync.Mutex
	calls     []string
	created   bool
	startErr  error
	createErr error
}

func (f *fakeInner) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeInner) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeInner) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	f.record("kata.Create " + r.ID)
	if f.createErr != nil {
		return nil, f.createErr
	}
	f.mu.Lock()
	f.created = true
	f.mu.Unlock()
	return &taskAPI.CreateTaskResponse{Pid: 4242}, nil
}

func (f *fakeInner) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	f.record("kata.Start " + r.ID + "/" + r.ExecID)
	if f.startErr != nil {
		return nil, f.startErr
	}
	if r.ExecID == "" && f.onStart != nil {
		go f.onStart()
	}
	return &taskAPI.StartResponse{Pid: 4242}, nil
}

func (f *fakeInner) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	f.record("kata.Delete " + r.ID + "/" + r.ExecID)
	return &taskAPI.DeleteResponse{Pid: 4242}, nil
}

func (f *fakeInner) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	f.record("kata.Shutdown")
	return &emptypb.Empty{}, nil
}

func (f *fakeInner) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	f.record("kata.State " + r.ID)
	return &taskAPI.StateResponse{ID: r.ID}, nil
}

// testLog returns a logger whose entries the test can inspect.
func testLog() (*logrus.Entry, *test.Hook) {
	l, hook := test.NewNullLogger()
	l.SetLevel(logrus.DebugLevel)
	return logrus.NewEntry(l), hook
}

func logged(hook *test.Hook, level logrus.Level, sub string) bool {
	for _, e := range hook.AllEntries() {
		if e.Level == level && strings.Contains(e.Message, sub) {
			return true
		}
	}
	return false
}

func mustMAC(t *testing.T, s string) string {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m.String()
}

var errBoom = errors.New("boom")
