package kube

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/internal/syncbuf"
	"twill.dev/twill/ipam"
)

// fakeClock is a Clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func putObj(t testing.TB, s datastore.Store, kind datastore.Kind, name string, labels map[string]string, v any) {
	t.Helper()
	kv, err := datastore.NewKV(kind, name, v)
	if err != nil {
		t.Fatal(err)
	}
	kv.Labels = labels
	if _, err := datastore.Put(context.Background(), s, kv); err != nil {
		t.Fatalf("put %s %s: %v", kind, name, err)
	}
}

func putPool(t testing.TB, s datastore.Store, name, cidr string) {
	t.Helper()
	p := api.IPPool{Metadata: api.ObjectMeta{Name: name}, Spec: api.IPPoolSpec{CIDR: cidr, BlockSize: 26}}
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	putObj(t, s, datastore.KindIPPool, name, nil, p)
}

func putStoreNode(t testing.TB, s datastore.Store, name string) {
	t.Helper()
	n := api.Node{Metadata: api.ObjectMeta{Name: name}, Spec: api.NodeSpec{Address: "192.168.3.1/24"}}
	n.Default()
	putObj(t, s, datastore.KindNode, name, nil, n)
}

func putEndpoint(t testing.TB, s datastore.Store, name, node, handle string) {
	t.Helper()
	e := api.WorkloadEndpoint{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
		Metadata: api.ObjectMeta{Name: name},
		Spec:     api.WorkloadEndpointSpec{Node: node, ContainerID: "c", IfName: "eth0", Handle: handle},
	}
	putObj(t, s, datastore.KindWorkload, name, map[string]string{datastore.LabelNode: node}, e)
}

func k8sNode(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func k8sPod(ns, name, uid, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: node},
	}
}

// allocPod allocates one address for pod ns/name (UID uid, when set) on
// node.
func allocPod(t testing.TB, m *ipam.IPAM, handle, node, ns, name, uid string) netip.Addr {
	t.Helper()
	attrs := map[string]string{api.AttrNamespace: ns, api.AttrPod: name}
	if uid != "" {
		attrs[api.AttrPodUID] = uid
	}
	ips, err := m.Allocate(context.Background(), ipam.AllocateRequest{Handle: handle, Node: node, Attrs: attrs})
	if err != nil {
		t.Fatalf("allocate %s: %v", handle, err)
	}
	return ips[0]
}

func allocTunnel(t testing.TB, m *ipam.IPAM, node string) netip.Addr {
	t.Helper()
	ips, err := m.Allocate(context.Background(), ipam.AllocateRequest{Handle: "vxlan-tunnel-addr-" + node, Node: node, Use: api.UseTunnel})
	if err != nil {
		t.Fatalf("allocate tunnel address of %s: %v", node, err)
	}
	return ips[0]
}

// handlesOf maps every allocated address to its handle.
func handlesOf(t testing.TB, m *ipam.IPAM) map[netip.Addr]string {
	t.Helper()
	all, err := m.AllAllocations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]string{}
	for _, a := range all {
		out[a.IP] = a.Handle
	}
	return out
}

