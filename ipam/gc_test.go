package ipam

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// TestCrashBetweenHandleAndBlockWrite stops the store (as if the agent
// died) right after an allocation raised its handle: the handle
// over-counts, nothing is handed out twice, and RepairHandles lowers the
// count once the grace has passed.
func TestCrashBetweenHandleAndBlockWrite(t *testing.T) {
	fake := datastore.NewFake()
	putPool(t, fake, "pool", "10.160.0.0/24", nil)
	s := newHookStore(fake)
	m := New(s)
	first := mustAlloc1(t, m, "a", "n1")
	block := blockOf(first, 26)

	crashed := false
	s.setHook(func(op string, kind datastore.Kind, name string) error {
		if crashed {
			return errInjected
		}
		if op == "create" && kind == datastore.KindHandle && name == "crash" {
			crashed = true // this write lands; nothing after it does
		}
		return nil
	})
	if _, err := m.Allocate(ctx, AllocateRequest{Handle: "crash", Node: "n1"}); !errors.Is(err, datastore.ErrUnavailable) {
		t.Fatalf("allocate across the crash: %v, want ErrUnavailable", err)
	}
	s.setHook(nil)
	if h := getHandle(t, fake, "crash"); h[block] != 1 {
		t.Fatalf("handle after the crash counts %v, want the over-count 1 in %s", h, block)
	}
	if b, _ := getBlock(t, fake, block); len(b.Allocations) != 1 {
		t.Fatalf("block after the crash holds %+v, want only a's address", b.Allocations)
	}
	checkNoUnderCount(t, fake)

	// A new agent hands out the address the crashed call had planned, once.
	m2 := New(fake)
	next := mustAlloc1(t, m2, "b", "n1")
	if next != addrAdd(first, 1) {
		t.Errorf("after the crash the next address is %s, want %s (an over-count reserves nothing)", next, addrAdd(first, 1))
	}
	more := mustAlloc(t, m2, AllocateRequest{Handle: "c", Node: "n1", Count: 80})
	seen := map[netip.Addr]bool{first: true, next: true}
	for _, a := range more {
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
	}
	checkNoUnderCount(t, fake)

	// RepairHandles leaves a fresh over-count alone during the grace.
	gc := New(fake, WithRepairGrace(100*time.Millisecond))
	if fixed, err := gc.RepairHandles(ctx); err != nil || fixed != 0 {
		t.Fatalf("first RepairHandles = %d, %v; want nothing fixed within the grace", fixed, err)
	}
	if h := getHandle(t, fake, "crash"); h[block] != 1 {
		t.Fatalf("the over-count was lowered within the grace: %v", h)
	}
	time.Sleep(120 * time.Millisecond)
	if fixed, err := gc.RepairHandles(ctx); err != nil || fixed != 1 {
		t.Fatalf("RepairHandles after the grace = %d, %v; want the crashed handle fixed", fixed, err)
	}
	if h := getHandle(t, fake, "crash"); h != nil {
		t.Errorf("the crashed handle still counts %v", h)
	}
	checkInvariants(t, fake)
	if fixed, err := gc.RepairHandles(ctx); err != nil || fixed != 0 {
		t.Errorf("RepairHandles of a repaired store = %d, %v; want nothing to fix", fixed, err)
	}
}

// TestRepairHandlesRaisesAtOnce: under-counts and missing handles are
// repaired in the first run, whatever the grace.
func TestRepairHandlesRaisesAtOnce(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.161.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	m := New(s)
	k := mustAlloc(t, m, AllocateRequest{Handle: "k", Node: "n1", Count: 20}) // two blocks
	mustAlloc(t, m, AllocateRequest{Handle: "gone", Node: "n1", Count: 2})
	put(t, s, datastore.KindHandle, "k", handleValue("k", map[string]int{blockOf(k[0], 28): 16}))
	if err := s.Delete(ctx, datastore.KindHandle, "gone", ""); err != nil {
		t.Fatal(err)
	}
	put(t, s, datastore.KindHandle, "empty", handleValue("empty", map[string]int{}))
	fixed, err := New(s).RepairHandles(ctx) // default grace
	if err != nil || fixed != 3 {
		t.Fatalf("RepairHandles = %d, %v; want 3 (raise k, re-create gone, delete empty)", fixed, err)
	}
	checkInvariants(t, s)
}

