// Package ipam hands out pod and tunnel addresses from IP pools, one block
// at a time, keeping all of its state in a datastore.Store. It needs no
// multi-object transactions: every write touches one object, so it runs
// the same on etcd and on the Kubernetes API.
//
// # State
//
// A pool (datastore.KindIPPool) is cut into blocks of its blockSize. A block
// (api.Block, datastore.KindBlock, named datastore.BlockName(cidr)) records
// the node it belongs to (its Affinity, mirrored in the label
// datastore.LabelNode so that a node's blocks can be listed by label),
// whether it is pinned, and the addresses allocated from it, sorted by
// ordinal. A handle (api.Handle, datastore.KindHandle, named by the handle
// id) counts, per block, the addresses the handle holds there: it is an
// index that lets release by handle read a few blocks rather than all. The
// IPAM config (datastore.KindIPAMConfig, named datastore.IPAMConfigName)
// holds strict affinity and a cap on blocks per node; a missing config
// means the defaults. Node labels come from datastore.KindNode objects.
//
// # Invariants
//
//   - The blocks are the truth: an address is taken if and only if its
//     block lists it. Every block write is a compare-and-swap: an Update
//     that expects the revision the block was read at, or the Create that
//     claims a new block (with its affinity set). A racing writer makes the
//     write fail (datastore.ErrConflict, ErrExists, or ErrNotFound when the
//     block was reclaimed meanwhile); IPAM re-reads and plans again. Two
//     writers can therefore never both take the same free ordinal, and no
//     address is ever handed out twice, whatever crashes or races.
//   - A block's affinity and its node label change in the same write, since
//     they live in the same object.
//   - Handles never under-count. Before an address is taken in a block, its
//     handle's count for that block is raised (the handle is created or
//     updated with a compare-and-swap); only after an address was freed
//     from a block is the count lowered, and the handle is deleted when all
//     of its counts reach zero. A crash (or an error) between the two
//     writes leaves an over-count, never an under-count.
//   - Release removes only allocations that carry the released handle (or,
//     for ReleaseIP, the one address asked for; for ReleaseIfOwned, that
//     address only while it still carries the handle): it never frees
//     another handle's address.
//   - A release never deletes a block: an emptied block keeps its affinity
//     (its node will fill it again). Empty, unpinned blocks are reclaimed by
//     garbage collection (EmptyBlocks, ReclaimBlock), a delete that expects
//     the revision at which the block was seen empty, so a block that got
//     an address meanwhile is never reclaimed. ReleaseNodeAffinities
//     deletes the empty blocks of a deleted node and clears the affinity of
//     its other blocks (pinned blocks keep theirs).
//
// # What can leak, and how it is repaired
//
//   - A handle count with no address behind it: a crash or store outage
//     between raising the count and writing the block (or between freeing
//     an address and lowering the count), which the allocation or release
//     could not undo. Harmless: release by handle reads one block too many
//     and falls back to a scan. RepairHandles recomputes the handles from
//     the blocks and lowers such counts once they have been stable for the
//     repair grace (WithRepairGrace), so that it never lowers the count of
//     an allocation that is still in flight.
//   - An address whose caller never learnt it was allocated (a crash after
//     the block write, or an Allocate whose clean-up after a failure could
//     not reach the store). It carries its handle and is found by
//     ReleaseHandle and HandleAddrs of that handle; if its owner is gone,
//     the garbage collector finds it with AllAllocations and frees it with
//     ReleaseIfOwned.
//   - A handle that was deleted or edited while it still had addresses
//     (only by hand, by a ReleaseHandle racing with an Allocate of the same
//     handle, or by a repair after an allocation stalled for longer than the
//     grace). ReleaseHandle still frees every address of the handle: it
//     scans all blocks whenever the handle is missing or its counts do not
//     match what it found in the named blocks; RepairHandles re-creates the
//     missing counts.
//   - An empty block. It stays until GC reclaims it (or its node fills it).
//
// Writes that fail with a conflict are re-planned from fresh reads and
// retried, a bounded number of times with a small jittered backoff; after
// that the error wraps datastore.ErrConflict. datastore.ErrUnavailable is
// not retried and comes back wrapped.
//
// # Allocation order
//
// A node first fills its own blocks (in address order, lowest free ordinal
// first), then claims a free block of an eligible pool, then, unless strict
// affinity is on, borrows single addresses from other blocks of eligible
// pools. A pool is eligible when it is enabled, its nodeSelector matches the
// node's labels and it allows the requested use. Candidate blocks for a
// claim are visited in a permutation seeded by the node name, so that nodes
// claiming at the same time rarely race for the same block.
//
// A request that needs several blocks writes them one after the other. If
// one of them conflicts, the addresses already written stay with the
// request and only the rest is planned again; if the request finally
// fails, the addresses it took are freed again (as ReleaseIfOwned would),
// so that each Allocate gets all of its addresses or none.
//
// # Group commit
//
// Allocations for one node contend for the same blocks, so an IPAM runs
// them one batch at a time; concurrent Allocate calls for that node wait in
// a queue, and whoever runs next takes the waiting calls along into the same
// batch. A batch writes each call's handle first (in parallel, one write
// per call) and then each block it takes addresses from once, so a burst of
// pod starts on a node costs one handle write per pod and a few block
// writes, and each call still gets all of its addresses or none.
//
// # Caching
//
// An IPAM remembers the blocks it has read or written, with their
// revisions, and uses those revisions as the expectations of its next
// writes. Revisions are opaque: the cache never orders them, it keeps
// whichever copy this IPAM obtained last. When the cache is current, which
// is the common case of one agent allocating from its own node's blocks, an
// allocation costs a handle write and a block write and no reads; a stale
// entry costs one conflict and one re-read, never a wrong answer. Pools,
// node labels and the IPAM config are cached for the cache TTL
// (WithCacheTTL, default one second): a pool that is disabled stops being
// used by a running IPAM within that time. Exhaustion is only reported after
// everything was read afresh.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// Defaults of the options.
const (
	DefaultCacheTTL    = time.Second
	DefaultMaxAttempts = 100
	// DefaultRepairGrace is how long RepairHandles waits before it lowers a
	// handle count that no address backs (see WithRepairGrace).
	DefaultRepairGrace = 2 * time.Minute
	// MaxCount is the largest number of addresses one Allocate may ask for;
	// it bounds the blocks one request writes and the size of a handle.
	MaxCount = 1024
)

