// Package ipam hands out pod and tunnel addresses from IP pools, one block
// at a time, keeping all of its state in a datastore.Store.
//
// # State
//
// A pool is cut into blocks of its blockSize. A block (api.Block at
// datastore.BlockKey) records its affinity, the node it belongs to, and the
// addresses allocated from it, sorted by ordinal. For every block with an
// affinity an api.BlockAffinity exists at datastore.AffinityKey(node, cidr).
// An api.Handle at datastore.HandleKey(id) counts, per block, the addresses
// the handle holds there. The IPAM config (strict affinity, a cap on blocks
// per node) lives at datastore.IPAMConfigKey; a missing config means the
// defaults.
//
// # Invariants
//
//   - No address is handed out twice. An address is taken by rewriting its
//     block in a transaction that expects the revision the block was read at
//     (datastore.MustNotExist when the block is created). A racing writer
//     makes the transaction fail with datastore.ErrConflict; IPAM then
//     re-reads and plans again.
//   - A handle's record matches its blocks: the handle is written in the same
//     transaction as every block whose allocations of that handle change,
//     with a compare-and-swap on the handle too.
//   - A block's affinity and its affinity key agree: both are written in the
//     same transaction, and that transaction expects the block's revision.
//   - Release removes only allocations that carry the released handle (or,
//     for ReleaseIP, the one address asked for); it never frees another
//     handle's address.
//   - An empty block that is not pinned is deleted, with its affinity, in the
//     transaction that empties it. Pinned blocks keep their affinity.
//
// Every write is one transaction, all or nothing. Transactions that fail
// with datastore.ErrConflict are re-planned from fresh reads and retried, a
// bounded number of times with a small jittered backoff; after that the
// error wraps datastore.ErrConflict. datastore.ErrUnavailable is not retried
// and comes back wrapped.
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
// # Group commit
//
// Allocations for one node contend for the same blocks, so an IPAM runs
// them one transaction at a time; concurrent Allocate calls for that node
// wait in a queue, and whoever runs next takes the waiting calls along into
// the same transaction. A burst of pod starts on a node thus costs a few
// transactions rather than one each, and each call still gets all of its
// addresses or none.
//
// # Caching
//
// An IPAM remembers the blocks it has read or written, with their
// revisions, and uses those revisions as the expectations of its next
// transaction. When the cache is current, which is the common case of one
// agent allocating from its own node's blocks, an allocation costs one
// transaction and no reads; a stale entry costs one conflict and one re-read,
// never a wrong answer. Pools, node labels and the IPAM config are cached for
// the cache TTL (WithCacheTTL, default one second): a pool that is disabled
// stops being used by a running IPAM within that time. Exhaustion is only
// reported after everything was read afresh.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// Defaults of the options.
const (
	DefaultCacheTTL    = time.Second
	DefaultMaxAttempts = 100
	// MaxCount is the largest number of addresses one Allocate may ask for;
	// it keeps a request within one transaction of etcd's default size.
	MaxCount = 1024
)

