package lab

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// VTEP is a node's VXLAN device as the kernel has it.
type VTEP struct {
	Node    string
	Device  string
	Present bool
	// Address is the device's IPv4 address (the tunnel address, /32).
	Address netip.Prefix
	MAC     string
	MTU     int
	VNI     int
	Port    int
}

// NodeRoutes is one node's pod-network routes as the kernel has them.
type NodeRoutes struct {
	Node string
	// Lines are the routes as `route -n` prints them (plan.RouteN).
	Lines []string
	Err   string
}

// PingMatrix is the result of every pod pinging every other pod.
type PingMatrix struct {
	// Pods are the pods in row and column order.
	Pods []PodState
	// Err[i][j] is "" when pod i reached pod j, else why not; the
	// diagonal is unused.
	Err [][]string
}

// Failures counts the failed pings.
func (m *PingMatrix) Failures() int {
	n := 0
	for i := range m.Err {
		for j := range m.Err[i] {
			if i != j && m.Err[i][j] != "" {
				n++
			}
		}
	}
	return n
}

// PathCheck is the path one node pair's pod traffic took, verified by a
// capture on the sending node's eth0.
type PathCheck struct {
	From, To       string // nodes
	SrcPod, DstPod string
	Src, Dst       netip.Addr
	// Expected is the path the plan chose; PathUnknown without a
	// datastore.
	Expected Path
	// Observed is what the capture saw.
	Observed Path
	// Lines is the captured frame, as tcpdump -nne prints it.
	Lines []string
	Err   string
}

// OK reports whether the capture saw the expected path.
func (p PathCheck) OK() bool {
	return p.Err == "" && p.Observed != PathUnknown && (p.Expected == PathUnknown || p.Expected == p.Observed)
}

// HostCheck is one pod's ping to a plain host outside the pod network.
// The host has no route to the pods, so a reply proves that the node
// masqueraded the pod's traffic (natOutgoing).
type HostCheck struct {
	Pod, Node, Host string
	Addr            netip.Addr
	// NATOutgoing is the pod pool's setting: the reply is expected iff
	// it is set.
	NATOutgoing bool
	Err         string
}

// OK reports whether the host answered exactly when natOutgoing says so.
func (h HostCheck) OK() bool { return (h.Err == "") == h.NATOutgoing }

// LabReport is what the kernel ended up with, and what traffic does.
type LabReport struct {
	Topology string
	VTEPs    []VTEP
	Routes   []NodeRoutes
	Matrix   *PingMatrix
	Paths    []PathCheck
	Hosts    []HostCheck
	// Notes says what could not be checked and why.
	Notes []string
}

// OK reports whether every ping succeeded and every path was as planned.
func (r *LabReport) OK() bool {
	if r.Matrix != nil && r.Matrix.Failures() > 0 {
		return false
	}
	for _, p := range r.Paths {
		if !p.OK() {
			return false
		}
	}
	for _, h := range r.Hosts {
		if !h.OK() {
			return false
		}
	}
	for _, rt := range r.Routes {
		if rt.Err != "" {
			return false
		}
	}
	return true
}

// WriteText renders the report for a terminal.
func (r *LabReport) WriteText(w io.Writer) {
	fmt.Fprintf(w, "== Lab report: topology %s\n", r.Topology)
	if len(r.VTEPs) > 0 {
		fmt.Fprintf(w, "\n-- VTEPs (from the kernel)\n")
		fmt.Fprintf(w, "%-16s %-14s %-20s %-18s %s\n", "NODE", "DEVICE", "ADDRESS", "MAC", "MTU")
		for _, v := range r.VTEPs {
			if !v.Present {
				fmt.Fprintf(w, "%-16s %-14s (no device)\n", v.Node, v.Device)
				continue
			}
			fmt.Fprintf(w, "%-16s %-14s %-20s %-18s %d\n", v.Node, v.Device, v.Address, v.MAC, v.MTU)
		}
	}
	for _, rt := range r.Routes {
		fmt.Fprintf(w, "\n-- %s: pod-network routes (route -n)\n", rt.Node)
		if rt.Err != "" {
			fmt.Fprintf(w, "ERROR: %s\n", rt.Err)
			continue
		}
		fmt.Fprintf(w, "%-15s %-15s %-15s %-5s %-6s %-2s %7s %s\n", "Destination", "Gateway", "Genmask", "Flags", "Metric", "Ref", "Use", "Iface")
		for _, l := range rt.Lines {
			fmt.Fprintln(w, l)
		}
	}
	if m := r.Matrix; m != nil {
		fmt.Fprintf(w, "\n-- Connectivity: every pod pings every other pod (. = reply, X = none)\n")
		for i, p := range m.Pods {
			fmt.Fprintf(w, "%3d %-28s %-16s %s\n", i+1, p.Name, p.Address, p.Node)
		}
		var hdr strings.Builder
		hdr.WriteString("     ")
		for j := range m.Pods {
			fmt.Fprintf(&hdr, "%3d", j+1)
		}
		fmt.Fprintln(w, hdr.String())
		for i := range m.Pods {
			var row strings.Builder
			fmt.Fprintf(&row, "%3d  ", i+1)
			for j := range m.Pods {
				switch {
				case i == j:
					row.WriteString("  -")
				case m.Err[i][j] == "":
					row.WriteString("  .")
				default:
					row.WriteString("  X")
				}
			}
			fmt.Fprintln(w, row.String())
		}
		total := len(m.Pods) * (len(m.Pods) - 1)
		fmt.Fprintf(w, "%d/%d pings answered\n", total-m.Failures(), total)
		for i := range m.Pods {
			for j := range m.Pods {
				if i != j && m.Err[i][j] != "" {
					fmt.Fprintf(w, "  %s -> %s: %s\n", m.Pods[i].Name, m.Pods[j].Name, m.Err[i][j])
				}
			}
		}
	}
	if len(r.Paths) > 0 {
		fmt.Fprintf(w, "\n-- Paths between nodes (capture on the sender's eth0)\n")
		for _, p := range r.Paths {
			verdict := "ok"
			if !p.OK() {
				verdict = "MISMATCH"
			}
			fmt.Fprintf(w, "%s -> %s: %s (planned %s) %s; %s %s -> %s %s\n", p.From, p.To, p.Observed, p.Expected, verdict, p.SrcPod, p.Src, p.DstPod, p.Dst)
			if p.Err != "" {
				fmt.Fprintf(w, "    %s\n", p.Err)
			}
			for _, l := range p.Lines {
				fmt.Fprintf(w, "    %s\n", l)
			}
		}
	}
	if len(r.Hosts) > 0 {
		fmt.Fprintf(w, "\n-- Pods to plain hosts (a reply needs natOutgoing: the hosts have no route to pods)\n")
		for _, h := range r.Hosts {
			got := "reply"
			if h.Err != "" {
				got = "no reply (" + h.Err + ")"
			}
			verdict := "ok"
			if !h.OK() {
				verdict = "UNEXPECTED"
			}
			fmt.Fprintf(w, "%s (%s) -> %s %s: %s, natOutgoing %t: %s\n", h.Pod, h.Node, h.Host, h.Addr, got, h.NATOutgoing, verdict)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "\nNote: %s\n", n)
	}
	if r.OK() {
		fmt.Fprintf(w, "\nRESULT: ok\n")
	} else {
		fmt.Fprintf(w, "\nRESULT: FAILED\n")
	}
}