const (
	backoffBase = 200 * time.Microsecond
	backoffCap  = 5 * time.Millisecond
	// handleRefreshAge is how old an allocation's handle write may be when
	// the allocation writes a block; an older one is written again first,
	// so that RepairHandles (whose grace must exceed this plus one store
	// call) sees the handle change and leaves its count alone.
	handleRefreshAge = 15 * time.Second
	// cleanupTimeout bounds the writes that undo a failed allocation, which
	// run even when the caller's context has ended.
	cleanupTimeout = 10 * time.Second
)

// Option configures an IPAM.
type Option func(*IPAM)

// WithCacheTTL sets how long pools, node labels, the IPAM config and the
// list of a node's blocks are reused before they are read again. Zero reads
// them for every request.
func WithCacheTTL(d time.Duration) Option {
	return func(m *IPAM) {
		if d >= 0 {
			m.ttl = d
		}
	}
}

// WithMaxAttempts sets how many times one write is attempted when it keeps
// conflicting with other writers (default DefaultMaxAttempts).
func WithMaxAttempts(n int) Option {
	return func(m *IPAM) {
		if n > 0 {
			m.maxAttempts = n
		}
	}
}

// WithLogger sets the logger for warnings about malformed stored state and
// failed clean-ups.
func WithLogger(l *slog.Logger) Option {
	return func(m *IPAM) {
		if l != nil {
			m.log = l
		}
	}
}

