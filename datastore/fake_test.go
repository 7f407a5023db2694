package datastore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/storetest"
)

// fakeExpire writes two changes to kind k and compacts the Fake: a watch
// from the revision listed before them cannot start any more.
func fakeExpire(t *testing.T, s datastore.Store, k datastore.Kind) string {
	t.Helper()
	f := s.(*datastore.Fake)
	ctx := context.Background()
	_, rev, err := f.List(ctx, k, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kv := datastore.KV{Kind: k, Name: "expire-tmp", Value: []byte(`{}`)}
	if _, err := f.Create(ctx, kv); err != nil {
		t.Fatal(err)
	}
	if err := f.Delete(ctx, k, kv.Name, ""); err != nil {
		t.Fatal(err)
	}
	f.Compact()
	return rev
}

func TestFakeConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) datastore.Store {
			f := datastore.NewFake()
			t.Cleanup(func() { f.Close() })
			return f
		},
		Expire: fakeExpire,
	})
}

// TestFakeSharedConformance runs the suite with one Fake for every
// subtest, as backends that share a server do.
func TestFakeSharedConformance(t *testing.T) {
	f := datastore.NewFake()
	storetest.Run(t, storetest.Harness{
		New:    func(*testing.T) datastore.Store { return f },
		Expire: fakeExpire,
		Kinds:  datastore.Kinds,
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func kvOf(name string, n int) datastore.KV {
	return datastore.KV{Kind: datastore.KindHandle, Name: name, Value: fmt.Appendf(nil, `{"n":%d}`, n)}
}

func TestFakeFaults(t *testing.T) {
	ctx := ctxT(t)
	f := datastore.NewFake()
	created, err := f.Create(ctx, kvOf("a", 1))
	if err != nil {
		t.Fatal(err)
	}
	injected := errors.New("injected")
	f.Fail(2, injected)
	if _, err := f.Get(ctx, datastore.KindHandle, "a"); !errors.Is(err, injected) {
		t.Errorf("Get after Fail(2) = %v; want the injected error", err)
	}
	wr := <-f.Watch(ctx, datastore.KindHandle, "")
	if !errors.Is(wr.Err, injected) {
		t.Errorf("Watch after Fail(2) = %+v; want the injected error", wr)
	}
	if _, err := f.Get(ctx, datastore.KindHandle, "a"); err != nil {
		t.Errorf("third Get after Fail(2) = %v; want success", err)
	}

	f.ConflictNext(3)
	before := f.Writes()
	if _, err := f.Create(ctx, kvOf("b", 1)); !errors.Is(err, datastore.ErrExists) || !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("Create under ConflictNext = %v; want ErrExists and ErrConflict", err)
	}
	up := kvOf("a", 2)
	up.Revision = created.Revision
	if _, err := f.Update(ctx, up); !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("Update under ConflictNext = %v; want ErrConflict", err)
	}
	if err := f.Delete(ctx, datastore.KindHandle, "a", ""); !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("Delete under ConflictNext = %v; want ErrConflict", err)
	}
	if _, err := f.Update(ctx, up); err != nil {
		t.Errorf("Update after the injected conflicts = %v; want success", err)
	}
	if got := f.Writes() - before; got != 4 {
		t.Errorf("Writes counted %d writes; want 4", got)
	}
	if _, err := f.Get(ctx, datastore.KindHandle, "b"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("an injected conflict wrote b: Get = %v", err)
	}
	if _, err := f.Create(ctx, datastore.KV{Kind: datastore.KindHandle, Value: []byte(`{}`)}); !errors.Is(err, datastore.ErrInvalid) {
		t.Errorf("Create without a name = %v; want ErrInvalid", err)
	}
}

// TestFakeHistoryBound checks that a watcher further behind than
// FakeHistory events gets ErrCompacted, and one within it the events.
func TestFakeHistoryBound(t *testing.T) {
	ctx := ctxT(t)
	f := datastore.NewFake()
	_, start, err := f.List(ctx, datastore.KindHandle, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var mid string
	const n = datastore.FakeHistory + datastore.FakeHistory/2
	for i := range n {
		out, err := datastore.Put(ctx, f, kvOf("a", i))
		if err != nil {
			t.Fatal(err)
		}
		if i == n-datastore.FakeHistory/2 {
			mid = out.Revision
		}
	}
	wr := <-f.Watch(ctx, datastore.KindHandle, start)
	if !errors.Is(wr.Err, datastore.ErrCompacted) {
		t.Errorf("watch from %d events back = %+v; want ErrCompacted", n, wr.Err)
	}
	wr = <-f.Watch(ctx, datastore.KindHandle, mid)
	if wr.Err != nil || len(wr.Events) != datastore.FakeHistory/2-1 {
		t.Errorf("watch from %d events back: %d events, %v; want %d events", datastore.FakeHistory/2, len(wr.Events), wr.Err, datastore.FakeHistory/2-1)
	}
	wr = <-f.Watch(ctx, datastore.KindHandle, "not-a-revision")
	if !errors.Is(wr.Err, datastore.ErrCompacted) {
		t.Errorf("watch from a malformed revision = %+v; want ErrCompacted", wr.Err)
	}
}

func TestFakeListPages(t *testing.T) {
	ctx := ctxT(t)
	f := datastore.NewFake()
	for i := range 250 {
		kv := kvOf(fmt.Sprintf("h%03d", i), i)
		if i%2 == 0 {
			kv.Labels = map[string]string{"even": "yes"}
		}
		if _, err := f.Create(ctx, kv); err != nil {
			t.Fatal(err)
		}
	}
	var sizes []int
	var last string
	rev, err := f.ListPages(ctx, datastore.KindHandle, datastore.ListOptions{Labels: map[string]string{"even": "yes"}}, func(kvs []datastore.KV, restart bool) error {
		if restart {
			t.Error("Fake list restarted")
		}
		sizes = append(sizes, len(kvs))
		for _, kv := range kvs {
			if kv.Name <= last || kv.Labels["even"] != "yes" {
				t.Errorf("page entry %s (labels %v) after %s; want sorted, labelled entries", kv.Name, kv.Labels, last)
			}
			last = kv.Name
		}
		return nil
	})
	if err != nil || rev == "" {
		t.Fatalf("ListPages = %q, %v", rev, err)
	}
	if fmt.Sprint(sizes) != "[100 25]" {
		t.Errorf("page sizes %v; want [100 25]", sizes)
	}
}
