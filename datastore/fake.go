package datastore

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"sync"
)

var (
	_ Store = (*Fake)(nil)
	_ Pager = (*Fake)(nil)
)

// FakeHistory is how many events per kind a Fake keeps for watches that
// start from an older revision. A watch that starts (or falls) further
// behind gets ErrCompacted, as from a compacted etcd.
const FakeHistory = 10000

// fakePageSize is how many objects one ListPages page of a Fake holds.
const fakePageSize = 100

// Fake is an in-memory Store for tests. Every applied write takes the next
// value of one counter as its revision (formatted as a decimal string, but
// callers must treat it as opaque), and each kind keeps its last
// FakeHistory events so that a Watch replays what happened after its start
// revision before it streams live changes; Compact drops that history.
//
// Fake supports fault injection: Fail makes the next calls of any method
// return an error, and ConflictNext makes the next writes fail with
// ErrConflict even though their expectations hold, as a racing writer
// would. Writes counts the writes attempted. Values and labels are copied
// in and out, so callers may reuse their buffers.
type Fake struct {
	mu    sync.Mutex
	rev   int64
	kinds map[Kind]*fakeKind

	failNext     int
	failErr      error
	conflictNext int
	writes       int
}

// fakeKind holds the objects of one kind and their recent history.
type fakeKind struct {
	objs map[string]fakeObj
	// hist holds the kind's latest events in revision order; every event
	// after revision floor is in it.
	hist     []fakeEvent
	floor    int64
	watchers map[*fakeWatcher]struct{}
}

// fakeObj is one stored object.
type fakeObj struct {
	labels map[string]string
	value  []byte
	rev    int64
}

// fakeEvent is one change in a kind's history.
type fakeEvent struct {
	rev int64
	typ EventType
	// name, labels and value describe the object after a put, or as it was
	// before a delete.
	name   string
	labels map[string]string
	value  []byte
}

// fakeWatcher is woken (through a one-slot channel) when its kind changes
// or its history is compacted.
type fakeWatcher struct {
	wake chan struct{}
}

// NewFake returns an empty Fake.
func NewFake() *Fake {
	return &Fake{rev: 1, kinds: map[Kind]*fakeKind{}}
}

// Fail makes the next n calls of any Store method (Watch and ListPages
// included) fail with err; a failed Watch delivers err in one response and
// closes.
func (f *Fake) Fail(n int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext, f.failErr = n, err
}

// ConflictNext makes the next n calls of Create, Update and Delete fail
// with ErrConflict without writing anything (on a Create the error wraps
// ErrExists too, as a real conflict does).
func (f *Fake) ConflictNext(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conflictNext = n
}

// Writes reports how many calls of Create, Update and Delete were made,
// applied or not.
func (f *Fake) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// Compact drops every kind's history: a Watch from a revision older than
// the current one then gets one response with ErrCompacted and closes, as
// does a running watch that has not yet caught up.
func (f *Fake) Compact() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range f.kinds {
		k.hist = nil
		k.floor = f.rev
		k.wakeAll()
	}
}

// kind returns the state of kind k, creating it when absent. f.mu is held.
func (f *Fake) kind(k Kind) *fakeKind {
	fk := f.kinds[k]
	if fk == nil {
		// A kind nobody wrote yet has lost no history: a watch from any
		// revision up to now misses nothing.
		fk = &fakeKind{objs: map[string]fakeObj{}, watchers: map[*fakeWatcher]struct{}{}}
		f.kinds[k] = fk
	}
	return fk
}

// begin checks the context and the injected failures; f.mu is held.
func (f *Fake) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.failNext > 0 {
		f.failNext--
		return f.failErr
	}
	return nil
}

// beginWrite is begin for Create, Update and Delete, which also count and
// may be made to conflict (an injected conflict on a Create wraps ErrExists
// too, as a real one does); f.mu is held.
func (f *Fake) beginWrite(ctx context.Context, kind Kind, name string, create bool) error {
	f.writes++
	if err := f.begin(ctx); err != nil {
		return err
	}
	if err := checkAddress(kind, name); err != nil {
		return err
	}
	if f.conflictNext > 0 {
		f.conflictNext--
		if create {
			return fmt.Errorf("%s %q: injected: %w: %w", kind, name, ErrExists, ErrConflict)
		}
		return fmt.Errorf("%s %q: injected: %w", kind, name, ErrConflict)
	}
	return nil
}