// WithRepairGrace sets how long a handle's over-count must have been seen,
// unchanged (same handle revision), by earlier RepairHandles calls of this
// IPAM before RepairHandles lowers it (default DefaultRepairGrace). The
// grace protects allocations in flight, which raise their handle before
// they write their block; it must exceed the time one allocation takes
// between those writes (allocations re-write a handle older than 15s before
// writing a block). Zero lowers over-counts at once: only for a store no
// allocation is running against (tests, offline repair).
func WithRepairGrace(d time.Duration) Option {
	return func(m *IPAM) {
		if d >= 0 {
			m.grace = d
		}
	}
}

// IPAM allocates addresses from the pools in a store. It is safe for
// concurrent use; allocations for the same node are serialised within one
// IPAM, since they would otherwise race for the same block.
type IPAM struct {
	s           datastore.Store
	ttl         time.Duration
	grace       time.Duration
	maxAttempts int
	log         *slog.Logger
	seq         atomic.Uint64 // orders what this IPAM read and wrote

	mu       sync.Mutex
	queues   map[string]*nodeQueue
	warned   map[string]string                       // kind/name → revision already warned about
	blocks   map[netip.Prefix]*blockEntry            // every cached block
	byName   map[string]*blockEntry                  // the same by store name
	byNode   map[string]map[netip.Prefix]*blockEntry // affinity → its cached blocks
	fullAt   time.Time                               // last List of all blocks
	nodeAt   map[string]time.Time                    // last List of a node's blocks
	pools    []*poolInfo
	poolsAt  time.Time
	labels   map[string]labelEntry
	config   api.IPAMConfig
	configAt time.Time
	// overSeen remembers, per handle, the revision at which RepairHandles
	// first saw it over-count, and when.
	overSeen map[string]overMark
}

type labelEntry struct {
	labels map[string]string
	at     time.Time
}

// blockEntry is a block as read from (or written to) the store. Its block
// value is never modified in place: writers copy it.
type blockEntry struct {
	prefix netip.Prefix
	block  api.Block
	rev    string
	// stamp orders the cache's knowledge: a read is stamped before it is
	// sent, a write after it returned, so an entry with a larger stamp is
	// at least as new as one with a smaller stamp.
	stamp uint64
}

func (e *blockEntry) free() int { return blockSize(e.prefix) - len(e.block.Allocations) }

// poolInfo is a defaulted, validated pool with its parsed CIDR and selector.
type poolInfo struct {
	name      string
	pool      api.IPPool
	prefix    netip.Prefix
	blockBits int
	sel       api.Selector
}

func (p *poolInfo) enabled() bool { return !p.pool.Spec.Disabled }

// holds reports whether block b lies inside the pool.
func (p *poolInfo) holds(b netip.Prefix) bool {
	return b.Bits() >= p.prefix.Bits() && p.prefix.Contains(b.Addr())
}

// New returns an IPAM that keeps its state in s.
func New(s datastore.Store, opts ...Option) *IPAM {
	m := &IPAM{
		s:           s,
		ttl:         DefaultCacheTTL,
		grace:       DefaultRepairGrace,
		maxAttempts: DefaultMaxAttempts,
		log:         slog.Default(),
		queues:      map[string]*nodeQueue{},
		warned:      map[string]string{},
		blocks:      map[netip.Prefix]*blockEntry{},
		byName:      map[string]*blockEntry{},
		byNode:      map[string]map[netip.Prefix]*blockEntry{},
		nodeAt:      map[string]time.Time{},
		labels:      map[string]labelEntry{},
		overSeen:    map[string]overMark{},
	}
	for _, o := range opts {
		o(m)
	}
	return m
}

// queue returns node's write queue.
func (m *IPAM) queue(node string) *nodeQueue {
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.queues[node]
	if !ok {
		q = &nodeQueue{sem: make(chan struct{}, 1)}
		m.queues[node] = q
	}
	return q
}

func (m *IPAM) stale(at time.Time, now time.Time) bool {
	return at.IsZero() || now.Sub(at) >= m.ttl
}

