package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"twill.dev/twill/datastore"
)

// RawTxnPrefix is where RawTxnRate writes its keys, outside datastore.Prefix
// so that it never touches Twill's state.
const RawTxnPrefix = "/twill-bench/rawtxn/"

// rawTxnCleanupBatch is how many deletes one cleanup transaction carries,
// below etcd's default limit of 128 operations per transaction.
const rawTxnCleanupBatch = 100

// RawTxnRate measures a store's raw write rate: n sequential transactions,
// each creating one fresh key (datastore.MustNotExist) with a small value,
// in transactions per second. It is the baseline that IPAM throughput is
// compared with. The keys live under RawTxnPrefix and are deleted
// afterwards, outside the timed part.
func RawTxnRate(ctx context.Context, store datastore.Store, n int) (float64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("raw txn rate: need a positive number of transactions, got %d", n)
	}
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return 0, fmt.Errorf("raw txn rate: random run id: %w", err)
	}
	prefix := RawTxnPrefix + hex.EncodeToString(id[:]) + "/"
	value := []byte(`{"apiVersion":"twill.dev/v1","kind":"Bench","n":0}`)
	keys := make([]string, 0, n)
	start := time.Now()
	var err error
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("%s%09d", prefix, i)
		if _, err = store.Txn(ctx, datastore.Put(key, value, datastore.MustNotExist)); err != nil {
			err = fmt.Errorf("raw txn rate: transaction %d of %d: %w", i+1, n, err)
			break
		}
		keys = append(keys, key)
	}
	elapsed := time.Since(start)
	if cerr := deleteKeys(ctx, store, keys); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}

// deleteKeys removes keys in transactions of rawTxnCleanupBatch deletes.
func deleteKeys(ctx context.Context, store datastore.Store, keys []string) error {
	for len(keys) > 0 {
		m := min(len(keys), rawTxnCleanupBatch)
		ops := make([]datastore.Op, 0, m)
		for _, k := range keys[:m] {
			ops = append(ops, datastore.Delete(k, datastore.AnyRevision))
		}
		if _, err := store.Txn(ctx, ops...); err != nil {
			return fmt.Errorf("raw txn rate: delete benchmark keys under %s: %w", RawTxnPrefix, err)
		}
		keys = keys[m:]
	}
	return nil
}
