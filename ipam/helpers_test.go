package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

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
	put(t, s, datastore.KindIPPool, name, p)
}

func putNode(t testing.TB, s datastore.Store, name string, labels map[string]string) {
	t.Helper()
	n := api.Node{Metadata: api.ObjectMeta{Name: name, Labels: labels}, Spec: api.NodeSpec{Address: "192.168.3.1/24"}}
	n.Default()
	put(t, s, datastore.KindNode, name, n)
}

func putConfig(t testing.TB, s datastore.Store, c api.IPAMConfig) {
	t.Helper()
	put(t, s, datastore.KindIPAMConfig, datastore.IPAMConfigName, c)
}

func put(t testing.TB, s datastore.Store, kind datastore.Kind, name string, v any) {
	t.Helper()
	kv, err := datastore.NewKV(kind, name, v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := datastore.Put(context.Background(), s, kv); err != nil {
		t.Fatalf("put %s %s: %v", kind, name, err)
	}
}

// getBlock reads a block straight from the store.
func getBlock(t testing.TB, s datastore.Store, cidr string) (api.Block, bool) {
	t.Helper()
	o, err := datastore.GetObject[api.Block](context.Background(), s, datastore.KindBlock, datastore.BlockName(cidr))
	if errors.Is(err, datastore.ErrNotFound) {
		return api.Block{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return o.Value, true
}

// getHandle reads a handle's counts straight from the store; nil when it
// does not exist.
func getHandle(t testing.TB, s datastore.Store, id string) map[string]int {
	t.Helper()
	o, err := datastore.GetObject[api.Handle](context.Background(), s, datastore.KindHandle, id)
	if errors.Is(err, datastore.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return o.Value.Blocks
}

// dump returns every stored object, as "kind/name" → labels and value.
func dump(t testing.TB, s datastore.Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range datastore.Kinds {
		kvs, _, err := s.List(context.Background(), k, datastore.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			out[string(k)+"/"+kv.Name] = fmt.Sprint(kv.Labels) + " " + string(kv.Value)
		}
	}
	return out
}

// truth counts, from the stored blocks, each handle's addresses per block.
func truth(t testing.TB, s datastore.Store) map[string]map[string]int {
	t.Helper()
	blocks, _, err := datastore.ListObjects[api.Block](context.Background(), s, datastore.KindBlock, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	counted := map[string]map[string]int{}
	for _, o := range blocks {
		for _, a := range o.Value.Allocations {
			if counted[a.Handle] == nil {
				counted[a.Handle] = map[string]int{}
			}
			counted[a.Handle][o.Value.CIDR]++
		}
	}
	return counted
}

// storedHandles returns every stored handle's counts by name.
func storedHandles(t testing.TB, s datastore.Store) map[string]map[string]int {
	t.Helper()
	handles, _, err := datastore.ListObjects[api.Handle](context.Background(), s, datastore.KindHandle, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]int{}
	for _, o := range handles {
		if o.Value.ID != o.Name {
			t.Errorf("handle %q stored as %q", o.Value.ID, o.Name)
		}
		out[o.Name] = o.Value.Blocks
	}
	return out
}

// checkBlocks verifies the stored blocks: stored under their CIDR's name,
// labelled with their affinity, allocations sorted, unique and inside.
func checkBlocks(t testing.TB, s datastore.Store) {
	t.Helper()
	kvs, _, err := s.List(context.Background(), datastore.KindBlock, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		o, err := datastore.Decode[api.Block](kv)
		if err != nil {
			t.Fatal(err)
		}
		b := o.Value
		p := netip.MustParsePrefix(b.CIDR)
		if kv.Name != datastore.BlockName(b.CIDR) {
			t.Errorf("block %s stored as %s", b.CIDR, kv.Name)
		}
		if kv.Labels[datastore.LabelNode] != b.Affinity {
			t.Errorf("block %s: label %q, affinity %q", b.CIDR, kv.Labels[datastore.LabelNode], b.Affinity)
		}
		for i, a := range b.Allocations {
			if a.Ordinal < 0 || a.Ordinal >= blockSize(p) {
				t.Errorf("block %s: ordinal %d outside the block", b.CIDR, a.Ordinal)
			}
			if i > 0 && b.Allocations[i-1].Ordinal >= a.Ordinal {
				t.Errorf("block %s: allocations not sorted or duplicated at ordinal %d", b.CIDR, a.Ordinal)
			}
		}
	}
}

// checkInvariants verifies the stored blocks and that the handles count
// exactly what the blocks hold, as they must when no write failed.
func checkInvariants(t testing.TB, s datastore.Store) {
	t.Helper()
	checkBlocks(t, s)
	if got, want := storedHandles(t, s), truth(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("handles %v do not match the blocks' allocations %v", got, want)
	}
}

// checkNoUnderCount verifies the stored blocks and that no handle counts
// fewer addresses in a block than the block holds.
func checkNoUnderCount(t testing.TB, s datastore.Store) {
	t.Helper()
	checkBlocks(t, s)
	hs := storedHandles(t, s)
	for h, blocks := range truth(t, s) {
		for c, n := range blocks {
			if hs[h][c] < n {
				t.Errorf("handle %s counts %d in block %s, which holds %d of its addresses", h, hs[h][c], c, n)
			}
		}
	}
}

// hookStore wraps a store and calls hook before every call; a non-nil
// error from hook fails the call. It counts writes per kind.
type hookStore struct {
	datastore.Store
	mu     sync.Mutex
	hook   func(op string, kind datastore.Kind, name string) error
	writes map[datastore.Kind]int
	delay  time.Duration // before every block write
}

func newHookStore(s datastore.Store) *hookStore {
	return &hookStore{Store: s, writes: map[datastore.Kind]int{}}
}

func (h *hookStore) call(op string, kind datastore.Kind, name string) error {
	h.mu.Lock()
	hook := h.hook
	delay := h.delay
	if op != "get" && op != "list" {
		h.writes[kind]++
	}
	h.mu.Unlock()
	if delay > 0 && kind == datastore.KindBlock && op != "get" && op != "list" {
		time.Sleep(delay)
	}
	if hook != nil {
		return hook(op, kind, name)
	}
	return nil
}

func (h *hookStore) setHook(f func(op string, kind datastore.Kind, name string) error) {
	h.mu.Lock()
	h.hook = f
	h.mu.Unlock()
}

func (h *hookStore) count(kind datastore.Kind) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.writes[kind]
}

func (h *hookStore) Get(ctx context.Context, kind datastore.Kind, name string) (datastore.KV, error) {
	if err := h.call("get", kind, name); err != nil {
		return datastore.KV{}, err
	}
	return h.Store.Get(ctx, kind, name)
}

func (h *hookStore) List(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions) ([]datastore.KV, string, error) {
	if err := h.call("list", kind, ""); err != nil {
		return nil, "", err
	}
	return h.Store.List(ctx, kind, opts)
}

func (h *hookStore) Create(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	if err := h.call("create", kv.Kind, kv.Name); err != nil {
		return datastore.KV{}, err
	}
	return h.Store.Create(ctx, kv)
}

func (h *hookStore) Update(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	if err := h.call("update", kv.Kind, kv.Name); err != nil {
		return datastore.KV{}, err
	}
	return h.Store.Update(ctx, kv)
}

func (h *hookStore) Delete(ctx context.Context, kind datastore.Kind, name, expect string) error {
	if err := h.call("delete", kind, name); err != nil {
		return err
	}
	return h.Store.Delete(ctx, kind, name, expect)
}

var errInjected = fmt.Errorf("injected outage: %w", datastore.ErrUnavailable)

// failAt returns a hook that fails the n-th call (from 1) with
// errInjected, and a counter of the calls seen.
func failAt(n int) (func(string, datastore.Kind, string) error, func() int) {
	var mu sync.Mutex
	calls := 0
	return func(string, datastore.Kind, string) error {
			mu.Lock()
			defer mu.Unlock()
			calls++
			if calls == n {
				return errInjected
			}
			return nil
		}, func() int {
			mu.Lock()
			defer mu.Unlock()
			return calls
		}
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

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
