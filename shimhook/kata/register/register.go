// Package register registers kata-netmon's network monitor with Kata's
// containerd shim (containerdshim.SetNetworkMonitorFactory, the hook of
// kata-netmon's Kata series) when it is imported. build.sh blank-imports it
// into Kata's own containerd-shim-kata-v2 ("patch mode"); the drop-in
// containerd-shim-kata-netmon-v2 imports it too.
package register

import (
	containerdshim "github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2"

	"github.com/kata-netmon/kata-netmon/shimhook/kata"
)

func init() { containerdshim.SetNetworkMonitorFactory(kata.Factory) }
