//go:build !linux

package shimhook

import (
	"errors"

	"github.com/kata-netmon/kata-netmon/internal/nsfs"
)

func openAnnotatedNetNS(string, nsfs.ID) (*nsfs.File, error) {
	return nil, errors.New("network namespaces need Linux")
}
