// Package docker tests the monitor against a real Docker 29 (dockerd,
// containerd and runc from scripts/deps-docker.sh, run by
// e2e/internal/dockerenv in a netns of their own), without a VM: with runc a
// container's netns receives exactly the netlink sequence a Kata sandbox
// netns receives, so each container's netns stands in for one. The monitor
// drives hotplugtest.FakeSandbox (Kata 4.1's semantics, in memory) or, for
// the watch command, prints what it would do as JSON lines; every check
// replays those events into the guest Kata would have (guestModel) and
// compares it with docker inspect.
//
// It needs root and the Docker binaries (skipped without them, failed under
// CI=true). One daemon serves the subtests of a test; every network and
// container has a unique name.
//
// Covered: TestEnv, the environment itself and the netlink sequence Docker
// produces (logged); TestMonitor, docker run, network connect and
// disconnect, connect --ip, --gw-priority, dual stack, a network MTU and
// --mac-address, three networks at start, two containers each with its own
// monitor (one through shimhook with Docker's real bundle and spec), 20
// rapid connect/disconnect rounds from two goroutines, and the watch command
// in dockerd's netns (SIGTERM, and exit with its container);
// TestDockerOverlay, a single-node swarm: containers on attachable overlay
// networks, whose peers live in the overlay network's own netns under
// dockerd's netns directory, run, connect and disconnect, and without the
// directory only the docker_gwbridge endpoint (the control).
//
// Files: daemon_test.go is the Docker side (the daemon, docker inspect as
// expectedNIC); model_test.go replays events into a guestModel and holds the
// checks; monitors_test.go starts the monitors (in process, shimhook, the
// watch command). KNM_TEST_LOG=1 prints each monitor's log even when the
// test passes.
package docker
