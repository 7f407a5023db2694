package agent

import (
	"net/netip"
	"slices"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

func node(name, addr, tunnel string) api.Node {
	return api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: name},
		Spec:     api.NodeSpec{Address: addr, Interface: "eth0", MTU: 1500, VTEPMAC: api.VTEPMAC(name), TunnelAddress: tunnel}}
}

func putEv(t *testing.T, key string, v any, rev int64) datastore.Event {
	t.Helper()
	return datastore.Event{Type: datastore.EventPut, KV: mustKV(t, key, v, rev)}
}

func delEv(key string, rev int64) datastore.Event {
	return datastore.Event{Type: datastore.EventDelete, KV: datastore.KV{Key: key, Revision: rev}}
}

// seedCache holds the seed cluster as the agent of k8s-master1 sees it.
func seedCache(t *testing.T) *cache {
	c := newCache("k8s-master1", nil)
	pool := api.IPPool{Metadata: api.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: api.IPPoolSpec{CIDR: "172.16.0.0/16", VXLANMode: api.EncapCrossSubnet, NATOutgoing: true}}
	kvs := []datastore.KV{
		// Stored without defaults: planInput fills them in.
		mustKV(t, datastore.PoolKey(pool.Metadata.Name), pool, 2),
		mustKV(t, datastore.NodeKey("k8s-node1"), node("k8s-node1", "192.168.32.105/24", "172.16.36.64"), 3),
		mustKV(t, datastore.NodeKey("k8s-master2"), node("k8s-master2", "192.168.3.242/24", "172.16.224.0"), 4),
		mustKV(t, datastore.NodeKey("k8s-master1"), node("k8s-master1", "192.168.3.241/24", "172.16.159.128"), 5),
		mustKV(t, datastore.BlockKey("172.16.159.128/26"), api.Block{CIDR: "172.16.159.128/26", Affinity: "k8s-master1"}, 6),
		mustKV(t, datastore.BlockKey("172.16.224.0/26"), api.Block{CIDR: "172.16.224.0/26", Affinity: "k8s-master2"}, 7),
		mustKV(t, datastore.BlockKey("172.16.36.64/26"), api.Block{CIDR: "172.16.36.64/26", Affinity: "k8s-node1"}, 8),
		mustKV(t, datastore.WorkloadKey("k8s-master1", "c1.eth0"), api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{
			Node: "k8s-master1", Handle: "c1.eth0", HostIface: "cali64d6bf8fbc2", Addresses: []string{"172.16.159.145/32"}}}, 9),
		// Another node's workload and IPAM bookkeeping are not the plan's business.
		mustKV(t, datastore.WorkloadKey("k8s-master2", "c2.eth0"), api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{
			Node: "k8s-master2", Handle: "c2.eth0", HostIface: "cali65229b3901f", Addresses: []string{"172.16.224.15/32"}}}, 10),
		mustKV(t, datastore.HandleKey("c1.eth0"), api.Handle{ID: "c1.eth0"}, 11),
	}
	c.reset(kvs)
	return c
}

func names(ns []api.Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Metadata.Name)
	}
	return out
}

