package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// Garbage-collection primitives. A GC controller combines them: it lists
// AllAllocations, frees those whose owner is gone with ReleaseIfOwned,
// reclaims EmptyBlocks with ReclaimBlock, and calls RepairHandles now and
// then. Each primitive is safe to run concurrently with allocations on any
// node: every write is a compare-and-swap against what the primitive read.

// BlockRef names one block as it was read: its CIDR, its affinity then and
// the revision it was read at.
type BlockRef struct {
	CIDR     netip.Prefix
	Affinity string
	Revision string
}

// ReleaseIfOwned frees ip only if it is allocated and still carries handle,
// with a compare-and-swap of its block, then lowers handle's count for the
// block. It reports false, with no error, when the address is free already
// or now belongs to another handle (re-assigned since the caller looked):
// nothing was changed then.
func (m *IPAM) ReleaseIfOwned(ctx context.Context, ip netip.Addr, handle string) (bool, error) {
	if !ip.IsValid() || handle == "" {
		return false, fmt.Errorf("ipam: release if owned: name the address and its handle: %w", ErrInvalidRequest)
	}
	_, err := m.releaseAddr(ctx, ip, handle)
	if errors.Is(err, ErrNotAllocated) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, nil
}

// EmptyBlocks lists afresh, in address order, the blocks that are not
// pinned and hold no address, whatever their affinity, each with the
// revision it was read at. Pass one to ReclaimBlock to delete it.
func (m *IPAM) EmptyBlocks(ctx context.Context) ([]BlockRef, error) {
	list, err := m.loadAll(ctx)
	if err != nil {
		return nil, err
	}
	var out []BlockRef
	for _, e := range list {
		if !e.block.Pinned && len(e.block.Allocations) == 0 {
			out = append(out, BlockRef{CIDR: e.prefix, Affinity: e.block.Affinity, Revision: e.rev})
		}
	}
	return out, nil
}

// ReclaimBlock deletes block ref.CIDR if it is still at ref.Revision, which
// EmptyBlocks read while the block was empty and unpinned: a block that got
// an address, was pinned or changed in any way since is not deleted. It
// reports whether the block was deleted; false with no error when it
// changed or is gone already. The block's node (if it still runs) simply
// claims a block again when it needs one. ref.Revision must be set.
func (m *IPAM) ReclaimBlock(ctx context.Context, ref BlockRef) (bool, error) {
	if !ref.CIDR.IsValid() || ref.Revision == "" {
		return false, fmt.Errorf("ipam: reclaim block: give the block's CIDR and the revision it was seen empty at (from EmptyBlocks): %w", ErrInvalidRequest)
	}
	err := m.deleteBlock(ctx, ref.CIDR, ref.Revision)
	if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, nil
}

// overMark is when RepairHandles first saw a handle over-count at a
// revision.
type overMark struct {
	rev string
	at  time.Time
}

// RepairHandles recomputes every handle's counts from the blocks and
// fixes the handles, each with a compare-and-swap against the revision it
// was read at (a handle that changed meanwhile is left for the next run):
//
//   - counts lower than the blocks show (an under-count: the handle was
//     edited or deleted) are raised at once, and a missing handle is
//     created for allocations that carry it;
//   - counts higher than the blocks show (an over-count: a crash between
//     raising the handle and writing the block, an allocation re-planned
//     elsewhere, or an allocation still in flight) are lowered, and a
//     handle that counts nothing real is deleted, but only when an earlier
//     RepairHandles call of this IPAM saw the same over-count at the same
//     handle revision at least the repair grace ago (WithRepairGrace); an
//     allocation in flight writes its block well within the grace, and
//     re-writes its handle when it takes longer.
//
// Handles are read before blocks, so that an allocation that raised its
// handle after the handles were read is not seen as a missing handle. It
// returns how many handles it wrote or deleted.
func (m *IPAM) RepairHandles(ctx context.Context) (int, error) {
	handles, _, err := datastore.ListObjects[api.Handle](ctx, m.s, datastore.KindHandle, datastore.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("ipam: list handles: %w", err)
	}
	listedAt := time.Now()
	blocks, err := m.loadAll(ctx)
	if err != nil {
		return 0, err
	}
	truth := map[string]map[string]int{}
	for _, e := range blocks {
		c := e.prefix.String()
		for _, a := range e.block.Allocations {
			if truth[a.Handle] == nil {
				truth[a.Handle] = map[string]int{}
			}
			truth[a.Handle][c]++
		}
	}
	fixed := 0
	var errs []error
	seen := map[string]bool{}
	over := map[string]bool{}
	for _, o := range handles {
		id := o.Name
		seen[id] = true
		have, want := o.Value.Blocks, truth[id]
		next := map[string]int{}
		isOver := false
		for c, n := range have {
			if n > want[c] {
				isOver = true
			}
			if n > 0 {
				next[c] = n
			}
		}
		for c, n := range want {
			if n > next[c] {
				next[c] = n // raise an under-count at once
			}
		}
		if isOver {
			over[id] = true
			if m.graceOver(id, o.Revision, listedAt) {
				next = maps.Clone(want)
				if next == nil {
					next = map[string]int{}
				}
			}
		}
		if maps.Equal(next, have) && len(have) > 0 {
			continue
		}
		var werr error
		if len(next) == 0 {
			werr = m.s.Delete(ctx, datastore.KindHandle, id, o.Revision)
		} else {
			kv, err := datastore.NewKV(datastore.KindHandle, id, handleValue(id, next))
			if err != nil {
				return fixed, err
			}
			kv.Revision = o.Revision
			_, werr = m.s.Update(ctx, kv)
		}
		switch {
		case werr == nil:
			fixed++
			delete(over, id)
		case errors.Is(werr, datastore.ErrConflict), errors.Is(werr, datastore.ErrNotFound):
			// Changed meanwhile: the next run looks again.
		default:
			errs = append(errs, fmt.Errorf("ipam: repair handle %q: %w", id, werr))
		}
	}
	for _, id := range slices.Sorted(maps.Keys(truth)) {
		if seen[id] {
			continue
		}
		kv, err := datastore.NewKV(datastore.KindHandle, id, handleValue(id, truth[id]))
		if err != nil {
			return fixed, err
		}
		_, werr := m.s.Create(ctx, kv)
		switch {
		case werr == nil:
			fixed++
		case errors.Is(werr, datastore.ErrExists):
			// Created meanwhile (by an allocation): the next run checks it.
		default:
			errs = append(errs, fmt.Errorf("ipam: re-create handle %q: %w", id, werr))
		}
	}
	m.mu.Lock()
	for id := range m.overSeen {
		if !over[id] {
			delete(m.overSeen, id)
		}
	}
	m.mu.Unlock()
	return fixed, errors.Join(errs...)
}

// graceOver reports whether handle id's over-count at revision rev may be
// lowered now: the grace is zero, or an earlier run saw the same revision
// at least the grace before now. Otherwise it remembers rev from now on.
func (m *IPAM) graceOver(id, rev string, now time.Time) bool {
	if m.grace <= 0 {
		return true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mark, ok := m.overSeen[id]
	if ok && mark.rev == rev {
		return now.Sub(mark.at) >= m.grace
	}
	m.overSeen[id] = overMark{rev: rev, at: now}
	return false
}
