// Package storetest is a conformance suite for datastore.Store
// implementations: the Get, List, Create, Update, Delete and Watch
// semantics that the rest of Twill relies on. Run it from each
// implementation's tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Harness{New: newStore, Expire: expire})
//	}
//
// The store may be shared by the subtests and even by other runs: every
// subtest writes objects named "st<run>-<subtest>-..." (lowercase, valid
// Kubernetes object names), labels them with LabelKey set to the same
// token, lists with that label and ignores watch events for other names.
// The values it writes are real api documents (api.IPPool, api.Block,
// api.Handle, api.WorkloadEndpoint, ...) encoded with datastore.Encode, and
// it compares values by decoding them, never byte for byte, so that a
// backend may re-encode them. Revisions are compared with == only.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// LabelKey is the label every object the suite writes carries, set to the
// writing subtest's token.
const LabelKey = "twill.dev/storetest"

// wait bounds every wait for watch responses.
const wait = 20 * time.Second

// Harness says how to get a store and what the suite may do with it.
type Harness struct {
	// New returns the store for one subtest and arranges its cleanup. It
	// may hand out the same store to several subtests.
	New func(t *testing.T) datastore.Store
	// Expire makes history of kind k unavailable and returns a revision
	// that a Watch of k can no longer start from (for etcd: write, compact
	// and return a revision before the compaction). Nil skips only the
	// subtest that needs it: leave it nil only when the backend truly
	// cannot expire history on demand.
	Expire func(t *testing.T, s datastore.Store, k datastore.Kind) string
	// Kinds are the kinds the suite may write its test objects to; the
	// first is used where one kind suffices. Empty means KindIPPool,
	// KindBlock, KindHandle and KindWorkload.
	Kinds []datastore.Kind
}

// DefaultKinds are the kinds the suite writes when Harness.Kinds is empty.
var DefaultKinds = []datastore.Kind{datastore.KindIPPool, datastore.KindBlock, datastore.KindHandle, datastore.KindWorkload}

// Run runs the conformance suite.
func Run(t *testing.T, h Harness) {
	if h.New == nil {
		t.Fatal("storetest: Harness.New is nil")
	}
	if len(h.Kinds) == 0 {
		h.Kinds = DefaultKinds
	}
	for _, k := range h.Kinds {
		if codecs[k] == nil {
			t.Fatalf("storetest: no test documents for kind %q", k)
		}
	}
	var id [2]byte
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatalf("storetest: random run id: %v", err)
	}
	run := "st" + hex.EncodeToString(id[:])
	tests := []struct {
		name, short string
		fn          func(e *env)
	}{
		{"GetMissing", "get", testGetMissing},
		{"RoundTripEveryKind", "rt", testRoundTrip},
		{"CreateExisting", "cre", testCreateExisting},
		{"InvalidValue", "inv", testInvalidValue},
		{"UpdateCompareAndSwap", "cas", testUpdateCAS},
		{"UpdateMissing", "upm", testUpdateMissing},
		{"UpdateUnconditional", "upu", testUpdateUnconditional},
		{"Delete", "del", testDelete},
		{"CreateRace", "race", testCreateRace},
		{"ConcurrentCASIncrements", "inc", testConcurrentIncrements},
		{"ListSortedFiltered", "list", testList},
		{"ValuesAreCopies", "copy", testValuesAreCopies},
		{"WatchPutsAndDeletes", "w", testWatch},
		{"WatchBurstOrder", "wb", testWatchBurst},
		{"WatchKindIsolation", "wk", testWatchKinds},
		{"WatchClosesOnCancel", "wc", testWatchCancel},
		{"WatchExpired", "wx", testWatchExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			t.Cleanup(cancel)
			e := &env{t: t, s: h.New(t), h: h, ctx: ctx, tok: run + "-" + tc.short, kind: h.Kinds[0]}
			t.Cleanup(e.cleanup)
			tc.fn(e)
		})
	}
}

// env is one subtest's view of the store.
type env struct {
	t    *testing.T
	s    datastore.Store
	h    Harness
	ctx  context.Context
	tok  string
	kind datastore.Kind

	mu      sync.Mutex
	created []objRef
}

// objRef names one object the subtest may have written.
type objRef struct {
	kind datastore.Kind
	name string
}

// name returns the subtest's object name with suffix s.
func (e *env) name(s string) string { return e.tok + "-" + s }

// labels returns the subtest's label set plus extra key/value pairs.
func (e *env) labels(extra ...string) map[string]string {
	m := map[string]string{LabelKey: e.tok}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

// mine reports whether an object name belongs to this subtest.
func (e *env) mine(name string) bool { return strings.HasPrefix(name, e.tok+"-") }

// track remembers an object for cleanup.
func (e *env) track(kind datastore.Kind, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.created = append(e.created, objRef{kind, name})
}

// cleanup deletes what the subtest may have left behind.
func (e *env) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	seen := map[objRef]bool{}
	for _, r := range e.created {
		if seen[r] {
			continue
		}
		seen[r] = true
		if err := e.s.Delete(ctx, r.kind, r.name, ""); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			e.t.Logf("storetest cleanup: delete %s %s: %v", r.kind, r.name, err)
		}
	}
}

