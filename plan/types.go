// Package plan computes the dataplane a node should have, as a plain value,
// from plain inputs: the local node, all nodes, pools, blocks and the local
// workloads. It is Twill's pure core: no netlink, no etcd, no clock, no
// goroutines. Package dataplane makes the kernel match its output.
package plan

import (
	"net/netip"

	"twill.dev/twill/api"
)

// RouteProtocol marks routes as Twill's in the kernel (as Calico's felix
// does); the reconciler prunes only routes carrying it.
const RouteProtocol = 80

// Defaults for the VXLAN device, as in the reference.
const (
	DefaultVXLANDevice = "vxlan.calico"
	DefaultVNI         = 4096
	DefaultVXLANPort   = 4789
	// VXLANOverhead is what IPv4 VXLAN encapsulation adds to a packet.
	VXLANOverhead = 50
	// DefaultHostMTU is assumed when the host interface's MTU is unknown.
	DefaultHostMTU = 1500
)

// VXLANConfig overrides the VXLAN device's defaults; zero values mean default.
type VXLANConfig struct {
	Device string
	VNI    int
	Port   int
	// MTU of the device; 0 means host MTU - VXLANOverhead.
	MTU int
}

// Input is everything the planner looks at.
type Input struct {
	// LocalNode is the name of the node being planned.
	LocalNode string
	Nodes     []api.Node
	Pools     []api.IPPool
	Blocks    []api.Block
	// Workloads are the local node's workload endpoints (others are ignored).
	Workloads []api.WorkloadEndpoint
	VXLAN     VXLANConfig
}

// RouteType distinguishes blackhole routes from ordinary ones.
type RouteType int

// Route types.
const (
	RouteUnicast RouteType = iota
	RouteBlackhole
)

// RouteKind says why a route exists; explain and status use it.
type RouteKind string

// Route kinds.
const (
	KindLocalBlock   RouteKind = "local-block"   // blackhole for the node's own block
	KindWorkload     RouteKind = "workload"      // /32 to a local pod's veth
	KindDirect       RouteKind = "direct"        // remote block via the peer's host address
	KindVXLAN        RouteKind = "vxlan"         // remote block via the peer's tunnel address
	KindBorrowDirect RouteKind = "borrow-direct" // /32 borrowed by a peer, direct
	KindBorrowVXLAN  RouteKind = "borrow-vxlan"  // /32 borrowed by a peer, over VXLAN
)

// Route is one route in the main table, always with protocol RouteProtocol.
type Route struct {
	Dst  netip.Prefix
	Type RouteType
	// Gateway is unset for blackhole and link-scope routes.
	Gateway netip.Addr
	// Device is the output interface; empty for blackholes.
	Device string
	// OnLink sets the onlink flag (gateway not in any connected subnet).
	OnLink bool
	// ScopeLink is set for pod routes (scope link, no gateway).
	ScopeLink bool
	Kind      RouteKind
	// Peer is the node the route leads to (empty for local routes).
	Peer string
}

// Device is the VXLAN device the node should have.
type Device struct {
	Name string
	VNI  int
	Port int
	MTU  int
	// Parent is the host interface carrying LocalIP; empty if unknown.
	Parent  string
	LocalIP netip.Addr
	// MAC is lower-case colon-separated, e.g. 66:04:84:48:ab:6a.
	MAC string
	// Address is the tunnel address as a /32.
	Address netip.Prefix
}

// Neighbor is a permanent ARP entry: remote tunnel IP -> remote VTEP MAC.
type Neighbor struct {
	Device string
	IP     netip.Addr
	MAC    string
}

// FDB is a permanent forwarding entry: remote VTEP MAC -> remote node IP.
type FDB struct {
	Device string
	MAC    string
	Dst    netip.Addr
}

// Firewall is the host firewall's desired content (nftables sets).
type Firewall struct {
	// AllPools are every pool's CIDR, disabled or not: traffic to them is never NATed.
	AllPools []netip.Prefix
	// NATPools are the CIDRs of pools with natOutgoing.
	NATPools []netip.Prefix
	// VXLANPeers are the host addresses of other nodes, allowed to send VXLAN.
	VXLANPeers []netip.Addr
	VXLANPort  int
	// Complete is set by Plan whenever it found the local node, so the lists
	// above are the whole truth: an empty list then empties its nftables set.
	// Without it (the zero Firewall, or a plan that found no local node) the
	// dataplane never empties a set that has elements, so a datastore hiccup
	// that momentarily lists no nodes cannot cut off real peers' VXLAN.
	Complete bool
}

// Dataplane is the desired state of one node, sorted deterministically.
type Dataplane struct {
	// Device is nil when no pool the node sees needs VXLAN.
	Device    *Device
	Routes    []Route
	Neighbors []Neighbor
	FDB       []FDB
	Firewall  Firewall
	// Status holds human-readable notes: peers without a route and why,
	// a node address recorded as /32, and so on.
	Status []string
}
