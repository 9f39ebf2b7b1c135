package netmon

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon/view"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// resolver reads peer facts: which netns a link-netnsid names, as the
// watched netns sees it, and what the peer or parent is over there.
//
// It is used by one goroutine at a time (Start, then the loop), like state.
type resolver struct {
	log     *logrus.Entry
	watched *nsfs.File // owned by the Monitor; never closed here
	dockerd *nsfs.File
	dir     string // Docker's netns directory; "" when none is accepted
	scan    bool

	dh *netlink.Handle // sockets in dockerd's netns, opened on first use; closed by close

	// dockerdID is the id the watched netns gives dockerd's, and backID
	// the id dockerd's gives the watched one; -1 until known. An id, once
	// assigned, stays while both netns live, and the Monitor holds both
	// open: each is asked for once, not on every link.
	dockerdID, backID int
	// masterKinds caches the kind of the masters found in dockerd's netns
	// (its bridges), by ifindex: every endpoint's peer sits on one of a
	// few, and each read is an RTM_GETLINK that waits for the kernel's
	// rtnl_lock, which a busy dockerd holds. An ifindex is not reused
	// while its netns lives (the kernel hands out increasing ones).
	masterKinds map[int]string

	// cache maps a link-netnsid (of the watched netns) to the netns it
	// named when last scanned, dirCache the same for the netns files in
	// dir. Ids are reused once a netns dies, so an entry is re-validated on
	// every use (see openCached).
	cache, dirCache map[int]cached
}

// cached is where a link-netnsid pointed when last scanned.
type cached struct {
	path  string
	id    nsfs.ID
	inDir bool // an entry of Docker's netns directory: re-opened like scanDir opens it
}

func newResolver(log *logrus.Entry, watched, dockerd *nsfs.File, dir string, scan bool) *resolver {
	return &resolver{log: log, watched: watched, dockerd: dockerd, dir: dir, scan: scan, dockerdID: -1, backID: -1,
		masterKinds: map[int]string{}}
}

func (r *resolver) close() {
	if r.dh != nil {
		r.dh.Close()
		r.dh = nil
	}
}

// resolve returns the peer facts of l. wh is a handle in the watched netns.
func (r *resolver) resolve(wh *netlink.Handle, l *view.Link) *view.Peer {
	if l.ParentIndex == 0 {
		// Docker's veth right after the move: IFLA_LINK not tied yet.
		return nil
	}
	if l.LinkNetNSID < 0 {
		return &view.Peer{State: view.PeerSameNetNS}
	}
	id := l.LinkNetNSID

	// dockerd's netns first: ask the watched netns which id it gives it.
	if r.dockerdID < 0 {
		did, err := wh.GetNetNsIdByFd(r.dockerd.FD())
		if err != nil {
			return &view.Peer{State: view.PeerError, Err: fmt.Sprintf("RTM_GETNSID for %q in the watched netns: %v", r.dockerd.Path(), err)}
		}
		r.dockerdID = did // stays -1 when none is assigned yet
	}
	if r.dockerdID == id {
		var err error
		if r.dh == nil {
			if r.dh, err = newHandleAt(r.dockerd); err != nil {
				return &view.Peer{State: view.PeerError, NetNS: r.dockerd.Path(), Err: err.Error()}
			}
		}
		return r.readPeer(r.dh, r.dockerd.Path(), l, &r.backID, r.masterKinds)
	}
	if r.dir != "" {
		if ns, ok := r.find(wh, r.dirCache, id, r.scanDir); ok {
			return r.readOther(ns, view.HomeDockerOwned, l)
		}
	}
	if r.scan {
		if ns, ok := r.find(wh, r.cache, id, r.rescan); ok {
			return r.readOther(ns, view.HomeScanned, l)
		}
	}
	return &view.Peer{State: view.PeerForeignNetNS}
}

