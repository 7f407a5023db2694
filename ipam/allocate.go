package ipam

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

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
// for req.Node: all of them or none. The addresses come back in the order
// they were chosen (the node's own blocks first).
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
// The handle's count for each block is raised before the block is written.
// A request that spans several blocks writes them one by one; when it fails
// part-way, the addresses it took are freed again and its handle counts
// lowered before the error is returned. Should that clean-up fail too (the
// store is unreachable), the addresses stay with the handle, where
// ReleaseHandle finds them.
//
// Concurrent calls for the same node are merged into one batch (group
// commit); each still gets all of its addresses or none.
func (m *IPAM) Allocate(ctx context.Context, req AllocateRequest) ([]netip.Addr, error) {
	req, err := req.normalize()
	if err != nil {
		return nil, err
	}
	if !req.IP.IsValid() {
		return m.allocateQueued(ctx, req)
	}
	q := m.queue(req.Node)
	if err := q.lock(ctx); err != nil {
		return nil, fmt.Errorf("ipam: allocate %s for handle %q: %w", req.IP, req.Handle, err)
	}
	defer q.unlock()
	return m.allocateIP(ctx, req)
}

// reqState is one request's progress through an allocation: what it holds
// so far and what it added to its handle.
type reqState struct {
	req AllocateRequest
	// start is when the caller asked: exhaustion is reported only from
	// reads made after it.
	start time.Time
	// got are the addresses written so far, in the order chosen; held the
	// same as ordinals per block.
	got  []netip.Addr
	held map[netip.Prefix][]int
	// raised is what this request added to its handle's counts, per block;
	// raisedAt when it last wrote the handle.
	raised   map[netip.Prefix]int
	raisedAt time.Time
	// guessNew is set until the first handle write: try a Create first.
	guessNew bool
	// maybe are ordinals of block writes that failed without telling
	// whether they applied (the store became unreachable).
	maybe map[netip.Prefix][]int
}

func newState(req AllocateRequest, start time.Time) *reqState {
	return &reqState{
		req:      req,
		start:    start,
		held:     map[netip.Prefix][]int{},
		raised:   map[netip.Prefix]int{},
		guessNew: true,
		maybe:    map[netip.Prefix][]int{},
	}
}

func (st *reqState) need() int { return st.req.Count - len(st.got) }

// commit records ordinals ords of block p as taken.
func (st *reqState) commit(p netip.Prefix, ords []int) {
	st.held[p] = append(st.held[p], ords...)
	for _, o := range ords {
		st.got = append(st.got, ordinalAddr(p, o))
	}
}

// claimMissLimit is how many claimed candidates may turn out to exist
// already before the list of all blocks is read again.
const claimMissLimit = 3

func (m *IPAM) allocateOne(ctx context.Context, req AllocateRequest, start time.Time) ([]netip.Addr, error) {
	st := newState(req, start)
	return m.settle(ctx, st, m.allocateMany(ctx, []*reqState{st}))
}

// settle ends one request after allocateMany returned err: a request that
// holds all its addresses succeeds (and drops any excess handle count);
// any other is undone and fails with err.
func (m *IPAM) settle(ctx context.Context, st *reqState, err error) ([]netip.Addr, error) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	if st.need() == 0 {
		m.finish(cctx, st)
		return st.got, nil
	}
	if uerr := m.undo(cctx, st); uerr != nil {
		m.log.Warn("ipam: could not undo a failed allocation; its addresses stay with the handle until it is released",
			"handle", st.req.Handle, "node", st.req.Node, "err", uerr)
	}
	if err == nil {
		err = fmt.Errorf("ipam: allocate for node %s, handle %q: got %d of %d addresses: %w", st.req.Node, st.req.Handle, len(st.got), st.req.Count, ErrPoolExhausted)
	}
	return nil, err
}

// finish completes a successful request: it frees addresses of writes that
// failed ambiguously but applied after all, then lowers the handle's counts
// that no held address backs (blocks planned but not written). Failures
// only leave an over-count, so they are logged.
func (m *IPAM) finish(ctx context.Context, st *reqState) {
	stray := map[netip.Prefix]int{}
	for p, ords := range st.maybe {
		ords = slices.DeleteFunc(slices.Clone(ords), func(o int) bool { return slices.Contains(st.held[p], o) })
		if len(ords) == 0 {
			continue
		}
		if _, err := m.releaseOrdinals(ctx, p, st.req.Handle, ords); err != nil {
			stray[p] = len(ords)
			m.log.Warn("ipam: could not check a block write that failed", "block", p, "handle", st.req.Handle, "err", err)
		}
	}
	excess := map[string]int{}
	for p, n := range st.raised {
		if d := n - len(st.held[p]) - stray[p]; d > 0 {
			excess[p.String()] = d
		}
	}
	if err := m.lowerHandle(ctx, st.req.Handle, excess, nil); err != nil {
		m.log.Warn("ipam: could not lower a handle's counts after allocating; RepairHandles will", "handle", st.req.Handle, "err", err)
	}
}

