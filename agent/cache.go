package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

// cache is the agent's copy of the datastore objects its plan depends on:
// every node and pool, a summary of every block (cachedBlock), the IPAM
// config and the local node's workload endpoints. It is filled by a list and
// kept current by a watch. Objects are replaced, never modified in place, so
// slices handed out by planInput stay valid after later changes.
type cache struct {
	local string
	// synced is set once a full list succeeded.
	synced    bool
	nodes     map[string]api.Node
	pools     map[string]api.IPPool
	blocks    map[string]cachedBlock
	workloads map[string]api.WorkloadEndpoint
	config    api.IPAMConfig
	// revs holds, per key, the revision of the last change applied
	// (writes and deletions), so that a watch event older than a write the
	// agent made itself does not undo it.
	revs map[string]int64
	log  *slog.Logger
}

func newCache(local string, log *slog.Logger) *cache {
	c := &cache{local: local, log: log}
	c.clear()
	return c
}

func (c *cache) clear() {
	c.nodes = map[string]api.Node{}
	c.pools = map[string]api.IPPool{}
	c.blocks = map[string]cachedBlock{}
	c.workloads = map[string]api.WorkloadEndpoint{}
	c.config = api.IPAMConfig{}
	c.revs = map[string]int64{}
}

// keyKind classifies a datastore key by what the cache does with it.
type keyKind int

const (
	keyIgnored keyKind = iota
	keyNode
	keyPool
	keyBlock
	keyWorkload
	keyConfig
)

func (c *cache) kind(key string) keyKind {
	switch {
	case strings.HasPrefix(key, datastore.NodesPrefix):
		return keyNode
	case strings.HasPrefix(key, datastore.PoolsPrefix):
		return keyPool
	case strings.HasPrefix(key, datastore.BlocksPrefix):
		return keyBlock
	case strings.HasPrefix(key, datastore.WorkloadPrefix(c.local)):
		return keyWorkload
	case key == datastore.IPAMConfigKey:
		return keyConfig
	}
	return keyIgnored
}

// reset replaces the cache's content with a full list.
func (c *cache) reset(kvs []datastore.KV) {
	c.clear()
	for _, kv := range kvs {
		c.put(kv, kv.Revision)
	}
	c.synced = true
}

// replace takes over nc's content, a complete list, and marks c synced.
func (c *cache) replace(nc *cache) {
	c.nodes, c.pools, c.blocks, c.workloads = nc.nodes, nc.pools, nc.blocks, nc.workloads
	c.config, c.revs = nc.config, nc.revs
	c.synced = true
}

// dropPrefix forgets every key under prefix, as if it had never been
// listed (a list that starts over).
func (c *cache) dropPrefix(prefix string) {
	for key := range c.revs {
		if strings.HasPrefix(key, prefix) {
			c.delete(key, c.kind(key))
			delete(c.revs, key)
		}
	}
}

// apply applies one change at revision rev (the store revision of the
// change) and reports whether it touched anything the plan or the status
// depends on. A change older than the last one applied to its key is
// dropped.
func (c *cache) apply(ev datastore.Event, rev int64) bool {
	key := ev.KV.Key
	k := c.kind(key)
	if k == keyIgnored {
		return false
	}
	if rev == 0 {
		rev = ev.KV.Revision
	}
	if last, ok := c.revs[key]; ok && rev <= last {
		return false
	}
	if ev.Type == datastore.EventDelete {
		c.delete(key, k)
		c.revs[key] = rev
		return true
	}
	return c.put(ev.KV, rev)
}

func (c *cache) delete(key string, k keyKind) {
	switch k {
	case keyNode:
		delete(c.nodes, key)
	case keyPool:
		delete(c.pools, key)
	case keyBlock:
		delete(c.blocks, key)
	case keyWorkload:
		delete(c.workloads, key)
	case keyConfig:
		c.config = api.IPAMConfig{}
	}
}

// put decodes and stores one key. A value that does not decode removes the
// key (with a warning): the planner cannot use it.
func (c *cache) put(kv datastore.KV, rev int64) bool {
	k := c.kind(kv.Key)
	if k == keyIgnored {
		return false
	}
	c.revs[kv.Key] = rev
	var err error
	switch k {
	case keyNode:
		var o datastore.Object[api.Node]
		if o, err = datastore.Decode[api.Node](kv); err == nil {
			c.nodes[kv.Key] = o.Value
		}
	case keyPool:
		var o datastore.Object[api.IPPool]
		if o, err = datastore.Decode[api.IPPool](kv); err == nil {
			c.pools[kv.Key] = o.Value
		}
	case keyBlock:
		var b cachedBlock
		if b, err = decodeBlock(kv); err == nil {
			c.blocks[kv.Key] = b
		}
	case keyWorkload:
		var o datastore.Object[api.WorkloadEndpoint]
		if o, err = datastore.Decode[api.WorkloadEndpoint](kv); err == nil {
			c.workloads[kv.Key] = o.Value
		}
	case keyConfig:
		var o datastore.Object[api.IPAMConfig]
		if o, err = datastore.Decode[api.IPAMConfig](kv); err == nil {
			c.config = o.Value
		}
	}
	if err != nil {
		if c.log != nil {
			c.log.Warn("ignoring a datastore object that does not decode; fix or delete it", "key", kv.Key, "err", err)
		}
		c.delete(kv.Key, k)
	}
	return true
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

// block returns the block the planner sees: b without the allocations it
// does not read.
func (b cachedBlock) block() api.Block {
	return api.Block{CIDR: b.cidr, Affinity: b.affinity, Pinned: b.pinned, Allocations: b.borrowed}
}

// localNode returns the local node as cached.
func (c *cache) localNode() (api.Node, bool) {
	n, ok := c.nodes[datastore.NodeKey(c.local)]
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
// and block, and the workloads recorded for the local node, in key order,
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
