package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"twill.dev/twill/api"
	"twill.dev/twill/dataplane"
	"twill.dev/twill/datastore"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/plan"
)

func seedEnv(k string) string {
	return map[string]string{
		"CALICO_IPV4POOL_CIDR":  "172.16.0.0/16",
		"CALICO_IPV4POOL_VXLAN": "CrossSubnet",
		"CALICO_IPV4POOL_IPIP":  "Never",
	}[k]
}

func getNode(t *testing.T, s datastore.Store, name string) datastore.Object[api.Node] {
	t.Helper()
	o, err := datastore.GetObject[api.Node](context.Background(), s, datastore.KindNode, name)
	if err != nil {
		t.Fatalf("read node %s: %v", name, err)
	}
	return o
}

func nodeBlocks(t *testing.T, s datastore.Store, node string) []api.Block {
	t.Helper()
	objs, _, err := datastore.ListObjects[api.Block](context.Background(), s, datastore.KindBlock, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []api.Block
	for _, o := range objs {
		if o.Value.Affinity == node {
			out = append(out, o.Value)
		}
	}
	return out
}

func TestRegisterCreatesPoolNodeAndTunnel(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	ctx := context.Background()

	pool, err := datastore.GetObject[api.IPPool](ctx, h.store, datastore.KindIPPool, api.DefaultPoolName)
	if err != nil {
		t.Fatalf("default pool not created: %v", err)
	}
	if pool.Value.Spec.CIDR != "172.16.0.0/16" || pool.Value.Spec.VXLANMode != api.EncapCrossSubnet {
		t.Errorf("default pool = %+v, want 172.16.0.0/16 CrossSubnet from the environment", pool.Value.Spec)
	}
	n := getNode(t, h.store, "k8s-master1").Value
	if n.Spec.Address != "192.168.3.241/24" || n.Spec.Interface != "eth0" || n.Spec.MTU != 1500 {
		t.Errorf("node spec = %+v, want the detected address, interface and MTU", n.Spec)
	}
	if n.Spec.VTEPMAC != "66:04:84:48:ab:6a" {
		t.Errorf("VTEP MAC = %s, want 66:04:84:48:ab:6a (derived from the name as Calico does)", n.Spec.VTEPMAC)
	}
	blocks := nodeBlocks(t, h.store, "k8s-master1")
	if len(blocks) != 1 {
		t.Fatalf("node holds %d blocks, want 1", len(blocks))
	}
	bp := netip.MustParsePrefix(blocks[0].CIDR)
	if n.Spec.TunnelAddress != bp.Addr().String() {
		t.Errorf("tunnel address = %q, want the block's first address %s", n.Spec.TunnelAddress, bp.Addr())
	}
	if len(blocks[0].Allocations) != 1 || blocks[0].Allocations[0].Use != api.UseTunnel || blocks[0].Allocations[0].Handle != "vxlan-tunnel-addr-k8s-master1" {
		t.Errorf("block allocations = %+v, want one Tunnel allocation of handle vxlan-tunnel-addr-k8s-master1", blocks[0].Allocations)
	}
	dp := h.dp.waitApply(t, "with the device and the local blackhole", func(dp plan.Dataplane) bool {
		return dp.Device != nil && hasRoute(dp, bp.String(), plan.KindLocalBlock)
	})
	if dp.Device.Address != netip.PrefixFrom(bp.Addr(), 32) || dp.Device.MAC != "66:04:84:48:ab:6a" || dp.Device.MTU != 1450 {
		t.Errorf("device = %+v, want address %s/32, the VTEP MAC and MTU 1450", dp.Device, bp.Addr())
	}
}

func TestDefaultPoolOnlyWhenNoneExists(t *testing.T) {
	store := datastore.NewFake()
	put(t, store, datastore.KindIPPool, "mine", testPool("mine", "10.244.0.0/16", api.EncapAlways))
	h := newHarness(t, store, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	kvs, _, err := store.List(context.Background(), datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 1 || kvs[0].Name != "mine" {
		t.Errorf("pools = %v, want only the existing pool", kvs)
	}
	n := getNode(t, store, "k8s-master1").Value
	if a, err := netip.ParseAddr(n.Spec.TunnelAddress); err != nil || !netip.MustParsePrefix("10.244.0.0/16").Contains(a) {
		t.Errorf("tunnel address %q is not from the existing pool", n.Spec.TunnelAddress)
	}
}

func TestRestartReusesRegistrationAndKeepsLabels(t *testing.T) {
	store := datastore.NewFake()
	h := newHarness(t, store, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	first := getNode(t, store, "k8s-master1")
	blocks := nodeBlocks(t, store, "k8s-master1")
	h.stop()

	// An administrator labels the node while the agent is down.
	n := first.Value
	n.Metadata.Labels = map[string]string{"zone": "a"}
	put(t, store, datastore.KindNode, "k8s-master1", n)

	h2 := newHarness(t, store, func(c *Config) {
		c.Getenv = seedEnv
		c.DetectAddress = func(context.Context) (HostAddress, error) {
			return HostAddress{Prefix: netip.MustParsePrefix("192.168.3.241/24"), Interface: "eth0", MTU: 9000}, nil
		}
	})
	h2.start()
	again := getNode(t, store, "k8s-master1").Value
	if again.Spec.TunnelAddress != first.Value.Spec.TunnelAddress {
		t.Errorf("tunnel address changed on restart: %s → %s", first.Value.Spec.TunnelAddress, again.Spec.TunnelAddress)
	}
	if again.Metadata.Labels["zone"] != "a" {
		t.Errorf("labels after restart = %v, want zone=a preserved", again.Metadata.Labels)
	}
	if again.Spec.MTU != 9000 {
		t.Errorf("MTU after restart = %d, want the newly detected 9000", again.Spec.MTU)
	}
	after := nodeBlocks(t, store, "k8s-master1")
	if len(after) != len(blocks) || after[0].CIDR != blocks[0].CIDR || len(after[0].Allocations) != 1 {
		t.Errorf("blocks after restart = %+v, want the same single block %+v", after, blocks)
	}
}

func TestDatastoreChangesReachThePlan(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	put(t, h.store, datastore.KindNode, "k8s-master2", api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: "k8s-master2"},
		Spec:     api.NodeSpec{Address: "192.168.3.242/24", Interface: "eth0", VTEPMAC: api.VTEPMAC("k8s-master2"), TunnelAddress: "172.16.224.0"}})
	putBlock(t, h.store, api.Block{CIDR: "172.16.224.0/26", Affinity: "k8s-master2"})
	put(t, h.store, datastore.KindNode, "k8s-node1", api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: "k8s-node1"},
		Spec:     api.NodeSpec{Address: "192.168.32.105/24", Interface: "eth0", VTEPMAC: api.VTEPMAC("k8s-node1"), TunnelAddress: "172.16.36.64"}})
	putBlock(t, h.store, api.Block{CIDR: "172.16.36.64/26", Affinity: "k8s-node1"})

	h.dp.waitApply(t, "with a direct route to k8s-master2 and a VXLAN route to k8s-node1", func(dp plan.Dataplane) bool {
		return hasRoute(dp, "172.16.224.0/26", plan.KindDirect) && hasRoute(dp, "172.16.36.64/26", plan.KindVXLAN)
	})

	remove(t, h.store, datastore.KindNode, "k8s-node1")
	remove(t, h.store, datastore.KindBlock, datastore.BlockName("172.16.36.64/26"))
	h.dp.waitApply(t, "without k8s-node1's route", func(dp plan.Dataplane) bool {
		return hasRoute(dp, "172.16.224.0/26", plan.KindDirect) && !hasRoute(dp, "172.16.36.64/26", plan.KindVXLAN)
	})
}