const (
	backoffBase = 200 * time.Microsecond
	backoffCap  = 5 * time.Millisecond
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

// WithLogger sets the logger for warnings about malformed stored state.
func WithLogger(l *slog.Logger) Option {
	return func(m *IPAM) {
		if l != nil {
			m.log = l
		}
	}
}

// IPAM allocates addresses from the pools in a store. It is safe for
// concurrent use; allocations for the same node are serialised within one
// IPAM, since they would otherwise race for the same block.
type IPAM struct {
	s           datastore.Store
	ttl         time.Duration
	maxAttempts int
	log         *slog.Logger

	mu       sync.Mutex
	queues   map[string]*nodeQueue
	warned   map[string]int64                  // key → revision already warned about
	blocks   map[string]*blockEntry            // canonical CIDR → entry
	byNode   map[string]map[string]*blockEntry // affinity → CIDR → entry
	fullAt   time.Time                         // last List of all blocks
	nodeAt   map[string]time.Time              // last load of a node's blocks
	pools    []*poolInfo
	poolsAt  time.Time
	labels   map[string]labelEntry
	config   api.IPAMConfig
	configAt time.Time
}

type labelEntry struct {
	labels map[string]string
	at     time.Time
}

// blockEntry is a block as read from (or written to) the store. Its block
// value is never modified in place: plans copy it.
type blockEntry struct {
	key    string
	prefix netip.Prefix
	block  api.Block
	rev    int64
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
		maxAttempts: DefaultMaxAttempts,
		log:         slog.Default(),
		queues:      map[string]*nodeQueue{},
		warned:      map[string]int64{},
		blocks:      map[string]*blockEntry{},
		byNode:      map[string]map[string]*blockEntry{},
		nodeAt:      map[string]time.Time{},
		labels:      map[string]labelEntry{},
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

// --- block cache -----------------------------------------------------------

// setLocked records e unless the cache already holds a newer revision.
func (m *IPAM) setLocked(e *blockEntry) {
	k := e.prefix.String()
	if old, ok := m.blocks[k]; ok {
		if old.rev > e.rev {
			return
		}
		if n := m.byNode[old.block.Affinity]; n != nil {
			delete(n, k)
		}
	}
	m.blocks[k] = e
	if a := e.block.Affinity; a != "" {
		n := m.byNode[a]
		if n == nil {
			n = map[string]*blockEntry{}
			m.byNode[a] = n
		}
		n[k] = e
	}
}

func (m *IPAM) dropLocked(k string) {
	if old, ok := m.blocks[k]; ok {
		if n := m.byNode[old.block.Affinity]; n != nil {
			delete(n, k)
		}
		delete(m.blocks, k)
	}
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

// decodeBlock turns a stored block into an entry.
func decodeBlock(kv datastore.KV) (*blockEntry, error) {
	o, err := datastore.Decode[api.Block](kv)
	if err != nil {
		return nil, fmt.Errorf("ipam: block %s is corrupt (fix or delete the key): %w", kv.Key, err)
	}
	p, err := netip.ParsePrefix(o.Value.CIDR)
	if err != nil {
		p, err = netip.ParsePrefix(datastore.SegmentCIDR(strings.TrimPrefix(kv.Key, datastore.BlocksPrefix)))
	}
	if err != nil || p != p.Masked() || blockSize(p) == 0 {
		return nil, fmt.Errorf("ipam: block %s has no valid cidr %q (fix or delete the key): %w", kv.Key, o.Value.CIDR, ErrNotABlock)
	}
	b := o.Value
	if b.CIDR == "" {
		b.CIDR = p.String()
	}
	slices.SortFunc(b.Allocations, func(x, y api.Allocation) int { return x.Ordinal - y.Ordinal })
	return &blockEntry{key: kv.Key, prefix: p, block: b, rev: kv.Revision}, nil
}

// readBlock reads one block afresh and records it; nil when it does not
// exist.
func (m *IPAM) readBlock(ctx context.Context, p netip.Prefix) (*blockEntry, error) {
	kv, err := m.s.Get(ctx, datastore.BlockKey(p.String()))
	if errors.Is(err, datastore.ErrNotFound) {
		m.mu.Lock()
		m.dropLocked(p.String())
		m.mu.Unlock()
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: read block %s: %w", p, err)
	}
	e, err := decodeBlock(kv)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.setLocked(e)
	m.mu.Unlock()
	return e, nil
}

// loadAll lists every block and replaces the cache with the result, keeping
// entries this IPAM wrote after the list was read.
func (m *IPAM) loadAll(ctx context.Context) error {
	now := time.Now()
	kvs, rev, err := m.s.List(ctx, datastore.BlocksPrefix)
	if err != nil {
		return fmt.Errorf("ipam: list blocks: %w", err)
	}
	fresh := make(map[string]*blockEntry, len(kvs))
	for _, kv := range kvs {
		e, err := decodeBlock(kv)
		if err != nil {
			m.warnOnce(kv.Key, kv.Revision, "ipam: ignoring malformed block", "err", err)
			continue
		}
		fresh[e.prefix.String()] = e
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, old := range m.blocks {
		if _, ok := fresh[k]; !ok && old.rev <= rev {
			m.dropLocked(k)
		}
	}
	for _, e := range fresh {
		m.setLocked(e)
	}
	m.fullAt = now
	return nil
}

// nodeBlockLimit is how many affinities loadNode reads one by one; above it,
// listing all blocks is cheaper.
const nodeBlockLimit = 16

// loadNode re-reads node's affinities and its blocks.
func (m *IPAM) loadNode(ctx context.Context, node string) error {
	now := time.Now()
	affs, listRev, err := datastore.ListObjects[api.BlockAffinity](ctx, m.s, datastore.AffinityPrefix(node))
	if err != nil {
		return fmt.Errorf("ipam: list affinities of node %s: %w", node, err)
	}
	if len(affs) > nodeBlockLimit {
		return m.loadAll(ctx)
	}
	seen := map[string]bool{}
	for _, a := range affs {
		p, err := netip.ParsePrefix(a.Value.CIDR)
		if err != nil {
			p, err = netip.ParsePrefix(datastore.SegmentCIDR(strings.TrimPrefix(a.Key, datastore.AffinityPrefix(node))))
		}
		if err != nil {
			m.warnOnce(a.Key, a.Revision, "ipam: ignoring malformed block affinity", "err", err)
			continue
		}
		e, err := m.readBlock(ctx, p)
		if err != nil {
			return err
		}
		if e == nil {
			m.warnOnce(a.Key, a.Revision, "ipam: block affinity without a block (delete the key, or run ReleaseNodeAffinities for the node)")
			continue
		}
		seen[e.prefix.String()] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, e := range m.byNode[node] {
		if !seen[k] && e.rev <= listRev {
			// Not affine any more (or gone): forget it; a later read
			// restores it if it still exists.
			m.dropLocked(k)
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
		return m.loadAll(ctx)
	}
	return nil
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
	objs, _, err := datastore.ListObjects[api.IPPool](ctx, m.s, datastore.PoolsPrefix)
	if err != nil {
		return nil, fmt.Errorf("ipam: list IP pools: %w", err)
	}
	out := make([]*poolInfo, 0, len(objs))
	for _, o := range objs {
		p := o.Value
		if p.Metadata.Name == "" {
			p.Metadata.Name = strings.TrimPrefix(o.Key, datastore.PoolsPrefix)
		}
		p.Default()
		info, err := usablePool(p)
		if err != nil {
			m.warnOnce(o.Key, o.Revision, "ipam: ignoring invalid IP pool; fix it with twill apply -f", "pool", p.Metadata.Name, "err", err)
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

// warnOnce logs a warning about a stored key once per revision of it.
func (m *IPAM) warnOnce(key string, rev int64, msg string, args ...any) {
	m.mu.Lock()
	seen := m.warned[key] == rev
	m.warned[key] = rev
	m.mu.Unlock()
	if !seen {
		m.log.Warn(msg, append(args, "key", key)...)
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
		n, err := datastore.GetObject[api.Node](ctx, m.s, datastore.NodeKey(node))
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
	o, err := datastore.GetObject[api.IPAMConfig](ctx, m.s, datastore.IPAMConfigKey)
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

// --- writes ----------------------------------------------------------------

// blockWrite is one block's part of a transaction.
type blockWrite struct {
	key    string
	prefix netip.Prefix
	block  api.Block
	expect int64 // revision read, or datastore.MustNotExist to create
	del    bool
	// affPut is the node whose affinity key is created with the block's
	// new affinity; affDel the node whose affinity key is removed.
	affPut       string
	affDel       string
	affDelExpect int64
	// entry is the cached entry the write started from; nil for a create.
	entry *blockEntry
}

// handleWrite is the handle's part of a transaction.
type handleWrite struct {
	id     string
	handle api.Handle
	expect int64
	del    bool
}

type writeSet struct {
	blocks  []*blockWrite
	handles []*handleWrite
}

// blockWriteFrom starts a write of the cached block e, with a copy of its
// allocations.
func blockWriteFrom(e *blockEntry) *blockWrite {
	b := e.block
	b.Allocations = slices.Clone(b.Allocations)
	return &blockWrite{key: e.key, prefix: e.prefix, block: b, expect: e.rev, entry: e}
}

// newBlockWrite starts the creation of block p with affinity to node ("" for
// none).
func newBlockWrite(p netip.Prefix, node string) *blockWrite {
	bw := &blockWrite{
		key:    datastore.BlockKey(p.String()),
		prefix: p,
		block: api.Block{
			TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock},
			CIDR:     p.String(),
			Affinity: node,
		},
		expect: datastore.MustNotExist,
		affPut: node,
	}
	return bw
}

// settle marks a block that lost allocations for deletion, with its
// affinity, when it is now empty and not pinned.
func (bw *blockWrite) settle() {
	if len(bw.block.Allocations) == 0 && !bw.block.Pinned && bw.expect != datastore.MustNotExist {
		bw.del = true
		if bw.block.Affinity != "" {
			bw.affDel = bw.block.Affinity
			// The affinity key changes only together with the block, and
			// this transaction expects the block's revision, so the
			// affinity cannot have changed since the block was read.
			bw.affDelExpect = datastore.AnyRevision
		}
	}
}

func newHandle(id string) api.Handle {
	return api.Handle{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindHandle},
		ID:       id,
		Blocks:   map[string]int{},
	}
}

// commit applies ws in one transaction and records the result in the cache.
func (m *IPAM) commit(ctx context.Context, ws *writeSet) error {
	ops := make([]datastore.Op, 0, 2*len(ws.blocks)+1)
	for _, bw := range ws.blocks {
		if bw.del {
			ops = append(ops, datastore.Delete(bw.key, bw.expect))
		} else {
			v, err := datastore.Encode(bw.block)
			if err != nil {
				return err
			}
			ops = append(ops, datastore.Put(bw.key, v, bw.expect))
		}
		if bw.affDel != "" {
			ops = append(ops, datastore.Delete(datastore.AffinityKey(bw.affDel, bw.block.CIDR), bw.affDelExpect))
		}
		if bw.affPut != "" {
			v, err := datastore.Encode(api.BlockAffinity{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlockAffinity},
				Node:     bw.affPut,
				CIDR:     bw.block.CIDR,
			})
			if err != nil {
				return err
			}
			ops = append(ops, datastore.Put(datastore.AffinityKey(bw.affPut, bw.block.CIDR), v, datastore.MustNotExist))
		}
	}
	for _, h := range ws.handles {
		key := datastore.HandleKey(h.id)
		if h.del {
			ops = append(ops, datastore.Delete(key, h.expect))
		} else {
			v, err := datastore.Encode(h.handle)
			if err != nil {
				return err
			}
			ops = append(ops, datastore.Put(key, v, h.expect))
		}
	}
	if len(ops) == 0 {
		return nil
	}
	rev, err := m.s.Txn(ctx, ops...)
	if err != nil {
		return fmt.Errorf("ipam: write %s: %w", describe(ws), err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, bw := range ws.blocks {
		if bw.del {
			m.dropLocked(bw.prefix.String())
			continue
		}
		m.setLocked(&blockEntry{key: bw.key, prefix: bw.prefix, block: bw.block, rev: rev})
	}
	return nil
}

func describe(ws *writeSet) string {
	var parts []string
	for _, bw := range ws.blocks {
		parts = append(parts, "block "+bw.prefix.String())
	}
	for i, h := range ws.handles {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("%d more handles", len(ws.handles)-i))
			break
		}
		parts = append(parts, fmt.Sprintf("handle %q", h.id))
	}
	return strings.Join(parts, ", ")
}

// refresh re-reads the blocks of a write set that conflicted.
func (m *IPAM) refresh(ctx context.Context, ws *writeSet) error {
	for _, bw := range ws.blocks {
		if _, err := m.readBlock(ctx, bw.prefix); err != nil {
			return err
		}
	}
	return nil
}

// retry runs attempt until it returns anything but a conflict, at most
// maxAttempts times, sleeping a short random while between attempts.
func (m *IPAM) retry(ctx context.Context, what string, attempt func(n int) error) error {
	var last error
	for n := 0; n < m.maxAttempts; n++ {
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
	return fmt.Errorf("ipam: %s: still conflicting with other writers after %d attempts, try again: %w", what, m.maxAttempts, last)
}

// readHandle reads a handle; a missing handle comes back empty with
// expectation MustNotExist.
func (m *IPAM) readHandle(ctx context.Context, id string) (api.Handle, int64, error) {
	o, err := datastore.GetObject[api.Handle](ctx, m.s, datastore.HandleKey(id))
	if errors.Is(err, datastore.ErrNotFound) {
		return newHandle(id), datastore.MustNotExist, nil
	}
	if err != nil {
		return api.Handle{}, 0, fmt.Errorf("ipam: read handle %q: %w", id, err)
	}
	h := o.Value
	if h.Blocks == nil {
		h.Blocks = map[string]int{}
	}
	return h, o.Revision, nil
}
