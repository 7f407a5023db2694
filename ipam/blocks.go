package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// ClaimBlock claims one new, empty block for node from the first eligible
// pool (enabled, nodeSelector matching the node, allowing use) that has a
// block nobody holds, and returns it. Claiming is the Create of the block
// with its affinity set: when someone else created it first, another block
// is chosen. The IPAM config's MaxBlocksPerNode is respected. When no block
// is left the error is an *ExhaustedError.
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
			e, err := m.writeBlock(ctx, p, newBlock(p, node), "", true)
			if err == nil {
				out = cloneBlock(e.block)
				return nil
			}
			if errors.Is(err, datastore.ErrConflict) {
				if _, rerr := m.readBlock(ctx, p); rerr != nil {
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
// its affinity when it becomes empty and is never reclaimed by GC. cidr
// must be exactly one block of a pool (the pool's blockSize, aligned). A
// block that does not exist is created; an existing block is pinned when
// node already holds it, and re-assigned to node when it is empty. A block
// with addresses of another node is refused with an error matching
// ErrBlockInUse. Every write is a compare-and-swap of the block.
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
		var (
			b      api.Block
			rev    string
			create bool
		)
		if e == nil {
			all, err := m.loadAll(ctx)
			if err != nil {
				return err
			}
			for _, x := range all {
				if x.prefix.Overlaps(cidr) && x.prefix != cidr {
					return fmt.Errorf("ipam: pin %s: it overlaps the existing block %s (left from another block size): release that block's addresses first: %w", cidr, x.prefix, ErrBlockInUse)
				}
			}
			b, create = newBlock(cidr, node), true
		} else {
			b, rev = cloneBlock(e.block), e.rev
			switch {
			case e.block.Affinity == node:
				if e.block.Pinned {
					return nil
				}
			case len(e.block.Allocations) == 0:
				b.Affinity = node
			default:
				owner := "no node"
				if e.block.Affinity != "" {
					owner = "node " + e.block.Affinity
				}
				return fmt.Errorf("ipam: pin %s to node %s: the block holds %d addresses and belongs to %s: release them or pin another block: %w",
					cidr, node, len(e.block.Allocations), owner, ErrBlockInUse)
			}
		}
		b.Pinned = true
		_, err = m.writeBlock(ctx, cidr, b, rev, create)
		return err
	})
}

// UnpinBlock clears the pinned mark of block cidr. The block keeps its
// affinity and allocations; like any block, once it is empty GC may
// reclaim it. A block that does not exist gives an error matching
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
		b := cloneBlock(e.block)
		b.Pinned = false
		_, err = m.writeBlock(ctx, cidr, b, e.rev, false)
		return err
	})
}

// NodeBlocks reads afresh the blocks with affinity to node (listed by the
// datastore.LabelNode label), in address order.
func (m *IPAM) NodeBlocks(ctx context.Context, node string) ([]api.Block, error) {
	if err := m.loadNode(ctx, node); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []api.Block
	for _, e := range m.affineLocked(node) {
		out = append(out, cloneBlock(e.block))
	}
	return out, nil
}

// ReleaseNodeAffinities is for a node that was deleted. Each block affine
// to it (listed by label) that is empty and not pinned is deleted, with
// the revision it was read at as precondition; each other unpinned block
// keeps its allocations but loses its affinity (a compare-and-swap), so
// that their holders, or GC once they are gone, release them and GC then
// reclaims the block. Pinned blocks keep their affinity: the pin is an
// administrator's choice that outlives the node object. Each block is one
// write, re-decided from a fresh read when it conflicts.
func (m *IPAM) ReleaseNodeAffinities(ctx context.Context, node string) error {
	if node == "" {
		return fmt.Errorf("ipam: release affinities: name the node: %w", ErrInvalidRequest)
	}
	q := m.queue(node)
	if err := q.lock(ctx); err != nil {
		return fmt.Errorf("ipam: release affinities of node %s: %w", node, err)
	}
	defer q.unlock()
	list, _, err := m.listBlocks(ctx, datastore.ListOptions{Labels: map[string]string{datastore.LabelNode: node}})
	if err != nil {
		return fmt.Errorf("ipam: release affinities of node %s: %w", node, err)
	}
	var errs []error
	for _, listed := range list {
		p := listed.prefix
		err := m.retry(ctx, fmt.Sprintf("release block %s of node %s", p, node), func(n int) error {
			e := listed
			if n > 0 {
				var err error
				if e, err = m.readBlock(ctx, p); err != nil {
					return err
				}
			}
			if e == nil || e.block.Affinity != node || e.block.Pinned {
				return nil
			}
			if len(e.block.Allocations) == 0 {
				err := m.deleteBlock(ctx, p, e.rev)
				if errors.Is(err, datastore.ErrNotFound) {
					return nil
				}
				return err
			}
			b := cloneBlock(e.block)
			b.Affinity = ""
			_, err := m.writeBlock(ctx, p, b, e.rev, false)
			return err
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

// blockFor finds the block that holds ip: the block of ip's pool's block
// size, read afresh, else any listed block containing it; nil when none.
func (m *IPAM) blockFor(ctx context.Context, ip netip.Addr) (*blockEntry, error) {
	sn, err := m.snapshot(ctx, "", false)
	if err != nil {
		return nil, err
	}
	for _, p := range sn.pools {
		if !p.prefix.Contains(ip) {
			continue
		}
		e, err := m.readBlock(ctx, netip.PrefixFrom(ip, p.blockBits).Masked())
		if err != nil || e != nil {
			return e, err
		}
	}
	// Not in a block of a current pool's size: look at every block.
	all, err := m.loadAll(ctx)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(all, func(e *blockEntry) bool { return e.prefix.Contains(ip) })
	if i < 0 {
		return nil, nil
	}
	return all[i], nil
}
