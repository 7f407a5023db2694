package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// ReleaseHandle frees every address of handle and returns exactly the
// addresses it freed, in address order. Only allocations carrying handle
// are removed, one compare-and-swap per block; emptied blocks are kept
// (GC reclaims them). A handle that holds nothing releases nothing and is
// no error, so that release is idempotent.
//
// The blocks are the truth, the handle only an index: ReleaseHandle first
// frees the handle's addresses in the blocks the handle names, and when the
// handle is missing, names a block it cannot parse, or counts more or
// fewer addresses in a block than that block holds, it also scans every
// block for allocations of handle. That scan lists all blocks: one List of
// the whole kind, whose cost grows with the cluster (a few hundred bytes
// per block). Releasing a handle that never existed, or an idempotent
// repeat of a release, therefore costs a scan.
//
// Then the handle's counts are lowered by what was freed, and the handle is
// deleted when no count is left; after a scan that found everything, a
// handle still at the revision read at the start is deleted outright.
// Releasing a handle while an Allocate for the same handle is in flight
// may leave that allocation without its handle count; it is still found
// by the scan of a later ReleaseHandle, and RepairHandles restores the
// count.
//
// On an error the addresses freed so far are returned with it.
func (m *IPAM) ReleaseHandle(ctx context.Context, handle string) ([]netip.Addr, error) {
	if handle == "" {
		return nil, fmt.Errorf("ipam: release: name the handle to release: %w", ErrInvalidRequest)
	}
	h, hrev, found, err := m.readHandle(ctx, handle)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	lower := map[string]int{} // counts of the handle as read, covered by what was freed
	visited := map[netip.Prefix]bool{}
	scan := !found
	owned := func(a api.Allocation) bool { return a.Handle == handle }
	what := fmt.Sprintf("release handle %q", handle)
	var errs []error
	for _, c := range slices.Sorted(maps.Keys(h.Blocks)) {
		p, err := netip.ParsePrefix(c)
		if err != nil || p != p.Masked() || blockSize(p) == 0 {
			m.log.Warn("ipam: handle names a malformed block; scanning all blocks", "handle", handle, "block", c)
			scan = true
			continue
		}
		visited[p] = true
		freed, err := m.releaseFromBlock(ctx, p, what, owned)
		if err != nil {
			errs = append(errs, err)
			break
		}
		out = append(out, allocAddrs(p, freed)...)
		lower[c] = min(len(freed), h.Blocks[c])
		if len(freed) != h.Blocks[c] {
			scan = true
		}
	}
	if scan && len(errs) == 0 {
		list, _, err := m.listBlocks(ctx, datastore.ListOptions{})
		if err != nil {
			errs = append(errs, err)
		}
		for _, e := range list {
			if visited[e.prefix] || !slices.ContainsFunc(e.block.Allocations, owned) {
				continue
			}
			m.set(e)
			freed, err := m.releaseFromBlock(ctx, e.prefix, what, owned)
			if err != nil {
				errs = append(errs, err)
				break
			}
			out = append(out, allocAddrs(e.prefix, freed)...)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	if found {
		complete := scan && len(errs) == 0
		if err := m.settleHandle(ctx, handle, &handleGuess{h: h, rev: hrev, found: true}, lower, complete); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("ipam: release handle %q (freed %d addresses): %w", handle, len(out), err)
	}
	return out, nil
}

// settleHandle lowers handle's counts by lower after a release, starting
// from the handle as read before (read). With complete set (a scan of all
// blocks found and freed everything), a handle still at that revision is
// deleted, whatever it counted.
func (m *IPAM) settleHandle(ctx context.Context, handle string, read *handleGuess, lower map[string]int, complete bool) error {
	if complete {
		err := m.s.Delete(ctx, datastore.KindHandle, handle, read.rev)
		switch {
		case err == nil, errors.Is(err, datastore.ErrNotFound):
			return nil
		case !errors.Is(err, datastore.ErrConflict):
			return fmt.Errorf("ipam: delete handle %q: %w", handle, err)
		}
		// Changed since it was read: lower it by what was freed only.
		return m.lowerHandle(ctx, handle, lower, nil)
	}
	return m.lowerHandle(ctx, handle, lower, read)
}

// allocAddrs returns the addresses of allocations as of block p.
func allocAddrs(p netip.Prefix, as []api.Allocation) []netip.Addr {
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		out = append(out, ordinalAddr(p, a.Ordinal))
	}
	return out
}

// releaseFromBlock removes the allocations of block p that match, with a
// compare-and-swap of the block retried on conflicts, and returns what it
// removed. The cached copy is tried first when it shows a match (a stale
// copy costs a conflict); otherwise the block is read afresh. A block that
// does not exist holds nothing.
func (m *IPAM) releaseFromBlock(ctx context.Context, p netip.Prefix, what string, match func(api.Allocation) bool) ([]api.Allocation, error) {
	var out []api.Allocation
	err := m.retry(ctx, what, func(n int) error {
		out = nil
		var e *blockEntry
		if n == 0 {
			if c := m.cached(p); c != nil && slices.ContainsFunc(c.block.Allocations, match) {
				e = c
			}
		}
		if e == nil {
			var err error
			if e, err = m.readBlock(ctx, p); err != nil || e == nil {
				return err
			}
		}
		var kept, freed []api.Allocation
		for _, a := range e.block.Allocations {
			if match(a) {
				freed = append(freed, a)
			} else {
				kept = append(kept, a)
			}
		}
		if len(freed) == 0 {
			return nil
		}
		b := e.block
		b.Allocations = kept
		if _, err := m.writeBlock(ctx, p, b, e.rev, false); err != nil {
			return err
		}
		out = freed
		return nil
	})
	return out, err
}

// releaseOrdinals frees ordinals ords of block p where they still carry
// handle, and returns how many it freed.
func (m *IPAM) releaseOrdinals(ctx context.Context, p netip.Prefix, handle string, ords []int) (int, error) {
	freed, err := m.releaseFromBlock(ctx, p, fmt.Sprintf("undo allocation of handle %q in block %s", handle, p), func(a api.Allocation) bool {
		return a.Handle == handle && slices.Contains(ords, a.Ordinal)
	})
	return len(freed), err
}

// ReleaseIP frees one address, whoever holds it, and returns the handle
// that held it; the handle's count for the block is lowered afterwards
// (and the handle deleted when nothing is left). An address that is not
// allocated gives an error matching ErrNotAllocated. The block is kept
// even when it becomes empty.
func (m *IPAM) ReleaseIP(ctx context.Context, ip netip.Addr) (string, error) {
	if !ip.IsValid() {
		return "", fmt.Errorf("ipam: release: name the address to release: %w", ErrInvalidRequest)
	}
	return m.releaseAddr(ctx, ip, "")
}

// releaseAddr frees ip when it is allocated (to handle, unless handle is
// empty), lowers that handle's count and returns the handle; an error
// matching ErrNotAllocated when there was nothing to free.
func (m *IPAM) releaseAddr(ctx context.Context, ip netip.Addr, handle string) (string, error) {
	ip = ip.Unmap()
	e, err := m.blockFor(ctx, ip)
	if err != nil {
		return "", err
	}
	if e == nil {
		return "", fmt.Errorf("ipam: release %s: no block holds it: %w", ip, ErrNotAllocated)
	}
	ord := addrOrdinal(e.prefix, ip)
	if ord < 0 {
		return "", fmt.Errorf("ipam: release %s: %w", ip, ErrNotAllocated)
	}
	freed, err := m.releaseFromBlock(ctx, e.prefix, fmt.Sprintf("release %s", ip), func(a api.Allocation) bool {
		return a.Ordinal == ord && (handle == "" || a.Handle == handle)
	})
	if err != nil {
		return "", err
	}
	if len(freed) == 0 {
		if handle != "" {
			return "", fmt.Errorf("ipam: release %s: not allocated to handle %q: %w", ip, handle, ErrNotAllocated)
		}
		return "", fmt.Errorf("ipam: release %s: %w", ip, ErrNotAllocated)
	}
	owner := freed[0].Handle
	if err := m.lowerHandle(ctx, owner, map[string]int{e.prefix.String(): len(freed)}, nil); err != nil {
		// The address is free; only the index over-counts now.
		m.log.Warn("ipam: could not lower a handle's count after a release; RepairHandles will", "handle", owner, "ip", ip, "err", err)
	}
	return owner, nil
}
