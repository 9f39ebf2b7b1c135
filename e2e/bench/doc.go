// Package bench measures kata-netmon itself on the real kernel, as a report
// (`make bench`), never as timed assertions: the latency from the netlink
// event that makes a Docker endpoint ready to the sandbox's AddInterface
// call, the cost of an idle monitor (goroutines, heap, wakeups), and how
// many unrelated netlink events per second one monitor absorbs.
//
// Everything runs in fresh named netns (a "dockerd" netns with a bridge, a
// "sandbox" netns) through shimhook.Start, the shim's entry point, with an
// in-memory sandbox that timestamps its calls. It needs root; with CI=true a
// missing prerequisite fails instead of skipping.
package bench
