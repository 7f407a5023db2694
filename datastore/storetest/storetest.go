// Package storetest is a conformance suite for datastore.Store
// implementations: Get, List, Txn and Watch semantics that the rest of
// Twill relies on. Run it from each implementation's tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) datastore.Store { return newStore(t) })
//	}
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"twill.dev/twill/datastore"
)

// watchWait bounds how long a test waits for watch events to arrive.
const watchWait = 20 * time.Second

// Run runs the conformance suite. newStore returns a store for one subtest
// and arranges its cleanup; it may hand out the same store to several
// subtests, since each subtest works under its own key prefix and no
// subtest runs in parallel with another.
func Run(t *testing.T, newStore func(t *testing.T) datastore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s datastore.Store, p string)
	}{
		{"GetMissing", testGetMissing},
		{"CreateIfAbsent", testCreateIfAbsent},
		{"CompareAndSwap", testCompareAndSwap},
		{"ExpectOnMissingKey", testExpectOnMissingKey},
		{"AnyRevision", testAnyRevision},
		{"MultiOpAtomic", testMultiOpAtomic},
		{"MultiOpSameRevision", testMultiOpSameRevision},
		{"DeleteWithExpectation", testDeleteWithExpectation},
		{"RevisionIncreases", testRevisionIncreases},
		{"ListSortedAndScoped", testListSortedAndScoped},
		{"ValuesAreCopies", testValuesAreCopies},
		{"WatchPutsAndDeletes", testWatch},
		{"WatchClosesOnCancel", testWatchClosesOnCancel},
		{"ConcurrentCASIncrements", testConcurrentIncrements},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			tc.fn(t, s, "/storetest/"+tc.name+"/")
		})
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustTxn(t *testing.T, s datastore.Store, ops ...datastore.Op) int64 {
	t.Helper()
	rev, err := s.Txn(ctxFor(t), ops...)
	if err != nil {
		t.Fatalf("Txn(%s): %v", describe(ops), err)
	}
	return rev
}

func mustGet(t *testing.T, s datastore.Store, key string) datastore.KV {
	t.Helper()
	kv, err := s.Get(ctxFor(t), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return kv
}

func wantNotFound(t *testing.T, s datastore.Store, key string) {
	t.Helper()
	kv, err := s.Get(ctxFor(t), key)
	if !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("Get(%s) = %+v, %v; want an error wrapping ErrNotFound", key, kv, err)
	}
}

func wantConflict(t *testing.T, s datastore.Store, ops ...datastore.Op) {
	t.Helper()
	rev, err := s.Txn(ctxFor(t), ops...)
	if !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("Txn(%s) = %d, %v; want an error wrapping ErrConflict", describe(ops), rev, err)
	}
}

func wantValue(t *testing.T, s datastore.Store, key, value string, rev int64) {
	t.Helper()
	kv := mustGet(t, s, key)
	if kv.Key != key || string(kv.Value) != value || kv.Revision != rev {
		t.Fatalf("Get(%s) = {%s %q rev %d}; want {%s %q rev %d}", key, kv.Key, kv.Value, kv.Revision, key, value, rev)
	}
}

func currentRev(t *testing.T, s datastore.Store, prefix string) int64 {
	t.Helper()
	_, rev, err := s.List(ctxFor(t), prefix)
	if err != nil {
		t.Fatalf("List(%s): %v", prefix, err)
	}
	return rev
}

func describe(ops []datastore.Op) string {
	var b strings.Builder
	for i, op := range ops {
		if i > 0 {
			b.WriteString(", ")
		}
		verb := "put"
		if op.Delete {
			verb = "delete"
		}
		fmt.Fprintf(&b, "%s %s expect %d", verb, op.Key, op.Expect)
	}
	return b.String()
}

func testGetMissing(t *testing.T, s datastore.Store, p string) {
	wantNotFound(t, s, p+"missing")
}

