//go:build !linux

package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"twill.dev/twill/plan"
)

// errNotLinux is returned on systems without netlink.
var errNotLinux = fmt.Errorf("dataplane: network namespaces and netlink need Linux: %w", errors.ErrUnsupported)

// Reconciler makes one network namespace match plan.Dataplane values; it
// works on Linux only.
type Reconciler struct{}

// New fails outside Linux.
func New(Options) (*Reconciler, error) { return nil, errNotLinux }

// Close does nothing outside Linux.
func (r *Reconciler) Close() error { return nil }

// Apply fails outside Linux.
func (r *Reconciler) Apply(plan.Dataplane) (Result, error) { return Result{}, errNotLinux }

// ApplyDevice fails outside Linux.
func (r *Reconciler) ApplyDevice(*plan.Device) (Result, error) { return Result{}, errNotLinux }

// ApplyNeighbors fails outside Linux.
func (r *Reconciler) ApplyNeighbors([]plan.Neighbor) (Result, error) { return Result{}, errNotLinux }

// ApplyFDB fails outside Linux.
func (r *Reconciler) ApplyFDB([]plan.FDB) (Result, error) { return Result{}, errNotLinux }

// ApplyRoutes fails outside Linux.
func (r *Reconciler) ApplyRoutes([]plan.Route) (Result, error) { return Result{}, errNotLinux }

// UpdateRoutes fails outside Linux.
func (r *Reconciler) UpdateRoutes([]plan.Route) (Result, error) { return Result{}, errNotLinux }

// DeleteRoutes fails outside Linux.
func (r *Reconciler) DeleteRoutes([]netip.Prefix) (Result, error) { return Result{}, errNotLinux }

// Subscribe fails outside Linux.
func (r *Reconciler) Subscribe(context.Context) (<-chan struct{}, error) { return nil, errNotLinux }

// Observe fails outside Linux.
func (r *Reconciler) Observe() (Observed, error) { return Observed{}, errNotLinux }
