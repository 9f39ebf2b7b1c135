//go:build linux

package benchguest

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// ---------------------------------------------------------------------------
// table: named series of durations, rendered as p50 / p99 / max

type table struct {
	order []string
	vals  map[string][]time.Duration
	notes map[string]map[string]int
}

func (t *table) add(name string, d time.Duration) {
	if t.vals == nil {
		t.vals = map[string][]time.Duration{}
	}
	if _, ok := t.vals[name]; !ok {
		t.order = append(t.order, name)
	}
	t.vals[name] = append(t.vals[name], d)
}

func (t *table) note(name, what string) {
	if t.notes == nil {
		t.notes = map[string]map[string]int{}
	}
	if t.notes[name] == nil {
		t.notes[name] = map[string]int{}
	}
	t.notes[name][what]++
}

func (t *table) p50(name string) time.Duration {
	v := slices.Clone(t.vals[name])
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// p99 is the nearest-rank 99th percentile (the maximum below 100 rounds).
func (t *table) p99(name string) time.Duration {
	v := slices.Clone(t.vals[name])
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[max(0, (len(v)*99+99)/100-1)]
}

func (t *table) max(name string) time.Duration {
	if len(t.vals[name]) == 0 {
		return 0
	}
	return slices.Max(t.vals[name])
}

func (t *table) render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| %-66s | %9s | %9s | %9s |\n|%s|%s|%s|%s|\n", "", "p50", "p99", "max", strings.Repeat("-", 68),
		strings.Repeat("-", 11), strings.Repeat("-", 11), strings.Repeat("-", 11))
	for _, name := range t.order {
		label := strings.ReplaceAll(name, "  ", "\u00a0\u00a0")
		fmt.Fprintf(&b, "| %-66s | %9s | %9s | %9s |\n", label, fmtDur(t.p50(name)), fmtDur(t.p99(name)), fmtDur(t.max(name)))
		if ns := t.notes[name]; len(ns) > 0 {
			var parts []string
			for w, c := range ns {
				parts = append(parts, fmt.Sprintf("%s x%d", w, c))
			}
			sort.Strings(parts)
			fmt.Fprintf(&b, "| %-66s | %9s | %9s | %9s |\n", "\u00a0\u00a0\u00a0\u00a0(last event: "+strings.Join(parts, ", ")+")", "", "", "")
		}
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
