//go:build !linux

package shimhook

import "errors"

type nsID struct{ dev, ino uint64 }

var errNotLinux = errors.New("network namespaces need Linux")

func statNetNS(string) (nsID, error)            { return nsID{}, errNotLinux }
func validateAnnotatedNetNS(string, nsID) error { return errNotLinux }
