package hotplug_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: the
// reconciler starts one per sandbox call and may abandon it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