// undo frees what a failed request took and lowers its handle's counts by
// what it raised, except for blocks it could not clean up.
func (m *IPAM) undo(ctx context.Context, st *reqState) error {
	var errs []error
	lower := map[string]int{}
	blocks := map[netip.Prefix][]int{}
	for p, ords := range st.held {
		blocks[p] = append(blocks[p], ords...)
	}
	for p, ords := range st.maybe {
		blocks[p] = append(blocks[p], ords...)
	}
	for p := range st.raised {
		if _, ok := blocks[p]; !ok {
			blocks[p] = nil
		}
	}
	for p, ords := range blocks {
		if len(ords) > 0 {
			if _, err := m.releaseOrdinals(ctx, p, st.req.Handle, ords); err != nil {
				errs = append(errs, err)
				continue // keep its count: the addresses may still be held
			}
		}
		if n := st.raised[p]; n > 0 {
			lower[p.String()] = n
		}
	}
	st.got, st.held, st.maybe = nil, map[netip.Prefix][]int{}, map[netip.Prefix][]int{}
	if err := m.lowerHandle(ctx, st.req.Handle, lower, nil); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ambiguous reports whether a failed write may have applied all the same.
func ambiguous(err error) bool {
	return !errors.Is(err, datastore.ErrConflict) && !errors.Is(err, datastore.ErrNotFound) &&
		!errors.Is(err, datastore.ErrInvalid) && !errors.Is(err, ErrInvalidRequest)
}

// allocateMany allocates for several requests of one node, with the same
// use and pools and distinct handles: it plans their addresses, raises
// their handles, then writes each block of the plan once. When a block
// write conflicts, what was written stays and the rest is planned again.
// The states record the outcome; settle ends each request.
func (m *IPAM) allocateMany(ctx context.Context, states []*reqState) error {
	first := states[0].req
	node := first.Node
	what := fmt.Sprintf("allocate for node %s, handle %q", node, first.Handle)
	if len(states) > 1 {
		what = fmt.Sprintf("allocate for node %s, handles %q and %d more", node, first.Handle, len(states)-1)
	}
	since := states[0].start
	for _, st := range states {
		if st.start.Before(since) {
			since = st.start
		}
	}
	fresh := false
	claimMiss := 0
	return m.retry(ctx, what, func(int) error {
		for {
			total := 0
			for _, st := range states {
				total += st.need()
			}
			if total == 0 {
				return nil
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("ipam: %s: %w", what, err)
			}
			sn, err := m.snapshot(ctx, node, fresh)
			if err != nil {
				return err
			}
			pools, err := eligible(sn, first.Use, first.Pools)
			if err != nil {
				return err
			}
			if fresh {
				// All blocks, the node's among them.
				if _, err := m.loadAll(ctx); err != nil {
					return err
				}
			} else {
				if err := m.ensureNode(ctx, node, false); err != nil {
					return err
				}
				if !m.affineFree(node, pools, total) {
					if err := m.ensureAll(ctx, claimMiss >= claimMissLimit); err != nil {
						return err
					}
					if claimMiss >= claimMissLimit {
						claimMiss = 0
					}
				}
			}
			writes, exh := m.plan(states, sn, pools)
			if exh != nil {
				// Report exhaustion only from reads made after every
				// request of the batch began.
				if !fresh && !m.readSince(node, since) {
					fresh = true
					continue
				}
				return exh
			}
			fresh = false
			if err := m.raiseHandles(ctx, states, writes); err != nil {
				return err
			}
			for _, bw := range writes {
				_, err := m.writeBlock(ctx, bw.prefix, bw.block, bw.rev, bw.create)
				if err == nil {
					for _, tk := range bw.takes {
						tk.st.commit(bw.prefix, tk.ords)
					}
					continue
				}
				if errors.Is(err, datastore.ErrConflict) {
					// Re-read what the plan relied on, then plan the rest
					// again.
					if bw.create {
						claimMiss++
					}
					if _, rerr := m.readBlock(ctx, bw.prefix); rerr != nil {
						return rerr
					}
					return err
				}
				if ambiguous(err) {
					for _, tk := range bw.takes {
						tk.st.maybe[bw.prefix] = append(tk.st.maybe[bw.prefix], tk.ords...)
					}
				}
				return err
			}
			return nil
		}
	})
}

// raiseAttempts bounds the conflicts one handle raise retries before the
// allocation as a whole is re-planned (and retried) instead.
const raiseAttempts = 3

// raiseHandles raises, for every request with addresses planned in writes,
// its handle's counts to what it holds plus what is planned, before any of
// those blocks is written. The handles are written in parallel. A handle
// written longer than handleRefreshAge ago is written again, so that
// RepairHandles sees it change.
func (m *IPAM) raiseHandles(ctx context.Context, states []*reqState, writes []*blockWrite) error {
	planned := map[*reqState]map[netip.Prefix]int{}
	for _, bw := range writes {
		for _, tk := range bw.takes {
			if planned[tk.st] == nil {
				planned[tk.st] = map[netip.Prefix]int{}
			}
			planned[tk.st][bw.prefix] += len(tk.ords)
		}
	}
	type job struct {
		st    *reqState
		delta map[netip.Prefix]int
		touch bool
		err   error
	}
	now := time.Now()
	var jobs []*job
	for _, st := range states {
		pc := planned[st]
		if pc == nil {
			continue
		}
		delta := map[netip.Prefix]int{}
		for p, n := range pc {
			if want := len(st.held[p]) + n; want > st.raised[p] {
				delta[p] = want - st.raised[p]
			}
		}
		touch := !st.raisedAt.IsZero() && now.Sub(st.raisedAt) >= handleRefreshAge
		if len(delta) > 0 || touch {
			jobs = append(jobs, &job{st: st, delta: delta, touch: touch})
		}
	}
	run := func(j *job) {
		d := make(map[string]int, len(j.delta))
		for p, n := range j.delta {
			d[p.String()] = n
		}
		var guess *handleGuess
		if j.st.guessNew {
			guess = guessMissing(j.st.req.Handle)
		}
		j.err = m.adjustHandle(ctx, j.st.req.Handle, d, guess, j.touch, raiseAttempts)
	}
	if len(jobs) == 1 {
		run(jobs[0])
	} else {
		var wg sync.WaitGroup
		for _, j := range jobs {
			wg.Go(func() { run(j) })
		}
		wg.Wait()
	}
	var errs []error
	for _, j := range jobs {
		j.st.guessNew = false
		if j.err != nil {
			// An error may hide a raise that applied: not counting it
			// can only leave an over-count.
			errs = append(errs, j.err)
			continue
		}
		for p, n := range j.delta {
			j.st.raised[p] += n
		}
		j.st.raisedAt = now
	}
	return errors.Join(errs...)
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

// blockWrite is one block write of a plan: the block's new content, the
// revision it was read at (or create, to claim it), and which request
// takes which ordinals in it.
type blockWrite struct {
	prefix netip.Prefix
	block  api.Block
	rev    string
	create bool
	takes  []take
}

type take struct {
	st   *reqState
	ords []int
}

// planner builds the block writes for one or more requests of one node
// from the cache. It runs under IPAM.mu.
type planner struct {
	m       *IPAM
	node    string
	sn      *snapshot
	pools   []*poolInfo
	writes  []*blockWrite
	touched map[netip.Prefix]*blockWrite
	affine  []*blockEntry
	claimed []*blockWrite
	owned   int
	capHit  bool
	sorted  []*blockEntry
}

// write returns the write of cached block e, starting it if needed.
func (pl *planner) write(e *blockEntry) *blockWrite {
	if bw := pl.touched[e.prefix]; bw != nil {
		return bw
	}
	bw := &blockWrite{prefix: e.prefix, block: cloneBlock(e.block), rev: e.rev}
	pl.touched[e.prefix] = bw
	pl.writes = append(pl.writes, bw)
	return bw
}

// free is the number of free addresses of e, counting this plan's takes.
func (pl *planner) free(e *blockEntry) int {
	if bw := pl.touched[e.prefix]; bw != nil {
		return blockSize(bw.prefix) - len(bw.block.Allocations)
	}
	return e.free()
}

// plan decides, from the cache, which addresses each request still needs
// and which blocks to write. It returns an *ExhaustedError when the cache
// shows no room for all of them.
func (m *IPAM) plan(states []*reqState, sn *snapshot, pools []*poolInfo) ([]*blockWrite, *ExhaustedError) {
	m.mu.Lock()
	defer m.mu.Unlock()
	node := states[0].req.Node
	pl := &planner{m: m, node: node, sn: sn, pools: pools, touched: map[netip.Prefix]*blockWrite{}}
	pl.affine = m.affineLocked(node)
	pl.owned = len(pl.affine)
	for _, st := range states {
		if st.need() == 0 {
			continue
		}
		if pl.take(st) {
			exh := &ExhaustedError{Node: node, Pools: poolNames(pools), Use: st.req.Use, Strict: sn.config.StrictAffinity}
			if pl.capHit {
				exh.MaxBlocksPerNode = sn.config.MaxBlocksPerNode
			}
			return nil, exh
		}
	}
	return pl.writes, nil
}

// take plans st's missing addresses: the node's blocks, then new blocks,
// then (unless strict affinity) other blocks. It reports whether it fell
// short.
func (pl *planner) take(st *reqState) bool {
	need := st.need()
	from := func(bw *blockWrite) {
		need -= takeOrdinals(bw, st, need)
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
		bw := &blockWrite{prefix: p, block: newBlock(p, pl.node), create: true}
		pl.touched[p] = bw
		pl.writes = append(pl.writes, bw)
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
	return need > 0
}

// takeOrdinals gives up to need of bw's lowest free ordinals to st and
// returns how many it gave.
func takeOrdinals(bw *blockWrite, st *reqState, need int) int {
	size := blockSize(bw.prefix)
	used := make([]bool, size)
	for _, a := range bw.block.Allocations {
		if a.Ordinal >= 0 && a.Ordinal < size {
			used[a.Ordinal] = true
		}
	}
	var ords []int
	for o := 0; o < size && len(ords) < need; o++ {
		if used[o] {
			continue
		}
		bw.block.Allocations = append(bw.block.Allocations, api.Allocation{Ordinal: o, Handle: st.req.Handle, Use: st.req.Use, Attrs: st.req.Attrs})
		ords = append(ords, o)
	}
	if len(ords) == 0 {
		return 0
	}
	slices.SortFunc(bw.block.Allocations, func(x, y api.Allocation) int { return x.Ordinal - y.Ordinal })
	for i := range bw.takes {
		if bw.takes[i].st == st {
			bw.takes[i].ords = append(bw.takes[i].ords, ords...)
			return len(ords)
		}
	}
	bw.takes = append(bw.takes, take{st: st, ords: ords})
	return len(ords)
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
	st := newState(req, time.Now())
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
		var (
			b      api.Block
			rev    string
			create bool
		)
		if e == nil {
			// The block does not exist in this pool's block size; an older
			// block of another size may hold the address or overlap.
			all, err := m.loadAll(ctx)
			if err != nil {
				return err
			}
			var over []*blockEntry
			owned := 0
			for _, x := range all {
				if x.prefix.Overlaps(bp) {
					over = append(over, x)
				}
				if x.block.Affinity == req.Node {
					owned++
				}
			}
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
				b, create = newBlock(bp, affinity), true
			}
		}
		if e != nil {
			b, rev, bp = cloneBlock(e.block), e.rev, e.prefix
		}
		ord := addrOrdinal(bp, ip)
		if ord < 0 {
			return fmt.Errorf("ipam: allocate %s: block %s is larger than IPAM handles: %w", ip, bp, ErrNotABlock)
		}
		for _, a := range b.Allocations {
			if a.Ordinal == ord {
				return &InUseError{IP: ip, Handle: a.Handle}
			}
		}
		b.Allocations = append(b.Allocations, api.Allocation{Ordinal: ord, Handle: req.Handle, Use: req.Use, Attrs: req.Attrs})
		slices.SortFunc(b.Allocations, func(x, y api.Allocation) int { return x.Ordinal - y.Ordinal })
		bw := &blockWrite{prefix: bp, block: b, rev: rev, create: create, takes: []take{{st: st, ords: []int{ord}}}}
		if err := m.raiseHandles(ctx, []*reqState{st}, []*blockWrite{bw}); err != nil {
			return err
		}
		if _, err := m.writeBlock(ctx, bp, b, rev, create); err != nil {
			if ambiguous(err) {
				st.maybe[bp] = append(st.maybe[bp], ord)
			}
			return err
		}
		st.commit(bp, []int{ord})
		return nil
	})
	return m.settle(ctx, st, err)
}
