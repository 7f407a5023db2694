package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"twill.dev/twill/datastore"
)

// RawTxnPrefix is where RawTxnRate writes its keys, outside Prefix so that
// it never touches Twill's objects.
const RawTxnPrefix = "/twill-bench/rawtxn/"

// RawTxnRate measures etcd's raw write rate through store, which must be a
// *Store: n sequential one-key transactions, each creating one fresh key
// (If CreateRevision == 0, Then Put) with a small value, in transactions
// per second. It is the baseline that IPAM throughput is compared with:
// every IPAM write is one such transaction plus Twill's own work. The keys
// live under RawTxnPrefix and are deleted afterwards, outside the timed
// part.
func RawTxnRate(ctx context.Context, store datastore.Store, n int) (float64, error) {
	s, ok := store.(*Store)
	if !ok {
		return 0, fmt.Errorf("raw txn rate: measures etcd transactions and needs an etcd store, not %T", store)
	}
	if n <= 0 {
		return 0, fmt.Errorf("raw txn rate: need a positive number of transactions, got %d", n)
	}
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return 0, fmt.Errorf("raw txn rate: random run id: %w", err)
	}
	prefix := RawTxnPrefix + hex.EncodeToString(id[:]) + "/"
	value := `{"apiVersion":"twill.dev/v1","kind":"Bench","n":0}`
	start := time.Now()
	var err error
	for i := 0; i < n; i++ {
		if err = s.rawCreate(ctx, fmt.Sprintf("%s%09d", prefix, i), value); err != nil {
			err = fmt.Errorf("raw txn rate: transaction %d of %d: %w", i+1, n, err)
			break
		}
	}
	elapsed := time.Since(start)
	// Clean up even when the caller's context ended, within a timeout.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	if _, derr := s.cli.Delete(cctx, prefix, clientv3.WithPrefix()); derr != nil {
		err = errors.Join(err, fmt.Errorf("raw txn rate: delete benchmark keys under %s: %w", prefix, s.mapErr(cctx, "delete", prefix, derr)))
	}
	if err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}

// rawCreate creates key in one transaction guarded by CreateRevision == 0.
func (s *Store) rawCreate(ctx context.Context, key, value string) error {
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, value)).Commit()
	if err != nil {
		return s.mapErr(ctx, "txn", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s: %w: %w", key, datastore.ErrExists, datastore.ErrConflict)
	}
	return nil
}