// stamp returns the next cache stamp.
func (m *IPAM) stamp() uint64 { return m.seq.Add(1) }

// --- block cache -----------------------------------------------------------

// setLocked records e unless the cache holds a copy obtained later.
func (m *IPAM) setLocked(e *blockEntry) {
	if old, ok := m.blocks[e.prefix]; ok {
		if old.stamp > e.stamp {
			return
		}
		m.unindexLocked(old)
	}
	m.blocks[e.prefix] = e
	m.byName[blockName(e.prefix)] = e
	if a := e.block.Affinity; a != "" {
		n := m.byNode[a]
		if n == nil {
			n = map[netip.Prefix]*blockEntry{}
			m.byNode[a] = n
		}
		n[e.prefix] = e
	}
}

func (m *IPAM) unindexLocked(old *blockEntry) {
	if n := m.byNode[old.block.Affinity]; n != nil {
		delete(n, old.prefix)
		if len(n) == 0 {
			delete(m.byNode, old.block.Affinity)
		}
	}
}

// dropLocked forgets block p unless the cache's copy was obtained after
// stamp.
func (m *IPAM) dropLocked(p netip.Prefix, stamp uint64) {
	if old, ok := m.blocks[p]; ok && old.stamp <= stamp {
		m.unindexLocked(old)
		delete(m.blocks, p)
		delete(m.byName, blockName(p))
	}
}

func (m *IPAM) set(e *blockEntry) {
	m.mu.Lock()
	m.setLocked(e)
	m.mu.Unlock()
}

func (m *IPAM) drop(p netip.Prefix, stamp uint64) {
	m.mu.Lock()
	m.dropLocked(p, stamp)
	m.mu.Unlock()
}

// cached returns the cached copy of block p, or nil.
func (m *IPAM) cached(p netip.Prefix) *blockEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.blocks[p]
}

// affineLocked returns node's cached blocks in address order.
func (m *IPAM) affineLocked(node string) []*blockEntry {
	out := make([]*blockEntry, 0, len(m.byNode[node]))
	for _, e := range m.byNode[node] {
		out = append(out, e)
	}
	slices.SortFunc(out, cmpEntry)
	return out
}

// sortedLocked returns every cached block in address order.
func (m *IPAM) sortedLocked() []*blockEntry {
	out := make([]*blockEntry, 0, len(m.blocks))
	for _, e := range m.blocks {
		out = append(out, e)
	}
	slices.SortFunc(out, cmpEntry)
	return out
}

func cmpEntry(a, b *blockEntry) int {
	if prefixLess(a.prefix, b.prefix) {
		return -1
	}
	if prefixLess(b.prefix, a.prefix) {
		return 1
	}
	return 0
}

// blockName is the store name of block p.
func blockName(p netip.Prefix) string { return datastore.BlockName(p.String()) }

// decodeBlock turns a stored block into an entry. A block must name its
// CIDR, be stored under that CIDR's name and be small enough to handle.
func decodeBlock(kv datastore.KV, stamp uint64) (*blockEntry, error) {
	o, err := datastore.Decode[api.Block](kv)
	if err != nil {
		return nil, fmt.Errorf("ipam: block %s is corrupt (fix or delete it): %w", kv.Name, err)
	}
	p, err := netip.ParsePrefix(o.Value.CIDR)
	if err != nil || p != p.Masked() || blockSize(p) == 0 || blockName(p) != kv.Name {
		return nil, fmt.Errorf("ipam: block %s has no valid cidr matching its name (got %q; fix or delete it): %w", kv.Name, o.Value.CIDR, ErrNotABlock)
	}
	b := o.Value
	b.CIDR = p.String()
	slices.SortFunc(b.Allocations, func(x, y api.Allocation) int { return x.Ordinal - y.Ordinal })
	return &blockEntry{prefix: p, block: b, rev: kv.Revision, stamp: stamp}, nil
}

