// Package ipamtest holds IPAM tests that run unchanged against any
// datastore.Store: the in-memory Fake, etcd, and the Kubernetes API. They
// only use the Store interface and package ipam's exported API.
package ipamtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
)

// workersPerAgent is how many goroutines of one agent allocate at the same
// time, so that the agent's group commit merges their calls.
const workersPerAgent = 4

// contentionTimeout bounds the whole test.
const contentionTimeout = 5 * time.Minute

// Contention has agents IPAM instances (each its own *ipam.IPAM for its
// own node, as separate agents would be) allocate perAgent single
// addresses each, all at the same time (several goroutines per agent, so
// that group commit merges their calls), from one pool with a sixteenth
// fewer free addresses than asked for. The pool is agents*perAgent rounded
// up to a power of two, in blocks of 64 (smaller when that would give
// fewer than 2*(agents+1) blocks); first a spare node fills part of it
// (the surplus plus the sixteenth) and then claims an eighth of its blocks
// and leaves them empty, so that the agents, once their own blocks are
// full, must borrow from the spare's before the pool runs out.
//
// It checks that exactly the free capacity was handed out, every other
// call failing cleanly with ipam.ErrPoolExhausted; that no address was
// handed out twice; that every address is found by HandleAddrs of its
// handle and in its block, and at least the spare's empty blocks were
// borrowed from; and that the handles count exactly what the blocks hold.
// Then the agents release every other handle concurrently, and the pool's
// Usage must show exactly the rest. Finally everything is released, the
// empty blocks reclaimed and the pool deleted.
//
// newStore returns the store to test. It may be shared with other tests:
// every name the test writes carries a random token, and the pool's CIDR
// is chosen so that it overlaps no existing pool or block; still, no other
// writer may allocate from the test's pool meanwhile.
func Contention(t *testing.T, newStore func(t *testing.T) datastore.Store, agents, perAgent int) {
	t.Helper()
	if agents < 1 || perAgent < 1 {
		t.Fatalf("ipamtest: contention needs at least one agent and one allocation, got %d and %d", agents, perAgent)
	}
	total := agents * perAgent
	hostBits := bits.Len(uint(total - 1)) // a power of two >= total
	blockHostBits := 6
	for blockHostBits > 2 && 1<<max(0, hostBits-blockHostBits) < 2*(agents+1) {
		blockHostBits--
	}
	if hostBits > 20 || hostBits-blockHostBits < 3 {
		t.Fatalf("ipamtest: %d agents x %d allocations do not fit a pool of 8 to 2^20 addresses cut into blocks for every agent", agents, perAgent)
	}
	size := 1 << hostBits
	blockSize := 1 << blockHostBits
	nBlocks := size / blockSize
	spareBlocks := max(1, nBlocks/8)
	excess := max(1, total/16)
	filled := size - total + excess // the spare node's addresses
	capacity := size - filled       // what the agents can get
	if filled+spareBlocks*blockSize > size-blockSize {
		t.Fatalf("ipamtest: %d agents x %d allocations leave no room in a pool of %d for the spare node's %d addresses and %d empty blocks", agents, perAgent, size, filled, spareBlocks)
	}

	ctx, cancel := context.WithTimeout(context.Background(), contentionTimeout)
	defer cancel()
	s := newStore(t)
	began := time.Now()
	tok := token(t)
	poolName := "ipamtest-" + tok
	pool := pickCIDR(ctx, t, s, 32-hostBits)
	p := api.IPPool{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
		Metadata: api.ObjectMeta{Name: poolName},
		Spec:     api.IPPoolSpec{CIDR: pool.String(), BlockSize: 32 - blockHostBits},
	}
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatalf("ipamtest: pool %s: %v", pool, err)
	}
	kv, err := datastore.NewKV(datastore.KindIPPool, poolName, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, kv); err != nil {
		t.Fatalf("ipamtest: create pool %s: %v", poolName, err)
	}
	t.Logf("pool %s (%d addresses in %d blocks of %d, %d of them free) for %d agents x %d allocations", pool, size, nBlocks, blockSize, capacity, agents, perAgent)
	pools := []string{poolName}
	node := func(i int) string { return fmt.Sprintf("ipamtest-%s-n%d", tok, i) }
	handle := func(i, j int) string { return fmt.Sprintf("ipamtest-%s-n%d-%d", tok, i, j) }

	spare := node(agents)
	fillHandle := fmt.Sprintf("ipamtest-%s-fill", tok)
	admin := ipam.New(s)
	for left := filled; left > 0; {
		n := min(left, ipam.MaxCount)
		if _, err := admin.Allocate(ctx, ipam.AllocateRequest{Handle: fillHandle, Node: spare, Count: n, Pools: pools}); err != nil {
			t.Fatalf("ipamtest: fill %d addresses for the spare node: %v", n, err)
		}
		left -= n
	}
	spareSet := map[netip.Prefix]bool{}
	for range spareBlocks {
		b, err := admin.ClaimBlock(ctx, spare, api.UseWorkload)
		if err != nil {
			t.Fatalf("ipamtest: claim a block for the spare node: %v", err)
		}
		if !pool.Contains(netip.MustParsePrefix(b.CIDR).Addr()) {
			t.Fatalf("ipamtest: the spare node claimed %s outside the test pool %s: the store holds another pool the test cannot exclude", b.CIDR, pool)
		}
		spareSet[netip.MustParsePrefix(b.CIDR)] = true
	}

	t.Logf("filled %d addresses for the spare node and claimed %d empty blocks in %v", filled, spareBlocks, time.Since(began).Round(time.Millisecond))

	// Allocate.
	results := make([][]result, agents)
	agentsIPAM := make([]*ipam.IPAM, agents)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range agents {
		results[i] = make([]result, perAgent)
		m := ipam.New(s)
		agentsIPAM[i] = m
		for w := range workersPerAgent {
			wg.Go(func() {
				for j := w; j < perAgent; j += workersPerAgent {
					got, err := m.Allocate(ctx, ipam.AllocateRequest{Handle: handle(i, j), Node: node(i), Pools: pools,
						Attrs: map[string]string{api.AttrPod: fmt.Sprintf("pod-%d", j)}})
					switch {
					case err != nil:
						results[i][j] = result{err: err}
					case len(got) != 1:
						results[i][j] = result{err: fmt.Errorf("got %v, want one address", got)}
					default:
						results[i][j] = result{addr: got[0]}
					}
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)

	owner := map[netip.Addr]string{}
	ownerNode := map[netip.Addr]string{}
	ok, exhausted := 0, 0
	for i := range agents {
		for j, r := range results[i] {
			h := handle(i, j)
			if r.err != nil {
				if !errors.Is(r.err, ipam.ErrPoolExhausted) {
					t.Errorf("allocate %s: %v, want success or ErrPoolExhausted", h, r.err)
				}
				exhausted++
				continue
			}
			ok++
			if prev, dup := owner[r.addr]; dup {
				t.Fatalf("%s handed out twice: to %s and %s", r.addr, prev, h)
			}
			owner[r.addr] = h
			ownerNode[r.addr] = node(i)
			if !pool.Contains(r.addr) {
				t.Errorf("%s (for %s) is outside the pool %s", r.addr, h, pool)
			}
		}
	}
	t.Logf("%d allocations succeeded and %d found the pool exhausted in %v", ok, exhausted, elapsed.Round(time.Millisecond))
	start = time.Now()
	if ok != capacity || exhausted != total-capacity {
		t.Fatalf("%d allocations succeeded and %d failed with exhaustion; want exactly the pool's %d and %d", ok, exhausted, capacity, total-capacity)
	}

	// The blocks hold exactly what was handed out, under the right handles.
	filler, err := admin.HandleAddrs(ctx, fillHandle)
	if err != nil || len(filler) != filled {
		t.Fatalf("the spare node's handle holds %d addresses (%v), want %d", len(filler), err, filled)
	}
	for _, ip := range filler {
		if prev, dup := owner[ip]; dup {
			t.Fatalf("%s of the spare node was handed out again, to %s", ip, prev)
		}
		owner[ip] = fillHandle
		ownerNode[ip] = spare
	}
	blocks := poolBlocks(ctx, t, s, pool)
	held := map[netip.Addr]string{}
	affinity := map[netip.Prefix]string{}
	truth := map[string]map[string]int{}
	for _, b := range blocks {
		bp := netip.MustParsePrefix(b.CIDR)
		affinity[bp] = b.Affinity
		for _, a := range b.Allocations {
			ip := nth(bp.Addr(), a.Ordinal)
			if _, dup := held[ip]; dup {
				t.Errorf("block %s lists %s twice", b.CIDR, ip)
			}
			held[ip] = a.Handle
			if truth[a.Handle] == nil {
				truth[a.Handle] = map[string]int{}
			}
			truth[a.Handle][b.CIDR]++
		}
	}
	if len(held) != len(owner) {
		t.Errorf("the blocks hold %d addresses, %d were handed out", len(held), len(owner))
	}
	borrowed := 0
	for ip, h := range owner {
		if held[ip] != h {
			t.Errorf("%s was handed to %s but its block says %q", ip, h, held[ip])
		}
		bp := netip.PrefixFrom(ip, 32-blockHostBits).Masked()
		if affinity[bp] != ownerNode[ip] {
			borrowed++
		}
	}
	t.Logf("%d of %d addresses were borrowed from other nodes' blocks", borrowed, len(owner)-filled)
	if borrowed < spareBlocks*blockSize {
		t.Errorf("%d addresses borrowed, want at least the spare node's %d", borrowed, spareBlocks*blockSize)
	}
	for bp := range spareSet {
		if affinity[bp] != spare {
			t.Errorf("the spare node's block %s now has affinity %q", bp, affinity[bp])
		}
	}
	checkHandles(ctx, t, s, tok, truth)

	// Every address is found by its handle; failed handles hold nothing.
	for i := range agents {
		m := agentsIPAM[i]
		wg.Go(func() {
			for j, r := range results[i] {
				got, err := m.HandleAddrs(ctx, handle(i, j))
				want := []netip.Addr{r.addr}
				if r.err != nil {
					want = nil
				}
				if err != nil || !slices.Equal(got, want) {
					t.Errorf("HandleAddrs(%s) = %v, %v; want %v", handle(i, j), got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	t.Logf("checked the blocks, the handles and HandleAddrs of %d handles in %v", total, time.Since(start).Round(time.Millisecond))

	// Release every other handle, each agent its own, concurrently.
	start = time.Now()
	var mu sync.Mutex
	remaining := map[netip.Prefix]int{}
	for _, ip := range filler {
		remaining[netip.PrefixFrom(ip, 32-blockHostBits).Masked()]++
	}
	kept := filled
	for i := range agents {
		m := agentsIPAM[i]
		wg.Go(func() {
			for j, r := range results[i] {
				if r.err != nil {
					continue
				}
				if j%2 == 1 {
					mu.Lock()
					remaining[netip.PrefixFrom(r.addr, 32-blockHostBits).Masked()]++
					kept++
					mu.Unlock()
					continue
				}
				rel, err := m.ReleaseHandle(ctx, handle(i, j))
				if err != nil || !slices.Equal(rel, []netip.Addr{r.addr}) {
					t.Errorf("ReleaseHandle(%s) = %v, %v; want [%s]", handle(i, j), rel, err, r.addr)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("released %d handles in %v", ok+filled-kept, time.Since(start).Round(time.Millisecond))

	usage, err := admin.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(usage, func(u ipam.PoolUsage) bool { return u.Pool == poolName })
	if i < 0 {
		t.Fatalf("Usage does not report pool %s: %+v", poolName, usage)
	}
	u := usage[i]
	if u.Size != uint64(size) || u.Used != uint64(kept) || u.Free != uint64(size-kept) {
		t.Errorf("pool usage: size %d used %d free %d; want %d, %d, %d", u.Size, u.Used, u.Free, size, kept, size-kept)
	}
	if len(u.Blocks) != nBlocks {
		t.Errorf("usage lists %d blocks, want all %d (emptied blocks are kept)", len(u.Blocks), nBlocks)
	}
	for _, b := range u.Blocks {
		want := remaining[b.CIDR]
		if b.Used != want || b.Free != blockSize-want {
			t.Errorf("block %s: used %d free %d; want %d and %d", b.CIDR, b.Used, b.Free, want, blockSize-want)
		}
	}
	truth = map[string]map[string]int{}
	for _, b := range poolBlocks(ctx, t, s, pool) {
		for _, a := range b.Allocations {
			if truth[a.Handle] == nil {
				truth[a.Handle] = map[string]int{}
			}
			truth[a.Handle][b.CIDR]++
		}
	}
	checkHandles(ctx, t, s, tok, truth)

	if rel, err := admin.ReleaseHandle(ctx, fillHandle); err != nil || len(rel) != filled {
		t.Errorf("release the spare node's %d addresses: released %d, %v", filled, len(rel), err)
	}
	start = time.Now()
	cleanup(ctx, t, s, admin, agentsIPAM, results, handle, pool, poolName, tok)
	t.Logf("released the rest, reclaimed the blocks and deleted the pool in %v; %v in all", time.Since(start).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

// result is the outcome of one allocation.
type result struct {
	addr netip.Addr
	err  error
}

// cleanup releases every remaining handle (each agent its own,
// concurrently), reclaims the pool's blocks and deletes the pool, then
// checks that nothing of the test is left.
func cleanup(ctx context.Context, t *testing.T, s datastore.Store, admin *ipam.IPAM, ms []*ipam.IPAM, results [][]result, handle func(i, j int) string, pool netip.Prefix, poolName, tok string) {
	t.Helper()
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() {
			for j, r := range results[i] {
				if j%2 == 1 && r.err == nil {
					if _, err := m.ReleaseHandle(ctx, handle(i, j)); err != nil {
						t.Errorf("release %s: %v", handle(i, j), err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	refs, err := admin.EmptyBlocks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		if !pool.Contains(ref.CIDR.Addr()) {
			continue
		}
		if ok, err := admin.ReclaimBlock(ctx, ref); err != nil || !ok {
			t.Errorf("reclaim empty block %s: %v, %v", ref.CIDR, ok, err)
		}
	}
	if left := poolBlocks(ctx, t, s, pool); len(left) != 0 {
		t.Errorf("%d blocks of the pool are left after releasing everything and reclaiming the empty blocks", len(left))
	}
	checkHandles(ctx, t, s, tok, nil)
	if err := s.Delete(ctx, datastore.KindIPPool, poolName, ""); err != nil {
		t.Errorf("delete pool %s: %v", poolName, err)
	}
}

// checkHandles compares the stored handles of the test (named with tok)
// with the counts the blocks show.
func checkHandles(ctx context.Context, t *testing.T, s datastore.Store, tok string, truth map[string]map[string]int) {
	t.Helper()
	hs, _, err := datastore.ListObjects[api.Handle](ctx, s, datastore.KindHandle, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]int{}
	for _, h := range hs {
		if strings.HasPrefix(h.Name, "ipamtest-"+tok+"-") {
			got[h.Name] = h.Value.Blocks
		}
	}
	bad := 0
	for id, want := range truth {
		if fmt.Sprint(got[id]) != fmt.Sprint(want) {
			if bad++; bad <= 5 {
				t.Errorf("handle %s counts %v, the blocks hold %v", id, got[id], want)
			}
		}
	}
	for id, have := range got {
		if truth[id] == nil {
			if bad++; bad <= 5 {
				t.Errorf("handle %s counts %v but holds no address", id, have)
			}
		}
	}
	if bad > 5 {
		t.Errorf("%d handles in all do not match the blocks", bad)
	}
}

// poolBlocks lists the stored blocks inside pool.
func poolBlocks(ctx context.Context, t *testing.T, s datastore.Store, pool netip.Prefix) []api.Block {
	t.Helper()
	objs, _, err := datastore.ListObjects[api.Block](ctx, s, datastore.KindBlock, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []api.Block
	for _, o := range objs {
		bp, err := netip.ParsePrefix(o.Value.CIDR)
		if err == nil && pool.Overlaps(bp) {
			out = append(out, o.Value)
		}
	}
	return out
}

// pickCIDR returns an IPv4 prefix of length bits inside 10.0.0.0/8 that
// overlaps no stored pool or block.
func pickCIDR(ctx context.Context, t *testing.T, s datastore.Store, bitsLen int) netip.Prefix {
	t.Helper()
	pools, _, err := datastore.ListObjects[api.IPPool](ctx, s, datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	blocks, _, err := datastore.ListObjects[api.Block](ctx, s, datastore.KindBlock, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var used []netip.Prefix
	for _, p := range pools {
		if pp, err := netip.ParsePrefix(p.Value.Spec.CIDR); err == nil {
			used = append(used, pp)
		}
	}
	for _, b := range blocks {
		if bp, err := netip.ParsePrefix(b.Value.CIDR); err == nil {
			used = append(used, bp)
		}
	}
	step := uint64(1) << (32 - bitsLen)
	base := netip.MustParseAddr("10.64.0.0")
	for k := uint64(0); k < 64; k++ {
		c := netip.PrefixFrom(nth(base, int(k*step)), bitsLen).Masked()
		if !netip.MustParsePrefix("10.0.0.0/8").Contains(c.Addr()) {
			break
		}
		if !slices.ContainsFunc(used, c.Overlaps) {
			return c
		}
	}
	t.Fatalf("ipamtest: no free /%d in 10.64.0.0/10 for the test pool: the store holds pools or blocks there", bitsLen)
	return netip.Prefix{}
}

// nth returns base + n.
func nth(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// token returns a short random lowercase hex string for names.
func token(t *testing.T) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}
