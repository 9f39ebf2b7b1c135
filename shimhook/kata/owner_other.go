//go:build !linux

package kata

import "errors"

func kataOwnsLink(netnsPath, name string) (bool, error) {
	return false, errors.New("network namespaces are Linux only")
}
