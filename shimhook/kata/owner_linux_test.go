package kata

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// kataOwnsLink against a real netns: what Kata's tcfilter and macvtap
// models leave on a link, and a plain Docker veth. Needs root and ip/tc.
func TestKataOwnsLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found", tool)
		}
	}
	ns := fmt.Sprintf("knm-own-%06x", rand.IntN(1<<24))
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	path := "/run/netns/" + ns
	run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
	run("ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "peer1")
	run("ip", "-n", ns, "link", "add", "eth2", "type", "veth", "peer", "name", "peer2")
	// Kata's tcfilter model on eth1 (setupTCFiltering): ingress + mirred.
	run("ip", "-n", ns, "tuntap", "add", "tap0_kata", "mode", "tap")
	run("tc", "-n", ns, "qdisc", "add", "dev", "eth1", "ingress")
	run("tc", "-n", ns, "filter", "add", "dev", "eth1", "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0",
		"action", "mirred", "egress", "redirect", "dev", "tap0_kata")
	// Kata's macvtap model on eth2 (tapNetworkPair), if macvtap exists here.
	macvtap := exec.Command("ip", "-n", ns, "link", "add", "link", "eth2", "name", "tap1_kata", "type", "macvtap").Run() == nil

	tests := []struct {
		link string
		want bool
		skip bool
	}{
		{"eth0", false, false},
		{"eth1", true, false},
		{"eth2", true, !macvtap},
		{"gone", false, false},
	}
	for _, tt := range tests {
		if tt.skip {
			t.Logf("%s: macvtap not available here", tt.link)
			continue
		}
		got, err := kataOwnsLink(path, tt.link)
		if err != nil || got != tt.want {
			t.Errorf("kataOwnsLink(%s) = %v, %v; want %v", tt.link, got, err, tt.want)
		}
	}
	if _, err := kataOwnsLink("", "eth0"); err == nil {
		t.Error("no error without a netns")
	}
}
