// Package guest tests hot-plug into a real QEMU guest (TCG, a Debian cloud
// kernel and the e2e agent, booted by e2e/internal/guest) behind
// e2e/internal/katasim, a sandbox that does what Kata 4.1's Go runtime does
// with QEMU (tap, tc mirred, QMP getfd/netdev_add/device_add, the agent).
// Traffic is proved by a token only the guest knows, read from the
// "dockerd" side through bridge -> veth -> tc mirred -> tap -> virtio-net.
//
// It needs root, qemu-system-x86 and the guest kernel and initramfs
// (scripts/deps-guest.sh, run on first use); TestDocker also needs the
// Docker binaries (skipped without them, failed under CI=true). Guests run
// one at a time on the machine (a lock in the cache dir); under TCG on two
// busy cores a boot takes seconds.
//
// Covered: TestHotplugTraffic, katasim alone on two netns without Docker
// (attach two NICs, Kata's PCI-path bug copied, routes, traffic through each
// NIC, unplug, and the Cloud Hypervisor and Firecracker capabilities);
// TestDocker, the monitor through shimhook.Start against a real Docker 29
// and a guest behind a container (e2e/internal/dockerguest): eth0 attached
// before Start returns (the Docker 28+ order), connect --gw-priority and
// disconnect with the default route following, and a sandbox that cannot
// hot-plug (the monitor does not start) or cannot unplug (it warns and goes
// on).
//
// KNM_TEST_LOG=1 prints the monitor's whole debug log; info and above are
// always in the test log.
package guest
