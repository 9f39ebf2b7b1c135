package kata

import (
	"testing"

	"go.uber.org/goleak"
)

// Kata's shim service (reach_test.go) starts two goroutines that live as
// long as the process: they are Kata's, not ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2.(*service).processExits"),
		goleak.IgnoreAnyFunction("github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2.(*logForwarder).forward"),
		goleak.IgnoreAnyFunction("github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2.(*containerdForwarder).forward"),
	)
}