// kv builds the object kind/name holding the test document numbered n.
func (e *env) kv(kind datastore.Kind, name string, n int, labels map[string]string) datastore.KV {
	e.t.Helper()
	b, err := datastore.Encode(codecs[kind].build(name, n))
	if err != nil {
		e.t.Fatal(err)
	}
	return datastore.KV{Kind: kind, Name: name, Labels: labels, Value: b}
}

// create creates kind/name with document n and the subtest's labels.
func (e *env) create(kind datastore.Kind, name string, n int) datastore.KV {
	e.t.Helper()
	return e.createKV(e.kv(kind, name, n, e.labels()))
}

// createKV creates kv and checks what Create returned.
func (e *env) createKV(kv datastore.KV) datastore.KV {
	e.t.Helper()
	e.track(kv.Kind, kv.Name)
	out, err := e.s.Create(e.ctx, kv)
	if err != nil {
		e.t.Fatalf("Create(%s %s): %v", kv.Kind, kv.Name, err)
	}
	e.checkKV("Create", out, kv.Kind, kv.Name, e.num(kv), kv.Labels)
	return out
}

// update writes document n to kind/name expecting revision rev.
func (e *env) update(kind datastore.Kind, name string, n int, rev string) datastore.KV {
	e.t.Helper()
	kv := e.kv(kind, name, n, e.labels())
	kv.Revision = rev
	out, err := e.s.Update(e.ctx, kv)
	if err != nil {
		e.t.Fatalf("Update(%s %s, revision %q): %v", kind, name, rev, err)
	}
	e.checkKV("Update", out, kind, name, n, kv.Labels)
	return out
}

// get reads kind/name and checks that it holds document n at revision rev
// (any revision when rev is empty).
func (e *env) get(kind datastore.Kind, name string, n int, rev string) datastore.KV {
	e.t.Helper()
	kv, err := e.s.Get(e.ctx, kind, name)
	if err != nil {
		e.t.Fatalf("Get(%s %s): %v", kind, name, err)
	}
	e.checkKV("Get", kv, kind, name, n, nil)
	if rev != "" && kv.Revision != rev {
		e.t.Fatalf("Get(%s %s) revision %q; want %q", kind, name, kv.Revision, rev)
	}
	return kv
}

// wantMissing checks that kind/name does not exist.
func (e *env) wantMissing(kind datastore.Kind, name string) {
	e.t.Helper()
	kv, err := e.s.Get(e.ctx, kind, name)
	if !errors.Is(err, datastore.ErrNotFound) {
		e.t.Fatalf("Get(%s %s) = %+v, %v; want an error wrapping ErrNotFound", kind, name, kv, err)
	}
}

// checkKV checks a returned object: its address, a non-empty revision,
// the document numbered n, and labels when want is not nil.
func (e *env) checkKV(op string, kv datastore.KV, kind datastore.Kind, name string, n int, labels map[string]string) {
	e.t.Helper()
	if kv.Kind != kind || kv.Name != name || kv.Revision == "" {
		e.t.Fatalf("%s returned kind %q name %q revision %q; want kind %q name %q and a revision", op, kv.Kind, kv.Name, kv.Revision, kind, name)
	}
	if err := codecs[kind].check(kv.Value, name, n); err != nil {
		e.t.Fatalf("%s(%s %s): %v", op, kind, name, err)
	}
	if labels != nil && !equalLabels(kv.Labels, labels) {
		e.t.Fatalf("%s(%s %s) labels %v; want %v", op, kind, name, kv.Labels, labels)
	}
}

// num returns the document number a value holds, failing the test when it
// does not decode.
func (e *env) num(kv datastore.KV) int {
	e.t.Helper()
	n, err := codecs[kv.Kind].num(kv.Value)
	if err != nil {
		e.t.Fatalf("%s %s: %v", kv.Kind, kv.Name, err)
	}
	return n
}

// list lists kind with the subtest's labels plus extra pairs.
func (e *env) list(kind datastore.Kind, extra ...string) ([]datastore.KV, string) {
	e.t.Helper()
	kvs, rev, err := e.s.List(e.ctx, kind, datastore.ListOptions{Labels: e.labels(extra...)})
	if err != nil {
		e.t.Fatalf("List(%s): %v", kind, err)
	}
	if rev == "" {
		e.t.Fatalf("List(%s) returned no revision", kind)
	}
	return kvs, rev
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func names(kvs []datastore.KV) []string {
	out := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, kv.Name)
	}
	return out
}

func testGetMissing(e *env) {
	for _, k := range e.h.Kinds {
		e.wantMissing(k, e.name("missing"))
	}
}

