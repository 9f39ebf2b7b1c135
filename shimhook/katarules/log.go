package katarules

import (
	"io"

	"github.com/sirupsen/logrus"
)

// Logger returns kata-netmon's logger in the shim: it writes where base's
// logger writes, with its formatter (both read at write time), hooks and
// fields, but has its own level: level ("debug", "info", ...) when not "", else
// base's level. So log_level = "debug" does not turn on Kata's debug
// logging, nor the reverse. A nil base discards.
func Logger(base *logrus.Entry, level string) *logrus.Entry {
	l := logrus.New()
	if base == nil {
		l.Out = io.Discard
		return logrus.NewEntry(l)
	}
	l.Out = writerOf{base.Logger}
	l.Formatter = formatterOf{base.Logger}
	l.Hooks = base.Logger.Hooks // the same map: hooks added to base later count too
	l.Level = base.Logger.GetLevel()
	if lv, err := logrus.ParseLevel(level); err == nil && level != "" {
		l.Level = lv
	}
	return logrus.NewEntry(l).WithFields(base.Data)
}

type writerOf struct{ l *logrus.Logger }

func (w writerOf) Write(p []byte) (int, error) { return w.l.Out.Write(p) }

type formatterOf struct{ l *logrus.Logger }

func (f formatterOf) Format(e *logrus.Entry) ([]byte, error) { return f.l.Formatter.Format(e) }
