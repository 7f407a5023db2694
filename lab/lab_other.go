//go:build !linux

package lab

import (
	"context"
	"io"
)

// Up needs Linux network namespaces; elsewhere it fails with ErrNotLinux.
func Up(context.Context, *Topology, Options) error { return ErrNotLinux }

// Down needs Linux; elsewhere it fails with ErrNotLinux.
func Down(context.Context, Options) error { return ErrNotLinux }

// Status needs Linux; elsewhere it fails with ErrNotLinux.
func Status(context.Context, Options) (*StatusReport, error) { return nil, ErrNotLinux }

// Report needs Linux; elsewhere it fails with ErrNotLinux.
func Report(context.Context, Options) (*LabReport, error) { return nil, ErrNotLinux }

// Exec needs Linux; elsewhere it fails with ErrNotLinux.
func Exec(context.Context, Options, string, []string, io.Reader, io.Writer, io.Writer) (int, error) {
	return 0, ErrNotLinux
}

// APIServerConfig configures RunAPIServer.
type APIServerConfig struct {
	Dir         string
	EtcdServers []string
	Binary      string
}

// RunAPIServer needs Linux; elsewhere it fails with ErrNotLinux.
func RunAPIServer(context.Context, APIServerConfig, io.Writer) error { return ErrNotLinux }

// NewCNIPodAdder needs Linux; elsewhere it fails with ErrNotLinux.
func NewCNIPodAdder(Options) (PodAdder, error) { return nil, ErrNotLinux }
