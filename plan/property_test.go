package plan_test

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/plan"
)

// cloneInput deep-copies an Input (nil and empty slices stay as they were).
func cloneInput(in plan.Input) plan.Input {
	b, err := json.Marshal(in)
	if err != nil {
		panic(err) // plain data always marshals
	}
	var out plan.Input
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return out
}

var (
	subnets   = []string{"10.0.1.0/24", "10.0.2.0/24", "10.1.0.0/16"}
	poolCIDRs = []string{"172.16.0.0/16", "172.17.0.0/16", "172.18.0.0/20"}
	modes     = []api.EncapMode{api.EncapNever, api.EncapAlways, api.EncapCrossSubnet, ""}
)

// gen draws the pieces of a random cluster.
type gen struct{ r *rand.Rand }

func (g gen) nodeName() string { return fmt.Sprintf("n%d", g.r.Intn(10)) }

func (g gen) nodeAddr() string {
	if g.r.Intn(25) == 0 {
		return "bogus"
	}
	sub := netip.MustParsePrefix(subnets[g.r.Intn(len(subnets))])
	a := sub.Addr().As4()
	a[3] = byte(1 + g.r.Intn(250))
	if sub.Bits() == 16 {
		a[2] = byte(g.r.Intn(4))
	}
	bits := sub.Bits()
	switch g.r.Intn(10) {
	case 0:
		bits = 32
	case 1:
		bits = 16
	}
	return netip.PrefixFrom(netip.AddrFrom4(a), bits).String()
}

func (g gen) blockCIDR() string {
	pool := netip.MustParsePrefix(poolCIDRs[g.r.Intn(len(poolCIDRs))])
	a := pool.Addr().As4()
	idx := g.r.Intn(12)
	a[2] += byte(idx / 4)
	a[3] = byte(64 * (idx % 4))
	return netip.PrefixFrom(netip.AddrFrom4(a), 26).String()
}

func (g gen) node(name string) api.Node {
	n := mkNode(name, g.nodeAddr(), "", "")
	if g.r.Intn(6) != 0 {
		n.Spec.TunnelAddress = netip.MustParsePrefix(g.blockCIDR()).Addr().String()
	}
	if g.r.Intn(6) != 0 {
		n.Spec.VTEPMAC = fmt.Sprintf("66:%02x:00:00:00:%02x", g.r.Intn(256), g.r.Intn(256))
	}
	if g.r.Intn(4) == 0 {
		n.Spec.MTU = 9000
	}
	return n
}

func (g gen) pool(i int) api.IPPool {
	p := mkPool(fmt.Sprintf("pool%d", i), poolCIDRs[i], modes[g.r.Intn(len(modes))])
	p.Spec.NATOutgoing = g.r.Intn(2) == 0
	p.Spec.Disabled = g.r.Intn(5) == 0
	return p
}

func (g gen) block(cidr string) api.Block {
	owner := g.nodeName()
	switch g.r.Intn(8) {
	case 0:
		owner = ""
	case 1:
		owner = "ghost"
	}
	b := mkBlock(cidr, owner)
	for range g.r.Intn(5) {
		borrower := g.nodeName()
		if g.r.Intn(3) == 0 {
			borrower = owner
		}
		a := alloc(g.r.Intn(66), borrower) // 64 and 65 are out of range
		if g.r.Intn(5) == 0 {
			a.Use = api.UseTunnel
		}
		b.Allocations = append(b.Allocations, a)
	}
	return b
}

func (g gen) workload(name, node string) api.WorkloadEndpoint {
	var addrs []string
	for range 1 + g.r.Intn(2) {
		a := netip.MustParsePrefix(g.blockCIDR()).Addr().As4()
		a[3] += byte(1 + g.r.Intn(62))
		addrs = append(addrs, netip.AddrFrom4(a).String()+"/32")
	}
	return mkWorkload(name, node, fmt.Sprintf("cali%011x", g.r.Intn(1<<30)), addrs...)
}

// cluster is a cluster state keyed by object identity, so it can be built
// into an Input from scratch in a canonical order.
type cluster struct {
	local     string
	nodes     map[string]api.Node
	pools     map[string]api.IPPool
	blocks    map[string]api.Block
	workloads map[string]api.WorkloadEndpoint
}

func sortedValues[T any](m map[string]T) []T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]T, 0, len(m))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

func (c *cluster) input() plan.Input {
	return plan.Input{
		LocalNode: c.local,
		Nodes:     sortedValues(c.nodes),
		Pools:     sortedValues(c.pools),
		Blocks:    sortedValues(c.blocks),
		Workloads: sortedValues(c.workloads),
	}
}

