//go:build !linux

package bench

import (
	"context"
	"errors"
)

// ErrNotLinux: the bench needs Linux network namespaces.
var ErrNotLinux = errors.New("twill bench needs Linux network namespaces")

// Run needs Linux; elsewhere it fails with ErrNotLinux.
func Run(context.Context, Options) ([]Row, error) { return nil, ErrNotLinux }
