// Package matcher makes kata-netmon's decisions over what netmon observed:
// which links of the sandbox netns are this container's Docker endpoints,
// whether each is ready to attach, when an attached one is gone, what to
// ignore, and which routes the VM should get.
//
// Every function is pure: it reads a view.Snapshot and returns a value. No
// netlink, no I/O, no clock. Names never decide anything: Docker's ifname
// option can give an endpoint any name, "veth*" included.
package matcher