// find returns the netns id names, from cache or, on a miss, after
// rebuilding the cache with scan. The caller closes it.
func (r *resolver) find(wh *netlink.Handle, cache map[int]cached, id int, scan func(*netlink.Handle) map[int]cached) (*nsfs.File, bool) {
	if ns, ok := r.openCached(wh, cache, id); ok {
		return ns, true
	}
	return r.openCached(wh, scan(wh), id)
}

// readOther reads l's peer in ns (a netns other than dockerd's, found by a
// scan) through sockets opened there for this read, and closes ns.
func (r *resolver) readOther(ns *nsfs.File, home view.PeerHome, l *view.Link) *view.Peer {
	defer ns.Close()
	h, err := newHandleAt(ns)
	if err != nil {
		return &view.Peer{State: view.PeerError, Home: home, NetNS: ns.Path(), Err: err.Error()}
	}
	defer h.Close()
	back := -1
	p := r.readPeer(h, ns.Path(), l, &back, nil)
	p.Home = home
	return p
}

// readPeer reads the link at l.ParentIndex through h (sockets in the netns
// where that index is valid) and, for a veth, whether it points back.
// back caches the id that netns gives the watched one (-1: not known yet),
// and masters (when not nil) the kinds of its masters.
func (r *resolver) readPeer(h *netlink.Handle, path string, l *view.Link, back *int, masters map[int]string) *view.Peer {
	p := &view.Peer{State: view.PeerResolved, NetNS: path}
	fail := func(format string, args ...any) *view.Peer {
		return &view.Peer{State: view.PeerError, NetNS: path, Err: fmt.Sprintf(format, args...)}
	}
	pl, err := h.LinkByIndex(l.ParentIndex)
	if err != nil {
		if isLinkNotFound(err) {
			return p // resolved: nothing there
		}
		return fail("read ifindex %d in %q: %v", l.ParentIndex, path, err)
	}
	a := pl.Attrs()
	p.Found, p.Name, p.Kind, p.MasterIndex = true, a.Name, pl.Type(), a.MasterIndex
	if a.MasterIndex != 0 {
		if kind, ok := masters[a.MasterIndex]; ok {
			p.MasterKind = kind
		} else {
			ml, err := h.LinkByIndex(a.MasterIndex)
			switch {
			case err == nil:
				p.MasterKind = ml.Type()
				if masters != nil {
					masters[a.MasterIndex] = p.MasterKind
				}
			case !isLinkNotFound(err):
				return fail("read master ifindex %d of %q in %q: %v", a.MasterIndex, a.Name, path, err)
			}
		}
	}
	if l.Kind == "veth" && p.Kind == "veth" && a.ParentIndex == l.Index && a.NetNsID >= 0 {
		// The peer's link-netnsid is an id in the PEER's netns: ask that
		// netns which id it gives the watched one. (Reading the peer
		// above made the kernel allocate it if it had none.)
		if *back < 0 {
			id, err := h.GetNetNsIdByFd(r.watched.FD())
			if err != nil {
				return fail("RTM_GETNSID for the watched netns in %q: %v", path, err)
			}
			*back = id
		}
		p.PointsBack = *back >= 0 && *back == a.NetNsID
	}
	return p
}

// openCached opens the netns cached for id and checks that it still is the
// same netns and that the watched netns still gives it that id; a stale
// entry is dropped.
func (r *resolver) openCached(wh *netlink.Handle, cache map[int]cached, id int) (*nsfs.File, bool) {
	e, ok := cache[id]
	if !ok {
		return nil, false
	}
	open := nsfs.OpenQuiet
	if e.inDir {
		open = openDirEntry
	}
	f, err := open(e.path)
	if err != nil {
		delete(cache, id)
		return nil, false
	}
	if f.ID() != e.id {
		f.Close()
		delete(cache, id)
		return nil, false
	}
	if got, err := wh.GetNetNsIdByFd(f.FD()); err != nil || got != id {
		f.Close()
		delete(cache, id)
		return nil, false
	}
	return f, true
}

