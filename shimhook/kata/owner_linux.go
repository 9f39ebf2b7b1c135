package kata

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// kataOwnsLink reports whether Kata has begun attaching the link named name
// in the netns at netnsPath: with the tcfilter interworking model (the
// default) Kata puts an ingress qdisc with a mirred redirect on the link
// (setupTCFiltering) before it hot-plugs the NIC; with macvtap it creates a
// macvtap on top of it (tapNetworkPair). Docker adds neither. It never
// switches the calling thread's netns: the handle is bound to the netns.
func kataOwnsLink(netnsPath, name string) (bool, error) {
	if netnsPath == "" {
		return false, errors.New("no netns path")
	}
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return false, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return false, fmt.Errorf("netlink handle in %s: %w", netnsPath, err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("look up %q in %s: %w", name, netnsPath, err)
	}
	qdiscs, err := h.QdiscList(link)
	if err != nil {
		return false, fmt.Errorf("list qdiscs of %q: %w", name, err)
	}
	for _, q := range qdiscs {
		if _, ok := q.(*netlink.Ingress); ok {
			return true, nil
		}
	}
	links, err := h.LinkList()
	if err != nil {
		return false, fmt.Errorf("list links in %s: %w", netnsPath, err)
	}
	for _, l := range links {
		if l.Type() == "macvtap" && l.Attrs().ParentIndex == link.Attrs().Index {
			return true, nil
		}
	}
	return false, nil
}
