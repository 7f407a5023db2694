package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// ClaimBlock claims one new, empty block for node from the first eligible
// pool (enabled, nodeSelector matching the node, allowing use) that has a
// block nobody holds, and returns it. The block and its affinity are created
// in one transaction. The IPAM config's MaxBlocksPerNode is respected. When
// no block is left the error is an *ExhaustedError.
func (m *IPAM) ClaimBlock(ctx context.Context, node string, use api.IPPoolUse) (api.Block, error) {
	if node == "" {
		return api.Block{}, fmt.Errorf("ipam: claim block: name the node: %w", ErrInvalidRequest)
	}
	if use == "" {
		use = api.UseWorkload
	}
	q := m.queue(node)
	if err := q.lock(ctx); err != nil {
		return api.Block{}, fmt.Errorf("ipam: claim a block for node %s: %w", node, err)
	}
	defer q.unlock()
	var out api.Block
	fresh := false
	err := m.retry(ctx, fmt.Sprintf("claim a block for node %s", node), func(int) error {
		for {
			sn, err := m.snapshot(ctx, node, fresh)
			if err != nil {
				return err
			}
			pools, err := eligible(sn, use, nil)
			if err != nil {
				return err
			}
			if err := m.ensureAll(ctx, fresh); err != nil {
				return err
			}
			m.mu.Lock()
			owned := len(m.byNode[node])
			capHit := sn.config.MaxBlocksPerNode > 0 && owned >= sn.config.MaxBlocksPerNode
			var p netip.Prefix
			ok := false
			if !capHit {
				p, ok = m.candidateLocked(pools, node, nil)
			}
			m.mu.Unlock()
			if !ok {
				if !fresh {
					fresh = true
					continue
				}
				exh := &ExhaustedError{Node: node, Pools: poolNames(pools), Use: use}
				if capHit {
					exh.MaxBlocksPerNode = sn.config.MaxBlocksPerNode
				}
				return exh
			}
			fresh = false
			bw := newBlockWrite(p, node)
			ws := &writeSet{blocks: []*blockWrite{bw}}
			err = m.commit(ctx, ws)
			if err == nil {
				out = bw.block
				return nil
			}
			if errors.Is(err, datastore.ErrConflict) {
				if rerr := m.refresh(ctx, ws); rerr != nil {
					return rerr
				}
			}
			return err
		}
	})
	if err != nil {
		return api.Block{}, err
	}
	return out, nil
}

// poolOfBlock finds the pool of which cidr is exactly one block.
func poolOfBlock(pools []*poolInfo, cidr netip.Prefix) (*poolInfo, error) {
	for _, p := range pools {
		if !p.prefix.Contains(cidr.Addr()) {
			continue
		}
		if cidr.Bits() != p.blockBits || cidr != cidr.Masked() {
			ex := netip.PrefixFrom(cidr.Addr(), p.blockBits).Masked()
			return nil, fmt.Errorf("ipam: %s is not a block of pool %s (%s): its blocks are /%d aligned on /%d, e.g. %s: %w",
				cidr, p.name, p.prefix, p.blockBits, p.blockBits, ex, ErrNotABlock)
		}
		return p, nil
	}
	return nil, fmt.Errorf("ipam: %s is inside no IP pool: pin a block of an existing pool, or add the pool first: %w", cidr, ErrNotABlock)
}

// PinBlock assigns block cidr to node and marks it pinned, so that it keeps
// its affinity when it becomes empty. cidr must be exactly one block of a
// pool (the pool's blockSize, aligned). A block that does not exist is
// created; an existing block is pinned when node already holds it, and
// re-assigned to node when it is empty. A block with addresses of another
// node is refused with an error matching ErrBlockInUse.
func (m *IPAM) PinBlock(ctx context.Context, cidr netip.Prefix, node string) error {
	if node == "" {
		return fmt.Errorf("ipam: pin %s: name the node to pin the block to: %w", cidr, ErrInvalidRequest)
	}
	if !cidr.IsValid() {
		return fmt.Errorf("ipam: pin: give the block's CIDR: %w", ErrInvalidRequest)
	}
	cidr = netip.PrefixFrom(cidr.Addr().Unmap(), cidr.Bits())
	return m.retry(ctx, fmt.Sprintf("pin block %s to node %s", cidr, node), func(int) error {
		pools, err := m.readPools(ctx)
		if err != nil {
			return err
		}
		if _, err := poolOfBlock(pools, cidr); err != nil {
			return err
		}
		e, err := m.readBlock(ctx, cidr)
		if err != nil {
			return err
		}
		var bw *blockWrite
		if e == nil {
			if err := m.loadAll(ctx); err != nil {
				return err
			}
			m.mu.Lock()
			var over []netip.Prefix
			for _, x := range m.blocks {
				if x.prefix.Overlaps(cidr) && x.prefix != cidr {
					over = append(over, x.prefix)
				}
			}
			m.mu.Unlock()
			if len(over) > 0 {
				return fmt.Errorf("ipam: pin %s: it overlaps the existing block %s (left from another block size): release that block's addresses first: %w", cidr, over[0], ErrBlockInUse)
			}
			bw = newBlockWrite(cidr, node)
		} else {
			bw = blockWriteFrom(e)
			switch {
			case e.block.Affinity == node:
				if e.block.Pinned {
					return nil
				}
			case len(e.block.Allocations) == 0:
				if old := e.block.Affinity; old != "" {
					bw.affDel = old
					bw.affDelExpect = datastore.AnyRevision // guarded by the block's revision
				}
				bw.block.Affinity = node
				bw.affPut = node
			default:
				owner := "no node"
				if e.block.Affinity != "" {
					owner = "node " + e.block.Affinity
				}
				return fmt.Errorf("ipam: pin %s to node %s: the block holds %d addresses and belongs to %s: release them or pin another block: %w",
					cidr, node, len(e.block.Allocations), owner, ErrBlockInUse)
			}
		}
		bw.block.Pinned = true
		return m.commit(ctx, &writeSet{blocks: []*blockWrite{bw}})
	})
}

