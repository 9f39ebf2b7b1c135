// Package nsdo runs a function inside another network namespace without
// leaving any goroutine there: the one place in kata-netmon's tests and
// tools that switches a thread's netns. The monitor itself never does: its
// sockets are bound to the target netns when they are created.
package nsdo
