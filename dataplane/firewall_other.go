//go:build !linux

package dataplane

import "twill.dev/twill/plan"

// ApplyFirewall fails outside Linux.
func (r *Reconciler) ApplyFirewall(plan.Firewall) (Result, error) { return Result{}, errNotLinux }

// ObserveFirewall fails outside Linux.
func (r *Reconciler) ObserveFirewall() (ObservedFirewall, error) {
	return ObservedFirewall{}, errNotLinux
}
