// Package hotplugtest holds fakes for tests of code that drives the hotplug
// port: a FakeSandbox that behaves like Kata 4.1's sandbox network API (an
// in-memory guest, a call log, waits with deadlines), a FakeSource standing in
// for netmon's monitor, and builders for Docker-endpoint-shaped links and
// routes.
//
// It owns no production behaviour and must only be imported by tests. It does
// not model the hypervisor, the agent's PCI-path bug or Kata's forgetting of
// its endpoint list: tests that need those override the function fields.
package hotplugtest