func exists(t testing.TB, s datastore.Store, kind datastore.Kind, name string) bool {
	t.Helper()
	_, err := s.Get(context.Background(), kind, name)
	if errors.Is(err, datastore.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

type gcFixture struct {
	store  *datastore.Fake
	m      *ipam.IPAM
	client *fake.Clientset
	clock  *fakeClock
	reg    *prometheus.Registry
	logs   *syncbuf.Buffer
	gc     *GC
}

// newFixture is a cluster of Kubernetes nodes a (where the GC runs) and b,
// and pool 10.244.0.0/16 in a fake store that also knows node c, which
// Kubernetes no longer has.
func newFixture(t *testing.T, objs ...runtime.Object) *gcFixture {
	t.Helper()
	f := &gcFixture{
		store: datastore.NewFake(),
		clock: &fakeClock{now: t0},
		reg:   prometheus.NewRegistry(),
		logs:  &syncbuf.Buffer{},
	}
	f.m = ipam.New(f.store, ipam.WithCacheTTL(0), ipam.WithRepairGrace(0))
	putPool(t, f.store, "default", "10.244.0.0/16")
	for _, n := range []string{"a", "b", "c"} {
		putStoreNode(t, f.store, n)
	}
	f.client = fake.NewClientset(append([]runtime.Object{k8sNode("a"), k8sNode("b")}, objs...)...)
	gc, err := NewGC(GCConfig{
		Client:   f.client,
		IPAM:     f.m,
		Store:    f.store,
		Identity: "a",
		Clock:    f.clock,
		Logger:   slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:  f.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.gc = gc
	return f
}

func (f *gcFixture) pass(t *testing.T) PassResult {
	t.Helper()
	res, err := f.gc.Pass(context.Background())
	if err != nil {
		t.Fatalf("pass: %v", err)
	}
	return res
}

func TestGCPass(t *testing.T) {
	f := newFixture(t,
		k8sPod("default", "web", "u-web", "a"),
		k8sPod("default", "db", "u-db2", "b"),
		k8sPod("default", "onc", "u-onc", "c"),
	)
	m := f.m
	web := allocPod(t, m, "cweb.eth0", "a", "default", "web", "u-web")
	gone := allocPod(t, m, "cgone.eth0", "b", "default", "gone", "")
	db := allocPod(t, m, "cdb.eth0", "b", "default", "db", "u-db1")
	tunA := allocTunnel(t, m, "a")
	tunC := allocTunnel(t, m, "c")
	onC := allocPod(t, m, "conc.eth0", "c", "default", "onc", "u-onc")
	putEndpoint(t, f.store, "b-k8s-gone-eth0", "b", "cgone.eth0")
	putEndpoint(t, f.store, "c-k8s-onc-eth0", "c", "conc.eth0")
	// An orphaned handle that counts an address nobody holds.
	putObj(t, f.store, datastore.KindHandle, "corphan.eth0", nil, api.Handle{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindHandle},
		ID:       "corphan.eth0", Blocks: map[string]int{netip.PrefixFrom(web, 26).Masked().String(): 1},
	})

	// First pass: everything is seen, nothing released.
	res := f.pass(t)
	if res.Released != 0 || res.EndpointsDeleted != 0 || res.NodesReleased != 0 || res.NodesDeleted != 0 || res.BlocksReclaimed != 0 {
		t.Fatalf("first pass acted before the grace: %+v", res)
	}
	// gone, db, tunnel c, onc, and node c.
	if res.Pending != 5 || !res.NextDue.Equal(t0.Add(DefaultGrace)) {
		t.Fatalf("first pass: pending %d due %v, want 5 due %v", res.Pending, res.NextDue, t0.Add(DefaultGrace))
	}
	if res.HandlesRepaired != 1 || exists(t, f.store, datastore.KindHandle, "corphan.eth0") {
		t.Fatalf("orphan handle not repaired: %+v", res)
	}

	// A pod being created: its address is allocated, its pod appears in
	// the API only later. It must survive.
	late := allocPod(t, m, "clate.eth0", "a", "default", "late", "")
	f.clock.Advance(DefaultGrace - time.Second)
	if res := f.pass(t); res.Released != 0 {
		t.Fatalf("released within the grace: %+v", res)
	}
	if _, err := f.client.CoreV1().Pods("default").Create(context.Background(), k8sPod("default", "late", "u-late", "a"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	f.clock.Advance(time.Second)
	res = f.pass(t)
	if res.Released != 4 || res.EndpointsDeleted != 1 || res.NodesReleased != 1 || res.NodesDeleted != 1 {
		t.Fatalf("pass after the grace: %+v, want 4 released, 1 endpoint, 1 node released, 1 node deleted", res)
	}
	h := handlesOf(t, m)
	for ip, handle := range map[netip.Addr]string{web: "cweb.eth0", tunA: "vxlan-tunnel-addr-a", late: "clate.eth0"} {
		if h[ip] != handle {
			t.Errorf("%s: handle %q, want %q kept", ip, h[ip], handle)
		}
	}
	for _, ip := range []netip.Addr{gone, db, tunC, onC} {
		if _, ok := h[ip]; ok {
			t.Errorf("%s still allocated to %q", ip, h[ip])
		}
	}
	if !exists(t, f.store, datastore.KindWorkload, "b-k8s-gone-eth0") {
		t.Error("endpoint of live node b deleted: its agent owns it")
	}
	if exists(t, f.store, datastore.KindWorkload, "c-k8s-onc-eth0") {
		t.Error("endpoint of deleted node c kept")
	}
	if exists(t, f.store, datastore.KindNode, "c") || !exists(t, f.store, datastore.KindNode, "b") {
		t.Error("node objects: want c deleted and b kept")
	}
	blocks, err := m.NodeBlocks(context.Background(), "c")
	if err != nil || len(blocks) != 0 {
		t.Fatalf("node c still has blocks %+v (err %v)", blocks, err)
	}
	for reason, want := range map[string]float64{ReasonPodDeleted: 1, ReasonPodReplaced: 1, ReasonNodeDeleted: 2} {
		if got := testutil.ToFloat64(f.gc.m.released.WithLabelValues(reason)); got != want {
			t.Errorf("twill_ipam_gc_released_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	if got := testutil.ToFloat64(f.gc.m.passes); got != 3 {
		t.Errorf("twill_ipam_gc_passes_total = %v, want 3", got)
	}
	logs := f.logs.String()
	for _, want := range []string{"address=" + gone.String(), "handle=cgone.eth0", "pod=default/gone", "reason=" + ReasonPodDeleted, "reason=" + ReasonPodReplaced} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}

	// b's block is empty now (gone and db were its only addresses): it is
	// reclaimed once it stayed empty at one revision for BlockMinAge.
	bBlock := netip.PrefixFrom(gone, 26).Masked()
	res = f.pass(t)
	if res.BlocksReclaimed != 0 || res.Released != 0 {
		t.Fatalf("pass right after the releases: %+v", res)
	}
	f.clock.Advance(DefaultBlockMinAge)
	res = f.pass(t)
	if res.BlocksReclaimed != 1 || exists(t, f.store, datastore.KindBlock, datastore.BlockName(bBlock.String())) {
		t.Fatalf("empty block %s not reclaimed: %+v", bBlock, res)
	}
	if !exists(t, f.store, datastore.KindBlock, datastore.BlockName(netip.PrefixFrom(web, 26).Masked().String())) {
		t.Fatal("a's block, which holds addresses, was reclaimed")
	}
}

// TestGCBlockThatGetsAnAllocationIsKept: a block seen empty, then used and
// emptied again, starts its age again and is never reclaimed in between.
func TestGCBlockThatGetsAnAllocationIsKept(t *testing.T) {
	f := newFixture(t, k8sPod("default", "p", "u-p", "b"))
	if err := f.store.Delete(context.Background(), datastore.KindNode, "c", ""); err != nil {
		t.Fatal(err)
	}
	ip := allocPod(t, f.m, "c1.eth0", "b", "default", "p", "")
	if _, err := f.m.ReleaseHandle(context.Background(), "c1.eth0"); err != nil {
		t.Fatal(err)
	}
	block := netip.PrefixFrom(ip, 26).Masked()
	name := datastore.BlockName(block.String())
	if res := f.pass(t); res.Pending != 1 {
		t.Fatalf("empty block not pending: %+v", res)
	}
	f.clock.Advance(DefaultBlockMinAge - time.Second)
	allocPod(t, f.m, "c2.eth0", "b", "default", "p", "")
	f.clock.Advance(time.Second)
	if res := f.pass(t); res.BlocksReclaimed != 0 || !exists(t, f.store, datastore.KindBlock, name) {
		t.Fatalf("block in use reclaimed: %+v", res)
	}
	if _, err := f.m.ReleaseHandle(context.Background(), "c2.eth0"); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	if res := f.pass(t); res.BlocksReclaimed != 0 {
		t.Fatalf("block reclaimed a minute after it was emptied again: %+v", res)
	}
	f.clock.Advance(DefaultBlockMinAge)
	if res := f.pass(t); res.BlocksReclaimed != 1 || exists(t, f.store, datastore.KindBlock, name) {
		t.Fatalf("block empty for BlockMinAge not reclaimed: %+v", res)
	}
}

// TestGCReassignedAddressNotFreed: between the pass that decided and the
// release, the address went to another pod; ReleaseIfOwned leaves it.
func TestGCReassignedAddressNotFreed(t *testing.T) {
	f := newFixture(t)
	ip := allocPod(t, f.m, "cold.eth0", "a", "default", "old", "")
	f.pass(t)
	f.clock.Advance(DefaultGrace)
	// Re-assign the address behind the GC's back, after it has read the
	// allocations: the reactor runs while the pass lists pods.
	var once sync.Once
	f.client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		once.Do(func() {
			if _, err := f.m.ReleaseHandle(context.Background(), "cold.eth0"); err != nil {
				t.Error(err)
			}
			got, err := f.m.Allocate(context.Background(), ipam.AllocateRequest{Handle: "cnew.eth0", Node: "a", IP: ip,
				Attrs: map[string]string{api.AttrNamespace: "default", api.AttrPod: "new"}})
			if err != nil || got[0] != ip {
				t.Errorf("re-assign %s: %v %v", ip, got, err)
			}
		})
		return false, nil, nil
	})
	res := f.pass(t)
	if res.Released != 0 {
		t.Fatalf("released a re-assigned address: %+v", res)
	}
	if h := handlesOf(t, f.m)[ip]; h != "cnew.eth0" {
		t.Fatalf("%s is held by %q, want cnew.eth0", ip, h)
	}
	if !strings.Contains(f.logs.String(), "already released or re-assigned") {
		t.Errorf("no log line about the re-assigned address:\n%s", f.logs.String())
	}
	// The new allocation's pod is missing too, but its grace starts with
	// the pass that first sees it.
	f.clock.Advance(time.Second)
	res = f.pass(t)
	if res.Released != 0 || res.Pending != 1 || !res.NextDue.Equal(f.clock.Now().Add(DefaultGrace)) {
		t.Fatalf("new allocation: pending %d due %v", res.Pending, res.NextDue)
	}
}

// TestGCFaults: a pass that cannot read its inputs changes nothing and
// keeps what earlier passes saw; a failed release is retried next pass.
func TestGCFaults(t *testing.T) {
	f := newFixture(t)
	ip := allocPod(t, f.m, "cgone.eth0", "a", "default", "gone", "")
	f.pass(t)
	f.clock.Advance(DefaultGrace)

	f.store.Fail(1, datastore.ErrUnavailable)
	if _, err := f.gc.Pass(context.Background()); !errors.Is(err, datastore.ErrUnavailable) {
		t.Fatalf("pass with the store down: %v, want ErrUnavailable", err)
	}
	boom := errors.New("apiserver down")
	f.client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, boom
	})
	if _, err := f.gc.Pass(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("pass with the apiserver down: %v, want it to wrap the API error", err)
	}
	if h := handlesOf(t, f.m)[ip]; h != "cgone.eth0" {
		t.Fatalf("failed passes changed %s: handle %q", ip, h)
	}
	f.client.ReactionChain = f.client.ReactionChain[1:]

	// The store fails the release itself: the pass reports it; the next
	// pass, still past the grace, releases.
	failRelease := &failingIPAM{gcIPAM: f.gc.ipam, err: datastore.ErrUnavailable}
	f.gc.ipam = failRelease
	res, err := f.gc.Pass(context.Background())
	if !errors.Is(err, datastore.ErrUnavailable) || res.Released != 0 {
		t.Fatalf("pass with failing release: %+v %v", res, err)
	}
	f.gc.ipam = failRelease.gcIPAM
	if res := f.pass(t); res.Released != 1 {
		t.Fatalf("retry after a failed release: %+v", res)
	}
	if got := testutil.ToFloat64(f.gc.m.passErrors); got != 3 {
		t.Errorf("twill_ipam_gc_pass_errors_total = %v, want 3", got)
	}
}

// failingIPAM fails ReleaseIfOwned.
type failingIPAM struct {
	gcIPAM
	err error
}

func (f *failingIPAM) ReleaseIfOwned(ctx context.Context, ip netip.Addr, handle string) (bool, error) {
	return false, f.err
}

// TestGCDistrustsNodeListWithoutItself: a node list that lacks the GC's
// own node is not believed: nothing is done about missing nodes.
func TestGCDistrustsNodeListWithoutItself(t *testing.T) {
	f := newFixture(t)
	if err := f.client.CoreV1().Nodes().Delete(context.Background(), "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	tun := allocTunnel(t, f.m, "c")
	f.pass(t)
	f.clock.Advance(2 * DefaultGrace)
	if res := f.pass(t); res.Released != 0 || res.NodesDeleted != 0 {
		t.Fatalf("acted on an untrusted node list: %+v", res)
	}
	if h := handlesOf(t, f.m)[tun]; h == "" {
		t.Fatal("tunnel address of c released")
	}
	if !strings.Contains(f.logs.String(), "lacks this node") {
		t.Errorf("no warning about the node list:\n%s", f.logs.String())
	}
}

func TestNewGCConfig(t *testing.T) {
	store := datastore.NewFake()
	m := ipam.New(store)
	client := fake.NewClientset()
	ok := GCConfig{Client: client, IPAM: m, Store: store, Identity: "a"}
	g, err := NewGC(ok)
	if err != nil {
		t.Fatal(err)
	}
	c := g.cfg
	if c.Namespace != DefaultNamespace || c.Interval != DefaultInterval || c.Grace != DefaultGrace ||
		c.BlockMinAge != DefaultBlockMinAge || c.LeaseDuration != DefaultLeaseDuration ||
		c.RenewDeadline != DefaultRenewDeadline || c.RetryPeriod != DefaultRetryPeriod {
		t.Fatalf("defaults not applied: %+v", c)
	}
	bad := []func(*GCConfig){
		func(c *GCConfig) { c.Client = nil },
		func(c *GCConfig) { c.IPAM = nil },
		func(c *GCConfig) { c.Store = nil },
		func(c *GCConfig) { c.Identity = "" },
		func(c *GCConfig) { c.LeaseDuration, c.RenewDeadline = time.Second, 2*time.Second },
	}
	for i, mod := range bad {
		c := ok
		mod(&c)
		if _, err := NewGC(c); err == nil {
			t.Errorf("bad config %d accepted", i)
		}
	}
	// Two GCs on one registry share the metrics instead of failing.
	reg := prometheus.NewRegistry()
	ok.Metrics = reg
	if _, err := NewGC(ok); err != nil {
		t.Fatal(err)
	}
	if _, err := NewGC(ok); err != nil {
		t.Fatalf("second GC on the same registry: %v", err)
	}
}

// TestRunGCWithFakeClient runs the election against the fake clientset:
// the GC takes the Lease, runs passes, and a Node deletion triggers a pass
// within the debounce rather than the interval.
func TestRunGCWithFakeClient(t *testing.T) {
	f := newFixture(t)
	cfg := f.gc.cfg
	cfg.Interval = time.Hour
	cfg.Debounce = 50 * time.Millisecond
	cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod = 3*time.Second, 2*time.Second, 200*time.Millisecond
	cfg.Metrics = nil
	g, err := NewGC(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()

	passes := func() float64 { return testutil.ToFloat64(g.m.passes) }
	waitFor(t, 10*time.Second, "the first pass as leader", func() bool { return g.IsLeader() && passes() >= 1 })
	lease, err := f.client.CoordinationV1().Leases(DefaultNamespace).Get(context.Background(), LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := lease.Spec.HolderIdentity; h == nil || *h != "a" {
		t.Fatalf("lease holder %v, want a", h)
	}
	before := passes()
	if err := f.client.CoreV1().Nodes().Delete(context.Background(), "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a pass after the node deletion", func() bool { return passes() > before })
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