// checkAddress refuses an empty kind or name.
func checkAddress(kind Kind, name string) error {
	if kind == "" || name == "" {
		return fmt.Errorf("object kind %q name %q: kind and name must not be empty: %w", kind, name, ErrInvalid)
	}
	return nil
}

// Get implements Store.
func (f *Fake) Get(ctx context.Context, kind Kind, name string) (KV, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx); err != nil {
		return KV{}, err
	}
	o, ok := f.kind(kind).objs[name]
	if !ok {
		return KV{}, fmt.Errorf("%s %q: %w", kind, name, ErrNotFound)
	}
	return o.kv(kind, name), nil
}

// List implements Store.
func (f *Fake) List(ctx context.Context, kind Kind, opts ListOptions) ([]KV, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx); err != nil {
		return nil, "", err
	}
	return f.list(kind, opts), f.revString(), nil
}

// list returns the matching objects of kind sorted by name; f.mu is held.
func (f *Fake) list(kind Kind, opts ListOptions) []KV {
	fk := f.kind(kind)
	out := make([]KV, 0, len(fk.objs))
	for name, o := range fk.objs {
		if MatchLabels(o.labels, opts.Labels) {
			out = append(out, o.kv(kind, name))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ListPages implements Pager: the list is taken at one revision and handed
// to page in pages of up to 100 objects. It never restarts.
func (f *Fake) ListPages(ctx context.Context, kind Kind, opts ListOptions, page func(kvs []KV, restart bool) error) (string, error) {
	f.mu.Lock()
	if err := f.begin(ctx); err != nil {
		f.mu.Unlock()
		return "", err
	}
	all, rev := f.list(kind, opts), f.revString()
	f.mu.Unlock()
	for len(all) > 0 {
		n := min(len(all), fakePageSize)
		if err := page(all[:n:n], false); err != nil {
			return "", err
		}
		all = all[n:]
	}
	return rev, nil
}

// Create implements Store.
func (f *Fake) Create(ctx context.Context, kv KV) (KV, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, kv.Kind, kv.Name, true); err != nil {
		return KV{}, err
	}
	if err := checkValue(kv); err != nil {
		return KV{}, err
	}
	fk := f.kind(kv.Kind)
	if _, ok := fk.objs[kv.Name]; ok {
		return KV{}, fmt.Errorf("%s %q: %w: %w", kv.Kind, kv.Name, ErrExists, ErrConflict)
	}
	return f.put(fk, kv), nil
}

// Update implements Store.
func (f *Fake) Update(ctx context.Context, kv KV) (KV, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, kv.Kind, kv.Name, false); err != nil {
		return KV{}, err
	}
	if err := checkValue(kv); err != nil {
		return KV{}, err
	}
	fk := f.kind(kv.Kind)
	cur, ok := fk.objs[kv.Name]
	if !ok {
		return KV{}, fmt.Errorf("update %s %q: %w", kv.Kind, kv.Name, ErrNotFound)
	}
	if kv.Revision != "" && kv.Revision != revString(cur.rev) {
		return KV{}, fmt.Errorf("update %s %q: expected revision %s, now %d: %w", kv.Kind, kv.Name, kv.Revision, cur.rev, ErrConflict)
	}
	return f.put(fk, kv), nil
}

// Delete implements Store.
func (f *Fake) Delete(ctx context.Context, kind Kind, name, expect string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, kind, name, false); err != nil {
		return err
	}
	fk := f.kind(kind)
	cur, ok := fk.objs[name]
	if !ok {
		return fmt.Errorf("delete %s %q: %w", kind, name, ErrNotFound)
	}
	if expect != "" && expect != revString(cur.rev) {
		return fmt.Errorf("delete %s %q: expected revision %s, now %d: %w", kind, name, expect, cur.rev, ErrConflict)
	}
	delete(fk.objs, name)
	f.rev++
	fk.record(fakeEvent{rev: f.rev, typ: EventDelete, name: name, labels: cur.labels, value: cur.value})
	return nil
}

// checkValue refuses a value that is not a JSON document, as the
// Kubernetes backend must.
func checkValue(kv KV) error {
	if !json.Valid(kv.Value) {
		return fmt.Errorf("%s %q: value is not a JSON document: %w", kv.Kind, kv.Name, ErrInvalid)
	}
	return nil
}

