package agent

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

func node(name, addr, tunnel string) api.Node {
	return api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: name},
		Spec:     api.NodeSpec{Address: addr, Interface: "eth0", MTU: 1500, VTEPMAC: api.VTEPMAC(name), TunnelAddress: tunnel}}
}

func putEv(t *testing.T, kind datastore.Kind, name string, v any, rev string) datastore.Event {
	t.Helper()
	return datastore.Event{Type: datastore.EventPut, KV: mustKV(t, kind, name, v, rev)}
}

func delEv(kind datastore.Kind, name, rev string) datastore.Event {
	return datastore.Event{Type: datastore.EventDelete, KV: datastore.KV{Kind: kind, Name: name, Revision: rev}}
}

// seedCache holds the seed cluster as the agent of k8s-master1 sees it.
func seedCache(t *testing.T) *cache {
	c := newCache("k8s-master1", nil)
	pool := api.IPPool{Metadata: api.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: api.IPPoolSpec{CIDR: "172.16.0.0/16", VXLANMode: api.EncapCrossSubnet, NATOutgoing: true}}
	kvs := []datastore.KV{
		// Stored without defaults: planInput fills them in.
		mustKV(t, datastore.KindIPPool, pool.Metadata.Name, pool, "2"),
		mustKV(t, datastore.KindNode, "k8s-node1", node("k8s-node1", "192.168.32.105/24", "172.16.36.64"), "3"),
		mustKV(t, datastore.KindNode, "k8s-master2", node("k8s-master2", "192.168.3.242/24", "172.16.224.0"), "4"),
		mustKV(t, datastore.KindNode, "k8s-master1", node("k8s-master1", "192.168.3.241/24", "172.16.159.128"), "5"),
		mustKV(t, datastore.KindBlock, datastore.BlockName("172.16.159.128/26"), api.Block{CIDR: "172.16.159.128/26", Affinity: "k8s-master1"}, "6"),
		mustKV(t, datastore.KindBlock, datastore.BlockName("172.16.224.0/26"), api.Block{CIDR: "172.16.224.0/26", Affinity: "k8s-master2"}, "7"),
		mustKV(t, datastore.KindBlock, datastore.BlockName("172.16.36.64/26"), api.Block{CIDR: "172.16.36.64/26", Affinity: "k8s-node1"}, "8"),
		mustKV(t, datastore.KindWorkload, "c1.eth0", api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{
			Node: "k8s-master1", Handle: "c1.eth0", HostIface: "cali64d6bf8fbc2", Addresses: []string{"172.16.159.145/32"}}}, "9"),
		// Another node's workload and IPAM bookkeeping are not the plan's business.
		mustKV(t, datastore.KindWorkload, "c2.eth0", api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{
			Node: "k8s-master2", Handle: "c2.eth0", HostIface: "cali65229b3901f", Addresses: []string{"172.16.224.15/32"}}}, "10"),
		mustKV(t, datastore.KindHandle, "c1.eth0", api.Handle{ID: "c1.eth0"}, "11"),
	}
	fillCache(c, kvs)
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
	var now time.Time

	if c.apply(putEv(t, datastore.KindHandle, "x", api.Handle{ID: "x"}, "20"), now) {
		t.Errorf("a handle change counted as relevant")
	}
	if c.apply(putEv(t, datastore.KindWorkload, "c9.eth0", api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{Node: "k8s-master2"}}, "21"), now) {
		t.Errorf("another node's workload counted as relevant")
	}
	if c.apply(putEv(t, datastore.KindIPAMConfig, "other", api.IPAMConfig{StrictAffinity: true}, "22"), now) || c.config.StrictAffinity {
		t.Errorf("an IPAM config not named %s was cached", datastore.IPAMConfigName)
	}
	if !c.apply(putEv(t, datastore.KindNode, "k8s-master2", node("k8s-master2", "192.168.32.7/24", "172.16.224.0"), "30"), now) {
		t.Fatalf("a node change was not relevant")
	}
	if got := c.nodes["k8s-master2"].Spec.Address; got != "192.168.32.7/24" {
		t.Errorf("address after update = %s", got)
	}
	// The same document again (a heartbeat that changed nothing Twill
	// reads) changes nothing.
	if c.apply(putEv(t, datastore.KindNode, "k8s-master2", node("k8s-master2", "192.168.32.7/24", "172.16.224.0"), "31"), now) {
		t.Errorf("an unchanged node counted as a change")
	}
	if !c.apply(delEv(datastore.KindNode, "k8s-master2", "32"), now) {
		t.Fatalf("a node deletion was not relevant")
	}
	if _, ok := c.nodes["k8s-master2"]; ok {
		t.Errorf("deleted node still cached")
	}
	if c.apply(delEv(datastore.KindNode, "k8s-master2", "33"), now) {
		t.Errorf("deleting a node that is not cached counted as a change")
	}
	// A document that does not decode is dropped.
	bad := datastore.Event{Type: datastore.EventPut, KV: datastore.KV{Kind: datastore.KindBlock, Name: datastore.BlockName("172.16.36.64/26"), Value: []byte("{"), Revision: "40"}}
	if !c.apply(bad, now) {
		t.Errorf("an undecodable block replacing a cached one was not relevant")
	}
	if _, ok := c.blocks[datastore.BlockName("172.16.36.64/26")]; ok {
		t.Errorf("an undecodable block is still cached")
	}
	// The IPAM config is tracked for the status.
	c.apply(putEv(t, datastore.KindIPAMConfig, datastore.IPAMConfigName, api.IPAMConfig{StrictAffinity: true}, "41"), now)
	if !c.config.StrictAffinity {
		t.Errorf("IPAM config not cached")
	}
	c.apply(delEv(datastore.KindIPAMConfig, datastore.IPAMConfigName, "42"), now)
	if c.config.StrictAffinity {
		t.Errorf("IPAM config deletion not applied")
	}
	// A local workload moved to another node is gone for this one.
	moved := putEv(t, datastore.KindWorkload, "c1.eth0", api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{Node: "k8s-master2", Handle: "c1.eth0"}}, "43")
	if !c.apply(moved, now) {
		t.Errorf("a local workload moving away was not relevant")
	}
	if _, ok := c.workloads["c1.eth0"]; ok {
		t.Errorf("a workload of another node is cached")
	}
}

