package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/open"
)

// DefaultStateDir holds the lab's state file, lock, logs and agent sockets.
const DefaultStateDir = "/run/twill-lab"

// stateVersion is the format version of state.json.
const stateVersion = 1

// Errors Up, Down, Status, Exec and Report return, matched with errors.Is.
var (
	// ErrBusy: another `twill lab up` or `down` holds the lock.
	ErrBusy = errors.New("another lab command is running")
	// ErrAlreadyUp: a lab is up; take it down first.
	ErrAlreadyUp = errors.New("a lab is already up")
	// ErrNotUp: no lab is up (there is no state file).
	ErrNotUp = errors.New("no lab is up")
	// ErrUnknownTarget: an exec target names nothing in the lab.
	ErrUnknownTarget = errors.New("unknown lab target")
	// ErrNoAgent: the twill binary has no `node run` command.
	ErrNoAgent = errors.New("the twill binary has no node agent")
	// ErrNotConverged: the agents did not program the planned routes in time.
	ErrNotConverged = errors.New("the lab did not converge")
	// ErrNotLinux: the lab needs Linux network namespaces.
	ErrNotLinux = errors.New("the lab needs Linux")
)

// Phase says how far a lab got.
type Phase string

// Lab phases, as recorded in the state file.
const (
	PhaseBuilding Phase = "building"
	PhaseUp       Phase = "up"
	PhaseTearDown Phase = "tearing-down"
)

// State is everything a lab created, written to state.json before each
// thing is created, so that Down can remove it all even after `up` crashed.
type State struct {
	Version int `json:"version"`
	// Topology names the topology; TopologyYAML is its text, so that the
	// layout can be derived again without the file.
	Topology     string `json:"topology"`
	TopologyYAML string `json:"topologyYAML"`
	Prefix       string `json:"prefix"`
	Phase        Phase  `json:"phase"`
	// Until is the last stage `up` was asked to reach.
	Until Stage `json:"until"`
	// UpPID is the process that ran `up`.
	UpPID   int       `json:"upPID"`
	Started time.Time `json:"started"`
	// Namespaces are the named network namespaces, in creation order.
	Namespaces []string `json:"namespaces,omitempty"`
	// Processes are the child processes, in start order.
	Processes []Process `json:"processes,omitempty"`
	// Files and Dirs are paths the lab created.
	Files []string `json:"files,omitempty"`
	Dirs  []string `json:"dirs,omitempty"`
	// Datastore is the kind of datastore the lab runs, open.TypeEtcd or
	// open.TypeKubernetes; state files written before it was recorded
	// have none and ran etcd.
	Datastore string `json:"datastore,omitempty"`
	// Etcd is the etcd datastore's client URL.
	Etcd string `json:"etcd,omitempty"`
	// Kubeconfig is the kubeconfig file of a kubernetes datastore;
	// APIServer is its kube-apiserver's URL.
	Kubeconfig string     `json:"kubeconfig,omitempty"`
	APIServer  string     `json:"apiServer,omitempty"`
	Pods       []PodState `json:"pods,omitempty"`
}

// Process is one child process of the lab.
type Process struct {
	// Name is "etcd", "apiserver" (the `twill lab kube-apiserver`
	// process that runs and watches kube-apiserver), "kube-apiserver" or
	// "agent/<node>".
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// StartTime is the process's start time in clock ticks since boot
	// (/proc/PID/stat field 22): with PID it identifies the process, so
	// that a reused PID is never signalled.
	StartTime uint64   `json:"startTime"`
	Args      []string `json:"args"`
	Log       string   `json:"log"`
	// Socket is an agent's CNI socket.
	Socket string `json:"socket,omitempty"`
}

// PodState is one pod the lab plumbed.
type PodState struct {
	Name      string `json:"name"`
	Node      string `json:"node"`
	Netns     string `json:"netns"`
	Address   string `json:"address,omitempty"`
	HostIface string `json:"hostIface,omitempty"`
}

// procEtcd names the lab's etcd process.
const procEtcd = "etcd"

// agentProcess names the process of node's agent.
func agentProcess(node string) string { return "agent/" + node }

// process returns the recorded process called name.
func (s *State) process(name string) (Process, bool) {
	i := slices.IndexFunc(s.Processes, func(p Process) bool { return p.Name == name })
	if i < 0 {
		return Process{}, false
	}
	return s.Processes[i], true
}

// DatastoreType is the lab's datastore type: Datastore, or open.TypeEtcd
// for state files that do not record it.
func (s *State) DatastoreType() string {
	if s.Datastore == "" {
		return open.TypeEtcd
	}
	return s.Datastore
}

// StoreConfig is how to open the lab's datastore; false while the lab has
// none (it was built to the network stage, or the datastore has not
// started yet).
func (s *State) StoreConfig() (open.Config, bool) {
	switch s.DatastoreType() {
	case open.TypeEtcd:
		if s.Etcd == "" {
			return open.Config{}, false
		}
		return open.Config{Type: open.TypeEtcd, Etcd: etcd.Config{Endpoints: []string{s.Etcd}}}, true
	case open.TypeKubernetes:
		if s.Kubeconfig == "" {
			return open.Config{}, false
		}
		return open.Config{Type: open.TypeKubernetes, Kubeconfig: s.Kubeconfig}, true
	}
	return open.Config{}, false
}

// DatastoreDescription says where the lab's datastore is, for messages.
func (s *State) DatastoreDescription() string {
	if cfg, ok := s.StoreConfig(); ok {
		return cfg.Describe()
	}
	return s.DatastoreType() + " (not started)"
}

// Layout derives the lab's layout from the recorded topology.
func (s *State) Layout() (*Layout, error) {
	t, err := Parse(s.Topology, []byte(s.TopologyYAML))
	if err != nil {
		return nil, fmt.Errorf("the state file's topology: %w", err)
	}
	return t.Layout(s.Prefix)
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }
func lockPath(dir string) string  { return filepath.Join(dir, "lock") }

// LoadState reads the state file in dir; an error matching ErrNotUp when
// there is none.
func LoadState(dir string) (*State, error) {
	if dir == "" {
		dir = DefaultStateDir
	}
	b, err := os.ReadFile(statePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s; start one with `twill lab up`)", ErrNotUp, statePath(dir))
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("lab state %s is corrupt (%v): remove the namespaces named %s-* with `ip netns delete` and then the file", statePath(dir), err, DefaultPrefix)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("lab state %s has version %d; this twill reads version %d", statePath(dir), s.Version, stateVersion)
	}
	return &s, nil
}

// saveState writes s atomically.
func saveState(dir string, s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	tmp := statePath(dir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, statePath(dir)); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// removeState deletes the state file.
func removeState(dir string) error {
	if err := os.Remove(statePath(dir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove lab state: %w", err)
	}
	return nil
}
