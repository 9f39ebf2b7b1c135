// Package shimhook is the entry point a Kata shim calls for a sandbox: it
// decides whether the sandbox is Docker's, which netns to watch, runs the
// synchronous first reconcile before the workload starts, and the background
// monitor until Stop.
//
// It never imports Kata: the shim passes a hotplug.Sandbox (see the adapter
// module in shimhook/kata) and the few facts it knows. A failure here never
// takes the shim or the container down, unless the operator asked for a
// failed first attach to fail Start.
package shimhook
