package etcd_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/etcdtest"
)

// BenchmarkRawTxn measures single-key create transactions against an
// embedded etcd (etcdtest settings): the baseline for IPAM throughput.
func BenchmarkRawTxn(b *testing.B) {
	s := etcdtest.NewStore(b)
	ctx := context.Background()
	// Warm the connection so that the first transaction's dial is not timed.
	if _, err := etcd.RawTxnRate(ctx, s, 10); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	rate, err := etcd.RawTxnRate(ctx, s, b.N)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(rate, "txn/s")
}

func TestRawTxnRate(t *testing.T) {
	s := etcdtest.Connect(t, etcdtest.Start(t), etcd.Config{})
	ctx := testCtx(t)
	before, err := s.Client().Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	rate, err := etcd.RawTxnRate(ctx, s, 50)
	if err != nil || rate <= 0 {
		t.Fatalf("RawTxnRate = %v, %v; want a positive rate", rate, err)
	}
	// 50 creates and one cleanup delete, each its own revision.
	left, err := s.Client().Get(ctx, etcd.RawTxnPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || left.Count != 0 {
		t.Fatalf("RawTxnRate left keys under %s: %v, %v", etcd.RawTxnPrefix, left, err)
	}
	if got := left.Header.Revision - before.Header.Revision; got != 51 {
		t.Errorf("RawTxnRate moved the revision by %d; want 50 one-key creates and 1 cleanup", got)
	}

	if _, err := etcd.RawTxnRate(ctx, s, 0); err == nil {
		t.Error("RawTxnRate with n=0 succeeded; want an error")
	}
	if _, err := etcd.RawTxnRate(ctx, datastore.NewFake(), 5); err == nil || !strings.Contains(err.Error(), "etcd store") {
		t.Errorf("RawTxnRate on a Fake = %v; want an error asking for an etcd store", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := etcd.RawTxnRate(cctx, s, 5); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "transaction 1 of 5") {
		t.Errorf("RawTxnRate with a cancelled context = %v; want context.Canceled at transaction 1", err)
	}
}
