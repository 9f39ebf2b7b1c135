package netmon

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
)

// newHandleAt opens a netlink handle whose sockets live in ns.
//
// netlink.NewHandleAt switches the calling thread into ns and back, ignoring
// a failed switch back: it runs on a throwaway thread.
func newHandleAt(ns *nsfs.File) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := nsfs.Throwaway(func() (err error) {
		defer recoverAs(&err)
		h, err = netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink handle in netns %q: %w", ns.Path(), err)
	}
	return h, nil
}

// isLinkNotFound reports the library's not-found error, or a bare ENODEV
// (LinkByIndex only maps an unwrapped errno: with
// netlink.EnableErrorMessageReporting the errno comes wrapped).
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// recoverAs turns a panic in the function it is deferred in into *err
// (with the stack): for the functions run on nsfs's own goroutines, where a
// panic would otherwise end the process.
func recoverAs(err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("%w: %v\n%s", errPanicked, p, debug.Stack())
	}
}
