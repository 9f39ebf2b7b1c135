package katarules

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kata-netmon/kata-netmon/hotplug"
)

// deadTexts are what Kata's errors say when the sandbox is gone for good:
// the agent's connection is closed (kata_agent.go: "Dead agent"; ttrpc's
// ErrClosed, "ttrpc: closed") or the sandbox is not running
// ("Sandbox not running"). Kata returns them as text only.
var deadTexts = []string{"Dead agent", "ttrpc: closed", "Sandbox not running"}

// markDead wraps hotplug.ErrSandboxDead around err when Kata's error says
// the sandbox is gone, so the reconciler stops calling it.
func markDead(err error) error {
	if err == nil || errors.Is(err, hotplug.ErrSandboxDead) {
		return err
	}
	s := err.Error()
	for _, t := range deadTexts {
		if strings.Contains(s, t) {
			return fmt.Errorf("%w: %w", hotplug.ErrSandboxDead, err)
		}
	}
	return err
}

// hint names the likely cause of a failed call, for the log ("" when there
// is nothing to add).
func hint(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "Link not found"), strings.Contains(s, "interface not available"):
		// kata_agent.go updateInterface retries "Link not found" for hours;
		// the agent looks the NIC up by its PCI path, then by MAC, then (4.1)
		// by name.
		return ": the guest has no NIC with this MAC (not probed yet, or announced with another NIC's PCI path: see docs/kata.md)"
	case strings.Contains(s, "_kata") && (strings.Contains(s, "exists") || strings.Contains(s, "busy")):
		return ": Kata picked the tap of a live endpoint (fixed by the series' patch 0007) or an earlier failed attach left it behind"
	case strings.Contains(s, "No such device"):
		return ": a route names a device the guest does not have (the agent looks devices up by name and fails the whole call)"
	}
	return ""
}
