package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

var ctx = context.Background()

func TestAllocateAndRelease(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.1.0.0/24", nil)
	m := New(s)

	first := mustAlloc1(t, m, "h1", "n1")
	block := blockOf(first, 26)
	b, ok := getBlock(t, s, block)
	if !ok || b.Affinity != "n1" {
		t.Fatalf("block %s after allocation: %+v (exists %v), want affinity n1", block, b, ok)
	}
	if first != netip.MustParsePrefix(block).Addr() {
		t.Errorf("first address %s, want the block's first address", first)
	}
	if got := b.Allocations[0]; got.Handle != "h1" || got.Use != api.UseWorkload || got.Attrs[api.AttrNode] != "n1" {
		t.Errorf("allocation %+v, want handle h1, use Workload, attrs node=n1", got)
	}
	if h := getHandle(t, s, "h1"); h[block] != 1 || len(h) != 1 {
		t.Errorf("handle h1 counts %v, want 1 in %s", h, block)
	}

	// Same handle again adds addresses.
	more := mustAlloc(t, m, AllocateRequest{Handle: "h1", Node: "n1", Count: 2, Attrs: map[string]string{api.AttrPod: "p"}})
	held, err := m.HandleAddrs(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	want := append([]netip.Addr{first}, more...)
	if !slices.Equal(held, want) {
		t.Errorf("HandleAddrs(h1) = %v, want %v", held, want)
	}
	other := mustAlloc1(t, m, "h2", "n1")
	checkInvariants(t, s)

	released, err := m.ReleaseHandle(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(released, want) {
		t.Errorf("ReleaseHandle(h1) = %v, want %v", released, want)
	}
	if b, _ := getBlock(t, s, block); len(b.Allocations) != 1 || b.Allocations[0].Handle != "h2" {
		t.Errorf("block after releasing h1: %+v, want only h2's address %s", b.Allocations, other)
	}
	// Idempotent.
	if again, err := m.ReleaseHandle(ctx, "h1"); err != nil || len(again) != 0 {
		t.Errorf("second ReleaseHandle(h1) = %v, %v; want nothing, no error", again, err)
	}
	if got, err := m.HandleAddrs(ctx, "h1"); err != nil || len(got) != 0 {
		t.Errorf("HandleAddrs of a released handle = %v, %v", got, err)
	}
	checkInvariants(t, s)

	// Releasing the last address keeps the block and its affinity; it is
	// garbage collection's to reclaim.
	if _, err := m.ReleaseHandle(ctx, "h2"); err != nil {
		t.Fatal(err)
	}
	if b, ok := getBlock(t, s, block); !ok || b.Affinity != "n1" || len(b.Allocations) != 0 {
		t.Errorf("emptied block %s: %+v (exists %v), want kept, empty, affine to n1", block, b, ok)
	}
	if h := getHandle(t, s, "h2"); h != nil {
		t.Errorf("released handle h2 still counts %v", h)
	}
	refs, err := m.EmptyBlocks(ctx)
	if err != nil || len(refs) != 1 || refs[0].CIDR.String() != block || refs[0].Affinity != "n1" || refs[0].Revision == "" {
		t.Errorf("EmptyBlocks = %+v, %v; want %s of n1", refs, err, block)
	}
	checkInvariants(t, s)
}

func TestAllocateValidatesRequest(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.1.0.0/24", nil)
	m := New(s)
	for name, req := range map[string]AllocateRequest{
		"no handle":  {Node: "n1"},
		"no node":    {Handle: "h"},
		"bad use":    {Handle: "h", Node: "n1", Use: "Router"},
		"count":      {Handle: "h", Node: "n1", Count: -1},
		"huge count": {Handle: "h", Node: "n1", Count: MaxCount + 1},
		"ip count":   {Handle: "h", Node: "n1", IP: netip.MustParseAddr("10.1.0.5"), Count: 2},
	} {
		if _, err := m.Allocate(ctx, req); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: err = %v, want ErrInvalidRequest", name, err)
		}
	}
	if d := dump(t, s); len(d) != 1 {
		t.Errorf("invalid requests wrote to the store: %v", d)
	}
}

func TestLowestFreeOrdinalFirst(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.2.0.0/24", nil)
	m := New(s)
	var got []netip.Addr
	for _, h := range []string{"a", "b", "c", "d"} {
		got = append(got, mustAlloc1(t, m, h, "n1"))
	}
	base := netip.MustParsePrefix(blockOf(got[0], 26)).Addr()
	for i, a := range got {
		if a != addrAdd(base, uint64(i)) {
			t.Fatalf("allocation %d = %s, want %s (ordinals in order)", i, a, addrAdd(base, uint64(i)))
		}
	}
	if h, err := m.ReleaseIP(ctx, got[1]); err != nil || h != "b" {
		t.Fatalf("ReleaseIP(%s) = %q, %v; want handle b", got[1], h, err)
	}
	if a := mustAlloc1(t, m, "e", "n1"); a != got[1] {
		t.Errorf("after releasing %s the next address is %s, want the freed (lowest) one", got[1], a)
	}
	checkInvariants(t, s)
}

func TestCountSpansBlocks(t *testing.T) {
	fake := datastore.NewFake()
	putPool(t, fake, "pool", "10.3.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	s := newHookStore(fake)
	m := New(s)
	mustAlloc(t, m, AllocateRequest{Handle: "fill", Node: "n1", Count: 10})
	writes, hw, bw := fake.Writes(), s.count(datastore.KindHandle), s.count(datastore.KindBlock)
	got := mustAlloc(t, m, AllocateRequest{Handle: "many", Node: "n1", Count: 30})
	if n := s.count(datastore.KindHandle) - hw; n != 1 {
		t.Errorf("allocating 30 addresses wrote the handle %d times, want once", n)
	}
	if n := s.count(datastore.KindBlock) - bw; n != 3 {
		t.Errorf("allocating 30 addresses over 3 blocks wrote blocks %d times, want 3", n)
	}
	if n := fake.Writes() - writes; n != 4 {
		t.Errorf("allocating 30 addresses over 3 blocks took %d writes, want 4 (handle, then each block once)", n)
	}
	if h := getHandle(t, s, "many"); len(h) != 3 {
		t.Errorf("handle counts %v, want three blocks", h)
	}
	blocks := map[string]int{}
	for _, a := range got {
		blocks[blockOf(a, 28)]++
	}
	if len(got) != 30 || len(blocks) != 3 {
		t.Errorf("got %d addresses in blocks %v; want 30 spread over the partial block and two claimed ones", len(got), blocks)
	}
	checkInvariants(t, s)
}

func TestClaimSeededByNodeName(t *testing.T) {
	first := func(node string) string {
		s := datastore.NewFake()
		putPool(t, s, "default-ipv4-ippool", "172.16.0.0/16", nil)
		return blockOf(mustAlloc1(t, New(s), "h", node), 26)
	}
	m1, m2 := first("k8s-master1"), first("k8s-master2")
	if m1 == m2 {
		t.Errorf("k8s-master1 and k8s-master2 both start at block %s; the claim order should depend on the node name", m1)
	}
	if again := first("k8s-master1"); again != m1 {
		t.Errorf("k8s-master1 first claimed %s, then %s: the order should be a function of the name", m1, again)
	}

	// In one store, many nodes claim distinct blocks with no conflicts.
	s := datastore.NewFake()
	putPool(t, s, "default-ipv4-ippool", "172.16.0.0/16", nil)
	m := New(s)
	seen := map[string]string{}
	for i := range 20 {
		node := "node-" + string(rune('a'+i))
		b := blockOf(mustAlloc1(t, m, "h-"+node, node), 26)
		if prev, dup := seen[b]; dup {
			t.Errorf("nodes %s and %s share block %s", prev, node, b)
		}
		seen[b] = node
	}
	checkInvariants(t, s)
}

func TestBorrowWhenAllBlocksClaimed(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.4.0.0/27", func(p *api.IPPoolSpec) { p.BlockSize = 28 }) // two blocks of 16
	m := New(s)
	a := mustAlloc(t, m, AllocateRequest{Handle: "a", Node: "A", Count: 16})
	b := mustAlloc(t, m, AllocateRequest{Handle: "b", Node: "B", Count: 10})
	if blockOf(a[0], 28) == blockOf(b[0], 28) {
		t.Fatalf("A and B share a block")
	}
	borrowed := mustAlloc1(t, m, "a2", "A")
	bBlock := netip.MustParsePrefix(blockOf(b[0], 28))
	if want := addrAdd(bBlock.Addr(), 10); borrowed != want {
		t.Errorf("A borrowed %s, want %s (lowest free address of B's block)", borrowed, want)
	}
	blk, _ := getBlock(t, s, bBlock.String())
	if blk.Affinity != "B" {
		t.Errorf("borrowing changed the block's affinity to %q", blk.Affinity)
	}
	infos, err := m.Allocations(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 17 || !slices.ContainsFunc(infos, func(i AllocationInfo) bool { return i.IP == borrowed && i.Block == bBlock && i.Handle == "a2" }) {
		t.Errorf("Allocations(A) has %d entries and lacks the borrowed %s in %s", len(infos), borrowed, bBlock)
	}
	// Fill the rest: then the pool is exhausted.
	mustAlloc(t, m, AllocateRequest{Handle: "a3", Node: "A", Count: 5})
	_, err = m.Allocate(ctx, AllocateRequest{Handle: "a4", Node: "A"})
	var exh *ExhaustedError
	if !errors.As(err, &exh) || !errors.Is(err, ErrPoolExhausted) || !slices.Equal(exh.Pools, []string{"pool"}) || exh.Node != "A" {
		t.Errorf("allocating from a full pool: %v, want *ExhaustedError for node A, pools [pool]", err)
	}
	if err != nil && !strings.Contains(err.Error(), "add a pool") {
		t.Errorf("exhaustion message %q does not say what to do", err)
	}
	checkInvariants(t, s)
}

func TestStrictAffinityForbidsBorrowing(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.4.0.0/27", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	putConfig(t, s, api.IPAMConfig{StrictAffinity: true})
	m := New(s)
	mustAlloc(t, m, AllocateRequest{Handle: "a", Node: "A", Count: 16})
	mustAlloc(t, m, AllocateRequest{Handle: "b", Node: "B", Count: 10})
	before := dump(t, s)
	_, err := m.Allocate(ctx, AllocateRequest{Handle: "a2", Node: "A"})
	var exh *ExhaustedError
	if !errors.As(err, &exh) || !exh.Strict || !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("allocate with strict affinity and B's block half free: %v, want *ExhaustedError with Strict", err)
	}
	if after := dump(t, s); !mapsEqual(before, after) {
		t.Errorf("a failed allocation changed the store")
	}
}

func TestMaxBlocksPerNode(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.5.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	putConfig(t, s, api.IPAMConfig{MaxBlocksPerNode: 1})
	m := New(s)
	mustAlloc(t, m, AllocateRequest{Handle: "a", Node: "A", Count: 16})
	_, err := m.Allocate(ctx, AllocateRequest{Handle: "a2", Node: "A"})
	var exh *ExhaustedError
	if !errors.As(err, &exh) || exh.MaxBlocksPerNode != 1 {
		t.Fatalf("17th address with maxBlocksPerNode=1 and no other blocks: %v, want *ExhaustedError naming the cap", err)
	}
	if _, err := m.ClaimBlock(ctx, "A", api.UseWorkload); !errors.As(err, &exh) || exh.MaxBlocksPerNode != 1 {
		t.Errorf("ClaimBlock over the cap: %v, want *ExhaustedError naming the cap", err)
	}
	// Another node may still claim, and then A borrows from it.
	b := mustAlloc1(t, m, "b", "B")
	if got := mustAlloc1(t, m, "a2", "A"); blockOf(got, 28) != blockOf(b, 28) {
		t.Errorf("A got %s, want an address borrowed from B's block %s", got, blockOf(b, 28))
	}
	checkInvariants(t, s)
}

func TestSpecificIP(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.6.0.0/24", nil)
	putPool(t, s, "off", "10.7.0.0/24", func(p *api.IPPoolSpec) { p.Disabled = true })
	m := New(s)
	ip := netip.MustParseAddr("10.6.0.77")
	got := mustAlloc(t, m, AllocateRequest{Handle: "static", Node: "n1", IP: ip})
	if !slices.Equal(got, []netip.Addr{ip}) {
		t.Fatalf("got %v, want %s", got, ip)
	}
	b, ok := getBlock(t, s, "10.6.0.64/26")
	if !ok || b.Affinity != "n1" || len(b.Allocations) != 1 || b.Allocations[0].Ordinal != 13 {
		t.Errorf("block of %s: %+v, want claimed by n1 with ordinal 13", ip, b)
	}

	_, err := m.Allocate(ctx, AllocateRequest{Handle: "other", Node: "n2", IP: ip})
	var inUse *InUseError
	if !errors.As(err, &inUse) || inUse.Handle != "static" || inUse.IP != ip || !errors.Is(err, ErrAddressInUse) {
		t.Errorf("allocating a taken address: %v, want *InUseError naming handle static", err)
	}
	for _, out := range []string{"10.9.0.1", "10.7.0.1"} {
		_, err := m.Allocate(ctx, AllocateRequest{Handle: "x", Node: "n1", IP: netip.MustParseAddr(out)})
		var op *OutsidePoolsError
		if !errors.As(err, &op) || !errors.Is(err, ErrNotInPool) {
			t.Errorf("allocating %s (outside enabled pools): %v, want *OutsidePoolsError", out, err)
		}
	}
	// Borrowing a specific address from another node's block keeps its affinity.
	mustAlloc(t, m, AllocateRequest{Handle: "n2-static", Node: "n2", IP: netip.MustParseAddr("10.6.0.78")})
	if b, _ := getBlock(t, s, "10.6.0.64/26"); b.Affinity != "n1" {
		t.Errorf("affinity changed to %q", b.Affinity)
	}
	checkInvariants(t, s)
}

func TestTunnelGetsFirstAddress(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.8.0.0/16", nil)
	m := New(s)
	tun := mustAlloc(t, m, AllocateRequest{Handle: "tunnel-n1", Node: "n1", Use: api.UseTunnel})
	p := netip.MustParsePrefix(blockOf(tun[0], 26))
	if tun[0] != p.Addr() {
		t.Errorf("tunnel address %s, want the first address of block %s", tun[0], p)
	}
	pod := mustAlloc1(t, m, "pod", "n1")
	if pod != addrAdd(p.Addr(), 1) {
		t.Errorf("first pod address %s, want %s", pod, addrAdd(p.Addr(), 1))
	}
	b, _ := getBlock(t, s, p.String())
	if b.Allocations[0].Use != api.UseTunnel || b.Allocations[1].Use != api.UseWorkload {
		t.Errorf("uses recorded %+v", b.Allocations)
	}
}

// TestPinBlockSeed reproduces the seed cluster's k8s-master1: its block is
// pinned, its tunnel address is the block's first address and its first pod
// has 172.16.159.145.
func TestPinBlockSeed(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "default-ipv4-ippool", "172.16.0.0/16", func(p *api.IPPoolSpec) { p.VXLANMode = api.EncapCrossSubnet; p.NATOutgoing = true })
	m := New(s)
	block := netip.MustParsePrefix("172.16.159.128/26")
	if err := m.PinBlock(ctx, block, "k8s-master1"); err != nil {
		t.Fatal(err)
	}
	tun := mustAlloc(t, m, AllocateRequest{Handle: "vxlan-tunnel-addr-k8s-master1", Node: "k8s-master1", Use: api.UseTunnel})
	if tun[0] != netip.MustParseAddr("172.16.159.128") {
		t.Errorf("tunnel address %s, want 172.16.159.128", tun[0])
	}
	pod := netip.MustParseAddr("172.16.159.145")
	mustAlloc(t, m, AllocateRequest{Handle: "pod1", Node: "k8s-master1", IP: pod})
	blocks, err := m.NodeBlocks(ctx, "k8s-master1")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 1 || blocks[0].CIDR != block.String() || !blocks[0].Pinned || len(blocks[0].Allocations) != 2 {
		t.Errorf("NodeBlocks(k8s-master1) = %+v, want the pinned %s with 2 addresses", blocks, block)
	}
	// Pinned blocks stay when emptied.
	for _, h := range []string{"vxlan-tunnel-addr-k8s-master1", "pod1"} {
		if _, err := m.ReleaseHandle(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	if b, ok := getBlock(t, s, block.String()); !ok || b.Affinity != "k8s-master1" || !b.Pinned {
		t.Errorf("pinned block after release: %+v (exists %v), want kept with its affinity", b, ok)
	}
	if refs, err := m.EmptyBlocks(ctx); err != nil || len(refs) != 0 {
		t.Errorf("EmptyBlocks lists %+v (%v); a pinned block is never reclaimed", refs, err)
	}
	// Pinning again is a no-op; an empty pinned block may move.
	if err := m.PinBlock(ctx, block, "k8s-master1"); err != nil {
		t.Errorf("re-pin: %v", err)
	}
	if err := m.PinBlock(ctx, block, "k8s-master2"); err != nil {
		t.Errorf("re-affine the empty block: %v", err)
	}
	if bs, err := m.NodeBlocks(ctx, "k8s-master1"); err != nil || len(bs) != 0 {
		t.Errorf("k8s-master1 still lists %+v (%v) after the block moved", bs, err)
	}
	if bs, err := m.NodeBlocks(ctx, "k8s-master2"); err != nil || len(bs) != 1 || bs[0].CIDR != block.String() {
		t.Errorf("k8s-master2 lists %+v (%v), want %s", bs, err, block)
	}
	checkInvariants(t, s)

	// Unpin: emptied, the block is then GC's to reclaim.
	mustAlloc1(t, m, "p2", "k8s-master2")
	if err := m.UnpinBlock(ctx, block); err != nil {
		t.Fatal(err)
	}
	if b, _ := getBlock(t, s, block.String()); b.Pinned || b.Affinity != "k8s-master2" {
		t.Errorf("after unpin: %+v", b)
	}
	if _, err := m.ReleaseHandle(ctx, "p2"); err != nil {
		t.Fatal(err)
	}
	refs, err := m.EmptyBlocks(ctx)
	if err != nil || len(refs) != 1 || refs[0].CIDR != block {
		t.Fatalf("EmptyBlocks = %+v, %v; want the unpinned %s", refs, err, block)
	}
	if ok, err := m.ReclaimBlock(ctx, refs[0]); err != nil || !ok {
		t.Fatalf("ReclaimBlock(%s) = %v, %v", block, ok, err)
	}
	if _, ok := getBlock(t, s, block.String()); ok {
		t.Errorf("reclaimed block still exists")
	}
	if err := m.UnpinBlock(ctx, block); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("unpin a missing block: %v, want ErrNotFound", err)
	}
	checkInvariants(t, s)
}

func TestPinBlockErrors(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "default-ipv4-ippool", "172.16.0.0/16", nil)
	m := New(s)
	for _, c := range []string{"172.16.159.130/26", "172.16.159.128/25", "172.16.159.128/27", "10.0.0.0/26"} {
		p := netip.PrefixFrom(netip.MustParsePrefix(c).Addr(), netip.MustParsePrefix(c).Bits())
		if err := m.PinBlock(ctx, p, "n1"); !errors.Is(err, ErrNotABlock) {
			t.Errorf("PinBlock(%s): %v, want ErrNotABlock", c, err)
		}
	}
	ip := netip.MustParseAddr("172.16.1.5")
	mustAlloc(t, m, AllocateRequest{Handle: "h", Node: "n1", IP: ip})
	err := m.PinBlock(ctx, netip.MustParsePrefix("172.16.1.0/26"), "n2")
	if !errors.Is(err, ErrBlockInUse) {
		t.Errorf("pin n1's non-empty block to n2: %v, want ErrBlockInUse", err)
	}
	if err := m.PinBlock(ctx, netip.MustParsePrefix("172.16.1.0/26"), "n1"); err != nil {
		t.Errorf("pin n1's own block: %v", err)
	}
	checkInvariants(t, s)
}

func TestNodeSelectorExcludesPool(t *testing.T) {
	s := datastore.NewFake()
	// "a-edge" sorts first, so only the selector keeps workers off it.
	putPool(t, s, "a-edge", "10.10.0.0/26", func(p *api.IPPoolSpec) { p.NodeSelector = "role == 'edge'" })
	putPool(t, s, "b-all", "10.20.0.0/26", func(p *api.IPPoolSpec) { p.BlockSize = 27 })
	putNode(t, s, "worker", map[string]string{"role": "worker"})
	putNode(t, s, "edge", map[string]string{"role": "edge"})
	m := New(s)
	edgePool := netip.MustParsePrefix("10.10.0.0/26")
	got := mustAlloc(t, m, AllocateRequest{Handle: "w", Node: "worker", Count: 64})
	for _, a := range got {
		if edgePool.Contains(a) {
			t.Fatalf("worker got %s from the edge-only pool", a)
		}
	}
	_, err := m.Allocate(ctx, AllocateRequest{Handle: "w2", Node: "worker"})
	var exh *ExhaustedError
	if !errors.As(err, &exh) || !slices.Equal(exh.Pools, []string{"b-all"}) {
		t.Errorf("worker with b-all full: %v, want exhaustion naming only b-all", err)
	}
	if e := mustAlloc1(t, m, "e", "edge"); !edgePool.Contains(e) {
		t.Errorf("edge node got %s, want an address of a-edge", e)
	}
	// An unregistered node has no labels: it matches all() only.
	_, err = m.Allocate(ctx, AllocateRequest{Handle: "u", Node: "unregistered", Pools: []string{"a-edge"}})
	if !errors.As(err, &exh) || len(exh.Pools) != 0 {
		t.Errorf("unregistered node restricted to a-edge: %v, want exhaustion with no eligible pool", err)
	}
	_, err = m.Allocate(ctx, AllocateRequest{Handle: "u", Node: "unregistered", Pools: []string{"nope"}})
	if !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("unknown pool name: %v, want ErrNotFound", err)
	}
	checkInvariants(t, s)
}