// checkLabel warns once when a stored block's node label disagrees with its
// affinity (only a hand-made block can: IPAM writes both together). The
// next IPAM write of the block repairs the label.
func (m *IPAM) checkLabel(kv datastore.KV, e *blockEntry) {
	if kv.Labels[datastore.LabelNode] != e.block.Affinity {
		m.warnOnce(string(kv.Kind)+"/"+kv.Name, kv.Revision, "ipam: block's node label disagrees with its affinity; listing the node's blocks misses it until IPAM writes it again",
			"affinity", e.block.Affinity, "label", kv.Labels[datastore.LabelNode])
	}
}

// blockKV encodes block b of p for a write, with the node label matching
// its affinity.
func blockKV(p netip.Prefix, b api.Block, rev string) (datastore.KV, error) {
	b.TypeMeta = api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock}
	b.CIDR = p.String()
	kv, err := datastore.NewKV(datastore.KindBlock, blockName(p), b)
	if err != nil {
		return kv, err
	}
	if b.Affinity != "" {
		kv.Labels = map[string]string{datastore.LabelNode: b.Affinity}
	}
	kv.Revision = rev
	return kv, nil
}

// newBlock is the content of a new block p with affinity to node ("" for
// none).
func newBlock(p netip.Prefix, node string) api.Block {
	return api.Block{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock}, CIDR: p.String(), Affinity: node}
}

// cloneBlock copies b with its own allocation slice.
func cloneBlock(b api.Block) api.Block {
	b.Allocations = slices.Clone(b.Allocations)
	return b
}

// readBlock reads one block afresh and records it; nil when it does not
// exist.
func (m *IPAM) readBlock(ctx context.Context, p netip.Prefix) (*blockEntry, error) {
	st := m.stamp()
	kv, err := m.s.Get(ctx, datastore.KindBlock, blockName(p))
	if errors.Is(err, datastore.ErrNotFound) {
		m.drop(p, st)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: read block %s: %w", p, err)
	}
	e, err := decodeBlock(kv, st)
	if err != nil {
		return nil, err
	}
	m.checkLabel(kv, e)
	m.set(e)
	return e, nil
}

// writeBlock stores b as block p: a Create when create is set (claiming
// the block), else an Update that expects revision rev. It records the
// result in the cache. A failed expectation, a block that exists already
// and a block deleted meanwhile all come back matching datastore.ErrConflict.
func (m *IPAM) writeBlock(ctx context.Context, p netip.Prefix, b api.Block, rev string, create bool) (*blockEntry, error) {
	if !create && rev == "" {
		return nil, fmt.Errorf("ipam: write block %s without the revision it was read at: %w", p, ErrInvalidRequest)
	}
	kv, err := blockKV(p, b, rev)
	if err != nil {
		return nil, err
	}
	var out datastore.KV
	if create {
		out, err = m.s.Create(ctx, kv)
	} else {
		out, err = m.s.Update(ctx, kv)
	}
	st := m.stamp()
	switch {
	case err == nil:
	case errors.Is(err, datastore.ErrNotFound):
		m.drop(p, st)
		return nil, fmt.Errorf("ipam: write block %s: it was deleted meanwhile: %w: %w", p, datastore.ErrConflict, err)
	case create && errors.Is(err, datastore.ErrExists):
		return nil, fmt.Errorf("ipam: claim block %s: someone else claimed it first: %w", p, err)
	default:
		return nil, fmt.Errorf("ipam: write block %s: %w", p, err)
	}
	b.TypeMeta = api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock}
	b.CIDR = p.String()
	e := &blockEntry{prefix: p, block: b, rev: out.Revision, stamp: st}
	m.set(e)
	return e, nil
}

