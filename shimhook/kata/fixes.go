package kata

import "github.com/kata-netmon/kata-netmon/shimhook/katarules"

// The fixes of kata-netmon's Kata series the tree has, as build.sh found
// them: it runs a probe test for each against the tree it builds
// (kataloop/kata_netmon_probe_test.go) and, when the probe passes, links
// the binaries (and the Kata-in-the-loop tests) with
// -ldflags "-X github.com/kata-netmon/kata-netmon/shimhook/kata.fixPCIPath=true"
// and the like. A build without build.sh, or a probe that failed, leaves
// them unset: the adapter then steers around each bug.
var (
	fixPCIPath     string
	fixLinkByIndex string
	fixKeepLinkUp  string
	// fixUnplugGivenNetNS: series patch 0006.
	fixUnplugGivenNetNS string
)

// TreeFixes returns the fixes the tree this binary was built from has.
func TreeFixes() katarules.Fixes {
	return katarules.Fixes{
		PCIPath:     fixPCIPath == "true",
		LinkByIndex: fixLinkByIndex == "true",
		KeepLinkUp:  fixKeepLinkUp == "true",
		// Hot unplug in a netns Kata did not create (0006).
		UnplugGivenNetNS: fixUnplugGivenNetNS == "true",
	}
}

// VerifiedKata is the Kata release and commit the series and kata-netmon
// were verified against (docs/kata.md).
const VerifiedKata = "4.1.0 (commit 7c6ba40c54)"
