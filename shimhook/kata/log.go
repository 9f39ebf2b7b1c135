package kata

import (
	"github.com/sirupsen/logrus"
)

// newLogger returns kata-netmon's logger. It writes where the shim's
// standard logrus logger writes, with its formatter, both read at write time
// (containerd's shim.Run points them at the shim's log only after Kata's New
// has run), but has its own level, so log_level = "debug" does not turn on
// Kata's debug logging, and the reverse.
func newLogger() *logrus.Logger {
	l := logrus.New()
	l.Out = stdWriter{}
	l.Formatter = stdFormatter{}
	l.Level = logrus.GetLevel()
	return l
}

// setLevel applies a level from Settings ("" follows the shim's).
func setLevel(l *logrus.Logger, level string) {
	if level == "" {
		l.SetLevel(logrus.GetLevel())
		return
	}
	if lv, err := logrus.ParseLevel(level); err == nil {
		l.SetLevel(lv)
	}
}

type stdWriter struct{}

func (stdWriter) Write(p []byte) (int, error) { return logrus.StandardLogger().Out.Write(p) }

type stdFormatter struct{}

func (stdFormatter) Format(e *logrus.Entry) ([]byte, error) {
	return logrus.StandardLogger().Formatter.Format(e)
}
