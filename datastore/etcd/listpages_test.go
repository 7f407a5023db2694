package etcd_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/etcdtest"
)

// putKeys writes n keys under prefix in one transaction and returns them.
func putKeys(t *testing.T, s datastore.Store, prefix string, n int) []string {
	t.Helper()
	var keys []string
	var ops []datastore.Op
	for i := range n {
		k := fmt.Sprintf("%s%02d", prefix, i)
		keys = append(keys, k)
		ops = append(ops, datastore.Put(k, []byte(k), datastore.MustNotExist))
	}
	if _, err := s.Txn(testCtx(t), ops...); err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestListPagesHandsOverPages(t *testing.T) {
	defer etcd.SetListPageSize(3)()
	s := etcdtest.Connect(t, etcdtest.Start(t), etcd.Config{})
	ctx := testCtx(t)
	want := putKeys(t, s, "/t/p/", 10)
	putKeys(t, s, "/t/q/", 1)

	var got []string
	var sizes []int
	rev, err := s.ListPages(ctx, "/t/p/", func(kvs []datastore.KV, restart bool) error {
		if restart {
			t.Errorf("a list nobody compacted started over")
		}
		sizes = append(sizes, len(kvs))
		for _, kv := range kvs {
			got = append(got, kv.Key)
			if string(kv.Value) != kv.Key {
				t.Errorf("%s = %q, want its own name", kv.Key, kv.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) || !slices.Equal(sizes, []int{3, 3, 3, 1}) {
		t.Errorf("ListPages gave %v in pages of %v; want %v in pages of 3, 3, 3, 1", got, sizes, want)
	}
	if _, lrev, err := s.List(ctx, "/t/p/"); err != nil || lrev != rev {
		t.Errorf("ListPages revision %d, List revision %d (%v); want the same", rev, lrev, err)
	}

	// No keys: page is never called.
	if _, err := s.ListPages(ctx, "/t/none/", func([]datastore.KV, bool) error {
		t.Errorf("page called for an empty prefix")
		return nil
	}); err != nil {
		t.Error(err)
	}

	// The callback's error ends the list, as is.
	stop := errors.New("stop")
	calls := 0
	if _, err := s.ListPages(ctx, "/t/p/", func([]datastore.KV, bool) error {
		calls++
		return stop
	}); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("ListPages with a failing page = %v after %d calls; want the page's error after 1", err, calls)
	}
}

// TestListPagesStartsOverAfterCompaction compacts the store between two
// pages: the list starts over at a new revision and says so.
func TestListPagesStartsOverAfterCompaction(t *testing.T) {
	defer etcd.SetListPageSize(3)()
	s := etcdtest.Connect(t, etcdtest.Start(t), etcd.Config{})
	ctx := testCtx(t)
	want := putKeys(t, s, "/t/c/", 5)

	var got []string
	restarts, pages := 0, 0
	rev, err := s.ListPages(ctx, "/t/c/", func(kvs []datastore.KV, restart bool) error {
		if restart {
			restarts++
			got = nil
			return nil
		}
		pages++
		if pages == 1 {
			// A new key, then compact away the revision the list reads at.
			r, err := s.Txn(ctx, datastore.Put("/t/c/99", []byte("/t/c/99"), datastore.MustNotExist))
			if err != nil {
				return err
			}
			if _, err := s.Client().Compact(ctx, r); err != nil {
				return err
			}
		}
		for _, kv := range kvs {
			got = append(got, kv.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, "/t/c/99")
	if restarts != 1 || !slices.Equal(got, want) {
		t.Errorf("after a compaction between pages: %d restarts, keys %v; want 1 restart and %v", restarts, got, want)
	}
	if _, lrev, err := s.List(ctx, "/t/c/"); err != nil || lrev != rev {
		t.Errorf("ListPages revision %d, List revision %d (%v); want the new one", rev, lrev, err)
	}
}
