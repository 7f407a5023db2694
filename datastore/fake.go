package datastore

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
)

var _ Store = (*Fake)(nil)

// Fake is an in-memory Store for tests. It keeps etcd's revision semantics
// (one global revision, bumped by every applied transaction) and supports
// fault injection: Fail makes the next calls return an error, and
// ConflictNext makes the next transactions fail with ErrConflict even though
// their expectations hold, as a racing writer would.
type Fake struct {
	mu       sync.Mutex
	rev      int64
	data     map[string]KV
	watchers map[*fakeWatcher]struct{}

	failNext     int
	failErr      error
	conflictNext int
	txns         int
}

type fakeWatcher struct {
	prefix string
	ch     chan WatchResponse
	done   <-chan struct{}
}

// NewFake returns an empty Fake at revision 1.
func NewFake() *Fake {
	return &Fake{rev: 1, data: map[string]KV{}, watchers: map[*fakeWatcher]struct{}{}}
}

// Fail makes the next n calls of Get, List and Txn return err.
func (f *Fake) Fail(n int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext, f.failErr = n, err
}

// ConflictNext makes the next n transactions fail with ErrConflict.
func (f *Fake) ConflictNext(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conflictNext = n
}

// Txns reports how many transactions were attempted, applied or not.
func (f *Fake) Txns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.txns
}

func (f *Fake) injected() error {
	if f.failNext > 0 {
		f.failNext--
		return f.failErr
	}
	return nil
}

// Get implements Store.
func (f *Fake) Get(ctx context.Context, key string) (KV, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected(); err != nil {
		return KV{}, err
	}
	kv, ok := f.data[key]
	if !ok {
		return KV{}, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	return copyKV(kv), nil
}

// List implements Store.
func (f *Fake) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected(); err != nil {
		return nil, 0, err
	}
	var out []KV
	for k, kv := range f.data {
		if strings.HasPrefix(k, prefix) {
			out = append(out, copyKV(kv))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, f.rev, nil
}

// Txn implements Store.
func (f *Fake) Txn(ctx context.Context, ops ...Op) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.txns++
	if err := f.injected(); err != nil {
		return 0, err
	}
	if f.conflictNext > 0 {
		f.conflictNext--
		return 0, fmt.Errorf("injected: %w", ErrConflict)
	}
	for _, op := range ops {
		cur, ok := f.data[op.Key]
		switch {
		case op.Expect == AnyRevision:
		case op.Expect == MustNotExist && ok:
			return 0, fmt.Errorf("%s exists: %w", op.Key, ErrConflict)
		case op.Expect > 0 && (!ok || cur.Revision != op.Expect):
			return 0, fmt.Errorf("%s changed: %w", op.Key, ErrConflict)
		}
	}
	f.rev++
	var events []Event
	for _, op := range ops {
		if op.Delete {
			prev, ok := f.data[op.Key]
			if !ok {
				continue
			}
			delete(f.data, op.Key)
			prev.Revision = f.rev
			events = append(events, Event{Type: EventDelete, KV: prev})
			continue
		}
		kv := KV{Key: op.Key, Value: append([]byte(nil), op.Value...), Revision: f.rev}
		f.data[op.Key] = kv
		events = append(events, Event{Type: EventPut, KV: copyKV(kv)})
	}
	f.notify(events)
	return f.rev, nil
}

func (f *Fake) notify(events []Event) {
	for w := range f.watchers {
		var mine []Event
		for _, ev := range events {
			if strings.HasPrefix(ev.KV.Key, w.prefix) {
				mine = append(mine, ev)
			}
		}
		if len(mine) == 0 {
			continue
		}
		select {
		case w.ch <- WatchResponse{Events: mine, Revision: f.rev}:
		case <-w.done:
		}
	}
}

// Watch implements Store. History is not kept: a watch from a revision
// older than the current one sees only later changes, which suffices for
// tests that List first and then Watch from the listed revision.
func (f *Fake) Watch(ctx context.Context, prefix string, afterRev int64) <-chan WatchResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &fakeWatcher{prefix: prefix, ch: make(chan WatchResponse, 1024), done: ctx.Done()}
	f.watchers[w] = struct{}{}
	go func() {
		<-ctx.Done()
		f.mu.Lock()
		delete(f.watchers, w)
		f.mu.Unlock()
		close(w.ch)
	}()
	return w.ch
}

// Close implements Store.
func (f *Fake) Close() error { return nil }

func copyKV(kv KV) KV {
	kv.Value = append([]byte(nil), kv.Value...)
	return kv
}