// TestReleaseHandleWithoutItsIndex frees every address of a handle whose
// handle object is missing or wrong: the blocks are the truth.
func TestReleaseHandleWithoutItsIndex(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.162.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	m := New(s)
	other := mustAlloc1(t, m, "other", "n1")

	// Handle deleted.
	h := mustAlloc(t, m, AllocateRequest{Handle: "h", Node: "n1", Count: 20})
	if err := s.Delete(ctx, datastore.KindHandle, "h", ""); err != nil {
		t.Fatal(err)
	}
	got, err := m.ReleaseHandle(ctx, "h")
	slices.SortFunc(h, netip.Addr.Compare)
	if err != nil || !slices.Equal(got, h) {
		t.Fatalf("ReleaseHandle(h) without its handle = %v, %v; want %v", got, err, h)
	}

	// Handle counting the wrong blocks (one it is not in, one too few).
	g := mustAlloc(t, m, AllocateRequest{Handle: "g", Node: "n1", Count: 20})
	put(t, s, datastore.KindHandle, "g", handleValue("g", map[string]int{blockOf(g[0], 28): 3, "10.162.0.240/28": 1}))
	got, err = m.ReleaseHandle(ctx, "g")
	slices.SortFunc(g, netip.Addr.Compare)
	if err != nil || !slices.Equal(got, g) {
		t.Fatalf("ReleaseHandle(g) with a wrong handle = %v, %v; want %v", got, err, g)
	}
	if c := getHandle(t, s, "g"); c != nil {
		t.Errorf("handle g after release counts %v, want deleted", c)
	}
	if held, err := m.HandleAddrs(ctx, "other"); err != nil || !slices.Equal(held, []netip.Addr{other}) {
		t.Errorf("the other handle holds %v (%v) after the releases, want %s", held, err, other)
	}
	checkInvariants(t, s)
}

// TestReleaseIfOwned frees an address only while it carries the handle.
func TestReleaseIfOwned(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.163.0.0/24", nil)
	m := New(s)
	ip := netip.MustParseAddr("10.163.0.9")
	mustAlloc(t, m, AllocateRequest{Handle: "old", Node: "n1", IP: ip})
	if _, err := m.ReleaseHandle(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	mustAlloc(t, m, AllocateRequest{Handle: "new", Node: "n1", IP: ip})
	before := dump(t, s)
	if ok, err := m.ReleaseIfOwned(ctx, ip, "old"); err != nil || ok {
		t.Fatalf("ReleaseIfOwned(%s, old) of a re-assigned address = %v, %v; want false", ip, ok, err)
	}
	if after := dump(t, s); !mapsEqual(before, after) {
		t.Errorf("a refused ReleaseIfOwned changed the store")
	}
	if ok, err := m.ReleaseIfOwned(ctx, ip, "new"); err != nil || !ok {
		t.Fatalf("ReleaseIfOwned(%s, new) = %v, %v; want true", ip, ok, err)
	}
	if c := getHandle(t, s, "new"); c != nil {
		t.Errorf("handle new still counts %v", c)
	}
	if ok, err := m.ReleaseIfOwned(ctx, ip, "new"); err != nil || ok {
		t.Errorf("ReleaseIfOwned of a free address = %v, %v; want false", ok, err)
	}
	if _, err := m.ReleaseIfOwned(ctx, ip, ""); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("ReleaseIfOwned without a handle: %v, want ErrInvalidRequest", err)
	}
	checkInvariants(t, s)
}