// TestCacheOwnWrites: events of an object older than the agent's own write
// of it do not undo the write; the write's own event ends that, and so does
// ownWriteTTL.
func TestCacheOwnWrites(t *testing.T) {
	c := seedCache(t)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	w := func(iface string) api.WorkloadEndpoint {
		return api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{Node: "k8s-master1", Handle: "c5.eth0", HostIface: iface, Addresses: []string{"172.16.159.150/32"}}}
	}
	// A DEL and ADD of the same handle: the watch still has the old
	// record's deletion to deliver when the agent has written the new one.
	c.apply(putEv(t, datastore.KindWorkload, "c5.eth0", w("cali-old"), "50"), t0)
	c.removeOwn(datastore.KindWorkload, "c5.eth0", "50", t0)
	if c.apply(putEv(t, datastore.KindWorkload, "c5.eth0", w("cali-old"), "50"), t0) {
		t.Errorf("a put older than the agent's own deletion was applied")
	}
	c.apply(delEv(datastore.KindWorkload, "c5.eth0", "51"), t0)
	if _, ok := c.own[objKey{datastore.KindWorkload, "c5.eth0"}]; ok {
		t.Errorf("the deletion's own event did not end the own write")
	}
	c.putOwn(mustKV(t, datastore.KindWorkload, "c5.eth0", w("cali-new"), "60"), t0)
	if c.apply(delEv(datastore.KindWorkload, "c5.eth0", "59"), t0) {
		t.Errorf("a deletion older than the agent's own write was applied")
	}
	if got := c.workloads["c5.eth0"].Spec.HostIface; got != "cali-new" {
		t.Fatalf("the agent's own write was undone: iface %q", got)
	}
	c.apply(putEv(t, datastore.KindWorkload, "c5.eth0", w("cali-new"), "60"), t0)
	if len(c.own) != 0 {
		t.Errorf("own writes left after their events: %v", c.own)
	}
	if !c.apply(putEv(t, datastore.KindWorkload, "c5.eth0", w("cali-newer"), "61"), t0) || c.workloads["c5.eth0"].Spec.HostIface != "cali-newer" {
		t.Errorf("a later change after the own write's event was not applied")
	}
	// An own write whose event never comes holds back events for
	// ownWriteTTL only.
	c.putOwn(mustKV(t, datastore.KindNode, "k8s-master1", node("k8s-master1", "192.168.3.241/24", "172.16.159.129"), "70"), t0)
	if c.apply(putEv(t, datastore.KindNode, "k8s-master1", node("k8s-master1", "192.168.3.241/24", "172.16.159.131"), "71"), t0.Add(time.Second)) {
		t.Errorf("an event within ownWriteTTL of an own write was applied")
	}
	if !c.apply(putEv(t, datastore.KindNode, "k8s-master1", node("k8s-master1", "192.168.3.241/24", "172.16.159.131"), "72"), t0.Add(2*ownWriteTTL)) {
		t.Errorf("an event after ownWriteTTL was held back")
	}
}

