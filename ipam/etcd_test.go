package ipam_test

import (
	"context"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/ipam"
	"twill.dev/twill/ipam/ipamtest"
)

// TestContentionOnEtcd runs the contention test on a real (embedded) etcd:
// eight agents, 500 allocations each, from a pool of 2,048 addresses.
func TestContentionOnEtcd(t *testing.T) {
	ipamtest.Contention(t, func(t *testing.T) datastore.Store { return etcdtest.NewStore(t) }, 8, 500)
}

// TestContentionOnFake runs the contention test on the in-memory Fake.
func TestContentionOnFake(t *testing.T) {
	ipamtest.Contention(t, func(*testing.T) datastore.Store { return datastore.NewFake() }, 8, 500)
}

// BenchmarkAllocateVsRawTxn compares, on one embedded etcd and in one run,
// the store's raw write rate (sequential single-key creates) with the IPAM
// allocation rate for one node, sequentially and with 8 goroutines. An
// allocation writes its handle, then its block: two such writes. The
// ratios are allocations per second over raw writes per second.
func BenchmarkAllocateVsRawTxn(b *testing.B) {
	s := etcdtest.NewStore(b)
	p := api.IPPool{Metadata: api.ObjectMeta{Name: "bench"}, Spec: api.IPPoolSpec{CIDR: "10.0.0.0/8"}}
	p.Default()
	kv, err := datastore.NewKV(datastore.KindIPPool, "bench", p)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Create(ctx, kv); err != nil {
		b.Fatal(err)
	}
	n := max(b.N, 100)
	b.ResetTimer()
	raw, err := etcdtest.RawTxnRate(ctx, s, n)
	if err != nil {
		b.Fatal(err)
	}
	seq, err := ipam.AllocationRate(ctx, ipam.New(s), "bench-seq", n, 1)
	if err != nil {
		b.Fatal(err)
	}
	par, err := ipam.AllocationRate(ctx, ipam.New(s), "bench-par", n, 8)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(raw, "txn/s")
	b.ReportMetric(seq, "alloc/s")
	b.ReportMetric(par, "alloc-par8/s")
	b.ReportMetric(seq/raw, "ratio")
	b.ReportMetric(par/raw, "ratio-par8")
	if left, _, err := s.List(ctx, datastore.KindHandle, datastore.ListOptions{}); err != nil || len(left) != 0 {
		b.Fatalf("benchmark left %d handles (%v)", len(left), err)
	}
}