func (g gen) cluster() *cluster {
	c := &cluster{
		nodes: map[string]api.Node{}, pools: map[string]api.IPPool{},
		blocks: map[string]api.Block{}, workloads: map[string]api.WorkloadEndpoint{},
	}
	for range 1 + g.r.Intn(8) {
		name := g.nodeName()
		c.nodes[name] = g.node(name)
		c.local = name
	}
	for i := range 1 + g.r.Intn(len(poolCIDRs)) {
		p := g.pool(i)
		c.pools[p.Metadata.Name] = p
	}
	for range g.r.Intn(12) {
		cidr := g.blockCIDR()
		c.blocks[cidr] = g.block(cidr)
	}
	for i := range g.r.Intn(6) {
		node := c.local
		if g.r.Intn(4) == 0 {
			node = g.nodeName()
		}
		name := fmt.Sprintf("w%d", i)
		c.workloads[name] = g.workload(name, node)
	}
	return c
}

func shuffle[T any](r *rand.Rand, s []T) {
	r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
}

// shuffleInput permutes every slice in in, in place.
func shuffleInput(r *rand.Rand, in *plan.Input) {
	shuffle(r, in.Nodes)
	shuffle(r, in.Pools)
	shuffle(r, in.Blocks)
	shuffle(r, in.Workloads)
	for i := range in.Blocks {
		shuffle(r, in.Blocks[i].Allocations)
	}
	for i := range in.Workloads {
		shuffle(r, in.Workloads[i].Spec.Addresses)
	}
}

// checkInvariants asserts what holds for every plan, whatever the cluster.
func checkInvariants(t *testing.T, in plan.Input, dp plan.Dataplane) {
	t.Helper()
	for i := 1; i < len(dp.Routes); i++ {
		a, b := dp.Routes[i-1].Dst, dp.Routes[i].Dst
		if a == b {
			t.Errorf("two routes to %s", a)
		}
		if c := a.Addr().Compare(b.Addr()); c > 0 || (c == 0 && a.Bits() < b.Bits()) {
			t.Errorf("routes out of order: %s before %s", a, b)
		}
	}
	neigh := map[netip.Addr]bool{}
	for _, n := range dp.Neighbors {
		neigh[n.IP] = true
	}
	var iface string
	for _, n := range in.Nodes {
		if n.Metadata.Name == in.LocalNode {
			iface = n.Spec.Interface
		}
	}
	for _, r := range dp.Routes {
		switch r.Kind {
		case plan.KindVXLAN, plan.KindBorrowVXLAN:
			if dp.Device == nil || r.Device != dp.Device.Name || !neigh[r.Gateway] || !r.OnLink {
				t.Errorf("vxlan route %s has no device or neighbour", r)
			}
		case plan.KindDirect, plan.KindBorrowDirect:
			if r.Device != iface || !slices.Contains(dp.Firewall.VXLANPeers, r.Gateway) || !r.OnLink {
				t.Errorf("direct route %s is not via a known peer on %s", r, iface)
			}
		case plan.KindLocalBlock:
			if r.Type != plan.RouteBlackhole || r.Peer != "" {
				t.Errorf("local block route %s", r)
			}
		case plan.KindWorkload:
			if !r.ScopeLink || r.Gateway.IsValid() || r.Dst.Bits() != 32 {
				t.Errorf("workload route %s", r)
			}
		default:
			t.Errorf("route %s has kind %q", r, r.Kind)
		}
	}
	if !slices.IsSortedFunc(dp.Neighbors, func(a, b plan.Neighbor) int { return a.IP.Compare(b.IP) }) {
		t.Errorf("neighbours not sorted: %v", dp.Neighbors)
	}
	if dp.Device == nil && (dp.Neighbors != nil || dp.FDB != nil) {
		t.Errorf("neighbours or FDB without a device")
	}
	notes := slices.Clone(dp.Status)
	slices.Sort(notes)
	if len(slices.Compact(notes)) != len(dp.Status) {
		t.Errorf("duplicate status notes: %q", dp.Status)
	}
}

// TestPropertyOrderIndependent: for random clusters, Plan gives the same
// result twice, whatever the order of every input slice, without touching
// its input.
func TestPropertyOrderIndependent(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	g := gen{r}
	for i := range 300 {
		in := g.cluster().input()
		want := plan.Plan(in)
		checkInvariants(t, in, want)
		for range 3 {
			sh := cloneInput(in)
			shuffleInput(r, &sh)
			before := cloneInput(sh)
			got := plan.Plan(sh)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("cluster %d: shuffled input gave a different plan\ngot  %+v\nwant %+v", i, got, want)
			}
			if !reflect.DeepEqual(sh, before) {
				t.Fatalf("cluster %d: Plan modified its input", i)
			}
		}
	}
}

// state is a cluster held two ways: as an Input edited in place the way a
// watch cache would (appends, swap-removes), and as a keyed model.
type state struct {
	in    plan.Input
	model *cluster
}

func upsert[T any](s []T, key func(T) string, v T) []T {
	if i := slices.IndexFunc(s, func(x T) bool { return key(x) == key(v) }); i >= 0 {
		s[i] = v
		return s
	}
	return append(s, v)
}

func removeKey[T any](s []T, key func(T) string, k string) []T {
	if i := slices.IndexFunc(s, func(x T) bool { return key(x) == k }); i >= 0 {
		s[i] = s[len(s)-1]
		return s[:len(s)-1]
	}
	return s
}