// TestCacheReplaceKeepsOwnWrites: a list that started before an own write
// returned and does not hold it leaves the write in the cache; a list that
// started after it replaces it.
func TestCacheReplaceKeepsOwnWrites(t *testing.T) {
	c := seedCache(t)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	w := api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{Node: "k8s-master1", Handle: "c7.eth0", HostIface: "cali7", Addresses: []string{"172.16.159.157/32"}}}
	early := c.newListing(datastore.KindWorkload)
	c.putOwn(mustKV(t, datastore.KindWorkload, "c7.eth0", w, "80"), t0)
	late := c.newListing(datastore.KindWorkload)
	stale := []datastore.KV{mustKV(t, datastore.KindWorkload, "c1.eth0", api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{Node: "k8s-master1", Handle: "c1.eth0"}}, "9")}
	early.add(stale)
	c.replace(early, t0)
	if _, ok := c.workloads["c7.eth0"]; !ok {
		t.Errorf("a list that started before the own write dropped it")
	}
	late.add(stale)
	c.replace(late, t0)
	if _, ok := c.workloads["c7.eth0"]; ok {
		t.Errorf("a list that started after the own write, without it, kept it")
	}
	if len(c.own) != 0 {
		t.Errorf("own writes left after a list that reflects them: %v", c.own)
	}
	// A list that holds the write's revision ends it too.
	c.putOwn(mustKV(t, datastore.KindWorkload, "c7.eth0", w, "90"), t0)
	l := c.newListing(datastore.KindWorkload)
	l.startSeq = 0 // as if the list had started before the write
	l.add([]datastore.KV{mustKV(t, datastore.KindWorkload, "c7.eth0", w, "90")})
	c.replace(l, t0)
	if _, ok := c.own[objKey{datastore.KindWorkload, "c7.eth0"}]; ok || c.workloads["c7.eth0"].Spec.HostIface != "cali7" {
		t.Errorf("a list holding the own write's revision: own %v, workload %+v", c.own, c.workloads["c7.eth0"])
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
			c.nodes["me"] = n
			for _, p := range tc.pools {
				c.pools[p.Metadata.Name] = p
			}
			for _, b := range tc.blocks {
				name := datastore.BlockName(b.CIDR)
				cb, err := decodeBlock(mustKV(t, datastore.KindBlock, name, b, "1"))
				if err != nil {
					t.Fatal(err)
				}
				c.blocks[name] = cb
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
