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

// The agent's real stores list page by page.
var (
	_ datastore.Pager = (*etcd.Store)(nil)
	_ datastore.Pager = (*datastore.Fake)(nil)
)

// pagedStore is a Fake that lists page by page, two objects a page. Under
// restartAt the first list hands over one page, runs between (a change
// meanwhile), then starts over, as etcd does when the list's revision is
// compacted between pages.
type pagedStore struct {
	*datastore.Fake
	restartAt datastore.Kind
	between   func()
	pages     int
}

func (s *pagedStore) ListPages(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions, page func([]datastore.KV, bool) error) (string, error) {
	kvs, rev, err := s.Fake.List(ctx, kind, opts)
	if err != nil {
		return "", err
	}
	if kind == s.restartAt && len(kvs) > 2 {
		s.restartAt = ""
		s.pages++
		if err := page(kvs[:2], false); err != nil {
			return "", err
		}
		s.between()
		if err := page(nil, true); err != nil {
			return "", err
		}
		if kvs, rev, err = s.Fake.List(ctx, kind, opts); err != nil {
			return "", err
		}
	}
	for len(kvs) > 0 {
		n := min(2, len(kvs))
		s.pages++
		if err := page(kvs[:n:n], false); err != nil {
			return "", err
		}
		kvs = kvs[n:]
	}
	return rev, nil
}

// plainStore hides the Fake's ListPages: the agent lists in one go.
type plainStore struct{ datastore.Store }

// TestRelistByPages checks that a relist through ListPages, including one
// that starts over after a block was deleted, fills the cache exactly as a
// plain list of the same store does, and that only the local node's
// workload endpoints and the IPAM config named default are kept.
func TestRelistByPages(t *testing.T) {
	f := datastore.NewFake()
	put(t, f, datastore.KindIPPool, "default-ipv4-ippool", api.IPPool{Metadata: api.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: api.IPPoolSpec{CIDR: "172.16.0.0/16", VXLANMode: api.EncapCrossSubnet}})
	for _, n := range []api.Node{
		node("k8s-master1", "192.168.3.241/24", "172.16.159.128"),
		node("k8s-master2", "192.168.3.242/24", "172.16.224.0"),
		node("k8s-node1", "192.168.32.105/24", "172.16.36.64"),
	} {
		put(t, f, datastore.KindNode, n.Metadata.Name, n)
	}
	for cidr, aff := range map[string]string{"172.16.159.128/26": "k8s-master1", "172.16.224.0/26": "k8s-master2",
		"172.16.36.64/26": "k8s-node1", "172.16.1.0/26": "k8s-node1"} {
		b := api.Block{CIDR: cidr, Affinity: aff}
		if aff == "k8s-master2" {
			b.Allocations = []api.Allocation{{Ordinal: 3, Handle: "c3.eth0", Attrs: map[string]string{api.AttrNode: "k8s-node1"}}}
		}
		putBlock(t, f, b)
	}
	put(t, f, datastore.KindBlock, datastore.BlockName("10.0.0.0/26"), "not a block")
	put(t, f, datastore.KindWorkload, "c1.eth0", api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{
		Node: "k8s-master1", Handle: "c1.eth0", HostIface: "cali64d6bf8fbc2", Addresses: []string{"172.16.159.145/32"}}})
	put(t, f, datastore.KindWorkload, "c2.eth0", api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{Node: "k8s-master2"}})
	put(t, f, datastore.KindHandle, "c1.eth0", api.Handle{ID: "c1.eth0"})
	put(t, f, datastore.KindIPAMConfig, datastore.IPAMConfigName, api.IPAMConfig{StrictAffinity: true})
	put(t, f, datastore.KindIPAMConfig, "old", api.IPAMConfig{})

	deleted := datastore.BlockName("172.16.1.0/26")
	ps := &pagedStore{Fake: f, restartAt: datastore.KindBlock, between: func() { remove(t, f, datastore.KindBlock, deleted) }}
	logs := &strings.Builder{}
	newAgent := func(s datastore.Store, w io.Writer) *Agent {
		return &Agent{cfg: Config{NodeName: "k8s-master1"}, store: s, cache: newCache("k8s-master1", nil),
			log: slog.New(slog.NewTextHandler(w, nil)), clock: realClock{}, m: newMetrics()}
	}
	a := newAgent(ps, logs)
	a.cache.log = a.log
	for _, kind := range cachedKinds {
		if _, err := a.relist(context.Background(), kind); err != nil {
			t.Fatal(err)
		}
	}
	if ps.pages < 6 {
		t.Fatalf("relist used %d pages; want it to list page by page", ps.pages)
	}

	// The same store, listed in one go.
	plain := newAgent(plainStore{f}, io.Discard)
	for _, kind := range cachedKinds {
		if _, err := plain.relist(context.Background(), kind); err != nil {
			t.Fatal(err)
		}
	}
	got, want := a.cache, plain.cache
	if _, ok := got.blocks[deleted]; ok {
		t.Errorf("the block deleted before the list started over is still cached")
	}
	if !got.synced() {
		t.Errorf("cache not synced after every kind was listed")
	}
	for name, pair := range map[string][2]any{
		"nodes": {got.nodes, want.nodes}, "pools": {got.pools, want.pools}, "blocks": {got.blocks, want.blocks},
		"workloads": {got.workloads, want.workloads}, "config": {got.config, want.config},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			t.Errorf("paged relist %s = %+v\nwant %+v", name, pair[0], pair[1])
		}
	}
	if len(got.blocks) != 3 || len(got.workloads) != 1 || !got.config.StrictAffinity {
		t.Errorf("cache holds %d blocks, %d workloads, config %+v; want 3, 1 and the strict config", len(got.blocks), len(got.workloads), got.config)
	}
	if _, ok := got.workloads["c1.eth0"]; !ok {
		t.Errorf("the local node's workload c1.eth0 is not cached: %v", keysInOrder(got.workloads))
	}
	if b := got.blocks[datastore.BlockName("172.16.224.0/26")]; len(b.borrowed) != 1 || b.used != 1 {
		t.Errorf("k8s-master2's block = %+v; want its borrowed address kept", b)
	}
	if !strings.Contains(logs.String(), "does not decode") {
		t.Errorf("no warning for the block that does not decode; logs:\n%s", logs)
	}
}