// deleteBlock deletes block p if it is still at revision rev.
func (m *IPAM) deleteBlock(ctx context.Context, p netip.Prefix, rev string) error {
	if rev == "" {
		return fmt.Errorf("ipam: delete block %s without the revision it was read at: %w", p, ErrInvalidRequest)
	}
	err := m.s.Delete(ctx, datastore.KindBlock, blockName(p), rev)
	st := m.stamp()
	if err == nil || errors.Is(err, datastore.ErrNotFound) {
		m.drop(p, st)
	}
	if err != nil {
		return fmt.Errorf("ipam: delete block %s: %w", p, err)
	}
	return nil
}

// listBlocks lists the blocks matching opts afresh, page by page when the
// store can, and records them. It returns the decoded blocks in address
// order and the stamp taken before the list.
func (m *IPAM) listBlocks(ctx context.Context, opts datastore.ListOptions) ([]*blockEntry, uint64, error) {
	st := m.stamp()
	var out []*blockEntry
	add := func(kvs []datastore.KV) {
		for _, kv := range kvs {
			// A block at the revision already cached need not be decoded
			// again (revisions are compared for equality only).
			m.mu.Lock()
			c := m.byName[kv.Name]
			m.mu.Unlock()
			if c != nil && c.rev == kv.Revision && kv.Revision != "" {
				e := *c
				e.stamp = st
				out = append(out, &e)
				continue
			}
			e, err := decodeBlock(kv, st)
			if err != nil {
				m.warnOnce(string(kv.Kind)+"/"+kv.Name, kv.Revision, "ipam: ignoring malformed block", "err", err)
				continue
			}
			m.checkLabel(kv, e)
			out = append(out, e)
		}
	}
	if pg, ok := m.s.(datastore.Pager); ok {
		_, err := pg.ListPages(ctx, datastore.KindBlock, opts, func(kvs []datastore.KV, restart bool) error {
			if restart {
				out = out[:0]
			}
			add(kvs)
			return nil
		})
		if err != nil {
			return nil, 0, fmt.Errorf("ipam: list blocks: %w", err)
		}
	} else {
		kvs, _, err := m.s.List(ctx, datastore.KindBlock, opts)
		if err != nil {
			return nil, 0, fmt.Errorf("ipam: list blocks: %w", err)
		}
		add(kvs)
	}
	slices.SortFunc(out, cmpEntry)
	return out, st, nil
}

// loadAll lists every block and replaces the cache with the result, keeping
// entries this IPAM obtained after the list was sent.
func (m *IPAM) loadAll(ctx context.Context) ([]*blockEntry, error) {
	now := time.Now()
	list, st, err := m.listBlocks(ctx, datastore.ListOptions{})
	if err != nil {
		return nil, err
	}
	fresh := make(map[netip.Prefix]bool, len(list))
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range list {
		fresh[e.prefix] = true
		m.setLocked(e)
	}
	for p := range m.blocks {
		if !fresh[p] {
			m.dropLocked(p, st)
		}
	}
	m.fullAt = now
	return list, nil
}

// loadNode re-reads the blocks labelled as node's and records them; cached
// blocks of node that the list no longer shows are forgotten.
func (m *IPAM) loadNode(ctx context.Context, node string) error {
	now := time.Now()
	list, st, err := m.listBlocks(ctx, datastore.ListOptions{Labels: map[string]string{datastore.LabelNode: node}})
	if err != nil {
		return fmt.Errorf("ipam: blocks of node %s: %w", node, err)
	}
	seen := make(map[netip.Prefix]bool, len(list))
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range list {
		seen[e.prefix] = true
		m.setLocked(e)
	}
	for p := range m.byNode[node] {
		if !seen[p] {
			// Not affine any more (or gone): forget it; a later read
			// restores it if it still exists.
			m.dropLocked(p, st)
		}
	}
	m.nodeAt[node] = now
	return nil
}

// ensureNode loads node's blocks when the cache of them is older than the
// TTL, or always when fresh.
func (m *IPAM) ensureNode(ctx context.Context, node string, fresh bool) error {
	now := time.Now()
	m.mu.Lock()
	at := m.nodeAt[node]
	if m.fullAt.After(at) {
		at = m.fullAt
	}
	m.mu.Unlock()
	if fresh || m.stale(at, now) {
		return m.loadNode(ctx, node)
	}
	return nil
}

