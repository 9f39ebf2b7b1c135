//go:build linux

package main

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// printer writes one line per event: the time since the demo started, who
// speaks, and the text. Sources:
//
//	demo     the demo's own steps ("==>") and results ("   ")
//	env      the Docker environment and the guest package (their progress)
//	monitor  kata-netmon's own log lines (logrus), with their level
type printer struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func newPrinter(out io.Writer) *printer { return &printer{out: out, start: time.Now()} }

func (p *printer) since() string {
	return fmt.Sprintf("+%7.3fs", time.Since(p.start).Seconds())
}

func (p *printer) line(source, text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ts := p.since()
	for i, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		if i == 0 {
			fmt.Fprintf(p.out, "%s  %-7s  %s\n", ts, source, l)
		} else {
			fmt.Fprintf(p.out, "%s  %-7s  %s\n", strings.Repeat(" ", len(ts)), "", l)
		}
	}
}

// step announces what the demo does next.
func (p *printer) step(format string, args ...any) {
	p.line("demo", "==> "+fmt.Sprintf(format, args...))
}

// ok reports a result of the current step.
func (p *printer) ok(format string, args ...any) { p.line("demo", "    "+fmt.Sprintf(format, args...)) }

// env is the Logf of the Docker environment and of the guest.
func (p *printer) env(format string, args ...any) { p.line("env", "    "+fmt.Sprintf(format, args...)) }

// monitorFormatter renders kata-netmon's logrus entries as printer lines:
// info and above, plus the debug lines that show the monitor recognising an
// endpoint. It returns nothing for the other debug lines (the logger runs
// at debug level so that those few can be shown).
type monitorFormatter struct{ p *printer }

// shownDebug are the debug messages worth a line in the demo.
var shownDebug = map[string]bool{
	"veth tied to its peer": true,
	"peer facts":            true,
	"netlink: DELLINK":      true,
}

func (f monitorFormatter) Format(e *logrus.Entry) ([]byte, error) {
	if e.Level == logrus.DebugLevel && !shownDebug[e.Message] || e.Level > logrus.DebugLevel {
		return nil, nil
	}
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		switch k {
		case "component", "sandbox", "netns":
			continue // on every line
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s  %-7s  %-5s %s", f.p.since(), "monitor", strings.ToUpper(levelName(e.Level)), e.Message)
	for _, k := range keys {
		v := fmt.Sprint(e.Data[k])
		if k == "peer" {
			v = compactPeer(v)
		}
		if strings.ContainsAny(v, " \t") {
			v = fmt.Sprintf("%q", v)
		}
		fmt.Fprintf(&b, "  %s=%s", k, v)
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

func levelName(l logrus.Level) string {
	if l == logrus.WarnLevel {
		return "warn"
	}
	return l.String()
}

// compactPeer shortens netmon's "%+v" of a Peer to its telling fields.
func compactPeer(s string) string {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	var keep []string
	for _, kv := range strings.Fields(s) {
		k, v, _ := strings.Cut(kv, ":")
		switch k {
		case "State", "Name", "Kind", "PointsBack", "MasterKind":
			if v != "" {
				keep = append(keep, k+":"+v)
			}
		}
	}
	return strings.Join(keep, ",")
}

// printerWriter sends the formatter's bytes to the printer's output as is.
type printerWriter struct{ p *printer }

func (w printerWriter) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}
