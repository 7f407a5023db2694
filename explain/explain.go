// Package explain tells how a packet travels between two pods (or nodes) of
// a Twill cluster, the way the seed's author had to work it out by hand from
// `ip addr`, `route -n` and tcpdump: which nodes hold the two ends, whether
// they share a subnet and why, which pool and vxlanMode decide the path, the
// route each side uses, and for VXLAN the VNI, UDP port, outer addresses,
// inner VTEP MACs and the lengths tcpdump shows. It also says what is wrong:
// a missing route and the planner's reason, a node address recorded as /32,
// a peer without a VTEP, an address in no pool.
//
// Explain works from plan inputs only (package plan decides the routes), so
// it needs no root and no kernel. Path.CheckLive adds what the nodes' kernels
// hold, when the caller could read them, and DiffRoutes compares a node's
// planned routes with its kernel's.
//
// Package explain is part of Twill's pure core: it imports only api, plan and
// the standard library.
package explain

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"twill.dev/twill/api"
	"twill.dev/twill/plan"
)

// Lengths tcpdump shows for a default ping (56 data bytes).
const (
	// PingInnerLength is the pod's frame: 14 Ethernet + 20 IPv4 + 8 ICMP + 56.
	PingInnerLength = 98
	// PingOuterLength is that frame VXLAN-encapsulated, on the host
	// interface: plan.VXLANOverhead (outer Ethernet, IPv4, UDP, VXLAN) more.
	PingOuterLength = PingInnerLength + plan.VXLANOverhead
)

// Errors wrapped by Explain; match them with errors.Is.
var (
	// ErrUnknownEndpoint: the source or destination names no node, pod or
	// address Twill knows.
	ErrUnknownEndpoint = errors.New("unknown endpoint")
	// ErrNoNode: neither end belongs to a node, so there is no path to explain.
	ErrNoNode = errors.New("no node holds either endpoint")
)

// Cluster is everything Explain looks at, as stored in the datastore.
type Cluster struct {
	Nodes  []api.Node
	Pools  []api.IPPool
	Blocks []api.Block
	// Workloads are the workload endpoints of all nodes.
	Workloads []api.WorkloadEndpoint
	VXLAN     plan.VXLANConfig
}

// PlanNode plans node's dataplane from the cluster, with that node's
// workloads as the local ones.
func PlanNode(c Cluster, node string) plan.Dataplane {
	in := plan.Input{LocalNode: node, Nodes: c.Nodes, Pools: c.Pools, Blocks: c.Blocks, VXLAN: c.VXLAN}
	for _, w := range c.Workloads {
		if w.Spec.Node == node {
			in.Workloads = append(in.Workloads, w)
		}
	}
	return plan.Plan(in)
}

// EndpointKind says what an endpoint turned out to be.
type EndpointKind string

// Endpoint kinds.
const (
	// KindPod is a pod, found by name or by one of its addresses.
	KindPod EndpointKind = "pod"
	// KindNode is a node by name or tunnel address: it stands for the
	// node's tunnel address (or its block when it has none).
	KindNode EndpointKind = "node"
	// KindHost is a node's host address, which Twill does not route.
	KindHost EndpointKind = "host"
	// KindAddress is any other address.
	KindAddress EndpointKind = "address"
)

