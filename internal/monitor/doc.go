// Package monitor assembles one kata-netmon monitor and runs it: a netmon
// view of the sandbox netns, the hotplug reconciler that drives a sandbox
// from it, and an optional pidfd watch on the process whose exit ends it.
// shimhook (inside a Kata shim) and the watch command build their monitor
// here and nowhere else.
//
// Goroutines, three while idle: netmon's loop (parked on the runtime's
// poller; see netmon), the reconciler's loop (started by Run, ended by
// Stop, the end of the netns watch, the process's exit or a dead sandbox)
// and procwatch's one parked wait. Sandbox calls run on goroutines of their
// own while they last (hotplug). A panic in the reconciler's loop is
// recovered, logged with its stack and reported; the loop then starts over
// with a new reconciler, which adopts what the guest has. netmon recovers
// and reports its own.
package monitor