func testCreateIfAbsent(t *testing.T, s datastore.Store, p string) {
	k := p + "k"
	rev := mustTxn(t, s, datastore.Put(k, []byte("v1"), datastore.MustNotExist))
	if rev <= 0 {
		t.Fatalf("create returned revision %d; want > 0", rev)
	}
	wantValue(t, s, k, "v1", rev)
	wantConflict(t, s, datastore.Put(k, []byte("v2"), datastore.MustNotExist))
	wantValue(t, s, k, "v1", rev)
}

func testCompareAndSwap(t *testing.T, s datastore.Store, p string) {
	k := p + "k"
	r1 := mustTxn(t, s, datastore.Put(k, []byte("v1"), datastore.MustNotExist))
	r2 := mustTxn(t, s, datastore.Put(k, []byte("v2"), r1))
	if r2 <= r1 {
		t.Fatalf("CAS returned revision %d; want > %d", r2, r1)
	}
	wantValue(t, s, k, "v2", r2)
	// A writer that read r1 lost the race.
	wantConflict(t, s, datastore.Put(k, []byte("stale"), r1))
	wantValue(t, s, k, "v2", r2)
	r3 := mustTxn(t, s, datastore.Put(k, []byte("v3"), r2))
	wantValue(t, s, k, "v3", r3)
}

func testExpectOnMissingKey(t *testing.T, s datastore.Store, p string) {
	k := p + "k"
	// Make sure the store has some revision > 0 to expect.
	r := mustTxn(t, s, datastore.Put(p+"other", []byte("x"), datastore.AnyRevision))
	wantConflict(t, s, datastore.Put(k, []byte("v"), r))
	wantNotFound(t, s, k)
	wantConflict(t, s, datastore.Delete(k, r))
}

func testAnyRevision(t *testing.T, s datastore.Store, p string) {
	k := p + "k"
	r1 := mustTxn(t, s, datastore.Put(k, []byte("v1"), datastore.AnyRevision))
	wantValue(t, s, k, "v1", r1)
	r2 := mustTxn(t, s, datastore.Put(k, []byte("v2"), datastore.AnyRevision))
	wantValue(t, s, k, "v2", r2)
	mustTxn(t, s, datastore.Delete(k, datastore.AnyRevision))
	wantNotFound(t, s, k)
	// Deleting an absent key without expectation is not an error.
	mustTxn(t, s, datastore.Delete(k, datastore.AnyRevision))
	// Empty values are values.
	r3 := mustTxn(t, s, datastore.Put(k, nil, datastore.MustNotExist))
	kv := mustGet(t, s, k)
	if len(kv.Value) != 0 || kv.Revision != r3 {
		t.Fatalf("Get(%s) = %q rev %d; want empty value at rev %d", k, kv.Value, kv.Revision, r3)
	}
}

func testMultiOpAtomic(t *testing.T, s datastore.Store, p string) {
	a, b, c := p+"a", p+"b", p+"c"
	rb := mustTxn(t, s, datastore.Put(b, []byte("b1"), datastore.MustNotExist))
	rc := mustTxn(t, s, datastore.Put(c, []byte("c1"), datastore.MustNotExist))
	before := currentRev(t, s, p)

	// Creating a would succeed alone; b already exists, so nothing applies.
	wantConflict(t, s,
		datastore.Put(a, []byte("a1"), datastore.MustNotExist),
		datastore.Put(b, []byte("b2"), datastore.MustNotExist),
		datastore.Delete(c, rc),
	)
	wantNotFound(t, s, a)
	wantValue(t, s, b, "b1", rb)
	wantValue(t, s, c, "c1", rc)

	// A stale revision on the last op also rejects the whole transaction.
	wantConflict(t, s,
		datastore.Put(a, []byte("a1"), datastore.MustNotExist),
		datastore.Delete(c, rc),
		datastore.Put(b, []byte("b2"), rb-1),
	)
	wantNotFound(t, s, a)
	wantValue(t, s, b, "b1", rb)
	wantValue(t, s, c, "c1", rc)

	if after := currentRev(t, s, p); after != before {
		t.Fatalf("store revision moved from %d to %d across failed transactions; want unchanged", before, after)
	}
}