// ensureAll lists all blocks when the last list is older than the TTL, or
// always when fresh.
func (m *IPAM) ensureAll(ctx context.Context, fresh bool) error {
	m.mu.Lock()
	at := m.fullAt
	m.mu.Unlock()
	if fresh || m.stale(at, time.Now()) {
		_, err := m.loadAll(ctx)
		return err
	}
	return nil
}

// readSince reports whether the pools, the config, node's labels and all
// blocks were last read at or after since, so that the cache shows at least
// what the store held then.
func (m *IPAM) readSince(node string, since time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	le, ok := m.labels[node]
	return ok && !le.at.Before(since) && !m.poolsAt.Before(since) && !m.configAt.Before(since) && !m.fullAt.Before(since)
}

// --- pools, nodes, config -------------------------------------------------

// snapshot is what one request needs besides blocks.
type snapshot struct {
	pools  []*poolInfo
	labels map[string]string
	config api.IPAMConfig
}

// readPools reads, defaults and validates every pool; invalid pools are
// skipped with a warning and never used.
func (m *IPAM) readPools(ctx context.Context) ([]*poolInfo, error) {
	objs, _, err := datastore.ListObjects[api.IPPool](ctx, m.s, datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("ipam: list IP pools: %w", err)
	}
	out := make([]*poolInfo, 0, len(objs))
	for _, o := range objs {
		p := o.Value
		if p.Metadata.Name == "" {
			p.Metadata.Name = o.Name
		}
		p.Default()
		info, err := usablePool(p)
		if err != nil {
			m.warnOnce(string(datastore.KindIPPool)+"/"+o.Name, o.Revision, "ipam: ignoring invalid IP pool; fix it with twill apply -f", "pool", p.Metadata.Name, "err", err)
			continue
		}
		out = append(out, info)
	}
	return out, nil
}

// usablePool checks a defaulted pool and parses its CIDR and selector.
func usablePool(p api.IPPool) (*poolInfo, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	pfx, err := p.Prefix()
	if err != nil {
		return nil, err
	}
	sel, err := api.ParseSelector(p.Spec.NodeSelector)
	if err != nil {
		return nil, fmt.Errorf("nodeSelector: %w", err)
	}
	if p.Spec.BlockSize < pfx.Bits() || p.Spec.BlockSize > pfx.Addr().BitLen() ||
		pfx.Addr().BitLen()-p.Spec.BlockSize > maxBlockHostBits {
		return nil, fmt.Errorf("blockSize %d does not fit cidr %s", p.Spec.BlockSize, pfx)
	}
	return &poolInfo{name: p.Metadata.Name, pool: p, prefix: pfx.Masked(), blockBits: p.Spec.BlockSize, sel: sel}, nil
}

// warnOnce logs a warning about a stored object once per revision of it.
func (m *IPAM) warnOnce(key, rev string, msg string, args ...any) {
	m.mu.Lock()
	prev, seen := m.warned[key]
	seen = seen && prev == rev
	m.warned[key] = rev
	m.mu.Unlock()
	if !seen {
		m.log.Warn(msg, append(args, "object", key)...)
	}
}

