package netmon

import (
	"errors"
	"fmt"

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
	err := nsfs.Throwaway(func() error {
		var err error
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

// maxDumpAttempts bounds retries of a dump the kernel marked interrupted
// (NLM_F_DUMP_INTR: the table changed while it was being dumped).
const maxDumpAttempts = 8

// dump runs one netlink list call, retrying it while the kernel reports the
// dump interrupted. Every list in this package goes through it.
func dump[T any](what string, list func() ([]T, error)) ([]T, error) {
	for attempt := 1; ; attempt++ {
		v, err := list()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt >= maxDumpAttempts {
			return nil, fmt.Errorf("list %s (attempt %d): %w", what, attempt, err)
		}
	}
}
