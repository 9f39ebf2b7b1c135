// Package guest tests kata-netmon against a real QEMU guest (TCG, Debian 12's
// 6.12 cloud kernel, booted by e2e/internal/guest) behind
// e2e/internal/katasim, which behaves as Kata 4.1's Go runtime with QEMU,
// as shipped or with this project's patch series, in the tcfilter or
// macvtap model, and whose guest agent behaves as Kata 4.1's agent.
// docs/kata-model.md is the table these tests cover: each row's control
// (the hazard bites a naive client, or the monitor with the handling off)
// and the test that shows the monitor right. Traffic is proved by a token
// only the guest knows, read from the "dockerd" side through bridge ->
// veth -> tap -> virtio-net.
//
// It needs root, qemu-system-x86 and the guest kernel and initramfs
// (scripts/deps-guest.sh, run on first use); TestDocker also needs the
// Docker binaries (skipped without them, failed under CI=true). Guests run
// one at a time on the machine (a lock in the cache dir); under TCG on two
// busy cores a boot takes seconds.
//
// Covered:
//   - TestModel: katasim alone on the four runtimes: attach, plumbing, PCI
//     path, traffic, routes, the unplug and what it leaves;
//   - hazards_test.go, agent_test.go: the controls, without a monitor
//     (TestShippedSecondNIC, TestDetachByName, TestRollback,
//     TestEndpointWipe, TestDuplicateAttach, TestTapIndexCollision,
//     TestFailedTapSetup, TestMacvtapRoutesGone, TestStaleName,
//     TestDuplicateMAC, TestAgentRules, TestNetNSNotCreated);
//   - TestDocker: the monitor through shimhook.Start against a real Docker
//     29, the sandbox handed over as production hands it (katasim's Port):
//     patched, run/connect/disconnect and three networks at start answer
//     over TCP in both models, plus an agent failure, no free slot, a
//     restart adopting, and the macvtap control; as shipped, the start-time
//     networks through RescanNetwork, a connect refused with the fix named,
//     a reused name left alone; and hypervisors that cannot hot-plug or
//     unplug;
//   - TestMonitorRoutes, TestMonitorNetNSNotCreated: the monitor on a
//     replayed netns, for what Docker does not do on its own.
//
// KNM_TEST_LOG=1 prints the monitor's whole debug log; info and above are
// always in the test log.
package guest