func TestDisabledPoolUnused(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "a-off", "10.30.0.0/24", func(p *api.IPPoolSpec) { p.Disabled = true })
	putPool(t, s, "b-on", "10.31.0.0/24", nil)
	m := New(s)
	if a := mustAlloc1(t, m, "h", "n1"); !netip.MustParsePrefix("10.31.0.0/24").Contains(a) {
		t.Errorf("got %s, want an address of the enabled pool", a)
	}
	s2 := datastore.NewFake()
	putPool(t, s2, "a-off", "10.30.0.0/24", func(p *api.IPPoolSpec) { p.Disabled = true })
	_, err := New(s2).Allocate(ctx, AllocateRequest{Handle: "h", Node: "n1"})
	var exh *ExhaustedError
	if !errors.As(err, &exh) || len(exh.Pools) != 0 {
		t.Errorf("only a disabled pool: %v, want exhaustion with no eligible pool", err)
	}
}

func TestAllowedUses(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "a-tunnels", "10.40.0.0/24", func(p *api.IPPoolSpec) { p.AllowedUses = []api.IPPoolUse{api.UseTunnel} })
	putPool(t, s, "b-pods", "10.41.0.0/24", func(p *api.IPPoolSpec) { p.AllowedUses = []api.IPPoolUse{api.UseWorkload} })
	m := New(s)
	if a := mustAlloc1(t, m, "pod", "n1"); !netip.MustParsePrefix("10.41.0.0/24").Contains(a) {
		t.Errorf("workload address %s, want one from b-pods", a)
	}
	tun := mustAlloc(t, m, AllocateRequest{Handle: "tun", Node: "n1", Use: api.UseTunnel})
	if !netip.MustParsePrefix("10.40.0.0/24").Contains(tun[0]) {
		t.Errorf("tunnel address %s, want one from a-tunnels", tun[0])
	}
	checkInvariants(t, s)
}

