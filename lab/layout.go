package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"twill.dev/twill/api"
	"twill.dev/twill/plan"
)

// DefaultPrefix starts the name of every namespace a lab creates: the router
// is twl-r, node k8s-master1 is twl-k8s-master1, its first pod
// twl-k8s-master1-p1.
const DefaultPrefix = "twl"

// PodNamespace is the Kubernetes namespace of every lab pod.
const PodNamespace = "default"

// ErrPrefix is wrapped by the error for an unusable name prefix.
var ErrPrefix = errors.New("invalid lab name prefix")

// checkPrefix accepts "tw" followed by up to six lower-case letters or
// digits: every name the lab creates starts with the project prefix "tw".
func checkPrefix(p string) error {
	ok := len(p) >= 2 && len(p) <= 8 && p[:2] == "tw"
	for i := 2; ok && i < len(p); i++ {
		c := p[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
	}
	if !ok {
		return fmt.Errorf("%w %q: use \"tw\" followed by up to 6 lower-case letters or digits, e.g. %s", ErrPrefix, p, DefaultPrefix)
	}
	return nil
}

func routerNetns(prefix string) string           { return prefix + "-r" }
func memberNetns(prefix, name string) string     { return prefix + "-" + name }
func podNetns(prefix, node string, n int) string { return prefix + "-" + node + "-p" + strconv.Itoa(n) }

// PodName is the name of pod n (counted from 1) of node: k8s-master1-pod-1.
func PodName(node string, n int) string { return node + "-pod-" + strconv.Itoa(n) }

// Role says what a namespace is for.
type Role string

// Namespace roles.
const (
	RoleRouter Role = "router"
	RoleNode   Role = "node"
	RoleHost   Role = "host"
	RolePod    Role = "pod"
)

// Layout is a validated topology resolved into what the lab creates: every
// namespace, interface, address and route, named deterministically.
type Layout struct {
	// Topology is the topology's name.
	Topology string
	Prefix   string
	// Router is the router's namespace.
	Router  string
	Subnets []SubnetLayout
	// Members are the nodes and plain hosts, nodes first in file order.
	Members []Member
	Pods    []PodLayout
	Pools   []api.IPPool
	VXLAN   plan.VXLANConfig
}

// SubnetLayout is one subnet: a bridge in the router namespace holding the
// router's address.
type SubnetLayout struct {
	Name   string
	CIDR   netip.Prefix
	Router netip.Addr
	// Bridge is the bridge's name inside the router namespace.
	Bridge string
}

// Member is a node or plain host namespace with its eth0.
type Member struct {
	Name string
	Role Role
	// Netns is the namespace's name (under /var/run/netns).
	Netns string
	// Subnet indexes Layout.Subnets.
	Subnet int
	// Address is eth0's address with the subnet's prefix length.
	Address netip.Prefix
	// MAC is eth0's MAC; nil lets the kernel pick one.
	MAC net.HardwareAddr
	// Gateway is the default route's next hop, the subnet's router.
	Gateway netip.Addr
	// RouterIface is the router-side end of eth0's veth, a port of the
	// subnet's bridge.
	RouterIface string
	// Block is the block pinned to a node; invalid when none is.
	Block netip.Prefix
}

// PodLayout is one pod.
type PodLayout struct {
	// Name is the pod's name, e.g. k8s-master1-pod-1.
	Name      string
	Namespace string
	Node      string
	// Index counts the node's pods from 1.
	Index int
	Netns string
	// IP is the address the topology asks for; invalid for counted pods.
	IP netip.Addr
	// ContainerID is the pod's CNI container ID.
	ContainerID string
}

// Layout resolves the (validated) topology with the given name prefix
// (DefaultPrefix when empty).
func (t *Topology) Layout(prefix string) (*Layout, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	l := &Layout{Topology: t.Name, Prefix: prefix, Router: routerNetns(prefix), VXLAN: t.VXLAN.Config()}
	for i, s := range t.Subnets {
		cidr := netip.MustParsePrefix(s.CIDR)
		l.Subnets = append(l.Subnets, SubnetLayout{
			Name: s.Name, CIDR: cidr, Router: netip.MustParseAddr(s.Router), Bridge: "twbr" + strconv.Itoa(i),
		})
	}
	for _, p := range t.Pools {
		l.Pools = append(l.Pools, p.IPPool())
	}
	subnetOf := func(a netip.Addr) int {
		return slices.IndexFunc(l.Subnets, func(s SubnetLayout) bool { return s.CIDR.Contains(a) })
	}
	add := func(m Member) {
		m.Subnet = subnetOf(m.Address.Addr())
		m.Gateway = l.Subnets[m.Subnet].Router
		m.RouterIface = "twv" + strconv.Itoa(len(l.Members))
		l.Members = append(l.Members, m)
	}
	for _, n := range t.Nodes {
		m := Member{Name: n.Name, Role: RoleNode, Netns: memberNetns(prefix, n.Name), Address: netip.MustParsePrefix(n.Address)}
		if n.MAC != "" {
			m.MAC, _ = net.ParseMAC(n.MAC)
		}
		if n.Block != "" {
			m.Block = netip.MustParsePrefix(n.Block)
		}
		add(m)
	}
	for _, s := range t.Subnets {
		for _, h := range s.Hosts {
			a, _, _ := parseBareOrPrefixed(h.Address)
			bits := netip.MustParsePrefix(s.CIDR).Bits()
			add(Member{Name: h.Name, Role: RoleHost, Netns: memberNetns(prefix, h.Name), Address: netip.PrefixFrom(a, bits)})
		}
	}
	for _, n := range t.Nodes {
		for k := 1; k <= n.Pods.Len(); k++ {
			p := PodLayout{
				Name: PodName(n.Name, k), Namespace: PodNamespace, Node: n.Name, Index: k,
				Netns: podNetns(prefix, n.Name, k),
			}
			p.ContainerID = prefix + "-" + p.Name
			if n.Pods.Addresses != nil {
				p.IP, _, _ = parseBareOrPrefixed(n.Pods.Addresses[k-1])
			}
			l.Pods = append(l.Pods, p)
		}
	}
	return l, nil
}

// Member returns the node or host called name.
func (l *Layout) Member(name string) (Member, bool) {
	i := slices.IndexFunc(l.Members, func(m Member) bool { return m.Name == name })
	if i < 0 {
		return Member{}, false
	}
	return l.Members[i], true
}

// Nodes returns the members that are nodes, in file order.
func (l *Layout) Nodes() []Member {
	var out []Member
	for _, m := range l.Members {
		if m.Role == RoleNode {
			out = append(out, m)
		}
	}
	return out
}

// Target returns the namespace and role of an exec target: "router", a node
// or host name, or a pod name.
func (l *Layout) Target(name string) (netns string, role Role, ok bool) {
	if name == RouterTarget {
		return l.Router, RoleRouter, true
	}
	if m, ok := l.Member(name); ok {
		return m.Netns, m.Role, true
	}
	for _, p := range l.Pods {
		if p.Name == name {
			return p.Netns, RolePod, true
		}
	}
	return "", "", false
}

// Targets lists every exec target name: the router, the members, the pods.
func (l *Layout) Targets() []string {
	out := []string{RouterTarget}
	for _, m := range l.Members {
		out = append(out, m.Name)
	}
	for _, p := range l.Pods {
		out = append(out, p.Name)
	}
	return out
}