// testRoundTrip creates, reads and deletes one labelled object of every
// kind: the documents pass the backend's schemas and come back equal.
func testRoundTrip(e *env) {
	for i, k := range e.h.Kinds {
		name := e.name(fmt.Sprintf("k%d", i))
		labels := e.labels(datastore.LabelNode, "node-1")
		created := e.createKV(e.kv(k, name, 7, labels))
		got := e.get(k, name, 7, created.Revision)
		if !equalLabels(got.Labels, labels) {
			e.t.Fatalf("Get(%s %s) labels %v; want %v", k, name, got.Labels, labels)
		}
		if err := e.s.Delete(e.ctx, k, name, created.Revision); err != nil {
			e.t.Fatalf("Delete(%s %s, %q): %v", k, name, created.Revision, err)
		}
		e.wantMissing(k, name)
	}
}

func testCreateExisting(e *env) {
	name := e.name("a")
	first := e.create(e.kind, name, 1)
	_, err := e.s.Create(e.ctx, e.kv(e.kind, name, 2, e.labels()))
	if !errors.Is(err, datastore.ErrExists) || !errors.Is(err, datastore.ErrConflict) {
		e.t.Fatalf("second Create(%s %s) = %v; want an error wrapping ErrExists and ErrConflict", e.kind, name, err)
	}
	e.get(e.kind, name, 1, first.Revision)
}

func testInvalidValue(e *env) {
	name := e.name("a")
	e.track(e.kind, name)
	_, err := e.s.Create(e.ctx, datastore.KV{Kind: e.kind, Name: name, Labels: e.labels(), Value: []byte("not json {")})
	if !errors.Is(err, datastore.ErrInvalid) {
		e.t.Fatalf("Create(%s %s) with a value that is not JSON = %v; want an error wrapping ErrInvalid", e.kind, name, err)
	}
	e.wantMissing(e.kind, name)
}

func testUpdateCAS(e *env) {
	name := e.name("a")
	r1 := e.create(e.kind, name, 1).Revision
	r2 := e.update(e.kind, name, 2, r1).Revision
	if r2 == r1 {
		e.t.Fatalf("Update kept revision %q; want a new one", r1)
	}
	e.get(e.kind, name, 2, r2)

	// A writer that read r1 lost the race: nothing is written.
	stale := e.kv(e.kind, name, 3, e.labels())
	stale.Revision = r1
	if _, err := e.s.Update(e.ctx, stale); !errors.Is(err, datastore.ErrConflict) {
		e.t.Fatalf("Update(%s %s) with stale revision %q = %v; want ErrConflict", e.kind, name, r1, err)
	}
	e.get(e.kind, name, 2, r2)

	r3 := e.update(e.kind, name, 4, r2).Revision
	if r3 == r2 || r3 == r1 {
		e.t.Fatalf("second Update got revision %q; want one different from %q and %q", r3, r1, r2)
	}
	e.get(e.kind, name, 4, r3)
}

func testUpdateMissing(e *env) {
	other := e.create(e.kind, e.name("other"), 1)
	name := e.name("missing")
	for _, rev := range []string{"", other.Revision} {
		kv := e.kv(e.kind, name, 1, e.labels())
		kv.Revision = rev
		if _, err := e.s.Update(e.ctx, kv); !errors.Is(err, datastore.ErrNotFound) {
			e.t.Fatalf("Update(%s %s, revision %q) of a missing object = %v; want ErrNotFound", e.kind, name, rev, err)
		}
		e.wantMissing(e.kind, name)
	}
}

func testUpdateUnconditional(e *env) {
	name := e.name("a")
	r1 := e.create(e.kind, name, 1).Revision
	// An unconditional update replaces the value and the labels.
	kv := e.kv(e.kind, name, 2, e.labels("twill.dev/extra", "x"))
	out, err := e.s.Update(e.ctx, kv)
	if err != nil {
		e.t.Fatalf("unconditional Update(%s %s): %v", e.kind, name, err)
	}
	e.checkKV("Update", out, e.kind, name, 2, kv.Labels)
	if out.Revision == r1 {
		e.t.Fatalf("unconditional Update kept revision %q; want a new one", r1)
	}
	got := e.get(e.kind, name, 2, out.Revision)
	if !equalLabels(got.Labels, kv.Labels) {
		e.t.Fatalf("Get(%s %s) labels %v after Update; want %v", e.kind, name, got.Labels, kv.Labels)
	}
	// The stored revision r1 is no longer an expectation that holds.
	old := e.kv(e.kind, name, 3, e.labels())
	old.Revision = r1
	if _, err := e.s.Update(e.ctx, old); !errors.Is(err, datastore.ErrConflict) {
		e.t.Fatalf("Update(%s %s) with revision %q from before an unconditional update = %v; want ErrConflict", e.kind, name, r1, err)
	}
	e.get(e.kind, name, 2, out.Revision)
}

