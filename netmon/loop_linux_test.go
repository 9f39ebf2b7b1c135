package netmon

import (
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/netmon/view"
)

type kindCounter struct{ seen, skipped map[string]int }

func (k *kindCounter) EventSeen(kind string)   { k.seen[kind]++ }
func (k *kindCounter) Undecodable(kind string) { k.skipped[kind]++ }
func (k *kindCounter) Resynced()               {}
func (k *kindCounter) Panicked(string)         {}

// TestUndecodableEventSkipped: bytes no decoder accepts, injected where the
// loop applies the socket's events. Each is skipped and counted, warned
// about at a limited rate (with the stack when decoding panicked), and its
// table re-listed; a link asks for a resync. The events around it apply.
func TestUndecodableEventSkipped(t *testing.T) {
	logger, hook := test.NewNullLogger()
	logger.Out = io.Discard
	logger.SetLevel(logrus.DebugLevel)
	obs := &kindCounter{seen: map[string]int{}, skipped: map[string]int{}}
	m := &Monitor{cfg: Config{Observer: obs}, log: logrus.NewEntry(logger), st: newState(), decodeWarn: limiter{every: warnEvery}}

	badRoute := routeBytes(unix.RTM_NEWROUTE, 0, view.FamilyV4, "10.0.0.0/8", 2, "", 0)
	binary.NativeEndian.PutUint16(badRoute.Data[unix.SizeofRtMsg:], 0xfff0)
	badAddr := addrBytes(view.FamilyV4, "10.1.2.3/24", "", 2)
	badAddr.Data = badAddr.Data[:3]
	if err := m.handleEvent(linkBytes(2, "ifb2", []byte("ifb\x00"))); err != nil {
		t.Fatal(err)
	}
	if err := m.handleEvent(badRoute); err != nil {
		t.Errorf("undecodable route: %v, want it skipped", err)
	}
	if err := m.handleEvent(badAddr); err != nil {
		t.Errorf("undecodable address: %v, want it skipped", err)
	}
	if err := m.handleEvent(addrBytes(view.FamilyV4, "10.9.0.1/24", "10.9.0.1", 2)); err != nil {
		t.Fatal(err)
	}
	if !m.st.relistRoutes || !m.st.relistAddrs {
		t.Errorf("relist routes %v addresses %v, want both", m.st.relistRoutes, m.st.relistAddrs)
	}
	if len(m.st.addrs[2]) != 1 || m.st.links[2] == nil {
		t.Errorf("the decodable events around them were not applied: links %v addrs %v", m.st.links, m.st.addrs)
	}
	err := m.handleEvent(linkBytes(3, "x", nil)) // LinkDeserialize panics on an empty kind
	if !errors.Is(err, errUndecodable) {
		t.Errorf("undecodable link: %v, want errUndecodable (a resync)", err)
	}
	if obs.skipped[kindRoute] != 1 || obs.skipped[kindAddress] != 1 || obs.skipped[kindLink] != 1 ||
		obs.seen[kindLink] != 1 || obs.seen[kindAddress] != 1 {
		t.Errorf("seen %v skipped %v", obs.seen, obs.skipped)
	}
	// One warning (the first), the rest at debug level; the panic's stack
	// is on its line.
	var warns, stacks int
	for _, e := range hook.AllEntries() {
		if e.Message != "netlink message skipped: cannot decode it" {
			continue
		}
		if e.Level == logrus.WarnLevel {
			warns++
		}
		if e.Data["stack"] != nil {
			stacks++
		}
	}
	if warns != 1 || stacks != 1 {
		t.Errorf("%d warnings, %d lines with a stack; want 1 and 1", warns, stacks)
	}
}
