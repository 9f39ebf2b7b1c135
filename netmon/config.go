package netmon

import (
	"errors"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"

	"github.com/sirupsen/logrus"
)

// Config configures a Monitor.
type Config struct {
	// NetNSPath is the netns to watch: /proc/PID/ns/net or a bind mount
	// (Docker's /var/run/docker/netns/<id>). Required.
	NetNSPath string
	// NetNSFD, when > 0, is an open descriptor of the netns at NetNSPath
	// that the caller has checked: New duplicates it and watches that,
	// never reopening the path by name (the path then only tells, at a
	// resync, whether the netns is still there).
	NetNSFD int
	// DockerdNetNS is the path of the netns whose links may be peers or
	// parents of the watched links (dockerd's). "" means the caller's own
	// netns: in the shim that is the host netns, which dockerd shares.
	DockerdNetNS string
	// DockerNetNSDir is Docker's netns directory (<exec-root>/netns:
	// /run/docker/netns by default), where dockerd bind-mounts the netns it
	// creates: container sandboxes and each overlay network's own netns
	// ("1-<network id>"), which holds the endpoint's peer on its bridge
	// br0. A link-netnsid that is not dockerd's is looked up among the netns
	// files directly in it, and a netns found there is accepted as a peer
	// netns (view.HomeDockerOwned). "" accepts none.
	DockerNetNSDir string
	// ScanNetNS resolves link-netnsids among the named (/run/netns/*) and
	// process (/proc/*/ns/net) netns too, and accepts any netns found that
	// way as a peer netns. For the watch command and tests only. When false,
	// only DockerdNetNS is accepted and nothing is scanned.
	ScanNetNS bool
	// ReceiveBufferSize sets SO_RCVBUF of the netlink socket (0: 4 MiB,
	// charged only for messages not read yet). Tests make it tiny to force
	// ENOBUFS.
	ReceiveBufferSize int
	// Log receives the monitor's logs; nil discards them.
	Log *logrus.Entry
	// Observer, if set, is told about every netlink message applied or
	// skipped, every resync and every recovered panic (metrics).
	Observer Observer
}

// Observer receives counts from the monitor's loop goroutine. Its methods
// must not block.
type Observer interface {
	// EventSeen is called for every netlink event the monitor applied to
	// its view, in the kernel's order; kind is "link", "address" or
	// "route". Events lost to an overflow are never seen (a resync
	// follows), nor are those it could not decode (Undecodable).
	EventSeen(kind string)
	// Undecodable is called for every message skipped because it could
	// not be decoded (an event or an object in a dump); kind as above.
	Undecodable(kind string)
	// Resynced is called after each successful resync (view.Snapshot.Resyncs
	// counts the same).
	Resynced()
	// Panicked is called for every panic recovered in the monitor; where
	// names the part ("netmon loop", "netmon start"). The view is then
	// rebuilt from a fresh list.
	Panicked(where string)
}

var (
	// ErrNotNetNS is returned (wrapped with the path) by New when a path
	// opens but is not a network namespace.
	ErrNotNetNS = nsfs.ErrNotNetNS
	// ErrClosed is returned by Start and LinkByName after Close.
	ErrClosed = errors.New("netmon: monitor closed")
	// ErrNetNSGone is Err's cause when the watched netns path no longer
	// opens, or names another netns, at a resync.
	ErrNetNSGone = errors.New("netmon: watched netns is gone")
)