func testDelete(e *env) {
	name := e.name("a")
	r1 := e.create(e.kind, name, 1).Revision
	r2 := e.update(e.kind, name, 2, r1).Revision

	if err := e.s.Delete(e.ctx, e.kind, name, r1); !errors.Is(err, datastore.ErrConflict) {
		e.t.Fatalf("Delete(%s %s) with stale revision %q = %v; want ErrConflict", e.kind, name, r1, err)
	}
	e.get(e.kind, name, 2, r2)

	if err := e.s.Delete(e.ctx, e.kind, name, r2); err != nil {
		e.t.Fatalf("Delete(%s %s) with current revision %q: %v", e.kind, name, r2, err)
	}
	e.wantMissing(e.kind, name)
	for _, rev := range []string{"", r2} {
		if err := e.s.Delete(e.ctx, e.kind, name, rev); !errors.Is(err, datastore.ErrNotFound) {
			e.t.Fatalf("Delete(%s %s, %q) of a missing object = %v; want ErrNotFound", e.kind, name, rev, err)
		}
	}

	// The name can be created again, and deleted without expectation.
	r3 := e.create(e.kind, name, 3).Revision
	e.get(e.kind, name, 3, r3)
	if err := e.s.Delete(e.ctx, e.kind, name, ""); err != nil {
		e.t.Fatalf("unconditional Delete(%s %s): %v", e.kind, name, err)
	}
	e.wantMissing(e.kind, name)
}

// racers is how many goroutines race to create one object.
const racers = 8

func testCreateRace(e *env) {
	name := e.name("a")
	e.track(e.kind, name)
	errs := make([]error, racers)
	kvs := make([]datastore.KV, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		kv := e.kv(e.kind, name, i, e.labels())
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			kvs[i], errs[i] = e.s.Create(e.ctx, kv)
		}()
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				e.t.Fatalf("creates %d and %d of %s %s both succeeded; want exactly one", winner, i, e.kind, name)
			}
			winner = i
		case errors.Is(err, datastore.ErrExists) && errors.Is(err, datastore.ErrConflict):
		default:
			e.t.Fatalf("racing Create %d of %s %s = %v; want success or ErrExists", i, e.kind, name, err)
		}
	}
	if winner < 0 {
		e.t.Fatalf("none of %d racing creates of %s %s succeeded", racers, e.kind, name)
	}
	e.get(e.kind, name, winner, kvs[winner].Revision)
}

// Concurrent increments: writers goroutines each make increments
// compare-and-swap increments of one counter.
const (
	writers    = 8
	increments = 20
	// maxAttempts bounds each writer's attempts, conflicts included.
	maxAttempts = 50 * writers * increments
)

// testConcurrentIncrements counts with Get/Update retry loops: the final
// count is exact only if every compare-and-swap that lost a race failed.
// The counter is a handle's block count when the suite may write handles.
func testConcurrentIncrements(e *env) {
	kind := e.kind
	if slices.Contains(e.h.Kinds, datastore.KindHandle) {
		kind = datastore.KindHandle
	}
	name := e.name("counter")
	e.create(kind, name, 0)
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		errs      []error
		conflicts int
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
	}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := 0
			for attempt := 1; done < increments; attempt++ {
				if attempt > maxAttempts || e.ctx.Err() != nil {
					fail(fmt.Errorf("writer %d: %d of %d increments after %d attempts (%v)", w, done, increments, attempt-1, e.ctx.Err()))
					return
				}
				kv, err := e.s.Get(e.ctx, kind, name)
				if err != nil {
					fail(fmt.Errorf("writer %d: get: %w", w, err))
					return
				}
				n, err := codecs[kind].num(kv.Value)
				if err != nil {
					fail(fmt.Errorf("writer %d: %w", w, err))
					return
				}
				runtime.Gosched() // let other writers race between read and write
				b, err := datastore.Encode(codecs[kind].build(name, n+1))
				if err != nil {
					fail(err)
					return
				}
				_, err = e.s.Update(e.ctx, datastore.KV{Kind: kind, Name: name, Labels: kv.Labels, Value: b, Revision: kv.Revision})
				switch {
				case err == nil:
					done++
				case errors.Is(err, datastore.ErrConflict):
					mu.Lock()
					conflicts++
					mu.Unlock()
				default:
					fail(fmt.Errorf("writer %d: update: %w", w, err))
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.t.Fatal(err)
	}
	e.get(kind, name, writers*increments, "")
	e.t.Logf("%s %s: %d increments, %d conflicts retried", kind, name, writers*increments, conflicts)
}

