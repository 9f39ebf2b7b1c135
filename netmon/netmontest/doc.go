// Package netmontest holds small kernel helpers for tests that need real
// network namespaces (netmon's own tests and e2e): a fresh named netns per
// test, netlink handles bound to a netns, and a replay of Docker's veth
// sequence step by step. Everything registers its cleanup with t.Cleanup.
// The helpers need root; RequireRoot skips otherwise (fails when CI=true).
//
// It must not import netmon (netmon's internal tests import it).
package netmontest