func counterValue(t *testing.T, a *Agent, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := a.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			return metricValue(m)
		}
	}
	return 0
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

func TestKernelSignalForcesApplyAndCountsHeals(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	h.dp.drain()
	before := h.dp.count()
	h.dp.mu.Lock()
	h.dp.result = dataplane.Result{Routes: dataplane.Counts{Added: 1}, Neighbors: dataplane.Counts{Updated: 2}}
	h.dp.mu.Unlock()
	h.dp.signals <- struct{}{}
	h.dp.waitApply(t, "after a kernel signal", func(plan.Dataplane) bool { return true })
	if h.dp.count() <= before {
		t.Fatalf("no Apply after a kernel signal")
	}
	nettest.Eventually(t, 5*time.Second, time.Millisecond, "a route heal is counted", func() (bool, string) {
		v := counterValue(t, h.agent, "twill_heals_total", map[string]string{"kind": "route"})
		return v >= 1, fmt.Sprintf("twill_heals_total{kind=route} = %v", v)
	})
	if got := counterValue(t, h.agent, "twill_heals_total", map[string]string{"kind": "route"}); got != 1 {
		t.Errorf("twill_heals_total{kind=route} = %v, want 1", got)
	}
	if got := counterValue(t, h.agent, "twill_heals_total", map[string]string{"kind": "neigh"}); got != 2 {
		t.Errorf("twill_heals_total{kind=neigh} = %v, want 2", got)
	}
	if got := counterValue(t, h.agent, "twill_reconcile_total", map[string]string{"result": "ok"}); got < 2 {
		t.Errorf("twill_reconcile_total{result=ok} = %v, want at least 2", got)
	}
}

