package etcd_test

import (
	"context"
	"errors"
	"strings"
	"testing"

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
	f := datastore.NewFake()
	rate, err := etcd.RawTxnRate(context.Background(), f, 250)
	if err != nil || rate <= 0 {
		t.Fatalf("RawTxnRate = %v, %v; want a positive rate", rate, err)
	}
	// 250 creates plus cleanup in batches of at most 100 deletes.
	if got := f.Txns(); got != 250+3 {
		t.Errorf("RawTxnRate made %d transactions; want 250 creates and 3 cleanup batches", got)
	}
	kvs, _, err := f.List(context.Background(), etcd.RawTxnPrefix)
	if err != nil || len(kvs) != 0 {
		t.Errorf("RawTxnRate left %d keys under %s (%v); want none", len(kvs), etcd.RawTxnPrefix, err)
	}
	if _, err := etcd.RawTxnRate(context.Background(), f, 0); err == nil {
		t.Error("RawTxnRate with n=0 succeeded; want an error")
	}
	f.Fail(1, datastore.ErrUnavailable)
	if _, err := etcd.RawTxnRate(context.Background(), f, 5); !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), "transaction 1 of 5") {
		t.Errorf("RawTxnRate on a failing store = %v; want ErrUnavailable at transaction 1", err)
	}
}
