package netmontest

import (
	"bytes"
	"crypto/rand"
	"net"
	"sync"
)

// RandMAC returns a random unicast, locally administered MAC, as Docker 28+
// gives its endpoints.
func RandMAC() net.HardwareAddr {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	b[0] = (b[0] | 0x02) &^ 0x01
	return b
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers and readers: a
// place to keep a monitor's or a command's log for assertions and for
// printing when a test fails.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
