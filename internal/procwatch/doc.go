// Package procwatch tells when a process exits, without polling: a pidfd
// becomes readable when its process exits, and the Go runtime's poller
// waits on it. Nothing else does: a netns kept alive by the monitor's own
// sockets or by Docker's bind mount sends no netlink event when its last
// process goes. Linux only; elsewhere Open fails.
package procwatch
