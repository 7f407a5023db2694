package lab

import (
	"fmt"
	"io"
	"time"
)

// ProcessStatus is one lab process as Status sees it.
type ProcessStatus struct {
	Name  string
	PID   int
	Alive bool
	Log   string
}

// MemberStatus is one node or host as Status sees it.
type MemberStatus struct {
	Name    string
	Role    Role
	Netns   string
	Address string
	// NetnsExists reports whether the namespace is there.
	NetnsExists bool
	// Agent is the node's agent; nil for hosts and labs without agents.
	Agent *ProcessStatus
	// Ready and Reason are what the agent's socket answers.
	Ready  bool
	Reason string
}

// StatusReport is what `twill lab status` shows.
type StatusReport struct {
	Topology string
	Prefix   string
	Phase    Phase
	Until    Stage
	Started  time.Time
	UpPID    int
	// UpRunning reports whether the `up` process still runs (it exits
	// once the lab is up).
	UpRunning bool
	// Datastore says which datastore the lab runs and where, e.g.
	// "etcd at http://127.0.0.1:PORT".
	Datastore string
	Etcd      *ProcessStatus
	EtcdURL   string
	// APIServer is the kube-apiserver process of a lab on the kubernetes
	// datastore, APIServerURL its address and Kubeconfig its admin
	// kubeconfig file.
	APIServer    *ProcessStatus
	APIServerURL string
	Kubeconfig   string
	Router       string
	RouterOK     bool
	Members      []MemberStatus
	Pods         []PodState
	// PodsPlanned is the number of pods the topology has.
	PodsPlanned int
}

// WriteText renders the status for a terminal.
func (s *StatusReport) WriteText(w io.Writer) {
	fmt.Fprintf(w, "Lab: topology %s, prefix %s, %s (stage %s), started %s\n", s.Topology, s.Prefix, s.Phase, s.Until, s.Started.Local().Format(time.DateTime))
	if s.UpRunning {
		fmt.Fprintf(w, "`up` still running: pid %d\n", s.UpPID)
	}
	fmt.Fprintf(w, "Router: namespace %s %s\n", s.Router, present(s.RouterOK))
	if s.Datastore != "" {
		fmt.Fprintf(w, "Datastore: %s\n", s.Datastore)
	}
	if s.Etcd != nil {
		fmt.Fprintf(w, "etcd:   %s pid %d %s (log %s)\n", s.EtcdURL, s.Etcd.PID, alive(s.Etcd.Alive), s.Etcd.Log)
	}
	if s.APIServer != nil {
		url := s.APIServerURL
		if url == "" {
			url = "(starting)"
		}
		fmt.Fprintf(w, "%s: %s pid %d %s (log %s)\n", s.APIServer.Name, url, s.APIServer.PID, alive(s.APIServer.Alive), s.APIServer.Log)
	}
	if s.Kubeconfig != "" {
		fmt.Fprintf(w, "kubeconfig: %s (KUBECONFIG=%s kubectl get ippools,nodes)\n", s.Kubeconfig, s.Kubeconfig)
	}
	fmt.Fprintf(w, "\n%-16s %-5s %-20s %-22s %-9s %s\n", "NAME", "ROLE", "ADDRESS", "NAMESPACE", "AGENT", "HEALTH")
	for _, m := range s.Members {
		ns := m.Netns
		if !m.NetnsExists {
			ns += " (missing)"
		}
		agent, health := "-", "-"
		if m.Agent != nil {
			agent = fmt.Sprintf("%d", m.Agent.PID)
			if !m.Agent.Alive {
				agent += " dead"
				health = "down: see " + m.Agent.Log
			} else if m.Ready {
				health = "ready"
			} else {
				health = "not ready: " + m.Reason
			}
		}
		fmt.Fprintf(w, "%-16s %-5s %-20s %-22s %-9s %s\n", m.Name, m.Role, m.Address, ns, agent, health)
	}
	fmt.Fprintf(w, "\nPods: %d of %d plumbed\n", len(s.Pods), s.PodsPlanned)
	for _, p := range s.Pods {
		fmt.Fprintf(w, "  %-24s %-16s %-16s %s\n", p.Name, p.Node, p.Address, p.HostIface)
	}
}

func present(ok bool) string {
	if ok {
		return "present"
	}
	return "MISSING"
}

func alive(ok bool) string {
	if ok {
		return "running"
	}
	return "NOT RUNNING"
}
