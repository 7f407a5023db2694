package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Helpers for programs that work inside a running lab (twill bench): they
// create and remove namespaces of their own next to the lab's, and plumb
// pods the topology does not list through the lab's PodAdder.

// CreateNetns creates the named network namespace, bind-mounted under
// NetnsDir as `ip netns add` does, without moving the calling thread. A
// namespace of that name that already exists is an error matching
// fs.ErrExist. The caller removes it with DeleteNetns: the lab does not
// record it.
func CreateNetns(name string) error { return createNetns(name) }

// DeleteNetns removes the named namespace; one already gone is fine.
func DeleteNetns(name string) error { return deleteNetns(name) }

// InNetns runs fn on a locked OS thread inside the namespace at path; the
// calling goroutine's thread never changes namespace. Processes started by
// fn (exec.Cmd.Start) run in that namespace.
func InNetns(path string, fn func() error) error { return inNetns(path, fn) }

// ExtraPodSpec returns what a PodAdder needs to plumb a pod that the
// topology does not list: pod name on node of the lab recorded in
// opts.StateDir, in the namespace netnsName, which the caller has created
// (CreateNetns) and removes. The lab must have been built to StagePods, so
// that the pods' work directory exists.
func ExtraPodSpec(opts Options, node, name, netnsName string) (PodSpec, error) {
	opts = opts.withDefaults()
	st, err := LoadState(opts.StateDir)
	if err != nil {
		return PodSpec{}, err
	}
	l, err := st.Layout()
	if err != nil {
		return PodSpec{}, err
	}
	m, ok := l.Member(node)
	if !ok || m.Role != RoleNode {
		return PodSpec{}, fmt.Errorf("%w %q: name one of the lab's nodes", ErrUnknownTarget, node)
	}
	work := podWorkDir(opts.StateDir)
	if _, err := os.Stat(work); errors.Is(err, fs.ErrNotExist) {
		return PodSpec{}, fmt.Errorf("the lab in %s has no pod work directory %s: build it up to the pods stage: %w", opts.StateDir, work, err)
	}
	return PodSpec{
		PodLayout: PodLayout{Name: name, Namespace: PodNamespace, Node: node, Netns: netnsName,
			ContainerID: st.Prefix + "-" + name},
		NetnsPath: NetnsPath(netnsName), IfName: PodIfName, NodeNetnsPath: NetnsPath(m.Netns),
		AgentSocket: agentSocket(opts.StateDir, node), WorkDir: work,
	}, nil
}
