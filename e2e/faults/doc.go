// Package faults tests the monitor under faults and hostile input, on the
// real kernel without Docker or a VM: a fresh "dockerd" netns with one
// bridge network and a fresh "sandbox" netns, Docker's endpoint sequence
// replayed in them, and the monitor started the shim's way (shimhook.Start)
// or directly (e2e/internal/direct, to force what shimhook hides), driving
// hotplugtest.FakeSandbox with its function fields overridden to fail, die
// or hang.
//
// It needs root (and fails instead of skipping under CI=true). Every test
// checks that the goroutines it started are gone (goleak) and, where it
// applies, the metrics on a private registry and the log fields.
//
// Covered: event loss (50 rounds of forced socket overflow while endpoints
// come and go; the end state must be what a fresh list of the netns
// implies); a sandbox that fails and recovers (backoff), dies (the monitor
// gives up at once), hangs (abandoned at its deadline, every further call
// held back, Stop while it hangs); Stop and netmon's Close during an attach;
// a second Start for the same netns; metrics that cannot be registered; the
// hypervisor process exiting (pidfd), the netns losing every link, and the
// watch command following its --pid; links dressed as Docker endpoints and
// a second endpoint with an attached endpoint's MAC (TestHostileLinks).
//
// Idleness (no call, event or pass, and little CPU, once nothing is left to
// do) is measured over a one-second window: it is a rate, and no event says
// that nothing happened. Every other wait is on an event with a deadline;
// waitUntil polls only conditions no event signals (goroutine counts,
// shimhook's attached list). KNM_TEST_LOG=1 prints the monitor's log.
package faults
