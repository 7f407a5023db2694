package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"twill.dev/twill/dataplane"
)

// metrics are the agent's Prometheus metrics, on a registry of its own.
type metrics struct {
	reg             *prometheus.Registry
	reconciles      *prometheus.CounterVec
	reconcileTime   prometheus.Histogram
	heals           *prometheus.CounterVec
	datastoreErrors prometheus.Counter
	relists         *prometheus.CounterVec
	cniRequests     *prometheus.CounterVec
	cniTime         *prometheus.HistogramVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twill_reconcile_total",
			Help: "Reconciles of the kernel with the plan, by result (ok, error).",
		}, []string{"result"}),
		reconcileTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twill_reconcile_duration_seconds",
			Help:    "Time to plan and apply one full reconcile.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		heals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twill_heals_total",
			Help: "Kernel objects restored after a kernel event moved them away from the plan, by kind (route, neigh, fdb, device, address).",
		}, []string{"kind"}),
		datastoreErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twill_datastore_errors_total",
			Help: "Failed datastore lists, watches and registration writes.",
		}),
		relists: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twill_datastore_lists_total",
			Help: "Lists of one kind of datastore object into the agent's cache (the first, and one after every watch that ended), by kind.",
		}, []string{"kind"}),
		cniRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twill_cni_requests_total",
			Help: "Requests on the CNI socket, by operation and result (ok or an error code).",
		}, []string{"op", "result"}),
		cniTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "twill_cni_request_duration_seconds",
			Help:    "Time to serve one request on the CNI socket, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"op"}),
	}
	m.reg.MustRegister(m.reconciles, m.reconcileTime, m.heals, m.datastoreErrors, m.relists, m.cniRequests, m.cniTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{"ok", "error"} {
		m.reconciles.WithLabelValues(r)
	}
	for _, k := range healKinds {
		m.heals.WithLabelValues(k)
	}
	for _, k := range cachedKinds {
		m.relists.WithLabelValues(string(k))
	}
	return m
}

// healKinds are the label values of twill_heals_total.
var healKinds = []string{"route", "neigh", "fdb", "device", "address"}

// heals counts, per kind, the objects an Apply added or updated.
func heals(r dataplane.Result) map[string]int {
	return map[string]int{
		"route":   r.Routes.Added + r.Routes.Updated,
		"neigh":   r.Neighbors.Added + r.Neighbors.Updated,
		"fdb":     r.FDB.Added + r.FDB.Updated,
		"device":  r.Device.Added + r.Device.Updated,
		"address": r.Addresses.Added + r.Addresses.Updated,
	}
}