func testMultiOpSameRevision(t *testing.T, s datastore.Store, p string) {
	a, b, c := p+"a", p+"b", p+"c"
	rc := mustTxn(t, s, datastore.Put(c, []byte("c1"), datastore.MustNotExist))
	rev := mustTxn(t, s,
		datastore.Put(a, []byte("a1"), datastore.MustNotExist),
		datastore.Put(b, []byte("b1"), datastore.AnyRevision),
		datastore.Delete(c, rc),
	)
	if rev <= rc {
		t.Fatalf("txn revision %d; want > %d", rev, rc)
	}
	wantValue(t, s, a, "a1", rev)
	wantValue(t, s, b, "b1", rev)
	wantNotFound(t, s, c)
	kvs, lrev, err := s.List(ctxFor(t), p)
	if err != nil {
		t.Fatalf("List(%s): %v", p, err)
	}
	if lrev < rev {
		t.Fatalf("List revision %d is older than the last write %d", lrev, rev)
	}
	if len(kvs) != 2 || kvs[0].Key != a || kvs[1].Key != b {
		t.Fatalf("List(%s) = %v; want exactly %s and %s", p, keysOf(kvs), a, b)
	}
}

func testDeleteWithExpectation(t *testing.T, s datastore.Store, p string) {
	k := p + "k"
	r1 := mustTxn(t, s, datastore.Put(k, []byte("v1"), datastore.MustNotExist))
	r2 := mustTxn(t, s, datastore.Put(k, []byte("v2"), r1))
	wantConflict(t, s, datastore.Delete(k, r1))
	wantValue(t, s, k, "v2", r2)
	wantConflict(t, s, datastore.Delete(k, datastore.MustNotExist))
	wantValue(t, s, k, "v2", r2)
	r3 := mustTxn(t, s, datastore.Delete(k, r2))
	if r3 <= r2 {
		t.Fatalf("delete returned revision %d; want > %d", r3, r2)
	}
	wantNotFound(t, s, k)
	// The key can be created again after its deletion.
	r4 := mustTxn(t, s, datastore.Put(k, []byte("v3"), datastore.MustNotExist))
	wantValue(t, s, k, "v3", r4)
}

func testRevisionIncreases(t *testing.T, s datastore.Store, p string) {
	prev := currentRev(t, s, p)
	for i := 0; i < 10; i++ {
		k := fmt.Sprintf("%sk%d", p, i%3)
		rev := mustTxn(t, s, datastore.Put(k, []byte(fmt.Sprint(i)), datastore.AnyRevision))
		if rev <= prev {
			t.Fatalf("write %d returned revision %d; want > %d", i, rev, prev)
		}
		if kv := mustGet(t, s, k); kv.Revision != rev {
			t.Fatalf("Get(%s) revision %d; want %d from its write", k, kv.Revision, rev)
		}
		if lr := currentRev(t, s, p); lr < rev {
			t.Fatalf("List revision %d after write at %d; want >= %d", lr, rev, rev)
		}
		prev = rev
	}
}

func testListSortedAndScoped(t *testing.T, s datastore.Store, p string) {
	dir := p + "pool/"
	inside := []string{dir + "2", dir + "10", dir + "1", dir + "a/b", dir + "Z"}
	outside := []string{p + "pool", p + "poolx/1", p + "other/1", p + "poo"}
	revs := map[string]int64{}
	for _, k := range append(slices.Clone(inside), outside...) {
		revs[k] = mustTxn(t, s, datastore.Put(k, []byte("v:"+k), datastore.MustNotExist))
	}
	kvs, rev, err := s.List(ctxFor(t), dir)
	if err != nil {
		t.Fatalf("List(%s): %v", dir, err)
	}
	want := slices.Clone(inside)
	slices.Sort(want)
	if got := keysOf(kvs); !slices.Equal(got, want) {
		t.Fatalf("List(%s) keys = %q; want %q (sorted, under the prefix only)", dir, got, want)
	}
	for _, kv := range kvs {
		if string(kv.Value) != "v:"+kv.Key || kv.Revision != revs[kv.Key] {
			t.Fatalf("List(%s) entry %s = %q rev %d; want %q rev %d", dir, kv.Key, kv.Value, kv.Revision, "v:"+kv.Key, revs[kv.Key])
		}
	}
	maxRev := int64(0)
	for _, r := range revs {
		maxRev = max(maxRev, r)
	}
	if rev < maxRev {
		t.Fatalf("List revision %d; want >= %d, the last write", rev, maxRev)
	}
	empty, erev, err := s.List(ctxFor(t), p+"nothing-here/")
	if err != nil || len(empty) != 0 || erev < maxRev {
		t.Fatalf("List of an empty prefix = %v, rev %d, %v; want no keys, rev >= %d, no error", keysOf(empty), erev, err, maxRev)
	}
}

