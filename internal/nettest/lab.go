//go:build linux

package nettest

import (
	"fmt"
	"net/netip"
	"testing"
)

// Subnet is one L2 segment of a Lab: a bridge in the router namespace that
// holds the router's address on it.
type Subnet struct {
	// Name is short (it is part of the bridge's name).
	Name string
	// Router is the router's address with the prefix length, e.g.
	// 192.168.3.130/24.
	Router netip.Prefix
	bridge string
}

// Node is a host namespace of a Lab with eth0 on one subnet and a default
// route via that subnet's router.
type Node struct {
	Name string
	NS   *NS
	// Addr is eth0's address with its prefix length.
	Addr   netip.Prefix
	Subnet *Subnet
	// routerIf is the router-side end of the node's veth.
	routerIf string
}

// Lab is a router namespace joining subnets, with node namespaces on them:
// the reference cluster's shape.
type Lab struct {
	Router  *NS
	Subnets map[string]*Subnet
	Nodes   map[string]*Node
	seq     int
}

// NewLab creates the router namespace with one bridge per subnet, the
// router's address on each and IPv4 forwarding on (inside the router
// namespace only).
func NewLab(t testing.TB, subnets ...Subnet) *Lab {
	t.Helper()
	l := &Lab{Router: New(t, "rtr"), Subnets: map[string]*Subnet{}, Nodes: map[string]*Node{}}
	for i := range subnets {
		s := subnets[i]
		s.bridge = fmt.Sprintf("twb%d", i)
		must(t, l.Router.Bridge(s.bridge))
		must(t, l.Router.AddrAdd(s.bridge, s.Router.String()))
		l.Subnets[s.Name] = &s
	}
	must(t, l.Router.Sysctl("net/ipv4/ip_forward", "1"))
	return l
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// AddNode creates a node namespace with eth0 (address addr, e.g.
// 192.168.3.241/24) on the named subnet and a default route via its router.
func (l *Lab) AddNode(t testing.TB, name, subnet, addr string) *Node {
	t.Helper()
	s, ok := l.Subnets[subnet]
	if !ok {
		t.Fatalf("nettest: no subnet %q", subnet)
	}
	l.seq++
	n := &Node{Name: name, NS: New(t, "n"), Addr: netip.MustParsePrefix(addr), Subnet: s, routerIf: fmt.Sprintf("twv%d", l.seq)}
	must(t, l.Router.Veth(n.routerIf, n.NS, "eth0"))
	must(t, l.Router.SetMaster(n.routerIf, s.bridge))
	must(t, n.NS.AddrAdd("eth0", addr))
	must(t, n.NS.DefaultRoute(s.Router.Addr().String()))
	l.Nodes[name] = n
	return n
}

// MoveNode moves a node to another subnet: its veth joins that subnet's
// bridge, eth0 gets addr instead of its old address, and the default route
// points at the new router address.
func (l *Lab) MoveNode(t testing.TB, n *Node, subnet, addr string) {
	t.Helper()
	s, ok := l.Subnets[subnet]
	if !ok {
		t.Fatalf("nettest: no subnet %q", subnet)
	}
	must(t, l.Router.SetMaster(n.routerIf, s.bridge))
	must(t, n.NS.AddrDel("eth0", n.Addr.String()))
	must(t, n.NS.AddrAdd("eth0", addr))
	must(t, n.NS.DefaultRoute(s.Router.Addr().String()))
	n.Addr = netip.MustParsePrefix(addr)
	n.Subnet = s
}