func TestPlanInputFromCache(t *testing.T) {
	c := seedCache(t)
	vx := plan.VXLANConfig{Device: "vxlan.calico", VNI: 4096}
	in := planInput(c, vx)
	if in.LocalNode != "k8s-master1" || in.VXLAN != vx {
		t.Errorf("LocalNode/VXLAN = %q/%+v, want k8s-master1 and the flags' settings", in.LocalNode, in.VXLAN)
	}
	if got := names(in.Nodes); !slices.Equal(got, []string{"k8s-master1", "k8s-master2", "k8s-node1"}) {
		t.Errorf("nodes = %v, want all three in key order", got)
	}
	if len(in.Pools) != 1 || in.Pools[0].Spec.BlockSize != 26 || in.Pools[0].Spec.NodeSelector != "all()" || in.Pools[0].Spec.IPIPMode != api.EncapNever {
		t.Errorf("pools = %+v, want the pool with its defaults filled in", in.Pools)
	}
	if len(in.Blocks) != 3 {
		t.Errorf("blocks = %d, want 3", len(in.Blocks))
	}
	if len(in.Workloads) != 1 || in.Workloads[0].Spec.Handle != "c1.eth0" {
		t.Errorf("workloads = %+v, want only the local node's c1.eth0", in.Workloads)
	}

	// The input plans the seed's routes for k8s-master1.
	dp := plan.Plan(in)
	want := map[string]plan.RouteKind{
		"172.16.36.64/26":   plan.KindVXLAN,
		"172.16.224.0/26":   plan.KindDirect,
		"172.16.159.128/26": plan.KindLocalBlock,
		"172.16.159.145/32": plan.KindWorkload,
	}
	for dst, kind := range want {
		if !hasRoute(dp, dst, kind) {
			t.Errorf("plan from the cache lacks %s route %s; routes: %v", kind, dst, dp.Routes)
		}
	}
	if len(dp.Routes) != len(want) {
		t.Errorf("plan has %d routes, want %d: %v", len(dp.Routes), len(want), dp.Routes)
	}
}

func TestPlanInputIsDeterministic(t *testing.T) {
	a := planInput(seedCache(t), plan.VXLANConfig{})
	for range 20 {
		b := planInput(seedCache(t), plan.VXLANConfig{})
		if names(a.Nodes)[0] != names(b.Nodes)[0] || a.Blocks[0].CIDR != b.Blocks[0].CIDR || a.Blocks[2].CIDR != b.Blocks[2].CIDR {
			t.Fatalf("planInput order differs between runs")
		}
	}
}

func TestCacheApply(t *testing.T) {
	c := seedCache(t)
	key := datastore.NodeKey("k8s-master2")

	if c.apply(putEv(t, datastore.HandleKey("x"), api.Handle{ID: "x"}, 20), 20) {
		t.Errorf("a handle change counted as relevant")
	}
	if c.apply(putEv(t, datastore.WorkloadKey("k8s-master2", "c9.eth0"), api.WorkloadEndpoint{}, 21), 21) {
		t.Errorf("another node's workload counted as relevant")
	}
	if !c.apply(putEv(t, key, node("k8s-master2", "192.168.32.7/24", "172.16.224.0"), 30), 30) {
		t.Fatalf("a node change was not relevant")
	}
	if got := c.nodes[key].Spec.Address; got != "192.168.32.7/24" {
		t.Errorf("address after update = %s", got)
	}
	// An event older than what the cache holds (the agent's own write got
	// there first) is dropped.
	if c.apply(putEv(t, key, node("k8s-master2", "192.168.3.242/24", "172.16.224.0"), 25), 25) {
		t.Errorf("a stale event was applied")
	}
	if got := c.nodes[key].Spec.Address; got != "192.168.32.7/24" {
		t.Errorf("stale event changed the address to %s", got)
	}
	if !c.apply(delEv(key, 31), 31) {
		t.Fatalf("a node deletion was not relevant")
	}
	if _, ok := c.nodes[key]; ok {
		t.Errorf("deleted node still cached")
	}
	// A put older than the deletion does not resurrect it.
	if c.apply(putEv(t, key, node("k8s-master2", "192.168.3.242/24", ""), 30), 30) {
		t.Errorf("a put older than the deletion resurrected the node")
	}
	// A document that does not decode is dropped, with the key.
	bad := datastore.Event{Type: datastore.EventPut, KV: datastore.KV{Key: datastore.BlockKey("172.16.36.64/26"), Value: []byte("{"), Revision: 40}}
	c.apply(bad, 40)
	if _, ok := c.blocks[datastore.BlockKey("172.16.36.64/26")]; ok {
		t.Errorf("an undecodable block is still cached")
	}
	// The IPAM config is tracked for the status.
	c.apply(putEv(t, datastore.IPAMConfigKey, api.IPAMConfig{StrictAffinity: true}, 41), 41)
	if !c.config.StrictAffinity {
		t.Errorf("IPAM config not cached")
	}
	c.apply(delEv(datastore.IPAMConfigKey, 42), 42)
	if c.config.StrictAffinity {
		t.Errorf("IPAM config deletion not applied")
	}
}