func testList(e *env) {
	kvs, rev := e.list(e.kind)
	if len(kvs) != 0 {
		e.t.Fatalf("List(%s) of a fresh label = %v; want nothing", e.kind, names(kvs))
	}
	// Created out of order; "b" differs from the others in a second label.
	suffixes := []string{"c", "a10", "b", "a2", "a1"}
	revs := map[string]string{}
	for i, s := range suffixes {
		name := e.name(s)
		colour := "red"
		if s == "b" {
			colour = "blue"
		}
		kv := e.createKV(e.kv(e.kind, name, i, e.labels("twill.dev/colour", colour)))
		revs[name] = kv.Revision
	}
	// Objects of another label are not listed.
	other := e.kv(e.kind, e.name("zz-unlabelled"), 99, map[string]string{LabelKey: e.tok + "-x"})
	e.createKV(other)

	want := make([]string, 0, len(suffixes))
	for _, s := range suffixes {
		want = append(want, e.name(s))
	}
	slices.Sort(want)
	kvs, rev2 := e.list(e.kind)
	if got := names(kvs); !slices.Equal(got, want) {
		e.t.Fatalf("List(%s, label %s) = %q; want %q (sorted by name, labelled only)", e.kind, e.tok, got, want)
	}
	if rev2 == rev {
		e.t.Fatalf("List revision %q did not change across %d creates", rev, len(suffixes))
	}
	for _, kv := range kvs {
		i := slices.Index(suffixes, strings.TrimPrefix(kv.Name, e.tok+"-"))
		e.checkKV("List", kv, e.kind, kv.Name, i, nil)
		if kv.Revision != revs[kv.Name] {
			e.t.Fatalf("List entry %s revision %q; want %q from its Create", kv.Name, kv.Revision, revs[kv.Name])
		}
		if kv.Labels[LabelKey] != e.tok {
			e.t.Fatalf("List entry %s labels %v; want %s=%s", kv.Name, kv.Labels, LabelKey, e.tok)
		}
	}
	red, _ := e.list(e.kind, "twill.dev/colour", "red")
	wantRed := slices.DeleteFunc(slices.Clone(want), func(n string) bool { return n == e.name("b") })
	if got := names(red); !slices.Equal(got, wantRed) {
		e.t.Fatalf("List(%s, colour=red) = %q; want %q", e.kind, got, wantRed)
	}
	none, _ := e.list(e.kind, "twill.dev/colour", "green")
	if len(none) != 0 {
		e.t.Fatalf("List(%s, colour=green) = %q; want nothing", e.kind, names(none))
	}
}

func testValuesAreCopies(e *env) {
	name := e.name("a")
	kv := e.kv(e.kind, name, 1, e.labels("twill.dev/colour", "red"))
	out := e.createKV(kv)
	// The caller reuses its buffer and its label map.
	clear(kv.Value)
	kv.Labels["twill.dev/colour"] = "blue"
	got := e.get(e.kind, name, 1, out.Revision)
	if got.Labels["twill.dev/colour"] != "red" {
		e.t.Fatalf("stored labels changed with the caller's map: %v", got.Labels)
	}
	// Scribbling over what the store returned changes nothing either.
	for _, r := range []datastore.KV{out, got} {
		clear(r.Value)
		r.Labels["twill.dev/colour"] = "green"
	}
	kvs, _ := e.list(e.kind)
	if len(kvs) != 1 || kvs[0].Labels == nil {
		e.t.Fatalf("List = %q; want %s with its labels", names(kvs), name)
	}
	clear(kvs[0].Value)
	kvs[0].Labels["twill.dev/colour"] = "green"
	got = e.get(e.kind, name, 1, out.Revision)
	if got.Labels["twill.dev/colour"] != "red" {
		e.t.Fatalf("stored labels changed with a returned map: %v", got.Labels)
	}
}

// seen is one watch event reduced to what the suite checks.
type seen struct {
	typ datastore.EventType
	// n is the document number, -1 for a delete without value.
	n   int
	rev string
}

func (s seen) String() string {
	t := "put"
	if s.typ == datastore.EventDelete {
		t = "delete"
	}
	return fmt.Sprintf("%s %d", t, s.n)
}

// watcher collects a watch's events for the subtest's objects.
type watcher struct {
	e    *env
	kind datastore.Kind
	ch   <-chan datastore.WatchResponse
	// events holds each object's events in arrival order.
	events map[string][]seen
	// last is the Revision of the last response.
	last string
}

func (e *env) watch(ctx context.Context, kind datastore.Kind, from string) *watcher {
	return &watcher{e: e, kind: kind, ch: e.s.Watch(ctx, kind, from), events: map[string][]seen{}}
}

// until receives responses until done reports true, failing the test on
// an error, a closed channel or after wait.
func (w *watcher) until(what string, done func() bool) {
	w.e.t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for !done() {
		select {
		case wr, ok := <-w.ch:
			if !ok {
				w.e.t.Fatalf("watch of %s closed while waiting for %s; got %v", w.kind, what, w.events)
			}
			w.take(wr)
		case <-timer.C:
			w.e.t.Fatalf("watch of %s: no %s within %s; got %v", w.kind, what, wait, w.events)
		}
	}
}

// take records one response's events for the subtest's objects.
func (w *watcher) take(wr datastore.WatchResponse) {
	t := w.e.t
	t.Helper()
	if wr.Err != nil {
		t.Fatalf("watch of %s failed: %v", w.kind, wr.Err)
	}
	if len(wr.Events) > 0 && wr.Revision == "" {
		t.Fatalf("watch of %s: response with %d events has no revision", w.kind, len(wr.Events))
	}
	if wr.Revision != "" {
		w.last = wr.Revision
	}
	for _, ev := range wr.Events {
		if ev.KV.Kind != w.kind {
			t.Fatalf("watch of %s delivered an event of kind %q (%s)", w.kind, ev.KV.Kind, ev.KV.Name)
		}
		if !w.e.mine(ev.KV.Name) {
			if strings.Contains(ev.KV.Name, w.e.tok) {
				t.Fatalf("watch of %s delivered an event for %q, a name the subtest never wrote", w.kind, ev.KV.Name)
			}
			continue
		}
		s := seen{typ: ev.Type, n: -1, rev: ev.KV.Revision}
		switch {
		case ev.Type == datastore.EventPut:
			s.n = w.e.num(ev.KV)
			if ev.KV.Revision == "" {
				t.Fatalf("watch of %s: put of %s without revision", w.kind, ev.KV.Name)
			}
		case ev.Type == datastore.EventDelete && len(ev.KV.Value) > 0:
			s.n = w.e.num(ev.KV)
		case ev.Type != datastore.EventDelete:
			t.Fatalf("watch of %s: event type %d for %s", w.kind, ev.Type, ev.KV.Name)
		}
		w.events[ev.KV.Name] = append(w.events[ev.KV.Name], s)
	}
}

