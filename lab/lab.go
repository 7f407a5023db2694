package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"time"

	"twill.dev/twill/datastore/open"
)

// Stage is how far `up` builds the lab; each stage includes the ones before.
type Stage string

// Stages of `twill lab up`.
const (
	// StageNetwork: namespaces, the router, eth0s and routes.
	StageNetwork Stage = "network"
	// StageDatastore: plus the embedded etcd, the pools and pinned blocks.
	StageDatastore Stage = "datastore"
	// StageAgents: plus one node agent per node, converged.
	StageAgents Stage = "agents"
	// StagePods: plus the pods, plumbed by the PodAdder.
	StagePods Stage = "pods"
)

var stages = []Stage{StageNetwork, StageDatastore, StageAgents, StagePods}

// ParseStage checks a stage name.
func ParseStage(s string) (Stage, error) {
	for _, st := range stages {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("unknown stage %q: use network, datastore, agents or pods", s)
}

// includes reports whether building up to s includes stage o.
func (s Stage) includes(o Stage) bool {
	idx := func(x Stage) int {
		for i, st := range stages {
			if st == x {
				return i
			}
		}
		return len(stages) - 1
	}
	return idx(o) <= idx(s)
}

// Defaults of Options.
const (
	DefaultConvergeTimeout = 90 * time.Second
	DefaultPingTimeout     = time.Second
	DefaultKubeGCGrace     = 3 * time.Second
	DefaultKubeGCInterval  = 2 * time.Second
)

// Options configure the lab operations. The zero value works: state in
// DefaultStateDir, names prefixed DefaultPrefix, the running twill binary,
// up to StagePods, no progress output.
type Options struct {
	// StateDir holds state.json, the lock, logs and sockets.
	StateDir string
	// Prefix starts every namespace name: "tw" and up to 6 more lower-case
	// letters or digits. Tests use their own so that they never meet a
	// lab a person started.
	Prefix string
	// Exe is the twill binary run as `datastore run` and `node run`;
	// default os.Executable().
	Exe string
	// Until is the last stage Up builds; default StagePods.
	Until Stage
	// Out receives progress lines; nil discards them.
	Out io.Writer
	// ConvergeTimeout bounds the wait for the agents' routes.
	ConvergeTimeout time.Duration
	// Pods plumbs the pods; nil leaves the pod stage undone (with a note).
	Pods PodAdder
	// AgentLogLevel is passed to each agent as --log-level (default info).
	AgentLogLevel string
	// CNIPlugin is the twill CNI plugin binary the default PodAdder
	// installs; default twill-cni next to Exe.
	CNIPlugin string
	// KeepLogs makes Down keep the logs in StateDir.
	KeepLogs bool
	// PingTimeout bounds each ping of the report (default 1s).
	PingTimeout time.Duration
	// Datastore is where the agents keep their state: open.TypeEtcd (the
	// default) is the embedded etcd; open.TypeKubernetes is a
	// kube-apiserver on loopback backed by that etcd, with Twill's CRDs,
	// one v1.Node per lab node and one v1.Pod per lab pod.
	Datastore string
	// KubeGCGrace and KubeGCInterval are the agents' --ipam-gc-grace and
	// --ipam-gc-interval on the kubernetes datastore (defaults
	// DefaultKubeGCGrace and DefaultKubeGCInterval: short, so that the lab
	// shows the garbage collector at work within seconds).
	KubeGCGrace, KubeGCInterval time.Duration
}

func (o Options) withDefaults() Options {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Until == "" {
		o.Until = StagePods
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.ConvergeTimeout <= 0 {
		o.ConvergeTimeout = DefaultConvergeTimeout
	}
	if o.AgentLogLevel == "" {
		o.AgentLogLevel = "info"
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = DefaultPingTimeout
	}
	if o.Datastore == "" {
		o.Datastore = open.TypeEtcd
	}
	if o.KubeGCGrace <= 0 {
		o.KubeGCGrace = DefaultKubeGCGrace
	}
	if o.KubeGCInterval <= 0 {
		o.KubeGCInterval = DefaultKubeGCInterval
	}
	return o
}

func (o Options) progress(format string, args ...any) {
	fmt.Fprintf(o.Out, "lab: "+format+"\n", args...)
}

// agentSocket is node's CNI socket path.
func agentSocket(dir, node string) string { return filepath.Join(dir, node+".sock") }

// podWorkDir is the PodAdder's directory below the state directory.
func podWorkDir(dir string) string { return filepath.Join(dir, "pods") }

// PodIfName is the pod-side interface name of every lab pod.
const PodIfName = "eth0"

// PodSpec is one pod the lab asks a PodAdder to plumb. The lab has created
// the pod's network namespace (NetnsPath) when AddPod is called.
type PodSpec struct {
	PodLayout
	// NetnsPath is the pod namespace's path, CNI_NETNS.
	NetnsPath string
	// IfName is CNI_IFNAME (PodIfName).
	IfName string
	// NodeNetnsPath is the node's namespace. The node is the pod's host: a
	// CNI plugin must run inside this namespace (not the root one), so
	// that the host side of the pod's veth lands on the node.
	NodeNetnsPath string
	// AgentSocket is the node agent's CNI socket.
	AgentSocket string
	// PodUID is the UID of the pod's v1.Pod object, passed as CNI_ARGS
	// K8S_POD_UID; empty on the etcd datastore, where no such object
	// exists.
	PodUID string
	// WorkDir is a directory for the adder's files (CNI configurations,
	// caches, logs); the lab creates it before the first pod and removes
	// it on Down. An adder writes nothing elsewhere.
	WorkDir string
}

// PodResult is what plumbing a pod gave it.
type PodResult struct {
	// Address is the pod's address, a /32.
	Address netip.Prefix
	// HostIface is the host-side veth on the node.
	HostIface string
}

// PodAdder plumbs lab pods, as a container runtime would through CNI. The
// CNI plugin's engineer implements it with libcni; the lab only creates
// and removes the namespaces.
type PodAdder interface {
	// AddPod attaches the pod (CNI ADD) and returns its address.
	AddPod(ctx context.Context, p PodSpec) (PodResult, error)
	// DelPod detaches it (CNI DEL); a pod already gone is not an error.
	DelPod(ctx context.Context, p PodSpec) error
}
