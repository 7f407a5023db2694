// Package datastore defines Store, the small interface through which Twill
// reads and writes its state, and typed helpers on top of it.
//
// The contract is the one both the Kubernetes API and etcd can keep without
// emulating each other: objects are addressed by kind and name; every write
// touches exactly one object; a write may be made conditional on the
// object's revision (a compare-and-swap); and revisions are opaque strings,
// compared for equality only. There are no multi-object transactions and no
// global order across kinds: a List returns the revision to Watch that kind
// from, and a watch delivers each object's changes in order.
//
// Package datastore/etcd implements Store on etcd v3 (one-key transactions
// under per-kind prefixes), package datastore/kube on Kubernetes custom
// resources (resourceVersion as the revision), and Fake (in this package) in
// memory for tests and fault injection. docs/datastore.md lists both layouts.
package datastore

import (
	"context"
	"errors"
)

// Errors every Store returns, matched with errors.Is.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a compare-and-swap expectation failed (the object changed,
	// was deleted, or already exists); re-read and retry.
	ErrConflict = errors.New("revision conflict")
	// ErrExists: Create found the object already there. Errors that wrap
	// ErrExists wrap ErrConflict too.
	ErrExists = errors.New("already exists")
	// ErrUnavailable: the datastore could not be reached in time.
	ErrUnavailable = errors.New("datastore unavailable")
	// ErrCompacted: a watch asked for history that is gone (etcd compaction,
	// Kubernetes 410 Gone); list again and watch from the listed revision.
	ErrCompacted = errors.New("watch revision compacted")
	// ErrInvalid: the store refused the object's content (for example the
	// Kubernetes apiserver's schema validation). Not retryable.
	ErrInvalid = errors.New("invalid object")
)

// Kind names one collection of objects. Each maps onto a key prefix in etcd
// and onto a resource (a custom resource, or v1.Node) in Kubernetes.
type Kind string

// The kinds Twill stores.
const (
	// KindIPPool holds api.IPPool documents.
	KindIPPool Kind = "ippools"
	// KindNode holds api.Node documents. On Kubernetes these are the
	// cluster's v1.Node objects, with Twill's fields as annotations.
	KindNode Kind = "nodes"
	// KindIPAMConfig holds the one api.IPAMConfig, named IPAMConfigName.
	KindIPAMConfig Kind = "ipamconfigs"
	// KindBlock holds api.Block documents, named by BlockName. A block is
	// the unit of compare-and-swap for addresses and carries its affinity.
	KindBlock Kind = "ipamblocks"
	// KindHandle holds api.Handle documents: an index from an allocation
	// handle to the blocks that hold its addresses. It may over-count and is
	// repaired by GC; the blocks are the truth.
	KindHandle Kind = "ipamhandles"
	// KindWorkload holds api.WorkloadEndpoint documents, labelled with
	// LabelNode.
	KindWorkload Kind = "workloadendpoints"
)

// Kinds lists every Kind, in a stable order.
var Kinds = []Kind{KindIPPool, KindNode, KindIPAMConfig, KindBlock, KindHandle, KindWorkload}

// IPAMConfigName is the name of the cluster's one IPAMConfig object.
const IPAMConfigName = "default"

// Labels Twill sets on stored objects, usable in ListOptions.Labels.
const (
	// LabelNode names the node a workload endpoint (or an affine block)
	// belongs to.
	LabelNode = "twill.dev/node"
)

// KV is one stored object: its kind, name, labels, value (a JSON document)
// and the revision that last modified it.
type KV struct {
	Kind   Kind
	Name   string
	Labels map[string]string
	Value  []byte
	// Revision is opaque: compare it with == only. Empty means "no
	// expectation" where a KV is passed to Update.
	Revision string
}

// ListOptions narrows a List.
type ListOptions struct {
	// Labels keeps only objects that carry every one of these labels with
	// the same value.
	Labels map[string]string
}

// EventType says whether a watched object was written or removed.
type EventType int

// Watch event types.
const (
	EventPut EventType = iota
	EventDelete
)

// Event is one change seen by a watch. For EventDelete, KV.Value is the last
// value the object had when the store can tell, else nil.
type Event struct {
	Type EventType
	KV   KV
}

// WatchResponse is a batch of events, or an error. Revision is a revision
// from which a new Watch of the same kind may resume without missing
// anything delivered after this response. After an error (ErrCompacted,
// ErrUnavailable) the channel is closed and the watcher must List again and
// restart its watch from the listed revision.
type WatchResponse struct {
	Events   []Event
	Revision string
	Err      error
}

// Store is where Twill's state lives. Every write touches one object.
type Store interface {
	// Get returns the object, or ErrNotFound.
	Get(ctx context.Context, kind Kind, name string) (KV, error)
	// List returns every object of kind that matches opts, sorted by name,
	// and the revision to Watch the kind from.
	List(ctx context.Context, kind Kind, opts ListOptions) ([]KV, string, error)
	// Create stores a new object; it fails with ErrExists (and ErrConflict)
	// when one with the same kind and name exists. kv.Revision is ignored.
	// It returns the stored object with its revision.
	Create(ctx context.Context, kv KV) (KV, error)
	// Update replaces an existing object. When kv.Revision is not empty the
	// write applies only if the object's revision still equals it, else it
	// fails with ErrConflict; an empty kv.Revision overwrites whatever is
	// there. A missing object is ErrNotFound. It returns the stored object.
	Update(ctx context.Context, kv KV) (KV, error)
	// Delete removes the object. When expect is not empty the delete applies
	// only if the object's revision still equals it (ErrConflict otherwise).
	// A missing object is ErrNotFound.
	Delete(ctx context.Context, kind Kind, name, expect string) error
	// Watch streams changes to objects of kind made after revision afterRev
	// (from a List or an earlier WatchResponse). Each object's changes
	// arrive in the order they were made. The channel is closed when ctx
	// ends or after a WatchResponse with Err set.
	Watch(ctx context.Context, kind Kind, afterRev string) <-chan WatchResponse
	// Close releases the store's connections.
	Close() error
}

// Pager is implemented by stores that can list a kind page by page, so that
// a large list never sits in memory whole. page is called with each page in
// name order; restart is true when the store had to start the list over (a
// page's revision was compacted away), and everything passed so far must be
// dropped. It returns the revision to Watch from.
type Pager interface {
	ListPages(ctx context.Context, kind Kind, opts ListOptions, page func(kvs []KV, restart bool) error) (string, error)
}