// rescan rebuilds the id cache from /run/netns/* and /proc/*/ns/net,
// deduplicated by identity, skipping the watched netns, and returns it.
func (r *resolver) rescan(wh *netlink.Handle) map[int]cached {
	var paths []string
	if named, err := filepath.Glob("/run/netns/*"); err == nil {
		paths = append(paths, named...)
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if n := e.Name(); n[0] >= '1' && n[0] <= '9' {
				paths = append(paths, "/proc/"+n+"/ns/net")
			}
		}
	}
	seen := map[nsfs.ID]bool{r.watched.ID(): true}
	cache := map[int]cached{}
	for _, p := range paths {
		f, err := nsfs.OpenQuiet(p)
		if err != nil {
			continue // raced with an exit or unmount, or not a netns
		}
		if k := f.ID(); !seen[k] {
			seen[k] = true
			if id, err := wh.GetNetNsIdByFd(f.FD()); err == nil && id >= 0 {
				cache[id] = cached{path: p, id: k}
			}
		}
		f.Close()
	}
	r.log.WithField("ids", len(cache)).Debug("scanned netns for link-netnsids")
	r.cache = cache
	return cache
}

// scanDir rebuilds the id cache of Docker's netns directory and returns
// it: every netns file directly in r.dir, other than the watched netns and
// dockerd's, that the watched netns gives an id. Entries are opened
// relative to the directory without following a symlink and checked to be
// network namespaces (nsfs); one that is not a regular file is not opened
// (see openAt). dockerd creates each file empty and then
// bind-mounts the netns on it (osl/namespace_linux.go:createNetworkNamespace),
// so an entry that is no netns yet, or that cannot be opened, is skipped
// with a debug log; the recheck schedule reads the link again.
func (r *resolver) scanDir(wh *netlink.Handle) map[int]cached {
	cache := map[int]cached{}
	r.dirCache = cache
	d, err := os.Open(r.dir)
	if err != nil {
		r.log.WithError(err).WithField("dir", r.dir).Debug("cannot open Docker's netns directory")
		return cache
	}
	defer d.Close()
	ents, err := d.ReadDir(-1)
	if err != nil {
		r.log.WithError(err).WithField("dir", r.dir).Debug("cannot list Docker's netns directory")
	}
	skip := map[nsfs.ID]bool{r.watched.ID(): true, r.dockerd.ID(): true}
	for _, e := range ents {
		p := filepath.Join(r.dir, e.Name())
		f, err := openAt(int(d.Fd()), e.Name(), p)
		if err != nil {
			r.log.WithError(err).WithField("path", p).Debug("cannot open netns file; skipped")
			continue
		}
		if k := f.ID(); !skip[k] {
			skip[k] = true
			if id, err := wh.GetNetNsIdByFd(f.FD()); err == nil && id >= 0 {
				cache[id] = cached{path: p, id: k, inDir: true}
			}
		}
		f.Close()
	}
	r.log.WithFields(logrus.Fields{"dir": r.dir, "ids": len(cache)}).Debug("scanned Docker's netns directory for link-netnsids")
	return cache
}

// openDirEntry opens path, an entry of Docker's netns directory, as scanDir
// does.
func openDirEntry(path string) (*nsfs.File, error) {
	dir, name := filepath.Split(path)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	return openAt(dfd, name, path)
}

// openAt opens name in the directory dirfd as a network namespace (nsfs
// checked) if it is a regular file (an nsfs bind mount stats as one), not
// following a symlink. A device node or FIFO is never opened (opening a
// device can have effects); one swapped in between the stat and the open
// is refused by nsfs, which opens without blocking.
func openAt(dirfd int, name, path string) (*nsfs.File, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("netns %q: %w (mode %#o)", path, nsfs.ErrNotNetNS, st.Mode&unix.S_IFMT)
	}
	return nsfs.OpenAt(dirfd, name, path)
}