// Endpoint is one end of a path, resolved.
type Endpoint struct {
	// Query is the name or address as given.
	Query string       `json:"query"`
	Kind  EndpointKind `json:"kind"`
	// Address is the IPv4 address the path is explained for.
	Address string `json:"address"`
	// Node is the node holding Address; empty when none does.
	Node      string `json:"node,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// HostIface is the pod's host-side veth (cali…).
	HostIface string `json:"hostIface,omitempty"`
	// Block is the IPAM block holding Address, with its affinity.
	Block         string `json:"block,omitempty"`
	BlockAffinity string `json:"blockAffinity,omitempty"`
	// Pool is the IP pool holding Address; empty when none does.
	Pool string `json:"pool,omitempty"`
}

// Name is how the text report names the endpoint.
func (e Endpoint) Name() string {
	switch {
	case e.Pod != "":
		return fmt.Sprintf("pod %s/%s (%s)", e.Namespace, e.Pod, e.Address)
	case e.Kind == KindNode:
		return fmt.Sprintf("node %s (%s)", e.Node, e.Address)
	case e.Kind == KindHost:
		return fmt.Sprintf("host address %s of node %s", e.Address, e.Node)
	}
	return e.Address
}

// NodeInfo is what the path needs to know about a node.
type NodeInfo struct {
	Name string `json:"name"`
	// Address is the host address with its prefix length, as registered.
	Address string `json:"address"`
	// Interface is the host interface (plan.DefaultHostInterface if unset).
	Interface string `json:"interface"`
	// MTU is the host interface's MTU (plan.DefaultHostMTU if unknown).
	MTU           int    `json:"mtu"`
	TunnelAddress string `json:"tunnelAddress,omitempty"`
	VTEPMAC       string `json:"vtepMAC,omitempty"`
}

// Via is how one direction's packets leave the sending node.
type Via string

// Ways out.
const (
	// ViaLocal: both ends are on the node; the pod's veth delivers it.
	ViaLocal Via = "local"
	// ViaDirect: routed to the peer's host address, unencapsulated.
	ViaDirect Via = "direct"
	// ViaVXLAN: routed to the peer's tunnel address over the VXLAN device.
	ViaVXLAN Via = "vxlan"
	// ViaBlackhole: the node's own block's blackhole route drops it.
	ViaBlackhole Via = "blackhole"
	// ViaNone: the node has no Twill route to the address.
	ViaNone Via = "none"
)

// SubnetView is whether the sending node counts the receiving node as in
// its subnet. Only the sender's prefix counts, so the two directions can
// disagree.
type SubnetView struct {
	// Prefix is the sender's address with prefix length, e.g. 192.168.3.241/24.
	Prefix string `json:"prefix,omitempty"`
	// Subnet is the sender's subnet, e.g. 192.168.3.0/24.
	Subnet string `json:"subnet,omitempty"`
	// PeerAddress is the receiving node's host address.
	PeerAddress string `json:"peerAddress,omitempty"`
	Same        bool   `json:"same"`
	// Why says which prefix contains (or not) which address.
	Why string `json:"why"`
}

// RouteInfo is the route the sending node uses, in both display forms.
type RouteInfo struct {
	Dst  string         `json:"dst"`
	Kind plan.RouteKind `json:"kind"`
	// Peer is the node the route leads to.
	Peer string `json:"peer,omitempty"`
	// IPRoute is the route as `ip route` shows it.
	IPRoute string `json:"ipRoute"`
	// RouteN is the route as `route -n` shows it.
	RouteN string `json:"routeN"`
}

// DirectInfo describes an unencapsulated path.
type DirectInfo struct {
	NextHop   string `json:"nextHop"`
	Interface string `json:"interface"`
	// SourceAddress is the pod address the packet leaves with.
	SourceAddress string `json:"sourceAddress"`
	// Length is a default ping's frame length on Interface.
	Length int `json:"length"`
	// PathMTU is the host interface's MTU.
	PathMTU int `json:"pathMTU"`
}

// VXLANInfo describes an encapsulated path.
type VXLANInfo struct {
	Device string `json:"device"`
	VNI    int    `json:"vni"`
	Port   int    `json:"port"`
	// Gateway is the peer's tunnel address, the route's next hop.
	Gateway string `json:"gateway"`
	// OuterSrc and OuterDst are the node host addresses of the UDP packet.
	OuterSrc string `json:"outerSrc"`
	OuterDst string `json:"outerDst,omitempty"`
	// OuterInterface is the host interface the UDP packet leaves by.
	OuterInterface string `json:"outerInterface"`
	// InnerSrcMAC and InnerDstMAC are the VTEP MACs of the inner frame.
	InnerSrcMAC string `json:"innerSrcMAC"`
	InnerDstMAC string `json:"innerDstMAC,omitempty"`
	// InnerLength and OuterLength are a default ping's frame lengths on the
	// VXLAN device and on the host interface.
	InnerLength int `json:"innerLength"`
	OuterLength int `json:"outerLength"`
	// DeviceMTU is the VXLAN device's MTU; HostMTU the host interface's,
	// which a direct path would have.
	DeviceMTU int `json:"deviceMTU"`
	HostMTU   int `json:"hostMTU"`
}

// Direction is one way of the path: the sending node's view and route.
type Direction struct {
	// From and To are the sending and receiving nodes.
	From string `json:"from"`
	To   string `json:"to,omitempty"`
	// FromAddress and ToAddress are the packet's source and destination.
	FromAddress string     `json:"fromAddress"`
	ToAddress   string     `json:"toAddress"`
	Subnet      SubnetView `json:"subnet"`
	// Pool is the pool of ToAddress, whose vxlanMode decides the path.
	Pool      string        `json:"pool,omitempty"`
	VXLANMode api.EncapMode `json:"vxlanMode,omitempty"`
	// Expected is what the pool's mode and the subnet view call for.
	Expected Via `json:"expected"`
	// Via is what the sending node's planned routes do.
	Via    Via         `json:"via"`
	Route  *RouteInfo  `json:"route,omitempty"`
	Direct *DirectInfo `json:"direct,omitempty"`
	VXLAN  *VXLANInfo  `json:"vxlan,omitempty"`
	// Status holds the planner's notes on From that concern this path.
	Status []string `json:"status,omitempty"`
}

// Path is the explanation of the path between two endpoints.
type Path struct {
	Src     Endpoint  `json:"src"`
	Dst     Endpoint  `json:"dst"`
	SrcNode *NodeInfo `json:"srcNode,omitempty"`
	DstNode *NodeInfo `json:"dstNode,omitempty"`
	// SameNode is set when both ends are on one node.
	SameNode bool `json:"sameNode"`
	// Forward is the source node's way to the destination; Return the
	// destination node's way back. Either is nil when its sender is unknown.
	Forward *Direction `json:"forward,omitempty"`
	Return  *Direction `json:"return,omitempty"`
	// Problems are what is wrong; Notes what is worth knowing.
	Problems []string `json:"problems,omitempty"`
	Notes    []string `json:"notes,omitempty"`
	// Live holds the comparison with the nodes' kernels (CheckLive).
	Live []LiveFinding `json:"live,omitempty"`
}

// Explain explains the path from src to dst. Each is a pod address, a pod
// name ("namespace/pod", or "pod" for namespace default) or a node name. It
// fails only when an endpoint cannot be resolved (ErrUnknownEndpoint) or
// neither belongs to a node (ErrNoNode); everything wrong with the path
// itself is reported in Path.Problems.
func Explain(in Cluster, src, dst string) (Path, error) {
	x := newIndex(in)
	var p Path
	var err error
	if p.Src, err = x.resolve(src, &p); err != nil {
		return Path{}, fmt.Errorf("source: %w", err)
	}
	if p.Dst, err = x.resolve(dst, &p); err != nil {
		return Path{}, fmt.Errorf("destination: %w", err)
	}
	if p.Src.Node == "" && p.Dst.Node == "" {
		return Path{}, fmt.Errorf("%w: neither %s nor %s is a pod or node address of the cluster; give a pod name, a pod address or a node name", ErrNoNode, p.Src.Address, p.Dst.Address)
	}
	p.SrcNode = x.nodeInfo(p.Src.Node)
	p.DstNode = x.nodeInfo(p.Dst.Node)
	p.SameNode = p.Src.Node != "" && p.Src.Node == p.Dst.Node

	for _, n := range []*NodeInfo{p.SrcNode, p.DstNode} {
		if n == nil || (n == p.DstNode && p.SameNode) {
			continue
		}
		x.checkNode(n, &p)
	}
	if p.Src.Node != "" {
		p.Forward = x.direction(in, p.Src, p.Dst, &p)
	}
	if p.Dst.Node != "" {
		p.Return = x.direction(in, p.Dst, p.Src, &p)
	}
	switch {
	case p.SameNode:
		p.note("%s and %s are both on %s: the packet never leaves the node; the destination's veth %s delivers it",
			p.Src.Name(), p.Dst.Name(), p.Src.Node, dash(p.Dst.HostIface))
	case p.Forward != nil && p.Return != nil && p.Forward.Via != p.Return.Via && isPath(p.Forward.Via) && isPath(p.Return.Via):
		p.note("the two directions differ: %s → %s goes %s, %s → %s goes %s (each node judges \"same subnet\" by its own prefix)",
			p.Forward.From, p.Forward.To, p.Forward.Via, p.Return.From, p.Return.To, p.Return.Via)
	}
	for _, d := range []*Direction{p.Forward, p.Return} {
		if d == nil || d.Direct == nil {
			continue
		}
		// Only pod-sourced packets trip source/destination checks.
		if sa, err := netip.ParseAddr(d.Direct.SourceAddress); err == nil && x.poolOf(sa) != nil {
			p.note("%s → %s leaves %s with the pod source address %s, unencapsulated: networks that enforce source/destination checks (cloud NICs such as AWS's) drop it unless the check is disabled on the nodes",
				d.From, d.To, d.Direct.Interface, d.FromAddress)
			break
		}
	}
	return p, nil
}

func isPath(v Via) bool { return v == ViaDirect || v == ViaVXLAN }

func (p *Path) problem(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if !slices.Contains(p.Problems, s) {
		p.Problems = append(p.Problems, s)
	}
}

func (p *Path) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if !slices.Contains(p.Notes, s) {
		p.Notes = append(p.Notes, s)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pool is a parsed IPv4 pool.
type pool struct {
	name string
	cidr netip.Prefix
	mode api.EncapMode
}

// block is a parsed block.
type block struct {
	b    *api.Block
	cidr netip.Prefix
}

// index holds the cluster parsed for lookups.
type index struct {
	nodes     map[string]*api.Node
	nodeNames []string
	pools     []pool
	blocks    []block
	workloads []*api.WorkloadEndpoint
}

func newIndex(c Cluster) *index {
	x := &index{nodes: make(map[string]*api.Node, len(c.Nodes))}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if _, dup := x.nodes[n.Metadata.Name]; dup || n.Metadata.Name == "" {
			continue
		}
		x.nodes[n.Metadata.Name] = n
		x.nodeNames = append(x.nodeNames, n.Metadata.Name)
	}
	slices.Sort(x.nodeNames)
	for i := range c.Pools {
		pl := &c.Pools[i]
		cidr, err := netip.ParsePrefix(strings.TrimSpace(pl.Spec.CIDR))
		if err != nil || !cidr.Addr().Is4() {
			continue
		}
		x.pools = append(x.pools, pool{name: pl.Metadata.Name, cidr: cidr.Masked(), mode: encapMode(pl.Spec.VXLANMode)})
	}
	for i := range c.Blocks {
		b := &c.Blocks[i]
		cidr, err := netip.ParsePrefix(strings.TrimSpace(b.CIDR))
		if err != nil || !cidr.Addr().Is4() {
			continue
		}
		x.blocks = append(x.blocks, block{b: b, cidr: cidr.Masked()})
	}
	slices.SortFunc(x.blocks, func(a, b block) int {
		return cmp.Or(a.cidr.Addr().Compare(b.cidr.Addr()), cmp.Compare(a.cidr.Bits(), b.cidr.Bits()))
	})
	for i := range c.Workloads {
		x.workloads = append(x.workloads, &c.Workloads[i])
	}
	slices.SortFunc(x.workloads, func(a, b *api.WorkloadEndpoint) int {
		return cmp.Or(strings.Compare(a.Spec.Node, b.Spec.Node), strings.Compare(namespace(a), namespace(b)),
			strings.Compare(a.Spec.Pod, b.Spec.Pod), strings.Compare(a.Spec.IfName, b.Spec.IfName), strings.Compare(a.Spec.Handle, b.Spec.Handle))
	})
	return x
}

// encapMode reads a pool's vxlanMode; empty or unknown means Never.
func encapMode(m api.EncapMode) api.EncapMode {
	for _, k := range []api.EncapMode{api.EncapAlways, api.EncapCrossSubnet} {
		if strings.EqualFold(string(m), string(k)) {
			return k
		}
	}
	return api.EncapNever
}

func namespace(w *api.WorkloadEndpoint) string {
	return cmp.Or(w.Spec.Namespace, "default")
}

// poolOf returns the most specific pool holding a, or nil.
func (x *index) poolOf(a netip.Addr) *pool {
	var best *pool
	for i := range x.pools {
		pl := &x.pools[i]
		if pl.cidr.Contains(a) && (best == nil || pl.cidr.Bits() > best.cidr.Bits()) {
			best = pl
		}
	}
	return best
}

// blockOf returns the most specific block holding a, or nil.
func (x *index) blockOf(a netip.Addr) *block {
	var best *block
	for i := range x.blocks {
		b := &x.blocks[i]
		if b.cidr.Contains(a) && (best == nil || b.cidr.Bits() > best.cidr.Bits()) {
			best = b
		}
	}
	return best
}

// parseAddr parses a bare address or a single-address prefix.
func parseAddr(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if p, err := netip.ParsePrefix(s); err == nil && p.Bits() == p.Addr().BitLen() {
		return p.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// hostPrefix parses a node address; a bare address counts as /32, as the
// planner reads it.
func hostPrefix(s string) (netip.Prefix, bool) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

// resolve turns a query into an endpoint, recording problems on p.
func (x *index) resolve(q string, p *Path) (Endpoint, error) {
	q = strings.TrimSpace(q)
	if q == "" {
		return Endpoint{}, fmt.Errorf("%w: the name is empty; give a pod name (namespace/pod), a pod address or a node name", ErrUnknownEndpoint)
	}
	if a, ok := parseAddr(q); ok {
		if !a.Is4() {
			return Endpoint{}, fmt.Errorf("%w: %s is IPv6; Twill routes IPv4 only", ErrUnknownEndpoint, a)
		}
		e := x.byAddress(a, p)
		e.Query = q
		return e, nil
	}
	if pre, err := netip.ParsePrefix(q); err == nil {
		return Endpoint{}, fmt.Errorf("%w: %s is a network, not one address; give a pod address such as %s", ErrUnknownEndpoint, q, pre.Addr())
	}
	if ns, pod, ok := strings.Cut(q, "/"); ok {
		e, err := x.byPod(ns, pod, p)
		e.Query = q
		return e, err
	}
	if _, ok := x.nodes[q]; ok {
		e := x.byNode(q, p)
		e.Query = q
		return e, nil
	}
	e, err := x.byPod("default", q, p)
	if errors.Is(err, ErrUnknownEndpoint) {
		return Endpoint{}, fmt.Errorf("%w: %q is neither a node (%s) nor a pod in namespace default; write other namespaces' pods as namespace/pod",
			ErrUnknownEndpoint, q, listNames(x.nodeNames))
	}
	e.Query = q
	return e, err
}

func listNames(names []string) string {
	const show = 8
	switch {
	case len(names) == 0:
		return "no nodes are registered"
	case len(names) > show:
		return "nodes: " + strings.Join(names[:show], ", ") + ", …"
	}
	return "nodes: " + strings.Join(names, ", ")
}

// fillBlock records a's block and pool on e.
func (x *index) fillBlock(e *Endpoint, a netip.Addr) {
	if b := x.blockOf(a); b != nil {
		e.Block, e.BlockAffinity = b.cidr.String(), b.b.Affinity
	}
	if pl := x.poolOf(a); pl != nil {
		e.Pool = pl.name
	}
}

// podEndpoint builds the endpoint of a workload's first IPv4 address.
func (x *index) podEndpoint(w *api.WorkloadEndpoint, a netip.Addr) Endpoint {
	e := Endpoint{Kind: KindPod, Address: a.String(), Node: w.Spec.Node, Namespace: namespace(w), Pod: w.Spec.Pod, HostIface: w.Spec.HostIface}
	if e.Pod == "" {
		e.Pod = w.Metadata.Name
	}
	x.fillBlock(&e, a)
	return e
}

func (x *index) byPod(ns, pod string, p *Path) (Endpoint, error) {
	ns = cmp.Or(strings.TrimSpace(ns), "default")
	pod = strings.TrimSpace(pod)
	if pod == "" {
		return Endpoint{}, fmt.Errorf("%w: %q names no pod; write namespace/pod", ErrUnknownEndpoint, ns+"/")
	}
	var found []*api.WorkloadEndpoint
	for _, w := range x.workloads {
		if namespace(w) == ns && w.Spec.Pod == pod {
			found = append(found, w)
		}
	}
	for _, w := range found {
		for _, s := range w.Spec.Addresses {
			a, ok := parseAddr(s)
			if !ok || !a.Is4() {
				continue
			}
			if len(found) > 1 {
				p.note("pod %s/%s has %d interfaces; explaining %s on %s", ns, pod, len(found), a, dash(w.Spec.IfName))
			}
			e := x.podEndpoint(w, a)
			x.checkPodAddress(e, a, p)
			return e, nil
		}
	}
	// No workload endpoint: the pod may hold an address all the same.
	for _, b := range x.blocks {
		for _, al := range b.b.Allocations {
			if al.Attrs[api.AttrPod] != pod || cmp.Or(al.Attrs[api.AttrNamespace], "default") != ns {
				continue
			}
			a, ok := addrAt(b.cidr, al.Ordinal)
			if !ok {
				continue
			}
			e := Endpoint{Kind: KindPod, Address: a.String(), Node: al.Attrs[api.AttrNode], Namespace: ns, Pod: pod}
			x.fillBlock(&e, a)
			p.problem("pod %s/%s holds %s (handle %s) but has no workload endpoint on node %s: the CNI plugin did not finish plumbing it, so no node routes to its veth",
				ns, pod, a, al.Handle, dash(e.Node))
			return e, nil
		}
	}
	if len(found) > 0 {
		return Endpoint{}, fmt.Errorf("%w: pod %s/%s has no IPv4 address", ErrUnknownEndpoint, ns, pod)
	}
	return Endpoint{}, fmt.Errorf("%w: no pod %s/%s has a workload endpoint or an address", ErrUnknownEndpoint, ns, pod)
}

// checkPodAddress flags a pod address outside every pool or block.
func (x *index) checkPodAddress(e Endpoint, a netip.Addr, p *Path) {
	if e.Pool == "" {
		p.problem("%s is in no IP pool: Twill routes only pool addresses, so no node has a route to it", a)
	} else if e.Block == "" {
		p.problem("%s is in pool %s but in no IPAM block: no node claims it, so no peer routes to it", a, e.Pool)
	}
}

func (x *index) byNode(name string, p *Path) Endpoint {
	n := x.nodes[name]
	e := Endpoint{Kind: KindNode, Node: name}
	if a, ok := parseAddr(n.Spec.TunnelAddress); ok && a.Is4() {
		e.Address = a.String()
		x.fillBlock(&e, a)
		return e
	}
	for _, b := range x.blocks {
		if b.b.Affinity == name {
			e.Address = b.cidr.Addr().String()
			x.fillBlock(&e, b.cidr.Addr())
			p.note("node %s has no tunnel address: explaining the path to its block %s (address %s)", name, b.cidr, e.Address)
			return e
		}
	}
	e.Kind = KindHost
	if pre, ok := hostPrefix(n.Spec.Address); ok {
		e.Address = pre.Addr().String()
		x.fillBlock(&e, pre.Addr())
	}
	p.problem("node %s has no tunnel address and no block: it holds no pod address, so only its host address %s is left, which Twill does not route",
		name, dash(e.Address))
	return e
}

func (x *index) byAddress(a netip.Addr, p *Path) Endpoint {
	for _, w := range x.workloads {
		for _, s := range w.Spec.Addresses {
			if wa, ok := parseAddr(s); ok && wa == a {
				e := x.podEndpoint(w, a)
				x.checkPodAddress(e, a, p)
				return e
			}
		}
	}
	for _, name := range x.nodeNames {
		if ta, ok := parseAddr(x.nodes[name].Spec.TunnelAddress); ok && ta == a {
			e := Endpoint{Kind: KindNode, Node: name, Address: a.String()}
			x.fillBlock(&e, a)
			return e
		}
	}
	for _, name := range x.nodeNames {
		if pre, ok := hostPrefix(x.nodes[name].Spec.Address); ok && pre.Addr() == a {
			e := Endpoint{Kind: KindHost, Node: name, Address: a.String()}
			x.fillBlock(&e, a)
			if e.Pool == "" {
				p.problem("%s is node %s's host address, in no IP pool: traffic to and from host addresses follows the hosts' own routes, not Twill's; give a pod address or name to explain a pod path", a, name)
			}
			return e
		}
	}
	e := Endpoint{Kind: KindAddress, Address: a.String()}
	x.fillBlock(&e, a)
	b := x.blockOf(a)
	switch {
	case e.Pool == "":
		p.problem("%s is in no IP pool and belongs to no node: Twill routes only pool addresses", a)
	case b == nil:
		p.problem("%s is in pool %s but in no IPAM block: no node claims it, so no node routes to it", a, e.Pool)
	default:
		for _, al := range b.b.Allocations {
			if aa, ok := addrAt(b.cidr, al.Ordinal); !ok || aa != a {
				continue
			}
			e.Node = cmp.Or(al.Attrs[api.AttrNode], b.b.Affinity)
			if pod := al.Attrs[api.AttrPod]; pod != "" {
				e.Kind, e.Namespace, e.Pod = KindPod, cmp.Or(al.Attrs[api.AttrNamespace], "default"), pod
				p.problem("pod %s/%s holds %s (handle %s) but has no workload endpoint on node %s: the CNI plugin did not finish plumbing it, so no node routes to its veth",
					e.Namespace, e.Pod, a, al.Handle, dash(e.Node))
			} else if al.Use == api.UseTunnel {
				e.Kind = KindNode
			}
			return e
		}
		e.Node = b.b.Affinity
		if e.Node == "" {
			p.problem("%s is not allocated and its block %s belongs to no node: nothing routes to it", a, b.cidr)
		} else {
			p.problem("%s is not allocated: no pod holds it; node %s's blackhole for its block %s drops traffic to it", a, e.Node, b.cidr)
		}
	}
	return e
}

// addrAt returns the address ordinal places after the start of block.
func addrAt(block netip.Prefix, ordinal int) (netip.Addr, bool) {
	if !block.Addr().Is4() || ordinal < 0 || uint64(ordinal) >= uint64(1)<<(32-block.Bits()) {
		return netip.Addr{}, false
	}
	b := block.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(ordinal)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

func (x *index) nodeInfo(name string) *NodeInfo {
	n, ok := x.nodes[name]
	if !ok {
		return nil
	}
	return &NodeInfo{
		Name:          name,
		Address:       n.Spec.Address,
		Interface:     cmp.Or(n.Spec.Interface, plan.DefaultHostInterface),
		MTU:           cmp.Or(max(n.Spec.MTU, 0), plan.DefaultHostMTU),
		TunnelAddress: n.Spec.TunnelAddress,
		VTEPMAC:       n.Spec.VTEPMAC,
	}
}

// checkNode flags a node address recorded without a usable prefix.
func (x *index) checkNode(n *NodeInfo, p *Path) {
	pre, ok := hostPrefix(n.Address)
	switch {
	case !ok:
		p.problem("node %s's address %q is not an address with prefix length: it plans nothing; re-register it (e.g. 192.168.3.241/24)", n.Name, n.Address)
	case pre.Bits() == pre.Addr().BitLen():
		p.problem("node %s's address is recorded as %s: a /32 contains no other node, so %s treats every peer as in another subnet (CrossSubnet pools then encapsulate even same-subnet traffic, Never pools route none of it); register it with its real prefix length, e.g. %s/24",
			n.Name, pre, n.Name, pre.Addr())
	}
}

// subnetView says whether from counts to as in its subnet, and why.
func (x *index) subnetView(from, to string) SubnetView {
	var v SubnetView
	fn := x.nodes[from]
	pre, ok := hostPrefix(fn.Spec.Address)
	if !ok {
		v.Why = fmt.Sprintf("%s's address %q is unusable, so it has no subnet", from, fn.Spec.Address)
		return v
	}
	v.Prefix, v.Subnet = pre.String(), pre.Masked().String()
	tn, ok := x.nodes[to]
	if !ok {
		v.Why = fmt.Sprintf("the destination belongs to no registered node, so %s's subnet %s does not matter", from, v.Subnet)
		return v
	}
	peer, ok := hostPrefix(tn.Spec.Address)
	if !ok {
		v.Why = fmt.Sprintf("%s's address %q is unusable, so %s cannot place it", to, tn.Spec.Address, from)
		return v
	}
	v.PeerAddress = peer.Addr().String()
	v.Same = pre.Contains(peer.Addr())
	switch {
	case pre.Bits() == pre.Addr().BitLen():
		v.Why = fmt.Sprintf("%s's address is recorded as %s, a /32 that contains no other address: %s (%s) counts as another subnet", from, pre, to, peer.Addr())
	case v.Same:
		v.Why = fmt.Sprintf("%s (%s) is inside %s, %s's subnet from its address %s: same subnet", peer.Addr(), to, v.Subnet, from, pre)
	default:
		v.Why = fmt.Sprintf("%s (%s) is outside %s, %s's subnet from its address %s: different subnets", peer.Addr(), to, v.Subnet, from, pre)
	}
	return v
}

// lookup returns the most specific route holding a, or nil.
func lookup(routes []plan.Route, a netip.Addr) *plan.Route {
	var best *plan.Route
	for i := range routes {
		r := &routes[i]
		if r.Dst.Contains(a) && (best == nil || r.Dst.Bits() > best.Dst.Bits()) {
			best = r
		}
	}
	return best
}

func routeInfo(r plan.Route) *RouteInfo {
	return &RouteInfo{Dst: r.Dst.String(), Kind: r.Kind, Peer: r.Peer, IPRoute: r.String(), RouteN: plan.RouteN([]plan.Route{r})[0]}
}

// direction explains how from's node sends to to's address.
func (x *index) direction(c Cluster, from, to Endpoint, p *Path) *Direction {
	d := &Direction{From: from.Node, To: to.Node, FromAddress: from.Address, ToAddress: to.Address}
	label := fmt.Sprintf("%s → %s", d.From, cmp.Or(d.To, to.Address))
	if _, ok := x.nodes[from.Node]; !ok {
		d.Via, d.Expected = ViaNone, ViaNone
		p.problem("%s: node %s is not registered, so its routes cannot be planned; start its agent or re-register it", label, from.Node)
		return d
	}
	a, _ := netip.ParseAddr(to.Address)
	local := from.Node == to.Node
	if !local {
		d.Subnet = x.subnetView(from.Node, to.Node)
	}
	pl := x.poolOf(a)
	if pl != nil {
		d.Pool, d.VXLANMode = pl.name, pl.mode
	}
	switch {
	case local:
		d.Expected = ViaLocal
	case pl == nil || to.Node == "":
		d.Expected = ViaNone
	case pl.mode == api.EncapAlways:
		d.Expected = ViaVXLAN
	case d.Subnet.Same:
		d.Expected = ViaDirect
	case pl.mode == api.EncapCrossSubnet:
		d.Expected = ViaVXLAN
	default:
		d.Expected = ViaNone
	}

	dp := PlanNode(c, from.Node)
	d.Status = relevantStatus(dp.Status, from.Node, to.Node, a, to.Block)
	if local && dp.Device != nil && dp.Device.Address.Addr() == a {
		// The node's own tunnel address: the local table delivers it before
		// any Twill route is looked at.
		d.Via = ViaLocal
		p.note("%s is %s's own tunnel address, on its device %s: the kernel delivers it locally", a, from.Node, dp.Device.Name)
		return d
	}
	r := lookup(dp.Routes, a)
	if r == nil {
		d.Via = ViaNone
		x.explainMissing(d, label, to, pl, dp, p)
		return d
	}
	d.Route = routeInfo(*r)
	switch r.Kind {
	case plan.KindWorkload:
		d.Via = ViaLocal
		if !local {
			p.problem("%s: %s routes %s to its own veth %s although the address belongs to %s: two nodes claim it", label, from.Node, a, r.Device, dash(to.Node))
		}
	case plan.KindLocalBlock:
		d.Via = ViaBlackhole
		if local {
			p.problem("%s: no pod on %s has %s: the blackhole route for its block %s drops the packet", label, from.Node, a, r.Dst)
		} else {
			p.problem("%s: %s drops traffic to %s: it is inside %s's own block %s (blackhole) but no local pod has it and no route for a peer's borrowed address covers it", label, from.Node, a, from.Node, r.Dst)
		}
	case plan.KindDirect, plan.KindBorrowDirect:
		d.Via = ViaDirect
		mtu := plan.DefaultHostMTU
		if n := x.nodeInfo(from.Node); n != nil {
			mtu = n.MTU
		}
		srcAddr := from.Address
		if from.Kind == KindNode {
			// Host traffic takes the outgoing interface's address.
			if pre, ok := hostPrefix(x.nodes[from.Node].Spec.Address); ok {
				srcAddr = pre.Addr().String()
			}
		}
		d.Direct = &DirectInfo{NextHop: r.Gateway.String(), Interface: r.Device, SourceAddress: srcAddr, Length: PingInnerLength, PathMTU: mtu}
	case plan.KindVXLAN, plan.KindBorrowVXLAN:
		d.Via = ViaVXLAN
		d.VXLAN = x.vxlanInfo(*r, dp, from.Node)
		if d.VXLAN.InnerDstMAC == "" {
			p.problem("%s: %s has no neighbour entry for %s's tunnel address %s: the VXLAN device cannot address the inner frame", label, from.Node, r.Peer, r.Gateway)
		} else if d.VXLAN.OuterDst == "" {
			p.problem("%s: %s has no FDB entry for VTEP MAC %s: the VXLAN device does not know where to send the UDP packet", label, from.Node, d.VXLAN.InnerDstMAC)
		}
	}
	if r.Peer != "" && to.Node != "" && r.Peer != to.Node {
		p.problem("%s: %s's route %s leads to node %s, but %s is on %s: the datastore disagrees about who holds the address",
			label, from.Node, r.Dst, r.Peer, a, to.Node)
	}
	return d
}

// vxlanInfo fills in the encapsulation of a VXLAN route from the plan.
func (x *index) vxlanInfo(r plan.Route, dp plan.Dataplane, from string) *VXLANInfo {
	v := &VXLANInfo{Device: r.Device, Gateway: r.Gateway.String(), InnerLength: PingInnerLength, OuterLength: PingOuterLength}
	if dev := dp.Device; dev != nil {
		v.VNI, v.Port, v.OuterSrc, v.OuterInterface, v.InnerSrcMAC, v.DeviceMTU =
			dev.VNI, dev.Port, dev.LocalIP.String(), dev.Parent, dev.MAC, dev.MTU
	}
	if n := x.nodeInfo(from); n != nil {
		v.HostMTU = n.MTU
	}
	for _, nb := range dp.Neighbors {
		if nb.IP == r.Gateway {
			v.InnerDstMAC = nb.MAC
		}
	}
	for _, f := range dp.FDB {
		if v.InnerDstMAC != "" && f.MAC == v.InnerDstMAC {
			v.OuterDst = f.Dst.String()
		}
	}
	return v
}

// explainMissing says why from has no route to to's address.
func (x *index) explainMissing(d *Direction, label string, to Endpoint, pl *pool, dp plan.Dataplane, p *Path) {
	a := to.Address
	switch {
	case pl == nil:
		p.problem("%s: %s has no route to %s: the address is in no IP pool, and Twill routes only pool addresses", label, d.From, a)
		return
	case to.Node == "":
		p.problem("%s: %s has no route to %s: no node holds the address", label, d.From, a)
		return
	case d.From == to.Node:
		p.problem("%s: %s has no route to its own %s: no local workload endpoint holds it and its block is not the node's", label, d.From, a)
		return
	}
	why := ""
	switch d.Expected {
	case ViaNone:
		why = fmt.Sprintf("pool %s has vxlanMode Never, so it routes only within %s's subnet, and %s; set vxlanMode CrossSubnet (or Always) to reach other subnets",
			pl.name, d.From, d.Subnet.Why)
	case ViaVXLAN:
		tn := x.nodes[to.Node]
		fn := x.nodes[d.From]
		var lacks []string
		if strings.TrimSpace(tn.Spec.TunnelAddress) == "" {
			lacks = append(lacks, "tunnelAddress")
		}
		if strings.TrimSpace(tn.Spec.VTEPMAC) == "" {
			lacks = append(lacks, "vtepMAC")
		}
		switch {
		case dp.Device == nil && strings.TrimSpace(fn.Spec.TunnelAddress) == "":
			why = fmt.Sprintf("the path needs VXLAN but %s itself has no tunnelAddress, so it has no VXLAN device; its agent allocates one from its block at start", d.From)
		case len(lacks) > 0:
			why = fmt.Sprintf("no VTEP known for peer %s: it has no %s; its agent registers them at start (is it running?)", to.Node, strings.Join(lacks, " and no "))
		default:
			why = "the path needs VXLAN; see the planner's notes"
		}
	default:
		why = "see the planner's notes"
	}
	p.problem("%s: %s has no route to %s (%s's block %s): %s", label, d.From, a, to.Node, dash(to.Block), why)
}

// relevantStatus picks the planner notes that concern a path to a on node
// peer: those naming the peer, the address or its block, and the warnings
// about the sending node itself.
func relevantStatus(status []string, from, peer string, a netip.Addr, blk string) []string {
	var out []string
	keys := []string{"node " + from + " ", "local node " + from + " ", a.String() + "/32"}
	if peer != "" && peer != from {
		keys = append(keys, " "+peer+" ", " "+peer+":", " "+peer+" (")
	}
	if blk != "" {
		keys = append(keys, blk)
	}
	for _, s := range status {
		for _, k := range keys {
			if strings.Contains(" "+s, k) {
				out = append(out, s)
				break
			}
		}
	}
	return out
}
