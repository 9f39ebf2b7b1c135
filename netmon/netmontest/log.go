package netmontest

import (
	"io"
	"os"
	"testing"

	"github.com/sirupsen/logrus"
)

// LogWriter writes into t's log when KNM_TEST_LOG is set, and discards
// otherwise: the monitor's debug logs are there when a failure needs them,
// without drowning every passing run.
func LogWriter(t testing.TB) io.Writer {
	if os.Getenv("KNM_TEST_LOG") == "" {
		return io.Discard
	}
	return tWriter{t}
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

// Log returns a debug-level entry writing to LogWriter(t), with a "test"
// field.
func Log(t testing.TB) *logrus.Entry {
	l := logrus.New()
	l.SetLevel(logrus.DebugLevel)
	l.SetOutput(LogWriter(t))
	return logrus.NewEntry(l).WithField("test", t.Name())
}