func testValuesAreCopies(t *testing.T, s datastore.Store, p string) {
	k := p + "k"
	val := []byte("original")
	rev := mustTxn(t, s, datastore.Put(k, val, datastore.MustNotExist))
	copy(val, "XXXXXXXX") // the caller reuses its buffer
	kv := mustGet(t, s, k)
	if string(kv.Value) != "original" {
		t.Fatalf("stored value changed with the caller's buffer: %q", kv.Value)
	}
	copy(kv.Value, "YYYYYYYY")
	wantValue(t, s, k, "original", rev)
	kvs, _, err := s.List(ctxFor(t), p)
	if err != nil || len(kvs) != 1 {
		t.Fatalf("List(%s) = %v, %v; want one key", p, keysOf(kvs), err)
	}
	copy(kvs[0].Value, "ZZZZZZZZ")
	wantValue(t, s, k, "original", rev)
}

// wantEvent is one expected watch event.
type wantEvent struct {
	typ   datastore.EventType
	key   string
	value string
	rev   int64
}

func testWatch(t *testing.T, s datastore.Store, p string) {
	dir := p + "w/"
	a, b, c := dir+"a", dir+"b", dir+"c"
	// Existing state before the watch starts must not be replayed.
	mustTxn(t, s, datastore.Put(c, []byte("c0"), datastore.MustNotExist))
	kvs, from, err := s.List(ctxFor(t), dir)
	if err != nil || len(kvs) != 1 {
		t.Fatalf("List(%s) = %v, %v; want one key", dir, keysOf(kvs), err)
	}
	ctx, cancel := context.WithCancel(ctxFor(t))
	defer cancel()
	ch := s.Watch(ctx, dir, from)

	r1 := mustTxn(t, s,
		datastore.Put(a, []byte("a1"), datastore.MustNotExist),
		datastore.Put(b, []byte("b1"), datastore.MustNotExist),
	)
	mustTxn(t, s, datastore.Put(p+"outside", []byte("x"), datastore.AnyRevision))
	mustTxn(t, s, datastore.Put(p+"w", []byte("x"), datastore.AnyRevision))
	r2 := mustTxn(t, s, datastore.Put(a, []byte("a2"), r1))
	r3 := mustTxn(t, s, datastore.Delete(b, r1))
	r4 := mustTxn(t, s, datastore.Delete(c, datastore.AnyRevision), datastore.Put(a, []byte("a3"), r2))

	want := []wantEvent{
		{datastore.EventPut, a, "a1", r1},
		{datastore.EventPut, b, "b1", r1},
		{datastore.EventPut, a, "a2", r2},
		{datastore.EventDelete, b, "b1", r3},
		{datastore.EventDelete, c, "c0", r4},
		{datastore.EventPut, a, "a3", r4},
	}
	var got []datastore.Event
	deadline := time.NewTimer(watchWait)
	defer deadline.Stop()
	lastRev := from
	for len(got) < len(want) {
		select {
		case wr, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d of %d events", len(got), len(want))
			}
			if wr.Err != nil {
				t.Fatalf("watch error after %d events: %v", len(got), wr.Err)
			}
			if wr.Revision <= lastRev {
				t.Fatalf("watch response at revision %d after one at %d; want increasing revisions", wr.Revision, lastRev)
			}
			lastRev = wr.Revision
			for _, ev := range wr.Events {
				if ev.KV.Revision != wr.Revision {
					t.Fatalf("event %s at revision %d inside a response at revision %d", ev.KV.Key, ev.KV.Revision, wr.Revision)
				}
			}
			got = append(got, wr.Events...)
		case <-deadline.C:
			t.Fatalf("got %d of %d watch events within %s: %v", len(got), len(want), watchWait, got)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d watch events; want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Type != w.typ || g.KV.Key != w.key || string(g.KV.Value) != w.value || g.KV.Revision != w.rev {
			t.Errorf("event %d = {type %d %s %q rev %d}; want {type %d %s %q rev %d}",
				i, g.Type, g.KV.Key, g.KV.Value, g.KV.Revision, w.typ, w.key, w.value, w.rev)
		}
	}
	// Nothing else (in particular nothing outside the prefix) arrives.
	select {
	case wr, ok := <-ch:
		if ok {
			t.Fatalf("unexpected watch response after the expected events: %+v", wr)
		}
		t.Fatalf("watch closed while its context is live")
	default:
	}
}