func nodeKey(n api.Node) string                 { return n.Metadata.Name }
func poolKey(p api.IPPool) string               { return p.Metadata.Name }
func blockKey(b api.Block) string               { return b.CIDR }
func workloadKey(w api.WorkloadEndpoint) string { return w.Metadata.Name }

// op is one state transition; key names the object it touches.
type op struct {
	key   string
	apply func(s *state)
}

func (g gen) op(local string) op {
	switch g.r.Intn(8) {
	case 0: // add or replace a node
		n := g.node(g.nodeName())
		return op{"node/" + n.Metadata.Name, func(s *state) {
			s.model.nodes[n.Metadata.Name] = n
			s.in.Nodes = upsert(s.in.Nodes, nodeKey, n)
		}}
	case 1: // remove a node
		name := g.nodeName()
		return op{"node/" + name, func(s *state) {
			delete(s.model.nodes, name)
			s.in.Nodes = removeKey(s.in.Nodes, nodeKey, name)
		}}
	case 2: // move a node's address
		name, addr := g.nodeName(), g.nodeAddr()
		if g.r.Intn(3) == 0 {
			name = local
		}
		return op{"node/" + name, func(s *state) {
			n, ok := s.model.nodes[name]
			if !ok {
				return
			}
			n.Spec.Address = addr
			s.model.nodes[name] = n
			s.in.Nodes = upsert(s.in.Nodes, nodeKey, n)
		}}
	case 3: // add or replace a block
		b := g.block(g.blockCIDR())
		return op{"block/" + b.CIDR, func(s *state) {
			s.model.blocks[b.CIDR] = b
			s.in.Blocks = upsert(s.in.Blocks, blockKey, b)
		}}
	case 4: // remove a block
		cidr := g.blockCIDR()
		return op{"block/" + cidr, func(s *state) {
			delete(s.model.blocks, cidr)
			s.in.Blocks = removeKey(s.in.Blocks, blockKey, cidr)
		}}
	case 5: // add a workload
		name := fmt.Sprintf("w%d", g.r.Intn(8))
		w := g.workload(name, local)
		return op{"workload/" + name, func(s *state) {
			s.model.workloads[name] = w
			s.in.Workloads = upsert(s.in.Workloads, workloadKey, w)
		}}
	case 6: // remove a workload
		name := fmt.Sprintf("w%d", g.r.Intn(8))
		return op{"workload/" + name, func(s *state) {
			delete(s.model.workloads, name)
			s.in.Workloads = removeKey(s.in.Workloads, workloadKey, name)
		}}
	default: // flip a pool's mode
		i := g.r.Intn(len(poolCIDRs))
		mode := modes[g.r.Intn(len(modes))]
		name := fmt.Sprintf("pool%d", i)
		fresh := g.pool(i)
		return op{"pool/" + name, func(s *state) {
			p, ok := s.model.pools[name]
			if !ok {
				p = fresh
			}
			p.Spec.VXLANMode = mode
			s.model.pools[name] = p
			s.in.Pools = upsert(s.in.Pools, poolKey, p)
		}}
	}
}

func newState(c *cluster) *state {
	m := &cluster{local: c.local, nodes: map[string]api.Node{}, pools: map[string]api.IPPool{},
		blocks: map[string]api.Block{}, workloads: map[string]api.WorkloadEndpoint{}}
	for k, v := range c.nodes {
		m.nodes[k] = v
	}
	for k, v := range c.pools {
		m.pools[k] = v
	}
	for k, v := range c.blocks {
		m.blocks[k] = v
	}
	for k, v := range c.workloads {
		m.workloads[k] = v
	}
	return &state{in: cloneInput(c.input()), model: m}
}

// TestPropertyTransitions: replaying random state transitions, planning
// after each as the agent would, ends in the same plan as planning the final
// state from scratch; and transitions on distinct objects applied in any
// order end in the same plan.
func TestPropertyTransitions(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	g := gen{r}
	for i := range 100 {
		base := g.cluster()

		s := newState(base)
		for range 1 + r.Intn(30) {
			g.op(base.local).apply(s)
			checkInvariants(t, s.in, plan.Plan(s.in))
		}
		if got, want := plan.Plan(s.in), plan.Plan(s.model.input()); !reflect.DeepEqual(got, want) {
			t.Fatalf("cluster %d: replayed plan differs from planning the final state\ngot  %+v\nwant %+v", i, got, want)
		}

		// Independent transitions commute.
		var ops []op
		seen := map[string]bool{}
		for range 20 {
			o := g.op(base.local)
			if !seen[o.key] {
				seen[o.key] = true
				ops = append(ops, o)
			}
		}
		s1, s2 := newState(base), newState(base)
		for _, o := range ops {
			o.apply(s1)
		}
		shuffle(r, ops)
		for _, o := range ops {
			o.apply(s2)
		}
		if got, want := plan.Plan(s2.in), plan.Plan(s1.in); !reflect.DeepEqual(got, want) {
			t.Fatalf("cluster %d: the same transitions in another order gave a different plan\ngot  %+v\nwant %+v", i, got, want)
		}
	}
}