// count returns how many events arrived for name.
func (w *watcher) count(name string) int { return len(w.events[name]) }

// want checks the events of name: puts of the documents puts (with the
// revisions revs, when given) and, when deleted, a final delete whose value
// (if the store tells it) is the last document.
func (w *watcher) want(name string, puts []int, revs []string, deleted bool) {
	t := w.e.t
	t.Helper()
	got := w.events[name]
	n := len(puts)
	if deleted {
		n++
	}
	if len(got) != n {
		t.Fatalf("watch of %s: events of %s = %v; want %d puts %v and deleted=%v", w.kind, name, got, len(puts), puts, deleted)
	}
	for i, p := range puts {
		if got[i].typ != datastore.EventPut || got[i].n != p {
			t.Fatalf("watch of %s: event %d of %s = %v; want put %d (events %v)", w.kind, i, name, got[i], p, got)
		}
		if revs != nil && got[i].rev != revs[i] {
			t.Fatalf("watch of %s: event %d of %s revision %q; want %q from the write", w.kind, i, name, got[i].rev, revs[i])
		}
	}
	if deleted {
		d := got[len(got)-1]
		if d.typ != datastore.EventDelete {
			t.Fatalf("watch of %s: last event of %s = %v; want a delete", w.kind, name, d)
		}
		if d.n >= 0 && len(puts) > 0 && d.n != puts[len(puts)-1] {
			t.Fatalf("watch of %s: delete of %s carries document %d; want the last value %d or none", w.kind, name, d.n, puts[len(puts)-1])
		}
	}
}

// quiet checks that no response for the subtest's objects arrives within
// a short while.
func (w *watcher) quiet(d time.Duration) {
	t := w.e.t
	t.Helper()
	before := map[string]int{}
	for k, v := range w.events {
		before[k] = len(v)
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case wr, ok := <-w.ch:
			if !ok {
				t.Fatalf("watch of %s closed while its context is live", w.kind)
			}
			w.take(wr)
			for k, v := range w.events {
				if len(v) != before[k] {
					t.Fatalf("watch of %s: unexpected events for %s: %v", w.kind, k, v[before[k]:])
				}
			}
		case <-timer.C:
			return
		}
	}
}

func testWatch(e *env) {
	a, b, c := e.name("a"), e.name("b"), e.name("c")
	// State from before the list is not replayed.
	e.create(e.kind, c, 0)
	_, from := e.list(e.kind)
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	w := e.watch(ctx, e.kind, from)

	a1 := e.create(e.kind, a, 1).Revision
	b1 := e.create(e.kind, b, 1).Revision
	a2 := e.update(e.kind, a, 2, a1).Revision
	if err := e.s.Delete(e.ctx, e.kind, b, b1); err != nil {
		e.t.Fatal(err)
	}
	if err := e.s.Delete(e.ctx, e.kind, c, ""); err != nil {
		e.t.Fatal(err)
	}
	a3 := e.update(e.kind, a, 3, "").Revision

	w.until("the writes to a, b and c", func() bool { return w.count(a) >= 3 && w.count(b) >= 2 && w.count(c) >= 1 })
	w.want(a, []int{1, 2, 3}, []string{a1, a2, a3}, false)
	w.want(b, []int{1}, []string{b1}, true)
	w.want(c, nil, nil, true)
	w.quiet(200 * time.Millisecond)

	// A new watch from the last response's revision sees only what follows.
	if w.last == "" {
		e.t.Fatal("watch responses carried no revision")
	}
	cancel()
	w2 := e.watch(e.ctx, e.kind, w.last)
	d := e.name("d")
	d1 := e.create(e.kind, d, 4).Revision
	w2.until("the create of d", func() bool { return w2.count(d) >= 1 })
	w2.want(d, []int{4}, []string{d1}, false)
	for _, n := range []string{a, b, c} {
		if w2.count(n) != 0 {
			e.t.Fatalf("watch resumed from %q replayed %s: %v", w.last, n, w2.events[n])
		}
	}
}

// burst is how many updates testWatchBurst makes to each of its objects.
const (
	burstObjects = 4
	burst        = 15
)

