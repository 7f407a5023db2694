// Package datastore defines Store, the small interface through which Twill
// reads and writes its state, the key layout under which resources live, and
// typed helpers on top of it. Package datastore/etcd implements Store on etcd
// v3; Fake (in this package) implements it in memory for tests and fault
// injection.
package datastore

import (
	"context"
	"errors"
)

// Errors every Store returns, matched with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a compare-and-swap expectation failed; re-read and retry.
	ErrConflict = errors.New("revision conflict")
	// ErrUnavailable: the datastore could not be reached in time.
	ErrUnavailable = errors.New("datastore unavailable")
	// ErrCompacted: a watch asked for history that is gone; list again.
	ErrCompacted = errors.New("watch revision compacted")
)

// AnyRevision as Op.Expect applies the op whatever the key's revision.
const AnyRevision int64 = -1

// MustNotExist as Op.Expect applies the op only when the key is absent.
const MustNotExist int64 = 0

// KV is one stored key with its value and the revision that last modified it.
type KV struct {
	Key      string
	Value    []byte
	Revision int64
}

// Op is one write of a transaction. Expect is the revision the key must have
// for the whole transaction to apply: MustNotExist (0) for a create,
// AnyRevision (-1) for no check, or a KV.Revision read earlier.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
	Expect int64
}

// Put returns an Op that writes value at key if the key's revision is expect.
func Put(key string, value []byte, expect int64) Op {
	return Op{Key: key, Value: value, Expect: expect}
}

// Delete returns an Op that removes key if the key's revision is expect.
func Delete(key string, expect int64) Op {
	return Op{Key: key, Delete: true, Expect: expect}
}

// EventType says whether a watched key was written or removed.
type EventType int

// Watch event types.
const (
	EventPut EventType = iota
	EventDelete
)

// Event is one change seen by a watch. For EventDelete, KV.Value is the last
// value the key had when the store can tell, else nil.
type Event struct {
	Type EventType
	KV   KV
}

// WatchResponse is a batch of events at one revision, or an error. After an
// error (ErrCompacted, ErrUnavailable) the channel is closed and the watcher
// must List again and restart its watch from the listed revision.
type WatchResponse struct {
	Events   []Event
	Revision int64
	Err      error
}

// Store is where Twill's state lives. Every write is a transaction of Ops
// that applies atomically, all or nothing; a failed expectation returns
// ErrConflict and writes nothing.
type Store interface {
	// Get returns the key, or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key under prefix, sorted by key, and the store
	// revision the list was read at.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Txn applies ops atomically and returns the new store revision.
	Txn(ctx context.Context, ops ...Op) (int64, error)
	// Watch streams changes under prefix made after revision afterRev. The
	// channel is closed when ctx ends or after a WatchResponse with Err set.
	Watch(ctx context.Context, prefix string, afterRev int64) <-chan WatchResponse
	// Close releases the store's connections.
	Close() error
}
