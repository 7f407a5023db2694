package kube

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// gcMetrics are the GC's Prometheus metrics.
type gcMetrics struct {
	released   *prometheus.CounterVec
	passes     prometheus.Counter
	passErrors prometheus.Counter
	reclaimed  prometheus.Counter
	leader     prometheus.Gauge
}

// newGCMetrics makes the metrics and registers them with reg when it is not
// nil. A collector that reg already holds (a GC made again with the same
// registry) is reused.
func newGCMetrics(reg prometheus.Registerer) (*gcMetrics, error) {
	m := &gcMetrics{
		released: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twill_ipam_gc_released_total",
			Help: "Addresses released by the IPAM garbage collector, by reason.",
		}, []string{"reason"}),
		passes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twill_ipam_gc_passes_total",
			Help: "IPAM garbage collection passes run by this agent as leader.",
		}),
		passErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twill_ipam_gc_pass_errors_total",
			Help: "IPAM garbage collection passes that failed to read their inputs or to perform an action.",
		}),
		reclaimed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twill_ipam_gc_blocks_reclaimed_total",
			Help: "Empty IPAM blocks reclaimed by the garbage collector.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "twill_ipam_gc_leader",
			Help: "1 while this agent holds the IPAM garbage collector's Lease, else 0.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.released, err = register(reg, m.released); err != nil {
		return nil, err
	}
	if m.passes, err = register(reg, m.passes); err != nil {
		return nil, err
	}
	if m.passErrors, err = register(reg, m.passErrors); err != nil {
		return nil, err
	}
	if m.reclaimed, err = register(reg, m.reclaimed); err != nil {
		return nil, err
	}
	if m.leader, err = register(reg, m.leader); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the equal collector reg already has.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if old, ok := are.ExistingCollector.(C); ok {
			return old, nil
		}
	}
	var zero C
	return zero, fmt.Errorf("kube: register GC metrics: %w", err)
}