func testWatchClosesOnCancel(t *testing.T, s datastore.Store, p string) {
	from := currentRev(t, s, p)
	ctx, cancel := context.WithCancel(ctxFor(t))
	ch := s.Watch(ctx, p, from)
	rev := mustTxn(t, s, datastore.Put(p+"k", []byte("v"), datastore.MustNotExist))
	timeout := time.NewTimer(watchWait)
	defer timeout.Stop()
	select {
	case wr, ok := <-ch:
		if !ok || wr.Err != nil || len(wr.Events) != 1 || wr.Events[0].KV.Key != p+"k" || wr.Revision != rev {
			t.Fatalf("first watch response = %+v (open %v); want the put of %sk at %d", wr, ok, p, rev)
		}
	case <-timeout.C:
		t.Fatalf("no watch event within %s", watchWait)
	}
	cancel()
	for {
		select {
		case wr, ok := <-ch:
			if !ok {
				return
			}
			if wr.Err != nil {
				t.Fatalf("watch reported %v after its context was cancelled; want a plain close", wr.Err)
			}
		case <-timeout.C:
			t.Fatalf("watch channel not closed within %s of cancelling its context", watchWait)
		}
	}
}

// ConcurrentCASIncrements runs writers goroutines that each make increments
// compare-and-swap increments of one counter.
const (
	writers    = 8
	increments = 25
	// maxAttempts bounds each writer's transactions, conflicts included.
	maxAttempts = 100 * writers * increments
)

func testConcurrentIncrements(t *testing.T, s datastore.Store, p string) {
	k := p + "counter"
	mustTxn(t, s, datastore.Put(k, []byte("0"), datastore.MustNotExist))
	ctx := ctxFor(t)
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		errs      []error
		conflicts int
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done, attempts := 0, 0
			for done < increments {
				attempts++
				if attempts > maxAttempts || ctx.Err() != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("writer %d: %d of %d increments after %d attempts (ctx %v)", w, done, increments, attempts-1, ctx.Err()))
					mu.Unlock()
					return
				}
				kv, err := s.Get(ctx, k)
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("writer %d: get: %w", w, err))
					mu.Unlock()
					return
				}
				var n int
				if _, err := fmt.Sscan(string(kv.Value), &n); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("writer %d: counter value %q: %w", w, kv.Value, err))
					mu.Unlock()
					return
				}
				runtime.Gosched() // let other writers race between read and write
				_, err = s.Txn(ctx, datastore.Put(k, []byte(fmt.Sprint(n+1)), kv.Revision))
				switch {
				case err == nil:
					done++
				case errors.Is(err, datastore.ErrConflict):
					mu.Lock()
					conflicts++
					mu.Unlock()
				default:
					mu.Lock()
					errs = append(errs, fmt.Errorf("writer %d: txn: %w", w, err))
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	kv := mustGet(t, s, k)
	if want := fmt.Sprint(writers * increments); !bytes.Equal(kv.Value, []byte(want)) {
		t.Fatalf("counter = %s after %d writers x %d increments (%d conflicts retried); want %s", kv.Value, writers, increments, conflicts, want)
	}
	t.Logf("%d increments, %d conflicts retried", writers*increments, conflicts)
}

func keysOf(kvs []datastore.KV) []string {
	out := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, kv.Key)
	}
	return out
}