// snapshot returns pools, node's labels and the config, from the cache when
// it is younger than the TTL and fresh is false.
func (m *IPAM) snapshot(ctx context.Context, node string, fresh bool) (*snapshot, error) {
	now := time.Now()
	m.mu.Lock()
	pools, poolsAt := m.pools, m.poolsAt
	le, haveLabels := m.labels[node]
	cfg, cfgAt := m.config, m.configAt
	m.mu.Unlock()

	if fresh || pools == nil || m.stale(poolsAt, now) {
		p, err := m.readPools(ctx)
		if err != nil {
			return nil, err
		}
		pools = p
		m.mu.Lock()
		m.pools, m.poolsAt = p, now
		m.mu.Unlock()
	}
	if node != "" && (fresh || !haveLabels || m.stale(le.at, now)) {
		n, err := datastore.GetObject[api.Node](ctx, m.s, datastore.KindNode, node)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			le = labelEntry{at: now}
		case err != nil:
			return nil, fmt.Errorf("ipam: read node %s: %w", node, err)
		default:
			le = labelEntry{labels: n.Value.Metadata.Labels, at: now}
		}
		m.mu.Lock()
		m.labels[node] = le
		m.mu.Unlock()
	}
	if fresh || m.stale(cfgAt, now) {
		c, err := m.readConfig(ctx)
		if err != nil {
			return nil, err
		}
		cfg = c
		m.mu.Lock()
		m.config, m.configAt = c, now
		m.mu.Unlock()
	}
	return &snapshot{pools: pools, labels: le.labels, config: cfg}, nil
}

func (m *IPAM) readConfig(ctx context.Context) (api.IPAMConfig, error) {
	o, err := datastore.GetObject[api.IPAMConfig](ctx, m.s, datastore.KindIPAMConfig, datastore.IPAMConfigName)
	if errors.Is(err, datastore.ErrNotFound) {
		return api.IPAMConfig{}, nil
	}
	if err != nil {
		return api.IPAMConfig{}, fmt.Errorf("ipam: read IPAM config: %w", err)
	}
	return o.Value, nil
}

// eligible returns the pools that may serve node for use: enabled, matching
// the node's labels, allowing use, and among names when names is set (in
// that order; else by pool name).
func eligible(sn *snapshot, use api.IPPoolUse, names []string) ([]*poolInfo, error) {
	ok := func(p *poolInfo) bool {
		return p.enabled() && p.sel.Matches(sn.labels) && p.pool.Allows(use)
	}
	if len(names) == 0 {
		var out []*poolInfo
		for _, p := range sn.pools {
			if ok(p) {
				out = append(out, p)
			}
		}
		return out, nil
	}
	var out []*poolInfo
	for _, n := range names {
		i := slices.IndexFunc(sn.pools, func(p *poolInfo) bool { return p.name == n })
		if i < 0 {
			return nil, fmt.Errorf("ipam: IP pool %q does not exist or is invalid: name an existing pool: %w", n, datastore.ErrNotFound)
		}
		if ok(sn.pools[i]) {
			out = append(out, sn.pools[i])
		}
	}
	return out, nil
}

func poolFor(pools []*poolInfo, b netip.Prefix) *poolInfo {
	for _, p := range pools {
		if p.holds(b) {
			return p
		}
	}
	return nil
}

func poolNames(pools []*poolInfo) []string {
	out := make([]string, 0, len(pools))
	for _, p := range pools {
		out = append(out, p.name)
	}
	return out
}

// retry runs attempt until it returns anything but a conflict, at most
// maxAttempts times, sleeping a short random while between attempts.
func (m *IPAM) retry(ctx context.Context, what string, attempt func(n int) error) error {
	return m.retryN(ctx, m.maxAttempts, what, attempt)
}

// retryN is retry with at most attempts attempts.
func (m *IPAM) retryN(ctx context.Context, attempts int, what string, attempt func(n int) error) error {
	attempts = max(1, min(attempts, m.maxAttempts))
	var last error
	for n := 0; n < attempts; n++ {
		if n > 0 {
			d := min(backoffBase<<min(n-1, 8), backoffCap)
			t := time.NewTimer(rand.N(d) + d/4)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("ipam: %s: %w", what, ctx.Err())
			case <-t.C:
			}
		}
		err := attempt(n)
		if err == nil || !errors.Is(err, datastore.ErrConflict) {
			return err
		}
		last = err
	}
	return fmt.Errorf("ipam: %s: still conflicting with other writers after %d attempts, try again: %w", what, attempts, last)
}

// cleanupContext returns a context for writes that must run even though
// ctx may have ended, bounded by cleanupTimeout.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}