// UnpinBlock clears the pinned mark of block cidr. The block keeps its
// affinity and allocations; like any block, it is deleted once a release
// leaves it empty. A block that does not exist gives an error matching
// datastore.ErrNotFound.
func (m *IPAM) UnpinBlock(ctx context.Context, cidr netip.Prefix) error {
	if !cidr.IsValid() {
		return fmt.Errorf("ipam: unpin: give the block's CIDR: %w", ErrInvalidRequest)
	}
	cidr = netip.PrefixFrom(cidr.Addr().Unmap(), cidr.Bits())
	return m.retry(ctx, fmt.Sprintf("unpin block %s", cidr), func(int) error {
		e, err := m.readBlock(ctx, cidr)
		if err != nil {
			return err
		}
		if e == nil {
			return fmt.Errorf("ipam: unpin %s: no such block (twill ipam show lists blocks): %w", cidr, datastore.ErrNotFound)
		}
		if !e.block.Pinned {
			return nil
		}
		bw := blockWriteFrom(e)
		bw.block.Pinned = false
		return m.commit(ctx, &writeSet{blocks: []*blockWrite{bw}})
	})
}

// NodeBlocks reads afresh the blocks with affinity to node, in address
// order.
func (m *IPAM) NodeBlocks(ctx context.Context, node string) ([]api.Block, error) {
	if err := m.loadNode(ctx, node); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []api.Block
	for _, e := range m.affineLocked(node) {
		b := e.block
		b.Allocations = slices.Clone(b.Allocations)
		out = append(out, b)
	}
	return out, nil
}

// ReleaseNodeAffinities is for a node that was deleted: each of its blocks
// that is empty and not pinned is deleted with its affinity; a block that
// still holds addresses keeps them but loses its affinity, so that their
// holders can release them later and the block is deleted when empty.
// Pinned blocks keep their affinity: the pin is an administrator's choice
// that outlives the node object. Each block is one transaction.
func (m *IPAM) ReleaseNodeAffinities(ctx context.Context, node string) error {
	if node == "" {
		return fmt.Errorf("ipam: release affinities: name the node: %w", ErrInvalidRequest)
	}
	q := m.queue(node)
	if err := q.lock(ctx); err != nil {
		return fmt.Errorf("ipam: release affinities of node %s: %w", node, err)
	}
	defer q.unlock()
	affs, _, err := m.s.List(ctx, datastore.AffinityPrefix(node))
	if err != nil {
		return fmt.Errorf("ipam: list affinities of node %s: %w", node, err)
	}
	var errs []error
	for _, a := range affs {
		seg := strings.TrimPrefix(a.Key, datastore.AffinityPrefix(node))
		cidr, perr := netip.ParsePrefix(datastore.SegmentCIDR(seg))
		if o, derr := datastore.Decode[api.BlockAffinity](a); derr == nil {
			if p, err := netip.ParsePrefix(o.Value.CIDR); err == nil {
				cidr, perr = p, nil
			}
		}
		if perr != nil {
			m.log.Warn("ipam: ignoring malformed block affinity", "key", a.Key, "err", perr)
			continue
		}
		err := m.retry(ctx, fmt.Sprintf("release block %s of node %s", cidr, node), func(int) error {
			kv, err := m.s.Get(ctx, a.Key)
			if errors.Is(err, datastore.ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("ipam: read %s: %w", a.Key, err)
			}
			e, err := m.readBlock(ctx, cidr.Masked())
			if err != nil {
				return err
			}
			if e == nil || e.block.Affinity != node {
				// An affinity whose block is gone or belongs elsewhere.
				if _, err := m.s.Txn(ctx, datastore.Delete(a.Key, kv.Revision)); err != nil {
					return fmt.Errorf("ipam: delete stale affinity %s: %w", a.Key, err)
				}
				return nil
			}
			if e.block.Pinned {
				return nil
			}
			bw := blockWriteFrom(e)
			if len(bw.block.Allocations) == 0 {
				bw.del = true
			} else {
				bw.block.Affinity = ""
			}
			bw.affDel = node
			bw.affDelExpect = kv.Revision
			return m.commit(ctx, &writeSet{blocks: []*blockWrite{bw}})
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	m.mu.Lock()
	delete(m.nodeAt, node)
	m.mu.Unlock()
	return errors.Join(errs...)
}