func TestPoolHasRoom(t *testing.T) {
	block := func(cidr, aff string, used int) api.Block {
		b := api.Block{CIDR: cidr, Affinity: aff}
		for i := range used {
			b.Allocations = append(b.Allocations, api.Allocation{Ordinal: i, Handle: "h"})
		}
		return b
	}
	// A /30 pool with /31 blocks: two blocks of two addresses.
	pool := api.IPPool{Metadata: api.ObjectMeta{Name: "tiny"}, Spec: api.IPPoolSpec{CIDR: "10.9.0.0/30", BlockSize: 31}}
	cases := []struct {
		name   string
		pools  []api.IPPool
		blocks []api.Block
		config api.IPAMConfig
		labels map[string]string
		want   bool
	}{
		{name: "no pool", want: false},
		{name: "no block yet", pools: []api.IPPool{pool}, want: true},
		{name: "own block with room", pools: []api.IPPool{pool},
			blocks: []api.Block{block("10.9.0.0/31", "me", 1), block("10.9.0.2/31", "other", 2)}, want: true},
		{name: "a block unclaimed", pools: []api.IPPool{pool},
			blocks: []api.Block{block("10.9.0.0/31", "me", 2)}, want: true},
		{name: "claim capped by maxBlocksPerNode", pools: []api.IPPool{pool},
			blocks: []api.Block{block("10.9.0.0/31", "me", 2)}, config: api.IPAMConfig{MaxBlocksPerNode: 1}, want: false},
		{name: "borrowable", pools: []api.IPPool{pool},
			blocks: []api.Block{block("10.9.0.0/31", "me", 2), block("10.9.0.2/31", "other", 1)}, want: true},
		{name: "strict forbids borrowing", pools: []api.IPPool{pool},
			blocks: []api.Block{block("10.9.0.0/31", "me", 2), block("10.9.0.2/31", "other", 1)}, config: api.IPAMConfig{StrictAffinity: true}, want: false},
		{name: "all full", pools: []api.IPPool{pool},
			blocks: []api.Block{block("10.9.0.0/31", "me", 2), block("10.9.0.2/31", "other", 2)}, want: false},
		{name: "disabled pool", pools: []api.IPPool{func() api.IPPool { p := pool; p.Spec.Disabled = true; return p }()}, want: false},
		{name: "tunnel-only pool", pools: []api.IPPool{func() api.IPPool { p := pool; p.Spec.AllowedUses = []api.IPPoolUse{api.UseTunnel}; return p }()}, want: false},
		{name: "selector excludes the node", pools: []api.IPPool{func() api.IPPool { p := pool; p.Spec.NodeSelector = "zone == 'b'"; return p }()},
			labels: map[string]string{"zone": "a"}, want: false},
		{name: "selector matches the node", pools: []api.IPPool{func() api.IPPool { p := pool; p.Spec.NodeSelector = "zone == 'a'"; return p }()},
			labels: map[string]string{"zone": "a"}, want: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache("me", nil)
			n := node("me", "192.168.3.1/24", "")
			n.Metadata.Labels = tc.labels
			c.nodes[datastore.NodeKey("me")] = n
			for _, p := range tc.pools {
				c.pools[datastore.PoolKey(p.Metadata.Name)] = p
			}
			for _, b := range tc.blocks {
				key := datastore.BlockKey(b.CIDR)
				cb, err := decodeBlock(mustKV(t, key, b, 1))
				if err != nil {
					t.Fatal(err)
				}
				c.blocks[key] = cb
			}
			c.config = tc.config
			if got := poolHasRoom(c); got != tc.want {
				t.Errorf("poolHasRoom = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestBlockAddrs(t *testing.T) {
	for cidr, want := range map[string]int{"10.0.0.0/26": 64, "10.0.0.0/32": 1, "10.0.0.0/20": 4096} {
		if got := blockAddrs(netip.MustParsePrefix(cidr)); got != want {
			t.Errorf("blockAddrs(%s) = %d, want %d", cidr, got, want)
		}
	}
}
