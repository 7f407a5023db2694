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

// putObjects creates n handles named prefix00, prefix01, ..., the even ones
// labelled even=yes, and returns their names.
func putObjects(t *testing.T, s datastore.Store, prefix string, n int) []string {
	t.Helper()
	var names []string
	for i := range n {
		name := fmt.Sprintf("%s%02d", prefix, i)
		kv := datastore.KV{Kind: datastore.KindHandle, Name: name, Value: fmt.Appendf(nil, "%q", name)}
		if i%2 == 0 {
			kv.Labels = map[string]string{"even": "yes"}
		}
		if _, err := s.Create(testCtx(t), kv); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	return names
}

func TestListPagesHandsOverPages(t *testing.T) {
	defer etcd.SetListPageSize(3)()
	s := etcdtest.Connect(t, etcdtest.Start(t), etcd.Config{})
	ctx := testCtx(t)
	want := putObjects(t, s, "p", 10)
	// Other kinds share no page with handles.
	if _, err := s.Create(ctx, datastore.KV{Kind: datastore.KindBlock, Name: "p05", Value: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}

	var got []string
	var sizes []int
	rev, err := s.ListPages(ctx, datastore.KindHandle, datastore.ListOptions{}, func(kvs []datastore.KV, restart bool) error {
		if restart {
			t.Errorf("a list nobody compacted started over")
		}
		sizes = append(sizes, len(kvs))
		for _, kv := range kvs {
			got = append(got, kv.Name)
			if string(kv.Value) != fmt.Sprintf("%q", kv.Name) || kv.Kind != datastore.KindHandle {
				t.Errorf("%s %s = %s; want its own name", kv.Kind, kv.Name, kv.Value)
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
	if _, lrev, err := s.List(ctx, datastore.KindHandle, datastore.ListOptions{}); err != nil || lrev != rev {
		t.Errorf("ListPages revision %s, List revision %s (%v); want the same", rev, lrev, err)
	}

	// Label filtering happens per page: pages without a match are skipped.
	got, sizes = nil, nil
	even := datastore.ListOptions{Labels: map[string]string{"even": "yes"}}
	if _, err := s.ListPages(ctx, datastore.KindHandle, even, func(kvs []datastore.KV, _ bool) error {
		sizes = append(sizes, len(kvs))
		for _, kv := range kvs {
			got = append(got, kv.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"p00", "p02", "p04", "p06", "p08"}; !slices.Equal(got, want) || !slices.Equal(sizes, []int{2, 1, 2}) {
		t.Errorf("ListPages(even) gave %v in pages of %v; want %v in pages of 2, 1, 2", got, sizes, want)
	}

	// No objects: page is never called.
	if _, err := s.ListPages(ctx, datastore.KindWorkload, datastore.ListOptions{}, func([]datastore.KV, bool) error {
		t.Errorf("page called for an empty kind")
		return nil
	}); err != nil {
		t.Error(err)
	}

	// The callback's error ends the list, as is.
	stop := errors.New("stop")
	calls := 0
	if _, err := s.ListPages(ctx, datastore.KindHandle, datastore.ListOptions{}, func([]datastore.KV, bool) error {
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
	want := putObjects(t, s, "c", 5)

	var got []string
	restarts, pages := 0, 0
	rev, err := s.ListPages(ctx, datastore.KindHandle, datastore.ListOptions{}, func(kvs []datastore.KV, restart bool) error {
		if restart {
			restarts++
			got = nil
			return nil
		}
		pages++
		if pages == 1 {
			// A new object, then compact away the revision the list reads at.
			if _, err := s.Create(ctx, datastore.KV{Kind: datastore.KindHandle, Name: "c99", Value: []byte(`"c99"`)}); err != nil {
				return err
			}
			if err := s.Compact(ctx); err != nil {
				return err
			}
		}
		for _, kv := range kvs {
			got = append(got, kv.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, "c99")
	if restarts != 1 || !slices.Equal(got, want) {
		t.Errorf("after a compaction between pages: %d restarts, objects %v; want 1 restart and %v", restarts, got, want)
	}
	if _, lrev, err := s.List(ctx, datastore.KindHandle, datastore.ListOptions{}); err != nil || lrev != rev {
		t.Errorf("ListPages revision %s, List revision %s (%v); want the new one", rev, lrev, err)
	}
}
