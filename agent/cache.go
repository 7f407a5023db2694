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
// every node, pool and block, the IPAM config and the local node's workload
// endpoints. It is filled by a list and kept current by a watch. Objects are
// replaced, never modified in place, so slices handed out by planInput stay
// valid after later changes.
type cache struct {
	local string
	// synced is set once a full list succeeded.
	synced    bool
	nodes     map[string]api.Node
	pools     map[string]api.IPPool
	blocks    map[string]api.Block
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
	c.blocks = map[string]api.Block{}
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
		var o datastore.Object[api.Block]
		if o, err = datastore.Decode[api.Block](kv); err == nil {
			c.blocks[kv.Key] = o.Value
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

// localNode returns the local node as cached.
func (c *cache) localNode() (api.Node, bool) {
	n, ok := c.nodes[datastore.NodeKey(c.local)]
	return n, ok
}

// sortedValues returns m's values ordered by key.
func sortedValues[V any](m map[string]V) []V {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]V, 0, len(keys))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

// planInput builds the planner's input from the cache: every node, pool
// and block, and the workloads recorded for the local node, in key order,
// with the VXLAN settings of the agent's flags. Pools get their defaults
// filled in (documents may leave fields out). It only reads c.
func planInput(c *cache, vxlan plan.VXLANConfig) plan.Input {
	in := plan.Input{
		LocalNode: c.local,
		Nodes:     sortedValues(c.nodes),
		Pools:     sortedValues(c.pools),
		Blocks:    sortedValues(c.blocks),
		VXLAN:     vxlan,
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
		if b.Affinity == c.local {
			owned++
		}
	}
	canClaim := c.config.MaxBlocksPerNode <= 0 || owned < c.config.MaxBlocksPerNode
	for _, pr := range eligiblePools(node, sortedValues(c.pools)) {
		inPool := 0
		for _, b := range blocks {
			bp, err := b.Prefix()
			if err != nil || !pr.cidr.Contains(bp.Addr()) {
				continue
			}
			inPool++
			if len(b.Allocations) >= blockAddrs(bp) {
				continue
			}
			if b.Affinity == c.local || !c.config.StrictAffinity {
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