func TestInjectedConflicts(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.50.0.0/24", nil)
	m := New(s)
	s.ConflictNext(3)
	a := mustAlloc1(t, m, "h1", "n1")
	if held, _ := m.HandleAddrs(ctx, "h1"); !slices.Equal(held, []netip.Addr{a}) {
		t.Errorf("after 3 conflicts: handle holds %v, want %s", held, a)
	}
	checkInvariants(t, s)

	before := dump(t, s)
	s.ConflictNext(1000)
	_, err := m.Allocate(ctx, AllocateRequest{Handle: "h2", Node: "n1"})
	if !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("allocate under endless conflicts: %v, want ErrConflict", err)
	}
	if _, err := m.ReleaseHandle(ctx, "h1"); !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("release under endless conflicts: %v, want ErrConflict", err)
	}
	if after := dump(t, s); !mapsEqual(before, after) {
		t.Errorf("failed writes changed the store")
	}
	s.ConflictNext(0)
	if got, err := m.ReleaseHandle(ctx, "h1"); err != nil || !slices.Equal(got, []netip.Addr{a}) {
		t.Errorf("release after the conflicts stopped: %v, %v", got, err)
	}
	checkInvariants(t, s)
}

func TestUnavailableLeavesNoTrace(t *testing.T) {
	// A cold IPAM reads several objects, writes the handle, then two
	// blocks (a claim among them): fail each call in turn and check that
	// the store ends up as it was, since a failed allocation undoes what
	// it wrote.
	for n := 1; ; n++ {
		fake := datastore.NewFake()
		putPool(t, fake, "pool", "10.60.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
		m0 := New(fake)
		mustAlloc(t, m0, AllocateRequest{Handle: "first", Node: "n1", Count: 10})
		before := dump(t, fake)
		s := newHookStore(fake)
		hook, calls := failAt(n)
		s.setHook(hook)
		m := New(s)
		_, err := m.Allocate(ctx, AllocateRequest{Handle: "h", Node: "n1", Count: 12}) // spans a claim
		if err == nil {
			if n == 1 {
				t.Fatal("no store call failed")
			}
			// Every call was failed once in the earlier rounds.
			if n < 6 {
				t.Fatalf("a cold allocation made only %d store calls; the test no longer reaches the block writes", n-1)
			}
			t.Logf("failed each of %d store calls in turn", n-1)
			checkInvariants(t, fake)
			break
		}
		if !errors.Is(err, datastore.ErrUnavailable) {
			t.Errorf("call %d failing: %v, want ErrUnavailable", n, err)
		}
		if after := dump(t, fake); !mapsEqual(before, after) {
			t.Errorf("call %d failing left a trace (%d calls made)", n, calls())
		}
		if n > 50 {
			t.Fatal("allocation makes more than 50 store calls")
		}
	}

	// Release too, and a warm IPAM whose first call is its handle write.
	fake := datastore.NewFake()
	putPool(t, fake, "pool", "10.60.0.0/24", nil)
	m := New(fake)
	mustAlloc(t, m, AllocateRequest{Handle: "h", Node: "n1", Count: 3})
	before := dump(t, fake)
	fake.Fail(1, errInjected)
	if _, err := m.ReleaseHandle(ctx, "h"); !errors.Is(err, datastore.ErrUnavailable) {
		t.Errorf("release while unavailable: %v, want ErrUnavailable", err)
	}
	fake.Fail(1, errInjected)
	if _, err := m.Allocate(ctx, AllocateRequest{Handle: "h2", Node: "n1"}); !errors.Is(err, datastore.ErrUnavailable) {
		t.Errorf("allocate while unavailable: %v, want ErrUnavailable", err)
	}
	if after := dump(t, fake); !mapsEqual(before, after) {
		t.Errorf("failed calls changed the store")
	}
	checkInvariants(t, fake)
}

func TestReleaseNeverFreesOtherHandles(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.70.0.0/24", nil)
	m := New(s)
	a := mustAlloc(t, m, AllocateRequest{Handle: "a", Node: "n1", Count: 2})
	b := mustAlloc1(t, m, "b", "n1")
	if h, err := m.ReleaseIP(ctx, a[0]); err != nil || h != "a" {
		t.Fatalf("ReleaseIP(%s) = %q, %v", a[0], h, err)
	}
	if _, err := m.ReleaseIP(ctx, a[0]); !errors.Is(err, ErrNotAllocated) {
		t.Errorf("releasing %s twice: %v, want ErrNotAllocated", a[0], err)
	}
	if _, err := m.ReleaseIP(ctx, netip.MustParseAddr("10.99.0.1")); !errors.Is(err, ErrNotAllocated) {
		t.Errorf("releasing an address outside every block: %v, want ErrNotAllocated", err)
	}
	got, err := m.ReleaseHandle(ctx, "a")
	if err != nil || !slices.Equal(got, a[1:]) {
		t.Errorf("ReleaseHandle(a) = %v, %v; want %v", got, err, a[1:])
	}
	if held, _ := m.HandleAddrs(ctx, "b"); !slices.Equal(held, []netip.Addr{b}) {
		t.Errorf("b holds %v after a was released, want %s", held, b)
	}
	checkInvariants(t, s)
}

func TestTwoIPAMsShareAStore(t *testing.T) {
	// Two agents for the same node (e.g. across a restart) with stale
	// caches never hand out an address twice.
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.80.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	m1, m2 := New(s), New(s)
	seen := map[netip.Addr]string{}
	for i := range 40 {
		m := m1
		if i%3 == 0 {
			m = m2
		}
		h := "h" + string(rune('A'+i))
		a := mustAlloc1(t, m, h, "n1")
		if prev, dup := seen[a]; dup {
			t.Fatalf("%s handed out to %s and %s", a, prev, h)
		}
		seen[a] = h
		if i%5 == 4 { // the other instance releases behind m's back
			other := m1
			if m == m1 {
				other = m2
			}
			if _, err := other.ReleaseIP(ctx, a); err != nil {
				t.Fatal(err)
			}
			delete(seen, a)
		}
	}
	checkInvariants(t, s)
}

func TestClaimBlockAndReleaseNodeAffinities(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.90.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	m := New(s)
	empty, err := m.ClaimBlock(ctx, "gone", api.UseWorkload)
	if err != nil {
		t.Fatal(err)
	}
	if empty.Affinity != "gone" || len(empty.Allocations) != 0 {
		t.Errorf("ClaimBlock = %+v", empty)
	}
	used := mustAlloc(t, m, AllocateRequest{Handle: "pod", Node: "gone", Count: 20}) // fills `empty`, claims one more
	if blockOf(used[0], 28) != empty.CIDR {
		t.Errorf("first address %s not from the claimed block %s", used[0], empty.CIDR)
	}
	var pinned netip.Prefix
	for i := range 16 {
		p := netip.PrefixFrom(addrAdd(netip.MustParseAddr("10.90.0.0"), uint64(16*i)), 28)
		if _, ok := getBlock(t, s, p.String()); !ok {
			pinned = p
			break
		}
	}
	if err := m.PinBlock(ctx, pinned, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReleaseIP(ctx, used[0]); err != nil {
		t.Fatal(err)
	}
	used = used[1:]
	// One more block, left empty.
	spare, err := m.ClaimBlock(ctx, "gone", api.UseWorkload)
	if err != nil {
		t.Fatal(err)
	}
	if bs, err := m.NodeBlocks(ctx, "gone"); err != nil || len(bs) != 4 {
		t.Fatalf("NodeBlocks(gone) = %d blocks (%v), want 4", len(bs), err)
	}
	if err := m.ReleaseNodeAffinities(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, ok := getBlock(t, s, spare.CIDR); ok {
		t.Errorf("empty block %s of the deleted node still exists", spare.CIDR)
	}
	for _, a := range used {
		b, ok := getBlock(t, s, blockOf(a, 28))
		if !ok || b.Affinity != "" {
			t.Fatalf("block of %s after node deletion: %+v (exists %v), want kept without affinity", a, b, ok)
		}
	}
	if b, _ := getBlock(t, s, pinned.String()); b.Affinity != "gone" || !b.Pinned {
		t.Errorf("pinned block after node deletion: %+v, want kept", b)
	}
	if bs, err := m.NodeBlocks(ctx, "gone"); err != nil || len(bs) != 1 || bs[0].CIDR != pinned.String() {
		t.Errorf("NodeBlocks(gone) after release = %+v (%v), want only the pinned block", bs, err)
	}
	checkInvariants(t, s)
	// The orphaned addresses can still be released; GC then reclaims their
	// blocks.
	slices.SortFunc(used, netip.Addr.Compare)
	if got, err := m.ReleaseHandle(ctx, "pod"); err != nil || !slices.Equal(got, used) {
		t.Fatalf("ReleaseHandle(pod) = %v, %v; want %v", got, err, used)
	}
	refs, err := m.EmptyBlocks(ctx)
	if err != nil || len(refs) != 2 {
		t.Fatalf("EmptyBlocks = %+v, %v; want the two emptied blocks", refs, err)
	}
	for _, r := range refs {
		if r.Affinity != "" {
			t.Errorf("empty block %s has affinity %q", r.CIDR, r.Affinity)
		}
		if ok, err := m.ReclaimBlock(ctx, r); err != nil || !ok {
			t.Errorf("ReclaimBlock(%s) = %v, %v", r.CIDR, ok, err)
		}
	}
	if d := dump(t, s); len(d) != 2 { // pool, pinned block
		t.Errorf("store holds %d objects after releasing everything: %v", len(d), d)
	}
	checkInvariants(t, s)
}

func TestUsageAndPoolAllocations(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "a", "10.100.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	putPool(t, s, "b", "10.101.0.0/25", nil)
	m := New(s)
	mustAlloc(t, m, AllocateRequest{Handle: "x", Node: "n1", Count: 20, Pools: []string{"a"}})
	mustAlloc(t, m, AllocateRequest{Handle: "y", Node: "n2", Count: 3, Pools: []string{"b"}})
	u, err := m.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(u) != 2 || u[0].Pool != "a" || u[0].Size != 256 || u[0].Used != 20 || u[0].Free != 236 || len(u[0].Blocks) != 2 ||
		u[1].Pool != "b" || u[1].Size != 128 || u[1].Used != 3 || u[1].Free != 125 || len(u[1].Blocks) != 1 {
		t.Fatalf("Usage = %+v", u)
	}
	if bu := u[1].Blocks[0]; bu.Affinity != "n2" || bu.Used != 3 || bu.Free != 61 {
		t.Errorf("block usage %+v", bu)
	}
	pa, err := m.PoolAllocations(ctx, "b")
	if err != nil || len(pa) != 3 || pa[0].Handle != "y" || pa[0].Attrs[api.AttrNode] != "n2" {
		t.Errorf("PoolAllocations(b) = %+v, %v", pa, err)
	}
	if _, err := m.PoolAllocations(ctx, "nope"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("PoolAllocations(nope): %v, want ErrNotFound", err)
	}
}

func TestIPv6(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "v6", "fd00:10::/48", nil)
	m := New(s)
	tun := mustAlloc(t, m, AllocateRequest{Handle: "t", Node: "n1", Use: api.UseTunnel})
	p := netip.PrefixFrom(tun[0], 122).Masked()
	if tun[0] != p.Addr() || !netip.MustParsePrefix("fd00:10::/48").Contains(tun[0]) {
		t.Errorf("IPv6 tunnel address %s", tun[0])
	}
	got := mustAlloc(t, m, AllocateRequest{Handle: "p", Node: "n1", Count: 70})
	if got[0] != addrAdd(p.Addr(), 1) {
		t.Errorf("first pod address %s, want %s", got[0], addrAdd(p.Addr(), 1))
	}
	if _, err := m.ReleaseHandle(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, s)
}

// TestGroupCommit queues 64 concurrent allocations for one node behind the
// node's lock, then lets them run: they are merged into two batches of 32,
// each writing every handle once and each block it uses once.
func TestGroupCommit(t *testing.T) {
	fake := datastore.NewFake()
	putPool(t, fake, "pool", "10.110.0.0/24", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	s := newHookStore(fake)
	m := New(s)
	const n = 64
	q := m.queue("n1")
	if err := q.lock(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([][]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got[i], errs[i] = m.Allocate(ctx, AllocateRequest{Handle: fmt.Sprintf("pod-%d", i), Node: "n1", Count: 1 + i%3})
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		q.mu.Lock()
		queued := len(q.pending)
		q.mu.Unlock()
		if queued == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d allocations queued within 10s", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
	q.unlock()
	wg.Wait()
	seen := map[netip.Addr]int{}
	blocks := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("pod-%d: %v", i, errs[i])
		}
		if len(got[i]) != 1+i%3 {
			t.Errorf("pod-%d got %v, want %d addresses", i, got[i], 1+i%3)
		}
		for _, a := range got[i] {
			if j, dup := seen[a]; dup {
				t.Fatalf("%s handed to pod-%d and pod-%d", a, j, i)
			}
			seen[a] = i
			blocks[blockOf(a, 28)] = true
		}
		if held, _ := m.HandleAddrs(ctx, fmt.Sprintf("pod-%d", i)); !slices.Equal(held, slices.SortedFunc(slices.Values(got[i]), netip.Addr.Compare)) {
			t.Errorf("pod-%d holds %v, was given %v", i, held, got[i])
		}
	}
	hw, bw := s.count(datastore.KindHandle), s.count(datastore.KindBlock)
	t.Logf("%d allocations (%d addresses in %d blocks): %d handle writes, %d block writes, %d writes in all", n, len(seen), len(blocks), hw, bw, fake.Writes())
	if hw != n {
		t.Errorf("%d handle writes, want one per allocation (%d)", hw, n)
	}
	// Two batches; only a block shared by both is written twice.
	if bw > len(blocks)+1 {
		t.Errorf("%d block writes for %d blocks in two batches, want at most %d", bw, len(blocks), len(blocks)+1)
	}
	checkInvariants(t, s)
}

func TestConcurrentAllocationsBeyondCapacity(t *testing.T) {
	// 20 callers race for 16 addresses: exactly 16 succeed, 4 are told the
	// pool is exhausted, whatever batches they were merged into.
	s := datastore.NewFake()
	putPool(t, s, "tiny", "10.120.0.0/28", func(p *api.IPPoolSpec) { p.BlockSize = 28 })
	m := New(s)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, exhausted := 0, 0
	for i := range 20 {
		wg.Go(func() {
			_, err := m.Allocate(ctx, AllocateRequest{Handle: fmt.Sprintf("p%d", i), Node: "n1"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrPoolExhausted):
				exhausted++
			default:
				t.Errorf("p%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if ok != 16 || exhausted != 4 {
		t.Errorf("%d succeeded and %d exhausted, want 16 and 4", ok, exhausted)
	}
	checkInvariants(t, s)
}

func TestAllocateCancelled(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "pool", "10.130.0.0/24", nil)
	m := New(s)
	before := dump(t, s)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.Allocate(cctx, AllocateRequest{Handle: "h", Node: "n1"}); !errors.Is(err, context.Canceled) {
		t.Errorf("allocate with a cancelled context: %v, want context.Canceled", err)
	}
	if after := dump(t, s); !mapsEqual(before, after) {
		t.Errorf("a cancelled allocation wrote to the store")
	}
}

func TestInvalidPoolIgnoredAndReportedOnce(t *testing.T) {
	s := datastore.NewFake()
	bad := api.IPPool{Metadata: api.ObjectMeta{Name: "a-bad"}, Spec: api.IPPoolSpec{CIDR: "10.140.0.0/24", BlockSize: 10}}
	put(t, s, datastore.KindIPPool, "a-bad", bad)
	putPool(t, s, "b-good", "10.141.0.0/24", nil)
	var logs strings.Builder
	m := New(s, WithCacheTTL(0), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	for i := range 3 {
		if a := mustAlloc1(t, m, fmt.Sprint("h", i), "n1"); !netip.MustParsePrefix("10.141.0.0/24").Contains(a) {
			t.Errorf("got %s, want an address of the valid pool", a)
		}
	}
	if n := strings.Count(logs.String(), "ignoring invalid IP pool"); n != 1 {
		t.Errorf("the invalid pool was reported %d times, want once:\n%s", n, logs.String())
	}
	u, err := m.Usage(ctx)
	if err != nil || len(u) != 1 || u[0].Pool != "b-good" {
		t.Errorf("Usage = %+v, %v; want only b-good", u, err)
	}
}

func TestCacheTTLZeroSeesPoolChanges(t *testing.T) {
	s := datastore.NewFake()
	putPool(t, s, "a", "10.150.0.0/24", nil)
	putPool(t, s, "b", "10.151.0.0/24", nil)
	m := New(s, WithCacheTTL(0))
	if a := mustAlloc1(t, m, "h1", "n1"); !netip.MustParsePrefix("10.150.0.0/24").Contains(a) {
		t.Fatalf("got %s, want pool a", a)
	}
	putPool(t, s, "a", "10.150.0.0/24", func(p *api.IPPoolSpec) { p.Disabled = true })
	if a := mustAlloc1(t, m, "h2", "n1"); !netip.MustParsePrefix("10.151.0.0/24").Contains(a) {
		t.Errorf("after disabling a: got %s, want pool b even though n1 has a block in a", a)
	}
}
