package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcdtest"
)

// TestConcurrentNodesOnEtcd has eight agents, one per node, allocate 1,000
// addresses each at the same time from a pool of 8,192 on a real etcd.
// A ninth node holds four empty blocks, so the eight can claim at most 124
// blocks (7,936 addresses) and must borrow at least 64 addresses.
func TestConcurrentNodesOnEtcd(t *testing.T) {
	const (
		nodes   = 8
		perNode = 1000
	)
	s := etcdtest.NewStore(t)
	mainPool := netip.MustParsePrefix("10.128.0.0/19")
	putPool(t, s, "a-main", mainPool.String(), nil) // 128 blocks of 64
	putPool(t, s, "b-other", "10.200.0.0/16", func(p *api.IPPoolSpec) { p.NodeSelector = "role == 'other'" })
	for i := range nodes {
		putNode(t, s, fmt.Sprintf("node-%d", i), map[string]string{"role": "worker"})
	}
	spare := New(s)
	for range 4 {
		if _, err := spare.ClaimBlock(ctx, "spare", api.UseWorkload); err != nil {
			t.Fatal(err)
		}
	}

	type result struct {
		node, handle string
		addr         netip.Addr
	}
	start := time.Now()
	results := make([][]result, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			m := New(s) // each node runs its own agent
			node := fmt.Sprintf("node-%d", i)
			for j := range perNode {
				h := fmt.Sprintf("%s/%d", node, j)
				got, err := m.Allocate(ctx, AllocateRequest{Handle: h, Node: node})
				if err != nil {
					errs[i] = fmt.Errorf("%s: allocation %d: %w", node, j, err)
					return
				}
				results[i] = append(results[i], result{node, h, got[0]})
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Logf("%d nodes allocated %d addresses each in %v", nodes, perNode, time.Since(start).Round(time.Millisecond))
	m := New(s)
	usage, err := m.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	affinity := map[netip.Prefix]string{}
	for _, u := range usage {
		if u.Pool == "b-other" && len(u.Blocks) > 0 {
			t.Errorf("pool b-other, whose nodeSelector matches no node, has blocks %+v", u.Blocks)
		}
		for _, b := range u.Blocks {
			affinity[b.CIDR] = b.Affinity
		}
	}
	owner := map[netip.Addr]string{}
	borrowed := 0
	var all []result
	for _, rs := range results {
		all = append(all, rs...)
		for _, r := range rs {
			if prev, dup := owner[r.addr]; dup {
				t.Fatalf("%s handed out twice: %s and %s", r.addr, prev, r.handle)
			}
			owner[r.addr] = r.handle
			if !mainPool.Contains(r.addr) {
				t.Fatalf("%s (for %s) is outside pool a-main", r.addr, r.handle)
			}
			if affinity[netip.PrefixFrom(r.addr, 26).Masked()] != r.node {
				borrowed++
			}
		}
	}
	if len(owner) != nodes*perNode {
		t.Fatalf("%d distinct addresses, want %d", len(owner), nodes*perNode)
	}
	t.Logf("%d of %d allocations were borrowed from other nodes' blocks", borrowed, len(owner))
	if borrowed < 64 {
		t.Errorf("%d allocations borrowed, want at least 64 (only 124 blocks were free to claim)", borrowed)
	}

	// Every address is found by its handle; then release every other one.
	start = time.Now()
	var mu sync.Mutex
	remaining := map[netip.Prefix]int{}
	for i := range nodes {
		wg.Go(func() {
			for j, r := range results[i] {
				got, err := m.HandleAddrs(ctx, r.handle)
				if err != nil || !slices.Equal(got, []netip.Addr{r.addr}) {
					t.Errorf("HandleAddrs(%s) = %v, %v; want [%s]", r.handle, got, err, r.addr)
					return
				}
				if j%2 == 0 {
					rel, err := m.ReleaseHandle(ctx, r.handle)
					if err != nil || !slices.Equal(rel, got) {
						t.Errorf("ReleaseHandle(%s) = %v, %v; want %v", r.handle, rel, err, got)
						return
					}
					continue
				}
				mu.Lock()
				remaining[netip.PrefixFrom(r.addr, 26).Masked()]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("looked up %d handles and released half in %v", nodes*perNode, time.Since(start).Round(time.Millisecond))

	usage, err = m.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kept := nodes * perNode / 2
	for _, u := range usage {
		if u.Pool != "a-main" {
			continue
		}
		if u.Size != 8192 || u.Used != uint64(kept) || u.Free != uint64(8192-kept) {
			t.Errorf("a-main usage: size %d used %d free %d; want 8192, %d, %d", u.Size, u.Used, u.Free, kept, 8192-kept)
		}
		seen := 0
		for _, b := range u.Blocks {
			want := remaining[b.CIDR]
			if b.Used != want || b.Free != 64-want {
				t.Errorf("block %s: used %d free %d; want %d and %d", b.CIDR, b.Used, b.Free, want, 64-want)
			}
			if want > 0 {
				seen++
			}
		}
		if seen != len(remaining) {
			t.Errorf("usage shows %d blocks holding addresses, want %d", seen, len(remaining))
		}
	}
	checkInvariants(t, s)
}

// BenchmarkAllocateVsRawTxn compares, on one embedded etcd and in one run,
// the store's raw transaction rate (sequential single-key creates) with the
// IPAM allocation rate for one node, sequentially and with 8 goroutines.
// The ratios are allocations per second over raw transactions per second.
func BenchmarkAllocateVsRawTxn(b *testing.B) {
	s := etcdtest.NewStore(b)
	putPool(b, s, "bench", "10.0.0.0/8", nil)
	ctx := context.Background()
	n := max(b.N, 100)
	b.ResetTimer()
	raw, err := etcdtest.RawTxnRate(ctx, s, n)
	if err != nil {
		b.Fatal(err)
	}
	seq, err := AllocationRate(ctx, New(s), "bench-seq", n, 1)
	if err != nil {
		b.Fatal(err)
	}
	par, err := AllocationRate(ctx, New(s), "bench-par", n, 8)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(raw, "txn/s")
	b.ReportMetric(seq, "alloc/s")
	b.ReportMetric(par, "alloc-par8/s")
	b.ReportMetric(seq/raw, "ratio")
	b.ReportMetric(par/raw, "ratio-par8")
	if left, _, err := s.List(ctx, datastore.HandlesPrefix); err != nil || len(left) != 0 {
		b.Fatalf("benchmark left %d handles (%v)", len(left), err)
	}
}
