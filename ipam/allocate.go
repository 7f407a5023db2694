package ipam

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// AllocateRequest asks for addresses for one handle on one node.
type AllocateRequest struct {
	// Handle identifies the owner (for a pod: container ID + "." + ifname).
	// A handle may hold several addresses; allocating again adds to it.
	Handle string
	// Node is the node the addresses are for; its blocks are used first.
	Node string
	// Use is the intended use; default api.UseWorkload.
	Use api.IPPoolUse
	// Attrs are recorded with each address; Attrs["node"] is always Node.
	Attrs map[string]string
	// Count is how many addresses to allocate; default 1, at most MaxCount.
	Count int
	// IP, when valid, asks for exactly this address (Count must be 1). It
	// must lie in an enabled pool; the pool's nodeSelector and allowedUses
	// are not checked, since an explicit address is the caller's choice.
	IP netip.Addr
	// Pools, when set, restricts the request to these pools, in this order.
	Pools []string
}

func (r AllocateRequest) normalize() (AllocateRequest, error) {
	if r.Handle == "" {
		return r, fmt.Errorf("ipam: allocate: set a handle (for a pod, its container ID and interface): %w", ErrInvalidRequest)
	}
	if r.Node == "" {
		return r, fmt.Errorf("ipam: allocate for handle %q: set the node the addresses are for: %w", r.Handle, ErrInvalidRequest)
	}
	if r.Use == "" {
		r.Use = api.UseWorkload
	}
	if r.Use != api.UseWorkload && r.Use != api.UseTunnel {
		return r, fmt.Errorf("ipam: allocate for handle %q: use %q is neither %s nor %s: %w", r.Handle, r.Use, api.UseWorkload, api.UseTunnel, ErrInvalidRequest)
	}
	if r.Count == 0 {
		r.Count = 1
	}
	if r.Count < 0 || r.Count > MaxCount {
		return r, fmt.Errorf("ipam: allocate for handle %q: count %d is outside 1..%d: %w", r.Handle, r.Count, MaxCount, ErrInvalidRequest)
	}
	if r.IP.IsValid() {
		r.IP = r.IP.Unmap()
		if r.Count != 1 {
			return r, fmt.Errorf("ipam: allocate %s for handle %q: a specific address is one address, set count to 1: %w", r.IP, r.Handle, ErrInvalidRequest)
		}
	}
	attrs := maps.Clone(r.Attrs)
	if attrs == nil {
		attrs = map[string]string{}
	}
	attrs[api.AttrNode] = r.Node
	r.Attrs = attrs
	return r, nil
}

// Allocate hands out req.Count addresses (or exactly req.IP) to req.Handle
// for req.Node, in one transaction: all of them or none. The addresses come
// back in the order they were chosen (the node's own blocks first).
//
// Without IP, the node's own blocks are filled first (in address order,
// lowest free ordinal first), then a new block is claimed from an eligible
// pool, then, unless strict affinity is on, addresses are borrowed from other
// blocks of eligible pools. When nothing is left the error is an
// *ExhaustedError. A Tunnel address is therefore the first free address of
// the node's block.
//
// With IP, the address must lie in an enabled pool (else
// *OutsidePoolsError) and be free (else *InUseError). A block that does not
// exist yet is created with affinity to the node.
//
// Concurrent calls for the same node are merged into one transaction
// (group commit); each still gets all of its addresses or none.
func (m *IPAM) Allocate(ctx context.Context, req AllocateRequest) ([]netip.Addr, error) {
	req, err := req.normalize()
	if err != nil {
		return nil, err
	}
	if !req.IP.IsValid() {
		addrs, err := m.allocateQueued(ctx, req)
		if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("ipam: allocate for node %s, handle %q: %w", req.Node, req.Handle, err)
		}
		return addrs, err
	}
	q := m.queue(req.Node)
	if err := q.lock(ctx); err != nil {
		return nil, fmt.Errorf("ipam: allocate %s for handle %q: %w", req.IP, req.Handle, err)
	}
	defer q.unlock()
	return m.allocateIP(ctx, req)
}