func testWatchBurst(e *env) {
	objs := make([]string, burstObjects)
	revs := make([]string, burstObjects)
	for i := range objs {
		objs[i] = e.name(fmt.Sprintf("o%d", i))
		revs[i] = e.create(e.kind, objs[i], 0).Revision
	}
	_, from := e.list(e.kind)
	w := e.watch(e.ctx, e.kind, from)
	// Interleaved updates, alternately with and without expectation, each
	// from a goroutine per object so that writes overlap.
	var wg sync.WaitGroup
	errs := make([]error, burstObjects)
	for i := range objs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rev := revs[i]
			for n := 1; n <= burst; n++ {
				b, err := datastore.Encode(codecs[e.kind].build(objs[i], n))
				if err != nil {
					errs[i] = err
					return
				}
				kv := datastore.KV{Kind: e.kind, Name: objs[i], Labels: e.labels(), Value: b}
				if n%2 == 0 {
					kv.Revision = rev
				}
				out, err := e.s.Update(e.ctx, kv)
				if err != nil {
					errs[i] = fmt.Errorf("update %d of %s: %w", n, objs[i], err)
					return
				}
				rev = out.Revision
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.t.Fatal(err)
	}
	w.until("every update", func() bool {
		for _, o := range objs {
			if w.count(o) < burst {
				return false
			}
		}
		return true
	})
	want := make([]int, burst)
	for i := range want {
		want[i] = i + 1
	}
	for _, o := range objs {
		w.want(o, want, nil, false)
	}
}

func testWatchKinds(e *env) {
	if len(e.h.Kinds) < 2 {
		e.t.Skip("the harness allows one kind only")
	}
	ka, kb := e.h.Kinds[0], e.h.Kinds[1]
	_, from := e.list(ka)
	w := e.watch(e.ctx, ka, from)
	other := e.name("other")
	e.create(kb, other, 1)
	mine := e.name("mine")
	r := e.create(ka, mine, 2).Revision
	w.until("the create of "+mine, func() bool { return w.count(mine) >= 1 })
	w.want(mine, []int{2}, []string{r}, false)
	if w.count(other) != 0 {
		e.t.Fatalf("watch of %s delivered %s of kind %s: %v", ka, other, kb, w.events[other])
	}
}

func testWatchCancel(e *env) {
	_, from := e.list(e.kind)
	ctx, cancel := context.WithCancel(e.ctx)
	w := e.watch(ctx, e.kind, from)
	name := e.name("a")
	r := e.create(e.kind, name, 1).Revision
	w.until("the create", func() bool { return w.count(name) >= 1 })
	w.want(name, []int{1}, []string{r}, false)
	cancel()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case wr, ok := <-w.ch:
			if !ok {
				return
			}
			if wr.Err != nil {
				e.t.Fatalf("watch reported %v after its context was cancelled; want a plain close", wr.Err)
			}
		case <-timer.C:
			e.t.Fatalf("watch channel not closed within %s of cancelling its context", wait)
		}
	}
}

// maxResponses bounds how many responses the suite reads from a watch that
// should end with an error.
const maxResponses = 1000

func testWatchExpired(e *env) {
	if e.h.Expire == nil {
		e.t.Skip("the harness cannot expire watch history")
	}
	e.create(e.kind, e.name("before"), 1)
	old := e.h.Expire(e.t, e.s, e.kind)
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	ch := e.s.Watch(ctx, e.kind, old)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var failed error
	for i := 0; failed == nil; i++ {
		if i == maxResponses {
			e.t.Fatalf("watch from expired revision %q: %d responses without an error", old, i)
		}
		select {
		case wr, ok := <-ch:
			if !ok {
				e.t.Fatalf("watch from expired revision %q closed without an error", old)
			}
			failed = wr.Err
		case <-timer.C:
			e.t.Fatalf("watch from expired revision %q: no error within %s", old, wait)
		}
	}
	if !errors.Is(failed, datastore.ErrCompacted) {
		e.t.Fatalf("watch from expired revision %q failed with %v; want ErrCompacted", old, failed)
	}
	select {
	case wr, ok := <-ch:
		if ok {
			e.t.Fatalf("watch sent %+v after its error; want it closed", wr)
		}
	case <-timer.C:
		e.t.Fatalf("watch not closed within %s after its error", wait)
	}

	// The recovery every watcher does: list again, watch from there.
	kvs, from := e.list(e.kind)
	if got := names(kvs); !slices.Equal(got, []string{e.name("before")}) {
		e.t.Fatalf("List after expiry = %q; want %s", got, e.name("before"))
	}
	w := e.watch(ctx, e.kind, from)
	name := e.name("after")
	r := e.create(e.kind, name, 2).Revision
	w.until("the create after relisting", func() bool { return w.count(name) >= 1 })
	w.want(name, []int{2}, []string{r}, false)
	if n := w.count(e.name("before")); n != 0 {
		e.t.Fatalf("watch from the relisted revision replayed %s: %v", e.name("before"), w.events[e.name("before")])
	}
}

// codec builds and reads the test documents of one kind: document n is a
// valid resource of the kind whose content encodes n.
type codec struct {
	build func(name string, n int) any
	// num decodes a value and returns its document number.
	num func(b []byte) (int, error)
	// check decodes a value and compares it with document n of name.
	check func(b []byte, name string, n int) error
}

