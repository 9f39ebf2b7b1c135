package netmon_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// dockerDir is a stand-in for Docker's netns directory (<exec-root>/netns):
// a temporary directory whose entries are bind mounts of netns, as dockerd
// makes them (moby daemon/libnetwork/osl/namespace_linux.go:
// createNetworkNamespace, mountNetworkNamespace).
type dockerDir struct {
	t    *testing.T
	path string
}

func newDockerDir(t *testing.T) *dockerDir {
	t.Helper()
	return &dockerDir{t: t, path: t.TempDir()}
}

// bind bind-mounts the netns at nsPath on a new file name in the directory
// and returns the file's path; cleanup unmounts it (before TempDir's
// removal: cleanups run last-in first-out).
func (d *dockerDir) bind(nsPath, name string) string {
	d.t.Helper()
	p := filepath.Join(d.path, name)
	if err := os.WriteFile(p, nil, 0o444); err != nil {
		d.t.Fatal(err)
	}
	if err := unix.Mount(nsPath, p, "", unix.MS_BIND, ""); err != nil {
		d.t.Fatalf("bind-mount %s on %s: %v", nsPath, p, err)
	}
	d.t.Cleanup(func() {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			d.t.Errorf("unmount %s: %v", p, err)
		}
	})
	return p
}

// overlayNetNS is what Docker's overlay driver sets up for one network: a
// netns of its own with a bridge in it (ov_network.go: initSandbox,
// setupSubnetSandbox). It returns the netns path, its handle and the
// bridge's name.
func overlayNetNS(t *testing.T) (string, *netmontest.Pair, string) {
	t.Helper()
	var p netmontest.Pair
	p.DockerdPath, p.DockerdNS = netmontest.NewNetNS(t)
	p.Dockerd = netmontest.HandleAt(t, p.DockerdNS)
	br := netmontest.AddBridge(t, p.Dockerd)
	return p.DockerdPath, &p, br.Name
}

// startDir starts a monitor on e's sandbox that searches dir, with peer
// re-reads every few milliseconds for window; closed on cleanup.
func startDir(t *testing.T, e *env, dir string, window time.Duration) *netmon.Monitor {
	t.Helper()
	m, err := netmon.New(netmon.Config{NetNSPath: e.SandboxPath, DockerdNetNS: e.DockerdPath, DockerNetNSDir: dir, Log: netmontest.Log(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	netmon.SetRecheck(m, 5*time.Millisecond, 20*time.Millisecond, window)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return m
}

// TestPeerInDockerOwnedNetNS: a veth whose peer sits on a bridge in a netns
// bind-mounted under Docker's netns directory (the overlay driver's
// 1-<network id>) is resolved there and said to live there; entries that
// are no netns (an empty placeholder, a FIFO) are skipped. A peer in a netns
// that is not under the directory stays foreign, and once the recheck
// window ends it is final.
func TestPeerInDockerOwnedNetNS(t *testing.T) {
	e := newEnv(t)
	dir := newDockerDir(t)
	ovPath, ov, brName := overlayNetNS(t)
	if err := os.WriteFile(filepath.Join(dir.path, "placeholder-"+netmontest.RandName()), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir.path, "fifo-"+netmontest.RandName()), 0o600); err != nil {
		t.Fatal(err)
	}
	bound := dir.bind(ovPath, "1-"+netmontest.RandName())
	// The watched netns itself is under the directory too (SetKey).
	dir.bind(e.SandboxPath, netmontest.RandName())
	m := startDir(t, e, dir.path, 200*time.Millisecond)

	ep := netmontest.VethToNetNS(t, ov.DockerdNS, e.SandboxNS, brName)
	ep.Rename("eth0")
	l := waitLink(t, m, ep.Index, "peer resolved in the Docker-owned netns", func(l *view.Link) bool {
		return l.Name == "eth0" && l.Peer != nil && l.Peer.State == view.PeerResolved
	})
	want := view.Peer{State: view.PeerResolved, Home: view.HomeDockerOwned, NetNS: bound, Found: true,
		Name: ep.HostName, Kind: "veth", PointsBack: true, MasterIndex: l.Peer.MasterIndex, MasterKind: "bridge"}
	if *l.Peer != want || l.Peer.MasterIndex == 0 {
		t.Errorf("peer = %+v, want %+v with a master", *l.Peer, want)
	}

	// A second endpoint of the same network: its id is found in the cache
	// (re-opened and re-checked) rather than by a new scan.
	ep3 := netmontest.VethToNetNS(t, ov.DockerdNS, e.SandboxNS, brName)
	ep3.Rename("eth2")
	waitLink(t, m, ep3.Index, "second peer resolved in the Docker-owned netns", func(l *view.Link) bool {
		p := l.Peer
		return l.Name == "eth2" && p != nil && p.State == view.PeerResolved && p.Home == view.HomeDockerOwned &&
			p.NetNS == bound && p.Name == ep3.HostName && p.PointsBack && p.MasterKind == "bridge"
	})

	// Control: the same setup in a netns that is not under the directory.
	_, other, otherBr := overlayNetNS(t)
	ep2 := netmontest.VethToNetNS(t, other.DockerdNS, e.SandboxNS, otherBr)
	ep2.Rename("eth1")
	l = waitLink(t, m, ep2.Index, "peer foreign, final", func(l *view.Link) bool {
		return l.Name == "eth1" && l.Peer != nil && l.Peer.State == view.PeerForeignNetNS && !l.Peer.Rechecking
	})
	if l.Peer.Found || l.Peer.NetNS != "" {
		t.Errorf("foreign peer read anyway: %+v", *l.Peer)
	}
}

// TestPeerNetNSBoundLater: the netns holding the peer is bind-mounted under
// Docker's netns directory only after the link arrived; the recheck
// schedule searches the directory again and finds it. (The window is long
// so that the bind mount surely falls within it.)
func TestPeerNetNSBoundLater(t *testing.T) {
	e := newEnv(t)
	dir := newDockerDir(t)
	ovPath, ov, brName := overlayNetNS(t)
	m := startDir(t, e, dir.path, time.Minute)

	ep := netmontest.VethToNetNS(t, ov.DockerdNS, e.SandboxNS, brName)
	ep.Rename("eth0")
	waitLink(t, m, ep.Index, "peer foreign, still searched for", func(l *view.Link) bool {
		return l.Name == "eth0" && l.Peer != nil && l.Peer.State == view.PeerForeignNetNS && l.Peer.Rechecking
	})
	bound := dir.bind(ovPath, "1-"+netmontest.RandName())
	waitLink(t, m, ep.Index, "peer found once bound", func(l *view.Link) bool {
		p := l.Peer
		return p != nil && p.State == view.PeerResolved && p.Home == view.HomeDockerOwned && p.NetNS == bound &&
			p.PointsBack && p.MasterKind == "bridge" && !p.Rechecking
	})
}
