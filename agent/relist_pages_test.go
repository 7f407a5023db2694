package agent

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
)

// The agent's real store lists page by page.
var _ pageLister = (*etcd.Store)(nil)

// pagedStore is a Fake that also lists page by page (as etcd does), two
// keys a page. Under restartAt the first list hands over one page, runs
// between (a change meanwhile), then starts over, as etcd does when the
// list's revision is compacted between pages.
type pagedStore struct {
	*datastore.Fake
	restartAt string
	between   func()
	pages     int
}

func (s *pagedStore) ListPages(ctx context.Context, prefix string, page func([]datastore.KV, bool) error) (int64, error) {
	kvs, rev, err := s.Fake.List(ctx, prefix)
	if err != nil {
		return 0, err
	}
	if prefix == s.restartAt && len(kvs) > 2 {
		s.restartAt = ""
		s.pages++
		if err := page(kvs[:2], false); err != nil {
			return 0, err
		}
		s.between()
		if err := page(nil, true); err != nil {
			return 0, err
		}
		if kvs, rev, err = s.Fake.List(ctx, prefix); err != nil {
			return 0, err
		}
	}
	for len(kvs) > 0 {
		n := min(2, len(kvs))
		s.pages++
		if err := page(kvs[:n:n], false); err != nil {
			return 0, err
		}
		kvs = kvs[n:]
	}
	return rev, nil
}

// TestRelistByPages checks that a relist through ListPages, including one
// that starts over after a block was deleted, fills the cache exactly as a
// plain list of the same store does.
func TestRelistByPages(t *testing.T) {
	f := datastore.NewFake()
	putKV := func(key string, v any) {
		t.Helper()
		kv := mustKV(t, key, v, 0)
		if _, err := f.Txn(context.Background(), datastore.Put(key, kv.Value, datastore.AnyRevision)); err != nil {
			t.Fatal(err)
		}
	}
	putKV(datastore.PoolKey("default-ipv4-ippool"), api.IPPool{Metadata: api.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: api.IPPoolSpec{CIDR: "172.16.0.0/16", VXLANMode: api.EncapCrossSubnet}})
	for _, n := range []api.Node{
		node("k8s-master1", "192.168.3.241/24", "172.16.159.128"),
		node("k8s-master2", "192.168.3.242/24", "172.16.224.0"),
		node("k8s-node1", "192.168.32.105/24", "172.16.36.64"),
	} {
		putKV(datastore.NodeKey(n.Metadata.Name), n)
	}
	for cidr, aff := range map[string]string{"172.16.159.128/26": "k8s-master1", "172.16.224.0/26": "k8s-master2",
		"172.16.36.64/26": "k8s-node1", "172.16.1.0/26": "k8s-node1"} {
		b := api.Block{CIDR: cidr, Affinity: aff}
		if aff == "k8s-master2" {
			b.Allocations = []api.Allocation{{Ordinal: 3, Handle: "c3.eth0", Attrs: map[string]string{api.AttrNode: "k8s-node1"}}}
		}
		putKV(datastore.BlockKey(cidr), b)
	}
	putKV(datastore.BlockKey("10.0.0.0/26"), "not a block")
	putKV(datastore.WorkloadKey("k8s-master1", "c1.eth0"), api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{
		Node: "k8s-master1", Handle: "c1.eth0", HostIface: "cali64d6bf8fbc2", Addresses: []string{"172.16.159.145/32"}}})
	putKV(datastore.WorkloadKey("k8s-master2", "c2.eth0"), api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{Node: "k8s-master2"}})
	putKV(datastore.HandleKey("c1.eth0"), api.Handle{ID: "c1.eth0"})
	putKV(datastore.IPAMConfigKey, api.IPAMConfig{StrictAffinity: true})
	putKV(datastore.IPAMConfigKey+"-old", api.IPAMConfig{})

	deleted := datastore.BlockKey("172.16.1.0/26")
	ps := &pagedStore{Fake: f, restartAt: datastore.BlocksPrefix, between: func() {
		if _, err := f.Txn(context.Background(), datastore.Delete(deleted, datastore.AnyRevision)); err != nil {
			t.Fatal(err)
		}
	}}
	logs := &strings.Builder{}
	a := &Agent{cfg: Config{NodeName: "k8s-master1"}, store: ps, cache: newCache("k8s-master1", nil),
		log: slog.New(slog.NewTextHandler(logs, nil))}
	rev, err := a.relist(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ps.pages < 4 {
		t.Fatalf("relist used %d pages; want it to list page by page", ps.pages)
	}

	// The same store, listed in one go.
	plain := &Agent{cfg: a.cfg, store: f, cache: newCache("k8s-master1", nil), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	prev, err := plain.relist(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rev > prev || rev == 0 {
		t.Errorf("paged relist revision %d; want one no later than the plain list's %d", rev, prev)
	}
	got, want := a.cache, plain.cache
	if _, ok := got.blocks[deleted]; ok {
		t.Errorf("the block deleted before the list started over is still cached")
	}
	if !got.synced {
		t.Errorf("cache not synced after the relist")
	}
	for name, pair := range map[string][2]any{
		"nodes": {got.nodes, want.nodes}, "pools": {got.pools, want.pools}, "blocks": {got.blocks, want.blocks},
		"workloads": {got.workloads, want.workloads}, "config": {got.config, want.config}, "revisions": {got.revs, want.revs},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			t.Errorf("paged relist %s = %+v\nwant %+v", name, pair[0], pair[1])
		}
	}
	if len(got.blocks) != 3 || len(got.workloads) != 1 || !got.config.StrictAffinity {
		t.Errorf("cache holds %d blocks, %d workloads, config %+v; want 3, 1 and the strict config", len(got.blocks), len(got.workloads), got.config)
	}
	if b := got.blocks[datastore.BlockKey("172.16.224.0/26")]; len(b.borrowed) != 1 || b.used != 1 {
		t.Errorf("k8s-master2's block = %+v; want its borrowed address kept", b)
	}
	if !strings.Contains(logs.String(), "does not decode") {
		t.Errorf("no warning for the block that does not decode; logs:\n%s", logs)
	}
}