// codecs holds the codec of every kind the suite can write.
var codecs = map[datastore.Kind]*codec{
	datastore.KindIPPool: newCodec(
		func(name string, n int) api.IPPool {
			return api.IPPool{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
				Metadata: api.ObjectMeta{Name: name},
				Spec: api.IPPoolSpec{
					CIDR:        fmt.Sprintf("10.%d.%d.0/24", 100+n/256, n%256),
					BlockSize:   26,
					VXLANMode:   api.EncapCrossSubnet,
					NATOutgoing: true,
					AllowedUses: []api.IPPoolUse{api.UseWorkload},
				},
			}
		},
		func(p api.IPPool) (any, int, error) {
			var a, b, c, d int
			if _, err := fmt.Sscanf(p.Spec.CIDR, "%d.%d.%d.%d/24", &a, &b, &c, &d); err != nil || b < 100 {
				return nil, 0, fmt.Errorf("pool CIDR %q is not a test document's", p.Spec.CIDR)
			}
			return p.Spec, (b-100)*256 + c, nil
		}),
	datastore.KindNode: newCodec(
		func(name string, n int) api.Node {
			return api.Node{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
				Metadata: api.ObjectMeta{Name: name},
				Spec:     api.NodeSpec{Address: "192.168.3.10/24", Interface: "eth0", MTU: 1000 + n},
			}
		},
		func(v api.Node) (any, int, error) { return v.Spec, v.Spec.MTU - 1000, nil }),
	datastore.KindIPAMConfig: newCodec(
		func(name string, n int) api.IPAMConfig {
			return api.IPAMConfig{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: "IPAMConfig"}, MaxBlocksPerNode: n + 1}
		},
		func(v api.IPAMConfig) (any, int, error) { return v.MaxBlocksPerNode, v.MaxBlocksPerNode - 1, nil }),
	datastore.KindBlock: newCodec(
		func(name string, n int) api.Block {
			return api.Block{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock},
				CIDR:     "10.99.0.0/26",
				Affinity: "node-" + strconv.Itoa(n),
				Allocations: []api.Allocation{{
					Ordinal: 1, Handle: "h." + name, Use: api.UseWorkload,
					Attrs: map[string]string{api.AttrNode: "node-" + strconv.Itoa(n), api.AttrPod: name},
				}},
			}
		},
		func(v api.Block) (any, int, error) {
			n, err := strconv.Atoi(strings.TrimPrefix(v.Affinity, "node-"))
			if err != nil {
				return nil, 0, fmt.Errorf("block affinity %q is not a test document's", v.Affinity)
			}
			return []any{v.CIDR, v.Affinity, v.Pinned, v.Allocations}, n, nil
		}),
	datastore.KindHandle: newCodec(
		func(name string, n int) api.Handle {
			return api.Handle{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindHandle},
				ID:       name,
				Blocks:   map[string]int{"10.99.0.0/26": n},
			}
		},
		func(v api.Handle) (any, int, error) {
			n, ok := v.Blocks["10.99.0.0/26"]
			if !ok {
				return nil, 0, fmt.Errorf("handle blocks %v are not a test document's", v.Blocks)
			}
			return []any{v.ID, v.Blocks}, n, nil
		}),
	datastore.KindWorkload: newCodec(
		func(name string, n int) api.WorkloadEndpoint {
			return api.WorkloadEndpoint{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
				Metadata: api.ObjectMeta{Name: name},
				Spec: api.WorkloadEndpointSpec{
					Node: "node-1", Namespace: "default", Pod: name,
					ContainerID: fmt.Sprintf("ctr-%d", n), IfName: "eth0", Handle: "h." + name,
					HostIface: "cali0123456789a", Addresses: []string{"10.99.0.1/32"}, MAC: "02:00:00:00:00:01",
				},
			}
		},
		func(v api.WorkloadEndpoint) (any, int, error) {
			n, err := strconv.Atoi(strings.TrimPrefix(v.Spec.ContainerID, "ctr-"))
			if err != nil {
				return nil, 0, fmt.Errorf("workload container ID %q is not a test document's", v.Spec.ContainerID)
			}
			return v.Spec, n, nil
		}),
}

// newCodec makes a codec from a constructor and a function that returns
// the part of a decoded document the suite compares, and its number.
func newCodec[T any](build func(name string, n int) T, data func(T) (any, int, error)) *codec {
	decode := func(b []byte) (any, int, error) {
		o, err := datastore.Decode[T](datastore.KV{Value: b})
		if err != nil {
			return nil, 0, err
		}
		return data(o.Value)
	}
	return &codec{
		build: func(name string, n int) any { return build(name, n) },
		num: func(b []byte) (int, error) {
			_, n, err := decode(b)
			return n, err
		},
		check: func(b []byte, name string, n int) error {
			got, gn, err := decode(b)
			if err != nil {
				return err
			}
			want, _, err := data(build(name, n))
			if err != nil {
				return err
			}
			if gn != n || !reflect.DeepEqual(got, want) {
				return fmt.Errorf("value holds %+v (document %d); want %+v (document %d)", got, gn, want, n)
			}
			return nil
		},
	}
}