func TestResyncForcesApply(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv; c.ResyncInterval = time.Minute })
	h.start()
	h.dp.drain()
	h.clock.Advance(time.Minute)
	h.dp.waitApply(t, "after the resync interval", func(plan.Dataplane) bool { return true })
}

func TestApplyFailureIsRetriedWithBackoff(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.dp.setFail(3)
	a := h.run(h.store)

	// Each failure arms a retry 10ms, 20ms, 40ms later; the fourth Apply
	// succeeds. Advance the clock until it has.
	deadline := time.Now().Add(10 * time.Second)
	for h.dp.count() < 4 && time.Now().Before(deadline) {
		h.clock.Advance(5 * time.Millisecond)
		time.Sleep(time.Millisecond)
	}
	h.waitReady()
	if got := counterValue(t, a, "twill_reconcile_total", map[string]string{"result": "error"}); got != 3 {
		t.Errorf("twill_reconcile_total{result=error} = %v, want 3", got)
	}
	if !strings.Contains(h.logs.String(), "reconcile failed") {
		t.Errorf("the failures were not logged")
	}
}

func TestBackoff(t *testing.T) {
	var got []time.Duration
	for n := 1; n <= 12; n++ {
		got = append(got, backoff(n, retryMin, retryMax))
	}
	if got[0] != 10*time.Millisecond || got[1] != 20*time.Millisecond || got[2] != 40*time.Millisecond {
		t.Errorf("backoff starts %v, want 10ms, 20ms, 40ms", got[:3])
	}
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] || got[i] > retryMax {
			t.Errorf("backoff %d = %v after %v: must grow up to %v", i+1, got[i], got[i-1], retryMax)
		}
	}
	if got[len(got)-1] != retryMax {
		t.Errorf("backoff ends at %v, want the cap %v", got[len(got)-1], retryMax)
	}
}

func TestStatusNotesLoggedOnceWhenTheyChange(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	// A peer in another subnet without a tunnel address cannot be reached.
	put(t, h.store, datastore.KindNode, "k8s-node1", api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: "k8s-node1"}, Spec: api.NodeSpec{Address: "192.168.32.105/24"}})
	putBlock(t, h.store, api.Block{CIDR: "172.16.36.64/26", Affinity: "k8s-node1"})
	// Nodes and blocks are watched apart: the block may be planned before
	// its node for a moment (another note). Wait for the plan with both.
	dp := h.dp.waitApply(t, "with a status note about k8s-node1's tunnel", func(dp plan.Dataplane) bool {
		for _, s := range dp.Status {
			if strings.Contains(s, "k8s-node1") && strings.Contains(s, "tunnelAddress") {
				return true
			}
		}
		return false
	})
	for range 3 {
		h.dp.signals <- struct{}{}
		h.dp.waitApply(t, "after a kernel signal", func(plan.Dataplane) bool { return true })
	}
	var note string
	for _, s := range dp.Status {
		if strings.Contains(s, "k8s-node1") && strings.Contains(s, "tunnelAddress") {
			note = s
		}
	}
	if n := strings.Count(h.logs.String(), note); n != 1 {
		t.Errorf("note %q logged %d times over 4 reconciles, want once", note, n)
	}
}

func TestUnchangedPlanIsNotReapplied(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	a, err := New(h.store, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.dp = h.dp
	put(t, h.store, datastore.KindIPPool, "p", testPool("p", "172.16.0.0/16", api.EncapCrossSubnet))
	put(t, h.store, datastore.KindNode, "k8s-master1", api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: "k8s-master1"}, Spec: api.NodeSpec{Address: "192.168.3.241/24", TunnelAddress: "172.16.159.128"}})
	ctx := context.Background()
	for _, kind := range cachedKinds {
		if _, err := a.relist(ctx, kind); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.reconcile(ctx, reasonDatastore); err != nil {
		t.Fatal(err)
	}
	if h.dp.count() != 1 {
		t.Fatalf("first reconcile applied %d times, want 1", h.dp.count())
	}
	// A label change alters nothing in the plan: no Apply.
	a.mu.Lock()
	changed := a.cache.apply(datastore.Event{Type: datastore.EventPut, KV: mustKV(t, datastore.KindNode, "k8s-master1", api.Node{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: "k8s-master1", Labels: map[string]string{"x": "y"}},
		Spec:     api.NodeSpec{Address: "192.168.3.241/24", TunnelAddress: "172.16.159.128"}}, "1000")}, time.Time{})
	a.mu.Unlock()
	if !changed {
		t.Fatalf("a label change did not count as a change of the cache")
	}
	if err := a.reconcile(ctx, reasonDatastore); err != nil {
		t.Fatal(err)
	}
	if h.dp.count() != 1 {
		t.Errorf("a plan-neutral change applied again (%d applies), want no Apply", h.dp.count())
	}
	// The kernel may have drifted: a kernel reason applies the same plan.
	if err := a.reconcile(ctx, reasonKernel); err != nil {
		t.Fatal(err)
	}
	if h.dp.count() != 2 {
		t.Errorf("a kernel signal did not apply (%d applies), want 2", h.dp.count())
	}
}

