// Package load measures many kata-netmon monitors in one process, as a
// report (docs/perf.md, "Load: 200 monitors"), never as timed assertions:
// 200 monitors started the shim's way (shimhook.Start, one shared
// Prometheus registry, a pidfd watch each) on 200 sandbox netns, while a
// separate driver process churns Docker endpoints in all of them at once.
// It reports goroutines, memory, file descriptors and CPU per monitor, the
// decision latency (the endpoint's last configuration step to the
// sandbox's AddInterface) under that load, and checks that every monitor
// attached and detached exactly its own endpoints.
//
//	go test -run '^$' -bench Load -benchtime 1x ./e2e/load/
//
// It needs root; with CI=true a missing prerequisite fails instead of
// skipping. KNM_LOAD_MONITORS and KNM_LOAD_CYCLES change the 200 monitors
// and 3 endpoints per monitor.
//
// The driver is this test binary re-executed (TestMain sees
// KNM_LOAD_DRIVER), so that its CPU is not counted as the monitors'.
package load
