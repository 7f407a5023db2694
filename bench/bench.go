// Package bench measures Twill's figures against same-run baselines and
// their goals (`twill bench`): self-heal, convergence, CNI ADD latency, a
// 100-pod burst, pod-to-pod throughput, scale (plan + reconcile time and
// the agent's memory) and IPAM throughput. It builds the seed lab itself
// (package lab: real etcd, real `twill node run` agents, pods through
// libcni and the twill-cni plugin), measures, and tears everything down,
// on success, failure and Ctrl-C. With Options.Kubernetes it then builds
// the seed lab again on the Kubernetes datastore and measures the figures
// the datastore takes part in there too, each set against its etcd row.
//
// Every figure is set next to a baseline measured in the same run on the
// same machine, and the table's ratio is figure ÷ baseline. Timings come
// from the monotonic clock; warm-up runs are excluded; p50/p99 are
// nearest-rank percentiles of the real samples (Percentile).
//
// The measurement cores (HealSamples, AddSamples, ConvergenceSamples,
// PutWatchSamples, ScaleCluster, ReconcileOnce, Plumbing) are exported so
// that the packages' go test benchmarks call the same code.
package bench

import (
	"errors"
	"io"
	"time"
)

// Errors Run returns, matched with errors.Is.
var (
	// ErrNotRoot: the bench builds network namespaces.
	ErrNotRoot = errors.New("twill bench builds network namespaces and needs root: run it with sudo")
	// ErrFigures: some figures could not be measured; their rows say why.
	ErrFigures = errors.New("some figures could not be measured")
	// ErrBusy: another bench runs with the same state directory.
	ErrBusy = errors.New("another twill bench is running")
)

// Defaults of Options.
const (
	// DefaultStateDir is the bench lab's state directory, apart from
	// `twill lab`'s, so that a bench never meets a lab a person started.
	DefaultStateDir = "/run/twill-bench"
	// LabPrefix starts the namespaces of the bench's seed lab; the scale
	// lab uses ScalePrefix. Namespaces the bench makes itself start with
	// "twbh-" (hand-built throughput paths), "twbp-" (extra pods) and
	// "twbr-" (the reconcile figure).
	LabPrefix   = "twb"
	ScalePrefix = "twbs"
)

// Options configure Run.
type Options struct {
	// Quick runs the reduced version (fewer samples, a smaller scale
	// cluster, shorter iperf3 runs): every figure, in under two minutes.
	Quick bool
	// Only names the one figure to run (one of Figures); "" runs all.
	Only string
	// Exe is the twill binary the labs run as etcd and agents; default
	// the running binary.
	Exe string
	// CNIPlugin is the twill-cni binary; default twill-cni next to Exe.
	CNIPlugin string
	// StateDir holds the bench labs' state; default DefaultStateDir.
	StateDir string
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// Kubernetes measures the figures the datastore takes part in
	// (KubeFigures: convergence, cni-add, ipam) a second time, on the seed
	// lab built on the Kubernetes datastore (a kube-apiserver on the lab's
	// etcd, which needs the binary scripts/kube-build.sh builds), each row
	// set against the same figure's etcd row.
	Kubernetes bool
}

// datastoreKubernetes is the Datastore of the rows measured on the Kubernetes
// datastore.
const datastoreKubernetes = "kubernetes"

// KubeFigures are the figures Options.Kubernetes measures on the
// Kubernetes datastore too.
var KubeFigures = []string{FigConvergence, FigCNIAdd, FigIPAM}

// sizes are the sample counts and durations of one run.
type sizes struct {
	heal, converge, cni int // latency samples per case
	burstRounds         int
	iperfSeconds        int
	iperfRounds         int
	scaleRounds         int
	scalePeers          int
	scalePodsPerPeer    int
	ipamN               int
	warmup              int
	rssTimeout          time.Duration
}

func sizesFor(quick bool) sizes {
	if quick {
		return sizes{heal: 20, converge: 20, cni: 20, burstRounds: 1, iperfSeconds: 1, iperfRounds: 1,
			scaleRounds: 1, scalePeers: 500, scalePodsPerPeer: 20, ipamN: 200, warmup: 2, rssTimeout: 60 * time.Second}
	}
	return sizes{heal: 200, converge: 200, cni: 200, burstRounds: 3, iperfSeconds: 3, iperfRounds: 3,
		scaleRounds: 3, scalePeers: 5000, scalePodsPerPeer: 20, ipamN: 1000, warmup: 3, rssTimeout: 4 * time.Minute}
}