func TestLocalNodeDeletedKeepsTheKernel(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	remove(t, h.store, datastore.KindNode, "k8s-master1")
	nettest.Eventually(t, 10*time.Second, time.Millisecond, "not ready after the Node's deletion", func() (bool, string) {
		ok, why := h.agent.readiness()
		return !ok, why
	})
	ok, why := h.agent.readiness()
	if ok || !strings.Contains(why, "missing from the datastore") {
		t.Fatalf("readiness after the Node's deletion = %v %q, want not ready, Node missing", ok, why)
	}
	h.dp.mu.Lock()
	defer h.dp.mu.Unlock()
	for _, p := range h.dp.plans {
		if len(p.Routes) == 0 && p.Device == nil {
			t.Errorf("an empty plan was applied after the local Node was deleted; the kernel must be kept")
		}
	}
}

func mustKV(t testing.TB, kind datastore.Kind, name string, v any, rev string) datastore.KV {
	t.Helper()
	kv := objKV(t, kind, name, v)
	kv.Revision = rev
	return kv
}

// breakableStore is a Fake whose watches a test can break, kind by kind.
type breakableStore struct {
	*datastore.Fake
	mu      sync.Mutex
	watches map[datastore.Kind][]chan error
}

func newBreakableStore() *breakableStore {
	return &breakableStore{Fake: datastore.NewFake(), watches: map[datastore.Kind][]chan error{}}
}

func (s *breakableStore) Watch(ctx context.Context, kind datastore.Kind, rev string) <-chan datastore.WatchResponse {
	wctx, cancel := context.WithCancel(ctx)
	in := s.Fake.Watch(wctx, kind, rev)
	out := make(chan datastore.WatchResponse, 16)
	brk := make(chan error, 1)
	s.mu.Lock()
	s.watches[kind] = append(s.watches[kind], brk)
	s.mu.Unlock()
	go func() {
		defer close(out)
		defer cancel()
		for {
			select {
			case err := <-brk:
				out <- datastore.WatchResponse{Err: err}
				return
			case r, ok := <-in:
				if !ok {
					return
				}
				out <- r
				if r.Err != nil {
					return
				}
			}
		}
	}()
	return out
}

// breakWatch ends the newest watch of kind with err, as etcd does on
// compaction.
func (s *breakableStore) breakWatch(kind datastore.Kind, err error) {
	s.mu.Lock()
	ws := s.watches[kind]
	brk := ws[len(ws)-1]
	s.mu.Unlock()
	brk <- err
}

// lists is how many times the agent listed kind into its cache.
func (h *harness) lists(kind datastore.Kind) float64 {
	h.t.Helper()
	return counterValue(h.t, h.agent, "twill_datastore_lists_total", map[string]string{"kind": string(kind)})
}

// advanceUntil moves the harness's fake clock (the relist backoff runs on
// it) in steps of relistMin until ok holds, for at most 10s.
func (h *harness) advanceUntil(what string, ok func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not within 10s; logs:\n%s", what, h.logs)
		}
		h.clock.Advance(relistMin)
		time.Sleep(2 * time.Millisecond)
	}
}

