//go:build !linux

package nsfs

import (
	"errors"
	"fmt"
)

var errNotLinux = errors.New("network namespaces need Linux")

// ErrNotNetNS is returned for a file that is not a network namespace.
var ErrNotNetNS = errors.New("not a network namespace")

// ID identifies a namespace.
type ID struct{ Dev, Ino uint64 }

func (id ID) String() string { return fmt.Sprintf("net:[%d] (dev %d)", id.Ino, id.Dev) }

// File is an open network namespace file; off Linux there are none.
type File struct{}

// Open fails off Linux.
func Open(string) (*File, error) { return nil, errNotLinux }

// Stat fails off Linux.
func Stat(string) (ID, error) { return ID{}, errNotLinux }

// Close does nothing.
func (f *File) Close() error { return nil }

// DoPath fails off Linux.
func DoPath(string, func() error) error { return errNotLinux }

// FD returns -1 off Linux.
func (f *File) FD() int { return -1 }

// ID returns the zero ID off Linux.
func (f *File) ID() ID { return ID{} }