// put stores a copy of kv at the next revision and returns the stored
// object; f.mu is held.
func (f *Fake) put(fk *fakeKind, kv KV) KV {
	f.rev++
	o := fakeObj{labels: copyLabels(kv.Labels), value: copyBytes(kv.Value), rev: f.rev}
	fk.objs[kv.Name] = o
	fk.record(fakeEvent{rev: f.rev, typ: EventPut, name: kv.Name, labels: o.labels, value: o.value})
	return o.kv(kv.Kind, kv.Name)
}

// record appends ev to the kind's history, trims the history to
// FakeHistory events once it grows a quarter past that, and wakes the
// kind's watchers; f.mu is held. Stored labels and values are never
// modified in place, so events may share them with the objects.
func (fk *fakeKind) record(ev fakeEvent) {
	fk.hist = append(fk.hist, ev)
	if len(fk.hist) > FakeHistory+FakeHistory/4 {
		drop := len(fk.hist) - FakeHistory
		fk.floor = fk.hist[drop-1].rev
		fk.hist = append([]fakeEvent(nil), fk.hist[drop:]...)
	}
	fk.wakeAll()
}

// wakeAll wakes every watcher of the kind; f.mu is held.
func (fk *fakeKind) wakeAll() {
	for w := range fk.watchers {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// Watch implements Store. Events after afterRev that are still in the
// kind's history are replayed first; an empty afterRev watches from the
// current revision. A revision older than the kept history, or one this
// Fake did not hand out, gets one response with ErrCompacted. A watcher
// that falls more than FakeHistory events behind gets ErrCompacted too.
func (f *Fake) Watch(ctx context.Context, kind Kind, afterRev string) <-chan WatchResponse {
	out := make(chan WatchResponse, 16)
	f.mu.Lock()
	if err := f.begin(ctx); err != nil {
		f.mu.Unlock()
		go func() {
			defer close(out)
			if ctx.Err() == nil {
				sendResponse(ctx, out, WatchResponse{Err: err})
			}
		}()
		return out
	}
	last := f.rev
	var bad error
	if afterRev != "" {
		n, err := strconv.ParseInt(afterRev, 10, 64)
		if err != nil || n < 0 {
			bad = fmt.Errorf("watch %s from revision %q: not a revision of this store; list again: %w", kind, afterRev, ErrCompacted)
		}
		last = n
	}
	fk := f.kind(kind)
	w := &fakeWatcher{wake: make(chan struct{}, 1)}
	if bad == nil {
		fk.watchers[w] = struct{}{}
		w.wake <- struct{}{}
	}
	f.mu.Unlock()

	go func() {
		defer close(out)
		defer func() {
			f.mu.Lock()
			delete(fk.watchers, w)
			f.mu.Unlock()
		}()
		if bad != nil {
			sendResponse(ctx, out, WatchResponse{Err: bad})
			return
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
			f.mu.Lock()
			if last < fk.floor {
				floor := fk.floor
				f.mu.Unlock()
				sendResponse(ctx, out, WatchResponse{Err: fmt.Errorf("watch %s after revision %d: history up to revision %d was compacted; list again: %w", kind, last, floor, ErrCompacted)})
				return
			}
			i := sort.Search(len(fk.hist), func(i int) bool { return fk.hist[i].rev > last })
			evs := make([]Event, 0, len(fk.hist)-i)
			for _, e := range fk.hist[i:] {
				evs = append(evs, Event{Type: e.typ, KV: KV{Kind: kind, Name: e.name, Labels: copyLabels(e.labels), Value: copyBytes(e.value), Revision: revString(e.rev)}})
			}
			now := f.rev
			f.mu.Unlock()
			if len(evs) == 0 {
				continue
			}
			if !sendResponse(ctx, out, WatchResponse{Events: evs, Revision: revString(now)}) {
				return
			}
			last = now
		}
	}()
	return out
}

// sendResponse sends r on out unless ctx ends first.
func sendResponse(ctx context.Context, out chan<- WatchResponse, r WatchResponse) bool {
	select {
	case out <- r:
		return true
	case <-ctx.Done():
		return false
	}
}

// Close implements Store.
func (f *Fake) Close() error { return nil }

// revString returns the current revision; f.mu is held.
func (f *Fake) revString() string { return revString(f.rev) }

func revString(r int64) string { return strconv.FormatInt(r, 10) }

// kv returns a copy of the object as a KV.
func (o fakeObj) kv(kind Kind, name string) KV {
	return KV{Kind: kind, Name: name, Labels: copyLabels(o.labels), Value: copyBytes(o.value), Revision: revString(o.rev)}
}

func copyLabels(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func copyBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