// claimMissLimit is how many claimed candidates may turn out to exist
// already before the list of all blocks is read again.
const claimMissLimit = 3

func (m *IPAM) allocateOne(ctx context.Context, req AllocateRequest) ([]netip.Addr, error) {
	out, err := m.allocateMany(ctx, []AllocateRequest{req})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// allocateMany allocates for several requests of one node, with the same
// use and pools and distinct handles, in one transaction.
func (m *IPAM) allocateMany(ctx context.Context, reqs []AllocateRequest) ([][]netip.Addr, error) {
	node := reqs[0].Node
	total := 0
	// New handles are the common case: expect them not to exist and read
	// them only when that expectation fails.
	hs := make([]api.Handle, len(reqs))
	hexps := make([]int64, len(reqs))
	for i, r := range reqs {
		total += r.Count
		hs[i], hexps[i] = newHandle(r.Handle), datastore.MustNotExist
	}
	what := fmt.Sprintf("allocate for node %s, handle %q", node, reqs[0].Handle)
	if len(reqs) > 1 {
		what = fmt.Sprintf("allocate for node %s, handles %q and %d more", node, reqs[0].Handle, len(reqs)-1)
	}
	fresh := false
	claimMiss := 0
	var out [][]netip.Addr
	err := m.retry(ctx, what, func(int) error {
		for {
			sn, err := m.snapshot(ctx, node, fresh)
			if err != nil {
				return err
			}
			pools, err := eligible(sn, reqs[0].Use, reqs[0].Pools)
			if err != nil {
				return err
			}
			if err := m.ensureNode(ctx, node, fresh); err != nil {
				return err
			}
			if !m.affineFree(node, pools, total) {
				if err := m.ensureAll(ctx, fresh || claimMiss >= claimMissLimit); err != nil {
					return err
				}
				if claimMiss >= claimMissLimit {
					claimMiss = 0
				}
			}
			ws, addrs, exh := m.plan(reqs, sn, pools, hs, hexps)
			if exh != nil {
				if !fresh {
					fresh = true
					continue
				}
				return exh
			}
			fresh = false
			err = m.commit(ctx, ws)
			if err == nil {
				out = addrs
				return nil
			}
			if !errors.Is(err, datastore.ErrConflict) {
				return err
			}
			// Re-read what the plan relied on.
			if rerr := m.refresh(ctx, ws); rerr != nil {
				return rerr
			}
			m.mu.Lock()
			for _, bw := range ws.blocks {
				if bw.expect == datastore.MustNotExist && m.blocks[bw.prefix.String()] != nil {
					claimMiss++
				}
			}
			m.mu.Unlock()
			for i, r := range reqs {
				var rerr error
				if hs[i], hexps[i], rerr = m.readHandle(ctx, r.Handle); rerr != nil {
					return rerr
				}
			}
			return err
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// affineFree reports whether node's cached blocks in pools have count free
// addresses.
func (m *IPAM) affineFree(node string, pools []*poolInfo, count int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	free := 0
	for _, e := range m.byNode[node] {
		if poolFor(pools, e.prefix) != nil {
			free += e.free()
		}
	}
	return free >= count
}

// planner builds one transaction for one or more requests of one node from
// the cache. It runs under IPAM.mu.
type planner struct {
	m       *IPAM
	node    string
	sn      *snapshot
	pools   []*poolInfo
	ws      *writeSet
	touched map[string]*blockWrite
	affine  []*blockEntry
	claimed []*blockWrite
	owned   int
	capHit  bool
	sorted  []*blockEntry
}

// write returns the write of cached block e, starting it if needed.
func (pl *planner) write(e *blockEntry) *blockWrite {
	k := e.prefix.String()
	if bw := pl.touched[k]; bw != nil {
		return bw
	}
	bw := blockWriteFrom(e)
	pl.touched[k] = bw
	pl.ws.blocks = append(pl.ws.blocks, bw)
	return bw
}

// free is the number of free addresses of e, counting this plan's takes.
func (pl *planner) free(e *blockEntry) int {
	if bw := pl.touched[e.prefix.String()]; bw != nil {
		return blockSize(bw.prefix) - len(bw.block.Allocations)
	}
	return e.free()
}

// plan decides, from the cache, which addresses each request gets and what
// the transaction writes. It returns an *ExhaustedError when the cache shows
// no room for all of them.
func (m *IPAM) plan(reqs []AllocateRequest, sn *snapshot, pools []*poolInfo, hs []api.Handle, hexps []int64) (*writeSet, [][]netip.Addr, *ExhaustedError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	node := reqs[0].Node
	pl := &planner{m: m, node: node, sn: sn, pools: pools, ws: &writeSet{}, touched: map[string]*blockWrite{}}
	pl.affine = m.affineLocked(node)
	pl.owned = len(pl.affine)
	out := make([][]netip.Addr, len(reqs))
	for i, r := range reqs {
		addrs, counts, short := pl.take(r)
		if short {
			exh := &ExhaustedError{Node: node, Pools: poolNames(pools), Use: r.Use, Strict: sn.config.StrictAffinity}
			if pl.capHit {
				exh.MaxBlocksPerNode = sn.config.MaxBlocksPerNode
			}
			return nil, nil, exh
		}
		out[i] = addrs
		h := hs[i]
		h.Blocks = maps.Clone(h.Blocks)
		if h.Blocks == nil {
			h.Blocks = map[string]int{}
		}
		for c, n := range counts {
			h.Blocks[c] += n
		}
		pl.ws.handles = append(pl.ws.handles, &handleWrite{id: r.Handle, handle: h, expect: hexps[i]})
	}
	return pl.ws, out, nil
}

// take plans req's addresses: the node's blocks, then new blocks, then
// (unless strict affinity) other blocks. It reports whether it fell short.
func (pl *planner) take(req AllocateRequest) ([]netip.Addr, map[string]int, bool) {
	need := req.Count
	var addrs []netip.Addr
	counts := map[string]int{}
	from := func(bw *blockWrite) {
		got := takeOrdinals(bw, need, req)
		need -= len(got)
		addrs = append(addrs, got...)
		if len(got) > 0 {
			counts[bw.block.CIDR] += len(got)
		}
	}
	// 1. The node's own blocks, including those this plan claims.
	for _, e := range pl.affine {
		if need == 0 {
			break
		}
		if pl.free(e) > 0 && poolFor(pl.pools, e.prefix) != nil {
			from(pl.write(e))
		}
	}
	for _, bw := range pl.claimed {
		if need == 0 {
			break
		}
		if blockSize(bw.prefix) > len(bw.block.Allocations) {
			from(bw)
		}
	}
	// 2. New blocks.
	maxBlocks := pl.sn.config.MaxBlocksPerNode
	for need > 0 {
		if maxBlocks > 0 && pl.owned >= maxBlocks {
			pl.capHit = true
			break
		}
		planned := make([]netip.Prefix, len(pl.claimed))
		for i, bw := range pl.claimed {
			planned[i] = bw.prefix
		}
		p, ok := pl.m.candidateLocked(pl.pools, pl.node, planned)
		if !ok {
			break
		}
		bw := newBlockWrite(p, pl.node)
		pl.touched[p.String()] = bw
		pl.ws.blocks = append(pl.ws.blocks, bw)
		pl.claimed = append(pl.claimed, bw)
		pl.owned++
		from(bw)
	}
	// 3. Other blocks, unless strict affinity forbids it.
	if need > 0 && !pl.sn.config.StrictAffinity {
		if pl.sorted == nil {
			pl.sorted = pl.m.sortedLocked()
		}
		for _, e := range pl.sorted {
			if need == 0 {
				break
			}
			if e.block.Affinity == pl.node || pl.free(e) == 0 || poolFor(pl.pools, e.prefix) == nil {
				continue
			}
			from(pl.write(e))
		}
	}
	return addrs, counts, need > 0
}

// takeOrdinals allocates up to need of bw's lowest free ordinals to req and
// returns their addresses.
func takeOrdinals(bw *blockWrite, need int, req AllocateRequest) []netip.Addr {
	size := blockSize(bw.prefix)
	used := make([]bool, size)
	for _, a := range bw.block.Allocations {
		if a.Ordinal >= 0 && a.Ordinal < size {
			used[a.Ordinal] = true
		}
	}
	var got []netip.Addr
	for o := 0; o < size && len(got) < need; o++ {
		if used[o] {
			continue
		}
		bw.block.Allocations = append(bw.block.Allocations, api.Allocation{Ordinal: o, Handle: req.Handle, Use: req.Use, Attrs: req.Attrs})
		got = append(got, ordinalAddr(bw.prefix, o))
	}
	slices.SortFunc(bw.block.Allocations, func(x, y api.Allocation) int { return x.Ordinal - y.Ordinal })
	return got
}

// candidateLocked picks a block to claim for node: the first pool (in
// order) with a block that exists in no form, visiting each pool's blocks in
// a permutation seeded by the node name. exclude lists blocks already
// planned.
func (m *IPAM) candidateLocked(pools []*poolInfo, node string, exclude []netip.Prefix) (netip.Prefix, bool) {
	for _, p := range pools {
		if c, ok := m.candidateInPoolLocked(p, node, exclude); ok {
			return c, true
		}
	}
	return netip.Prefix{}, false
}

// maxClaimWalk bounds the candidates visited in one pool.
const maxClaimWalk = 1 << 20

func (m *IPAM) candidateInPoolLocked(p *poolInfo, node string, exclude []netip.Prefix) (netip.Prefix, bool) {
	is4 := p.prefix.Addr().Is4()
	shift := p.prefix.Addr().BitLen() - p.blockBits
	mbits := min(p.blockBits-p.prefix.Bits(), 63)
	n := uint64(1) << mbits
	base := toU128(p.prefix.Addr())
	index := func(a netip.Addr) (uint64, bool) {
		d := toU128(a).sub(base).shr(shift)
		return d.lo, d.hi == 0 && d.lo < n
	}

	occupied := map[uint64]bool{}
	var ranges [][2]uint64 // [lo, hi) of candidates covered by larger blocks
	var occ uint64
	whole := false
	mark := func(b netip.Prefix) {
		if !p.prefix.Overlaps(b) {
			return
		}
		switch {
		case b.Bits() < p.prefix.Bits():
			whole = true
		case b.Bits() >= p.blockBits:
			if i, ok := index(b.Addr()); ok && !occupied[i] {
				occupied[i] = true
				occ++
			}
		default:
			lo, ok := index(b.Addr())
			if !ok {
				return
			}
			cnt := uint64(1) << min(p.blockBits-b.Bits(), 63)
			ranges = append(ranges, [2]uint64{lo, lo + cnt})
			occ += cnt
		}
	}
	for _, e := range m.blocks {
		mark(e.prefix)
	}
	for _, b := range exclude {
		mark(b)
	}
	if whole {
		return netip.Prefix{}, false
	}

	h1, h2 := nodeSeeds(node)
	mask := n - 1
	idx := h1 & mask
	stride := (h2 | 1) & mask // odd, so the walk visits every block once
	limit := n
	if occ < n-1 {
		limit = occ + 1 // at least one of that many distinct candidates is free
	}
	limit = min(limit, maxClaimWalk)
	for k := uint64(0); k < limit; k++ {
		free := !occupied[idx]
		for _, r := range ranges {
			if idx >= r[0] && idx < r[1] {
				free = false
				break
			}
		}
		if free {
			a := fromU128(base.add(u128{lo: idx}.shl(shift)), is4)
			return netip.PrefixFrom(a, p.blockBits), true
		}
		idx = (idx + stride) & mask
	}
	return netip.Prefix{}, false
}

// nodeSeeds derives the start and stride of node's walk over candidate
// blocks from its name.
func nodeSeeds(node string) (uint64, uint64) {
	f := fnv.New64a()
	f.Write([]byte(node))
	h1 := f.Sum64()
	f.Write([]byte{0, 's', 't', 'r', 'i', 'd', 'e'})
	return h1, f.Sum64()
}

// allocateIP allocates exactly req.IP.
func (m *IPAM) allocateIP(ctx context.Context, req AllocateRequest) ([]netip.Addr, error) {
	ip := req.IP
	err := m.retry(ctx, fmt.Sprintf("allocate %s for handle %q", ip, req.Handle), func(n int) error {
		sn, err := m.snapshot(ctx, req.Node, n > 0)
		if err != nil {
			return err
		}
		var pool *poolInfo
		for _, p := range sn.pools {
			if p.enabled() && p.prefix.Contains(ip) && (len(req.Pools) == 0 || slices.Contains(req.Pools, p.name)) {
				pool = p
				break
			}
		}
		if pool == nil {
			return &OutsidePoolsError{IP: ip, Pools: req.Pools}
		}
		bp := netip.PrefixFrom(ip, pool.blockBits).Masked()
		e, err := m.readBlock(ctx, bp)
		if err != nil {
			return err
		}
		var bw *blockWrite
		if e == nil {
			// The block does not exist in this pool's block size; an older
			// block of another size may hold the address or overlap.
			if err := m.loadAll(ctx); err != nil {
				return err
			}
			m.mu.Lock()
			var over []*blockEntry
			for _, x := range m.blocks {
				if x.prefix.Overlaps(bp) {
					over = append(over, x)
				}
			}
			owned := len(m.byNode[req.Node])
			m.mu.Unlock()
			for _, x := range over {
				if x.prefix.Contains(ip) {
					e = x
				}
			}
			switch {
			case e == nil && len(over) > 0:
				return fmt.Errorf("ipam: allocate %s: its block %s would overlap the existing block %s (left from another block size): release that block's addresses first: %w",
					ip, bp, over[0].prefix, ErrBlockInUse)
			case e == nil:
				affinity := req.Node
				if mb := sn.config.MaxBlocksPerNode; mb > 0 && owned >= mb {
					affinity = ""
				}
				bw = newBlockWrite(bp, affinity)
			}
		}
		if bw == nil {
			bw = blockWriteFrom(e)
		}
		ord := addrOrdinal(bw.prefix, ip)
		if ord < 0 {
			return fmt.Errorf("ipam: allocate %s: block %s is larger than IPAM handles: %w", ip, bw.prefix, ErrNotABlock)
		}
		for _, a := range bw.block.Allocations {
			if a.Ordinal == ord {
				return &InUseError{IP: ip, Handle: a.Handle}
			}
		}
		bw.block.Allocations = append(bw.block.Allocations, api.Allocation{Ordinal: ord, Handle: req.Handle, Use: req.Use, Attrs: req.Attrs})
		slices.SortFunc(bw.block.Allocations, func(x, y api.Allocation) int { return x.Ordinal - y.Ordinal })
		h, hexp, err := m.readHandle(ctx, req.Handle)
		if err != nil {
			return err
		}
		h.Blocks[bw.block.CIDR]++
		return m.commit(ctx, &writeSet{blocks: []*blockWrite{bw}, handles: []*handleWrite{{id: req.Handle, handle: h, expect: hexp}}})
	})
	if err != nil {
		return nil, err
	}
	return []netip.Addr{ip}, nil
}
