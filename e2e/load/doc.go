// Package load measures many kata-netmon monitors in one process, as a
// report (docs/perf.md, "Load: 200 monitors"), never as timed assertions:
// 200 monitors started the shim's way (shimhook.Start, one shared
// Prometheus registry, a pidfd watch each) on 200 sandbox netns, while a
// separate driver process churns Docker endpoints in all of them at once.
// Before them, in the same run, one lone monitor gets one endpoint at a
// time, measured the same way.
//
// It reports goroutines, memory, file descriptors and CPU per monitor, and
// the latency from an endpoint's last configuration step to the sandbox's
// AddInterface, split into the kernel's part (the driver's `up` to the
// RUNNING event) and the decision (that event to AddInterface), for the
// lone monitor and under load; it checks that every monitor attached and
// detached exactly its own endpoints. The driver holds each endpoint for a
// while once its monitor attached it (the parent says when), so a slow
// machine delays the churn rather than losing endpoints. The event times come from a tap
// process with one socket per sandbox netns, read by one thread blocked in
// epoll_wait. The sandboxes are in memory (Kata's semantics, no VM).
//
//	go test -run '^$' -bench Load -benchtime 1x ./e2e/load/
//
// It needs root; with CI=true a missing prerequisite fails instead of
// skipping. KNM_LOAD_MONITORS, KNM_LOAD_CYCLES and KNM_LOAD_LONE_CYCLES
// change the 200 monitors, the 3 endpoints per monitor and the lone
// monitor's 60 endpoints.
//
// The driver and the tap are this test binary re-executed (TestMain sees
// KNM_LOAD_DRIVER or KNM_LOAD_TAP), so that their CPU is not counted as
// the monitors'.
package load
