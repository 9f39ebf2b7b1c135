// Package prereq holds the rule every e2e test and benchmark follows when
// something it needs is missing: skip when CI is not "true", fail under
// CI=true, so that a CI job that lost a prerequisite cannot pass by
// skipping. Root alone is checked with netmontest.RequireRoot, which follows
// the same rule; Missing is for everything else (binaries, packages, an OS).
package prereq

import (
	"os"
	"testing"
)

// Missing reports that what the test needs is missing (why says what, and
// how to install it): it fails tb under CI=true and skips it otherwise.
func Missing(tb testing.TB, why string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatal(why + " (CI=true: not skipping)")
	}
	tb.Skip(why)
}
