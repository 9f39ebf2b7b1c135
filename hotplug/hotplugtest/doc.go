// Package hotplugtest holds fakes for tests of code that drives the hotplug
// port: a FakeSandbox that behaves like Kata 4.1's sandbox network API (an
// in-memory guest, a call log, a log of the guest's changes, waits with
// deadlines), a FakeSource standing in for netmon's monitor, and builders
// for Docker-endpoint-shaped links and routes.
//
// FakeSandbox is the one in-memory Kata-like sandbox of the module's tests
// and benchmarks (hotplug, shimhook, e2e): a test that needs another
// behaviour overrides its function fields instead of writing a sandbox of
// its own, so every test agrees with Kata on the same rules (a duplicate MAC
// is attached twice and detached first-in first-out; see FakeSandbox).
//
// It owns no production behaviour and must only be imported by tests. It does
// not model the hypervisor, the agent's PCI-path bug or Kata's forgetting of
// its endpoint list: tests that need those override the function fields.
package hotplugtest
