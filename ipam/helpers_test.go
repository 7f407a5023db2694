package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

func putPool(t testing.TB, s datastore.Store, name, cidr string, mod func(*api.IPPoolSpec)) {
	t.Helper()
	p := api.IPPool{Metadata: api.ObjectMeta{Name: name}, Spec: api.IPPoolSpec{CIDR: cidr}}
	if mod != nil {
		mod(&p.Spec)
	}
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatalf("pool %s: %v", name, err)
	}
	put(t, s, datastore.PoolKey(name), p)
}

func putNode(t testing.TB, s datastore.Store, name string, labels map[string]string) {
	t.Helper()
	n := api.Node{Metadata: api.ObjectMeta{Name: name, Labels: labels}, Spec: api.NodeSpec{Address: "192.168.3.1/24"}}
	n.Default()
	put(t, s, datastore.NodeKey(name), n)
}

func putConfig(t testing.TB, s datastore.Store, c api.IPAMConfig) {
	t.Helper()
	put(t, s, datastore.IPAMConfigKey, c)
}

func put(t testing.TB, s datastore.Store, key string, v any) {
	t.Helper()
	b, err := datastore.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Txn(context.Background(), datastore.Put(key, b, datastore.AnyRevision)); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// getBlock reads a block straight from the store.
func getBlock(t testing.TB, s datastore.Store, cidr string) (api.Block, bool) {
	t.Helper()
	o, err := datastore.GetObject[api.Block](context.Background(), s, datastore.BlockKey(cidr))
	if errors.Is(err, datastore.ErrNotFound) {
		return api.Block{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return o.Value, true
}

func exists(t testing.TB, s datastore.Store, key string) bool {
	t.Helper()
	_, err := s.Get(context.Background(), key)
	if errors.Is(err, datastore.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// dump returns every key under the IPAM prefix with its value.
func dump(t testing.TB, s datastore.Store) map[string]string {
	t.Helper()
	kvs, _, err := s.List(context.Background(), datastore.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range kvs {
		out[kv.Key] = string(kv.Value)
	}
	return out
}

// checkInvariants verifies the stored IPAM state: allocations sorted,
// unique and inside their blocks; an affinity key for exactly the blocks
// with an affinity; handle records that count exactly their blocks'
// allocations; no empty unpinned block without affinity.
func checkInvariants(t testing.TB, s datastore.Store) {
	t.Helper()
	ctx := context.Background()
	blocks, _, err := datastore.ListObjects[api.Block](ctx, s, datastore.BlocksPrefix)
	if err != nil {
		t.Fatal(err)
	}
	affs, _, err := datastore.ListObjects[api.BlockAffinity](ctx, s, datastore.AffinitiesPrefix)
	if err != nil {
		t.Fatal(err)
	}
	handles, _, err := datastore.ListObjects[api.Handle](ctx, s, datastore.HandlesPrefix)
	if err != nil {
		t.Fatal(err)
	}
	wantAff := map[string]bool{}
	counted := map[string]map[string]int{} // handle → block → count
	for _, o := range blocks {
		b := o.Value
		p := netip.MustParsePrefix(b.CIDR)
		if o.Key != datastore.BlockKey(b.CIDR) {
			t.Errorf("block %s stored at %s", b.CIDR, o.Key)
		}
		if b.Affinity != "" {
			wantAff[datastore.AffinityKey(b.Affinity, b.CIDR)] = true
		}
		if len(b.Allocations) == 0 && b.Affinity == "" && !b.Pinned {
			t.Errorf("block %s is empty and has no affinity: it should have been deleted", b.CIDR)
		}
		for i, a := range b.Allocations {
			if a.Ordinal < 0 || a.Ordinal >= blockSize(p) {
				t.Errorf("block %s: ordinal %d outside the block", b.CIDR, a.Ordinal)
			}
			if i > 0 && b.Allocations[i-1].Ordinal >= a.Ordinal {
				t.Errorf("block %s: allocations not sorted or duplicated at ordinal %d", b.CIDR, a.Ordinal)
			}
			if counted[a.Handle] == nil {
				counted[a.Handle] = map[string]int{}
			}
			counted[a.Handle][b.CIDR]++
		}
	}
	gotAff := map[string]bool{}
	for _, o := range affs {
		gotAff[o.Key] = true
		if o.Key != datastore.AffinityKey(o.Value.Node, o.Value.CIDR) {
			t.Errorf("affinity %s holds node %q cidr %q", o.Key, o.Value.Node, o.Value.CIDR)
		}
	}
	if !maps.Equal(wantAff, gotAff) {
		t.Errorf("affinity keys %v, want (from blocks) %v", slices.Sorted(maps.Keys(gotAff)), slices.Sorted(maps.Keys(wantAff)))
	}
	gotHandles := map[string]map[string]int{}
	for _, o := range handles {
		if o.Key != datastore.HandleKey(o.Value.ID) {
			t.Errorf("handle %q stored at %s", o.Value.ID, o.Key)
		}
		gotHandles[o.Value.ID] = o.Value.Blocks
	}
	if fmt.Sprint(gotHandles) != fmt.Sprint(counted) {
		t.Errorf("handle records %v do not match allocations %v", gotHandles, counted)
	}
}

// flakyStore fails its failAt-th call (counting Get, List and Txn from 1)
// with ErrUnavailable.
type flakyStore struct {
	datastore.Store
	mu     sync.Mutex
	calls  int
	failAt int
}

var errInjected = fmt.Errorf("injected outage: %w", datastore.ErrUnavailable)

func (f *flakyStore) hit() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls == f.failAt {
		return errInjected
	}
	return nil
}

func (f *flakyStore) Get(ctx context.Context, key string) (datastore.KV, error) {
	if err := f.hit(); err != nil {
		return datastore.KV{}, err
	}
	return f.Store.Get(ctx, key)
}

func (f *flakyStore) List(ctx context.Context, prefix string) ([]datastore.KV, int64, error) {
	if err := f.hit(); err != nil {
		return nil, 0, err
	}
	return f.Store.List(ctx, prefix)
}

func (f *flakyStore) Txn(ctx context.Context, ops ...datastore.Op) (int64, error) {
	if err := f.hit(); err != nil {
		return 0, err
	}
	return f.Store.Txn(ctx, ops...)
}

func mustAlloc(t testing.TB, m *IPAM, req AllocateRequest) []netip.Addr {
	t.Helper()
	got, err := m.Allocate(context.Background(), req)
	if err != nil {
		t.Fatalf("allocate %+v: %v", req, err)
	}
	return got
}

func mustAlloc1(t testing.TB, m *IPAM, handle, node string) netip.Addr {
	t.Helper()
	got := mustAlloc(t, m, AllocateRequest{Handle: handle, Node: node})
	if len(got) != 1 {
		t.Fatalf("allocate %s: got %v, want one address", handle, got)
	}
	return got[0]
}

// blockOf returns the block of size bits holding a.
func blockOf(a netip.Addr, bits int) string {
	return netip.PrefixFrom(a, bits).Masked().String()
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func joinAddrs(as []netip.Addr) string {
	var parts []string
	for _, a := range as {
		parts = append(parts, a.String())
	}
	return strings.Join(parts, ",")
}
