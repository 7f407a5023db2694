package agent

import (
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

// cachedKinds are the kinds the agent lists and watches, each on its own.
// Workload endpoints are listed for the local node only (LabelNode).
var cachedKinds = []datastore.Kind{datastore.KindIPPool, datastore.KindNode, datastore.KindBlock,
	datastore.KindIPAMConfig, datastore.KindWorkload}

// ownWriteTTL bounds how long an own write (see ownWrite) may hold back
// the watch's events of its object when the watch never shows it.
const ownWriteTTL = time.Minute

// objKey addresses one cached object.
type objKey struct {
	kind datastore.Kind
	name string
}

// ownWrite is a write the agent made itself (its Node, its endpoint
// records) and put into the cache at once, before the kind's watch shows
// it. Until the watch does, the watch's events of the object are older than
// the write and are dropped, so that they cannot undo it for a moment.
// Revisions are opaque, so "older" is known from the order of the watch
// alone: each object's events arrive in order, so every event before the
// write's own is older.
type ownWrite struct {
	// staged: the record is in the cache but its write has not returned.
	staged bool
	// deleted: the write removed the object; a put event until the
	// deletion's event is older.
	deleted bool
	// rev is the revision the write returned (for a put) or the revision
	// the object was deleted at (for a deletion).
	rev string
	// seq orders the write against the kind's lists (cache.seq when it
	// returned): a list that started after it reflects it.
	seq uint64
	// at is when the write returned, for ownWriteTTL.
	at time.Time
}

// cache is the agent's copy of the datastore objects its plan depends on:
// every node and pool, a summary of every block (cachedBlock), the IPAM
// config and the local node's workload endpoints, each map by object name.
// Each kind is filled by a list and kept current by a watch of its own; a
// list replaces its kind whole. Objects are replaced, never modified in
// place, so slices handed out by planInput stay valid after later changes.
type cache struct {
	local string
	// listed records the kinds that were listed at least once.
	listed    map[datastore.Kind]bool
	nodes     map[string]api.Node
	pools     map[string]api.IPPool
	blocks    map[string]cachedBlock
	workloads map[string]api.WorkloadEndpoint
	config    api.IPAMConfig
	// own holds the agent's own writes the watch has not shown yet.
	own map[objKey]*ownWrite
	// seq counts the agent's own writes that returned.
	seq uint64
	log *slog.Logger
}

func newCache(local string, log *slog.Logger) *cache {
	c := &cache{local: local, log: log, listed: map[datastore.Kind]bool{}, own: map[objKey]*ownWrite{}}
	for _, k := range cachedKinds {
		c.clearKind(k)
	}
	return c
}

// synced reports whether every cached kind was listed at least once: only
// then may the agent plan.
func (c *cache) synced() bool {
	for _, k := range cachedKinds {
		if !c.listed[k] {
			return false
		}
	}
	return true
}

// unsynced names the kinds not listed yet, for the readiness reason.
func (c *cache) unsynced() []string {
	var out []string
	for _, k := range cachedKinds {
		if !c.listed[k] {
			out = append(out, string(k))
		}
	}
	return out
}

// clearKind empties kind.
func (c *cache) clearKind(kind datastore.Kind) {
	switch kind {
	case datastore.KindNode:
		c.nodes = map[string]api.Node{}
	case datastore.KindIPPool:
		c.pools = map[string]api.IPPool{}
	case datastore.KindBlock:
		c.blocks = map[string]cachedBlock{}
	case datastore.KindWorkload:
		c.workloads = map[string]api.WorkloadEndpoint{}
	case datastore.KindIPAMConfig:
		c.config = api.IPAMConfig{}
	}
}

// keeps reports whether the cache holds objects of kind named name.
func (c *cache) keeps(kind datastore.Kind, name string) bool {
	switch kind {
	case datastore.KindNode, datastore.KindIPPool, datastore.KindBlock, datastore.KindWorkload:
		return true
	case datastore.KindIPAMConfig:
		return name == datastore.IPAMConfigName
	}
	return false
}

// mine reports whether a workload endpoint's labels put it on the local
// node.
func (c *cache) mine(labels map[string]string) bool {
	return labels[datastore.LabelNode] == c.local
}

// has reports whether the cache holds kind/name.
func (c *cache) has(kind datastore.Kind, name string) bool {
	switch kind {
	case datastore.KindNode:
		_, ok := c.nodes[name]
		return ok
	case datastore.KindIPPool:
		_, ok := c.pools[name]
		return ok
	case datastore.KindBlock:
		_, ok := c.blocks[name]
		return ok
	case datastore.KindWorkload:
		_, ok := c.workloads[name]
		return ok
	case datastore.KindIPAMConfig:
		return c.config != api.IPAMConfig{}
	}
	return false
}

// listing is one list of a kind in progress, filled without the agent's
// lock: a new cache of which only that kind is used, and the revisions of
// the objects the agent writes itself (its Node, its endpoints), which the
// swap compares with its own writes.
type listing struct {
	kind datastore.Kind
	into *cache
	revs map[string]string
	// startSeq is the cache's seq when the list started.
	startSeq uint64
	n        int
}

// newListing starts a list of kind; c.mu (the agent's) is held.
func (c *cache) newListing(kind datastore.Kind) *listing {
	return &listing{kind: kind, into: newCache(c.local, c.log), revs: map[string]string{}, startSeq: c.seq}
}

// add puts one page of listed objects into l.
func (l *listing) add(kvs []datastore.KV) {
	for _, kv := range kvs {
		if kv.Kind == "" {
			kv.Kind = l.kind
		}
		if kv.Kind != l.kind || !l.into.keeps(kv.Kind, kv.Name) {
			continue
		}
		if kv.Kind == datastore.KindWorkload && !l.into.mine(kv.Labels) {
			continue
		}
		if kv.Kind == datastore.KindWorkload || (kv.Kind == datastore.KindNode && kv.Name == l.into.local) {
			l.revs[kv.Name] = kv.Revision
		}
		l.into.put(kv)
		l.n++
	}
}

// restart drops what l holds: the store started the list over.
func (l *listing) restart() {
	l.into.clearKind(l.kind)
	clear(l.revs)
	l.n = 0
}

// replace makes l, a complete list, the content of its kind and marks the
// kind listed. The agent's own writes that the list may predate (they
// returned after it started, and the list does not hold them) are kept, at
// most ownWriteTTL: the watch from the list's revision shows them.
func (c *cache) replace(l *listing, now time.Time) {
	kind := l.kind
	prev := &cache{nodes: c.nodes, pools: c.pools, blocks: c.blocks, workloads: c.workloads, config: c.config}
	switch kind {
	case datastore.KindNode:
		c.nodes = l.into.nodes
	case datastore.KindIPPool:
		c.pools = l.into.pools
	case datastore.KindBlock:
		c.blocks = l.into.blocks
	case datastore.KindWorkload:
		c.workloads = l.into.workloads
	case datastore.KindIPAMConfig:
		c.config = l.into.config
	}
	for k, w := range c.own {
		if k.kind != kind {
			continue
		}
		rev, listed := l.revs[k.name]
		drop := !w.staged && (w.seq <= l.startSeq || now.Sub(w.at) > ownWriteTTL ||
			(!w.deleted && listed && rev == w.rev) || (w.deleted && !listed))
		if drop {
			delete(c.own, k)
			continue
		}
		if w.deleted {
			c.remove(kind, k.name)
		} else {
			c.restoreFrom(prev, kind, k.name)
		}
	}
	c.listed[kind] = true
}

// restoreFrom copies kind/name from prev into c (or removes it when prev
// does not hold it).
func (c *cache) restoreFrom(prev *cache, kind datastore.Kind, name string) {
	switch kind {
	case datastore.KindNode:
		if v, ok := prev.nodes[name]; ok {
			c.nodes[name] = v
			return
		}
	case datastore.KindWorkload:
		if v, ok := prev.workloads[name]; ok {
			c.workloads[name] = v
			return
		}
	default:
		return
	}
	c.remove(kind, name)
}

// apply applies one watch event at time now and reports whether it changed
// anything the plan or the status depends on. Events of objects the cache
// does not keep, other nodes' workload endpoints and events older than an
// own write of the object are dropped.
func (c *cache) apply(ev datastore.Event, now time.Time) bool {
	kind, name := ev.KV.Kind, ev.KV.Name
	if !c.keeps(kind, name) {
		return false
	}
	k := objKey{kind, name}
	w := c.own[k]
	if kind == datastore.KindWorkload && ev.Type == datastore.EventPut && !c.mine(ev.KV.Labels) {
		if _, ok := c.workloads[name]; !ok && w == nil {
			return false
		}
		// Moved to another node: for this one it is gone.
		ev = datastore.Event{Type: datastore.EventDelete, KV: ev.KV}
	}
	if w != nil {
		switch {
		case !w.staged && now.Sub(w.at) > ownWriteTTL:
			delete(c.own, k)
		case w.staged:
			return false
		case w.deleted && ev.Type == datastore.EventDelete:
			delete(c.own, k)
		case !w.deleted && ev.Type == datastore.EventPut && ev.KV.Revision == w.rev:
			delete(c.own, k)
		default:
			return false
		}
	}
	if ev.Type == datastore.EventDelete {
		return c.remove(kind, name)
	}
	return c.put(ev.KV)
}

// putOwn stores an object the agent itself wrote (kv as the store returned
// it), ahead of the watch, at time now.
func (c *cache) putOwn(kv datastore.KV, now time.Time) bool {
	c.seq++
	c.own[objKey{kv.Kind, kv.Name}] = &ownWrite{rev: kv.Revision, seq: c.seq, at: now}
	return c.put(kv)
}

// removeOwn removes an object the agent itself deleted (at revision rev),
// ahead of the watch, at time now.
func (c *cache) removeOwn(kind datastore.Kind, name, rev string, now time.Time) bool {
	c.seq++
	c.own[objKey{kind, name}] = &ownWrite{deleted: true, rev: rev, seq: c.seq, at: now}
	return c.remove(kind, name)
}

// remove forgets kind/name and reports whether the cache held it.
func (c *cache) remove(kind datastore.Kind, name string) bool {
	if !c.has(kind, name) {
		return false
	}
	switch kind {
	case datastore.KindNode:
		delete(c.nodes, name)
	case datastore.KindIPPool:
		delete(c.pools, name)
	case datastore.KindBlock:
		delete(c.blocks, name)
	case datastore.KindWorkload:
		delete(c.workloads, name)
	case datastore.KindIPAMConfig:
		c.config = api.IPAMConfig{}
	}
	return true
}

// put decodes and stores one object and reports whether the cache changed.
// A value that does not decode removes the object (with a warning): the
// planner cannot use it.
func (c *cache) put(kv datastore.KV) bool {
	var err error
	changed := false
	switch kv.Kind {
	case datastore.KindNode:
		var o datastore.Object[api.Node]
		if o, err = datastore.Decode[api.Node](kv); err == nil {
			o.Value.Metadata.ResourceVersion = ""
			old, ok := c.nodes[kv.Name]
			changed = !ok || !reflect.DeepEqual(old, o.Value)
			c.nodes[kv.Name] = o.Value
		}
	case datastore.KindIPPool:
		var o datastore.Object[api.IPPool]
		if o, err = datastore.Decode[api.IPPool](kv); err == nil {
			o.Value.Metadata.ResourceVersion = ""
			old, ok := c.pools[kv.Name]
			changed = !ok || !reflect.DeepEqual(old, o.Value)
			c.pools[kv.Name] = o.Value
		}
	case datastore.KindBlock:
		var b cachedBlock
		if b, err = decodeBlock(kv); err == nil {
			old, ok := c.blocks[kv.Name]
			changed = !ok || !old.equal(b)
			c.blocks[kv.Name] = b
		}
	case datastore.KindWorkload:
		var o datastore.Object[api.WorkloadEndpoint]
		if o, err = datastore.Decode[api.WorkloadEndpoint](kv); err == nil {
			o.Value.Metadata.ResourceVersion = ""
			old, ok := c.workloads[kv.Name]
			changed = !ok || !reflect.DeepEqual(old, o.Value)
			c.workloads[kv.Name] = o.Value
		}
	case datastore.KindIPAMConfig:
		var o datastore.Object[api.IPAMConfig]
		if o, err = datastore.Decode[api.IPAMConfig](kv); err == nil {
			changed = c.config != o.Value
			c.config = o.Value
		}
	default:
		return false
	}
	if err != nil {
		if c.log != nil {
			c.log.Warn("ignoring a datastore object that does not decode; fix or delete it", "kind", kv.Kind, "name", kv.Name, "err", err)
		}
		return c.remove(kv.Kind, kv.Name)
	}
	return changed
}

// cachedBlock is what the agent keeps of an IPAM block: what the planner
// reads (CIDR, affinity and the addresses borrowed by other nodes) and what
// the status reads (the number of used addresses). A block holds one
// allocation, with its handle and attributes, per address in use; keeping
// them all would cost the agent memory in proportion to the cluster's pods
// (issue 7's 64 MiB at 100,000 pods), while the plan only routes the
// borrowed ones.
type cachedBlock struct {
	cidr     string
	affinity string
	pinned   bool
	// prefix is cidr parsed; invalid when it does not parse.
	prefix netip.Prefix
	// used is the number of allocations.
	used int
	// borrowed are the allocations the planner routes as borrowed, in the
	// block's order: those whose node attribute is set and is not the
	// block's affinity. Their attributes are reduced to the node.
	borrowed []api.Allocation
}

// equal reports whether b and o summarize the same block.
func (b cachedBlock) equal(o cachedBlock) bool {
	return b.cidr == o.cidr && b.affinity == o.affinity && b.pinned == o.pinned && b.prefix == o.prefix &&
		b.used == o.used && reflect.DeepEqual(b.borrowed, o.borrowed)
}

// block returns the block the planner sees: b without the allocations it
// does not read.
func (b cachedBlock) block() api.Block {
	return api.Block{CIDR: b.cidr, Affinity: b.affinity, Pinned: b.pinned, Allocations: b.borrowed}
}

// localNode returns the local node as cached.
func (c *cache) localNode() (api.Node, bool) {
	n, ok := c.nodes[c.local]
	return n, ok
}

// keysInOrder returns m's keys, sorted.
func keysInOrder[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// sortedValues returns m's values ordered by key.
func sortedValues[V any](m map[string]V) []V {
	keys := keysInOrder(m)
	out := make([]V, 0, len(keys))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

// planInput builds the planner's input from the cache: every node, pool
// and block, and the workloads recorded for the local node, in name order,
// with the VXLAN settings of the agent's flags. Pools get their defaults
// filled in (documents may leave fields out). Blocks carry only their
// borrowed allocations, the only ones the planner reads. It only reads c.
func planInput(c *cache, vxlan plan.VXLANConfig) plan.Input {
	in := plan.Input{
		LocalNode: c.local,
		Nodes:     sortedValues(c.nodes),
		Pools:     sortedValues(c.pools),
		VXLAN:     vxlan,
	}
	keys := keysInOrder(c.blocks)
	in.Blocks = make([]api.Block, len(keys))
	for i, k := range keys {
		in.Blocks[i] = c.blocks[k].block()
	}
	for i := range in.Pools {
		in.Pools[i].Default()
	}
	for _, w := range sortedValues(c.workloads) {
		if w.Spec.Node != "" && w.Spec.Node != c.local {
			continue
		}
		in.Workloads = append(in.Workloads, w)
	}
	return in
}

// blockAddrs is the number of addresses in a block.
func blockAddrs(p netip.Prefix) int {
	bits := p.Addr().BitLen() - p.Bits()
	if bits >= 30 {
		return 1 << 30
	}
	return 1 << bits
}

// poolRange is an eligible pool's range and block size.
type poolRange struct {
	cidr      netip.Prefix
	blockSize int
}

// eligiblePools returns the pools that may give node a workload address:
// enabled, IPv4, allowing Workload, nodeSelector matching its labels.
func eligiblePools(node api.Node, pools []api.IPPool) []poolRange {
	var out []poolRange
	for _, p := range pools {
		p.Default()
		if p.Spec.Disabled || !p.Allows(api.UseWorkload) {
			continue
		}
		pfx, err := p.Prefix()
		if err != nil || !pfx.Addr().Is4() || p.Spec.BlockSize < pfx.Bits() || p.Spec.BlockSize > 32 {
			continue
		}
		sel, err := api.ParseSelector(p.Spec.NodeSelector)
		if err != nil || !sel.Matches(node.Metadata.Labels) {
			continue
		}
		out = append(out, poolRange{cidr: pfx, blockSize: p.Spec.BlockSize})
	}
	return out
}

// poolHasRoom reports whether IPAM could still give the local node a
// workload address, judged from the cache: some eligible pool has a block
// of the node with a free address, a block nobody claimed yet (unless the
// node already holds maxBlocksPerNode blocks), or, unless strict affinity
// is on, a free address in another node's block.
func poolHasRoom(c *cache) bool {
	node, ok := c.localNode()
	if !ok {
		return false
	}
	blocks := sortedValues(c.blocks)
	owned := 0
	for _, b := range blocks {
		if b.affinity == c.local {
			owned++
		}
	}
	canClaim := c.config.MaxBlocksPerNode <= 0 || owned < c.config.MaxBlocksPerNode
	for _, pr := range eligiblePools(node, sortedValues(c.pools)) {
		inPool := 0
		for _, b := range blocks {
			bp := b.prefix
			if !bp.IsValid() || !pr.cidr.Contains(bp.Addr()) {
				continue
			}
			inPool++
			if b.used >= blockAddrs(bp) {
				continue
			}
			if b.affinity == c.local || !c.config.StrictAffinity {
				return true
			}
		}
		slots := pr.blockSize - pr.cidr.Bits()
		if canClaim && (slots >= 30 || inPool < 1<<slots) {
			return true
		}
	}
	return false
}