// TestReclaimBlockRefusesChangedBlock: a block listed empty that got an
// address afterwards is not reclaimed; an allocator whose cache still holds
// a reclaimed block re-plans and claims again.
func TestReclaimBlockRefusesChangedBlock(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.164.0.0/24", nil)
	agent := New(s)
	gc := New(s)
	b, err := agent.ClaimBlock(ctx, "n1", api.UseWorkload)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := gc.EmptyBlocks(ctx)
	if err != nil || len(refs) != 1 || refs[0].CIDR.String() != b.CIDR {
		t.Fatalf("EmptyBlocks = %+v, %v; want %s", refs, err, b.CIDR)
	}
	a := mustAlloc1(t, agent, "pod", "n1")
	if blockOf(a, 26) != b.CIDR {
		t.Fatalf("allocated %s outside the claimed block %s", a, b.CIDR)
	}
	if ok, err := gc.ReclaimBlock(ctx, refs[0]); err != nil || ok {
		t.Fatalf("ReclaimBlock of a block that got an address = %v, %v; want false", ok, err)
	}
	if got, ok := getBlock(t, s, b.CIDR); !ok || len(got.Allocations) != 1 {
		t.Fatalf("block after the refused reclaim: %+v (exists %v)", got, ok)
	}
	if _, err := gc.ReclaimBlock(ctx, BlockRef{CIDR: refs[0].CIDR}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("ReclaimBlock without a revision: %v, want ErrInvalidRequest", err)
	}

	// Emptied, it is reclaimed behind the agent's back; the agent's stale
	// cache costs a re-plan, not an error.
	if _, err := agent.ReleaseHandle(ctx, "pod"); err != nil {
		t.Fatal(err)
	}
	if refs, err = gc.EmptyBlocks(ctx); err != nil || len(refs) != 1 {
		t.Fatalf("EmptyBlocks = %+v, %v", refs, err)
	}
	if ok, err := gc.ReclaimBlock(ctx, refs[0]); err != nil || !ok {
		t.Fatalf("ReclaimBlock of the emptied block = %v, %v", ok, err)
	}
	if ok, err := gc.ReclaimBlock(ctx, refs[0]); err != nil || ok {
		t.Errorf("ReclaimBlock of a reclaimed block = %v, %v; want false", ok, err)
	}
	again := mustAlloc1(t, agent, "pod2", "n1")
	if got, ok := getBlock(t, s, blockOf(again, 26)); !ok || got.Affinity != "n1" {
		t.Errorf("block of %s after re-claiming: %+v (exists %v)", again, got, ok)
	}
	checkInvariants(t, s)
}

// TestClaimRaceReplans: the block a plan claims is created by another
// node just before; the allocation re-plans into another block and its
// handle ends up counting exactly what it holds.
func TestClaimRaceReplans(t *testing.T) {
	fake := datastore.NewFake()
	putPool(t, fake, "pool", "10.165.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	s := newHookStore(fake)
	m := New(s)
	mustAlloc(t, m, AllocateRequest{Handle: "fill", Node: "n1", Count: 10})
	raced := ""
	s.setHook(func(op string, kind datastore.Kind, name string) error {
		if op == "create" && kind == datastore.KindBlock && raced == "" {
			raced = name
			kv, err := blockKV(netip.MustParsePrefix(nameCIDR(t, name)), newBlock(netip.MustParsePrefix(nameCIDR(t, name)), "rival"), "")
			if err != nil {
				return err
			}
			if _, err := fake.Create(ctx, kv); err != nil {
				return err
			}
		}
		return nil
	})
	got := mustAlloc(t, m, AllocateRequest{Handle: "many", Node: "n1", Count: 20}) // 6 in the partial block, 14 in a claim
	s.setHook(nil)
	if raced == "" {
		t.Fatal("the allocation claimed no block")
	}
	for _, a := range got {
		if datastore.BlockName(blockOf(a, 28)) == raced {
			t.Errorf("%s was taken from the block the rival claimed", a)
		}
	}
	if len(got) != 20 {
		t.Errorf("got %d addresses, want 20", len(got))
	}
	checkInvariants(t, fake)
}

// nameCIDR turns an IPv4 block name back into its CIDR.
func nameCIDR(t *testing.T, name string) string {
	t.Helper()
	i := len(name) - 1
	for i >= 0 && name[i] != '-' {
		i--
	}
	if i < 0 {
		t.Fatalf("block name %q has no prefix length", name)
	}
	return name[:i] + "/" + name[i+1:]
}
