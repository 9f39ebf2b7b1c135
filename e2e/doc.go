// Package e2e tests kata-netmon against the real kernel, a real Docker 29
// (e2e/internal/dockerenv) and a real QEMU guest behind a sandbox with Kata
// 4.1's semantics (e2e/internal/guest, e2e/internal/katasim). Everything is
// in its _test.go files; the tests need root, and under CI=true a missing
// prerequisite fails instead of skipping.
package e2e
