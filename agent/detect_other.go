//go:build !linux

package agent

import (
	"errors"
	"fmt"
)

// DetectAddress needs netlink, which only Linux has.
func DetectAddress(netnsPath, ip, method string) (HostAddress, error) {
	return HostAddress{}, fmt.Errorf("%w: address detection needs Linux: %w", ErrDetect, errors.ErrUnsupported)
}