// TestCompactedWatchRelistsThatKind breaks the watch of one kind: that
// kind alone is listed again, the list replaces what the cache held of it
// (an object deleted while no watch ran is gone), and a change made
// meanwhile reaches the plan.
func TestCompactedWatchRelistsThatKind(t *testing.T) {
	bs := newBreakableStore()
	putBlock(t, bs.Fake, api.Block{CIDR: "172.16.36.64/26", Affinity: "k8s-node1"})
	put(t, bs.Fake, datastore.KindNode, "k8s-node1", node("k8s-node1", "192.168.3.105/24", "172.16.36.64"))
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	a := h.run(bs)
	h.waitReady()
	h.dp.waitApply(t, "with k8s-node1's route", func(dp plan.Dataplane) bool { return hasRoute(dp, "172.16.36.64/26", plan.KindDirect) })
	for _, k := range cachedKinds {
		if got := h.lists(k); got != 1 {
			t.Errorf("%s listed %v times before any watch ended, want once", k, got)
		}
	}
	bs.breakWatch(datastore.KindNode, fmt.Errorf("injected: %w", datastore.ErrCompacted))
	// While no node watch runs, k8s-node1 goes and k8s-master2 comes.
	remove(t, bs.Fake, datastore.KindNode, "k8s-node1")
	put(t, bs.Fake, datastore.KindNode, "k8s-master2", node("k8s-master2", "192.168.3.242/24", "172.16.224.0"))
	putBlock(t, bs.Fake, api.Block{CIDR: "172.16.224.0/26", Affinity: "k8s-master2"})
	h.advanceUntil("the nodes are listed again", func() bool { return h.lists(datastore.KindNode) == 2 })
	h.dp.waitApply(t, "with k8s-master2's route and without k8s-node1's", func(dp plan.Dataplane) bool {
		return hasRoute(dp, "172.16.224.0/26", plan.KindDirect) && !hasRoute(dp, "172.16.36.64/26", plan.KindDirect)
	})
	for _, k := range cachedKinds {
		want := 1.0
		if k == datastore.KindNode {
			want = 2
		}
		if got := h.lists(k); got != want {
			t.Errorf("%s listed %v times after the node watch was compacted, want %v", k, got, want)
		}
	}
	if got := counterValue(t, a, "twill_datastore_errors_total", nil); got < 1 {
		t.Errorf("twill_datastore_errors_total = %v, want at least 1", got)
	}
}

// TestFakeCompactionRelists compacts the Fake's history: every watch that
// had not caught up ends with ErrCompacted and only its kind is listed
// again; changes made after the compaction reach the plan through the new
// watches.
func TestFakeCompactionRelists(t *testing.T) {
	bs := newBreakableStore()
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	a := h.run(bs)
	h.waitReady()
	// A pool write moves the store past every other kind's list revision;
	// the pool watch sees it and catches up.
	put(t, bs.Fake, datastore.KindIPPool, "extra", testPool("extra", "10.50.0.0/16", api.EncapCrossSubnet))
	h.dp.waitApply(t, "with the extra pool", func(dp plan.Dataplane) bool {
		return slices.Contains(dp.Firewall.AllPools, netip.MustParsePrefix("10.50.0.0/16"))
	})
	bs.Compact()
	lagging := []datastore.Kind{datastore.KindNode, datastore.KindBlock, datastore.KindIPAMConfig, datastore.KindWorkload}
	h.advanceUntil("every lagging kind is listed again", func() bool {
		for _, k := range lagging {
			if h.lists(k) < 2 {
				return false
			}
		}
		return true
	})
	if got := h.lists(datastore.KindIPPool); got != 1 {
		t.Errorf("the pools, whose watch had caught up, were listed %v times, want once", got)
	}
	put(t, bs.Fake, datastore.KindNode, "k8s-master2", node("k8s-master2", "192.168.3.242/24", "172.16.224.0"))
	putBlock(t, bs.Fake, api.Block{CIDR: "172.16.224.0/26", Affinity: "k8s-master2"})
	h.dp.waitApply(t, "with k8s-master2's route", func(dp plan.Dataplane) bool { return hasRoute(dp, "172.16.224.0/26", plan.KindDirect) })
	if ok, why := a.readiness(); !ok {
		t.Errorf("not ready after the relists: %s", why)
	}
	if !strings.Contains(h.logs.String(), "datastore watch compacted; listing again") {
		t.Errorf("the compaction was not logged:\n%s", h.logs)
	}
}

func TestPermanentRegistrationErrorsStopRun(t *testing.T) {
	cases := map[string]func(*Config){
		"bad pool environment": func(c *Config) {
			c.Getenv = func(k string) string { return map[string]string{"CALICO_IPV4POOL_CIDR": "not-a-cidr"}[k] }
		},
		"invalid node name": func(c *Config) { c.Getenv = seedEnv; c.NodeName = "Not_A_DNS_Name" },
		"loopback address": func(c *Config) {
			c.Getenv = seedEnv
			c.DetectAddress = func(context.Context) (HostAddress, error) {
				return HostAddress{Prefix: netip.MustParsePrefix("127.0.0.1/8"), Interface: "lo"}, nil
			}
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil, mutate)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := Run(ctx, h.store, h.cfg)
			if !errors.Is(err, ErrConfig) || ctx.Err() != nil {
				t.Errorf("Run = %v, want an ErrConfig error at once", err)
			}
		})
	}
}
