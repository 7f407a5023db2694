package ipam

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// ReleaseHandle frees every address of handle and deletes the handle, in one
// transaction, and returns the freed addresses. A handle that does not exist
// releases nothing and is no error, so that release is idempotent. Only
// allocations carrying handle are removed. A block left empty and not pinned
// is deleted together with its affinity.
func (m *IPAM) ReleaseHandle(ctx context.Context, handle string) ([]netip.Addr, error) {
	if handle == "" {
		return nil, fmt.Errorf("ipam: release: name the handle to release: %w", ErrInvalidRequest)
	}
	var out []netip.Addr
	err := m.retry(ctx, fmt.Sprintf("release handle %q", handle), func(int) error {
		out = nil
		h, hexp, err := m.readHandle(ctx, handle)
		if err != nil {
			return err
		}
		if hexp == datastore.MustNotExist {
			return nil
		}
		ws := &writeSet{handles: []*handleWrite{{id: handle, expect: hexp, del: true}}}
		for _, c := range slices.Sorted(maps.Keys(h.Blocks)) {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				m.log.Warn("ipam: handle names a malformed block", "handle", handle, "block", c)
				continue
			}
			e, err := m.readBlock(ctx, p.Masked())
			if err != nil {
				return err
			}
			if e == nil {
				continue
			}
			bw := blockWriteFrom(e)
			kept := bw.block.Allocations[:0]
			var freed []netip.Addr
			for _, a := range bw.block.Allocations {
				if a.Handle == handle {
					freed = append(freed, ordinalAddr(e.prefix, a.Ordinal))
				} else {
					kept = append(kept, a)
				}
			}
			if len(freed) == 0 {
				continue
			}
			bw.block.Allocations = kept
			bw.settle()
			ws.blocks = append(ws.blocks, bw)
			out = append(out, freed...)
		}
		return m.commit(ctx, ws)
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// ReleaseIP frees one address and returns the handle that held it. An
// address that is not allocated gives an error matching ErrNotAllocated. The
// handle's record is updated in the same transaction (and deleted when it
// holds nothing more); a block left empty and not pinned is deleted together
// with its affinity.
func (m *IPAM) ReleaseIP(ctx context.Context, ip netip.Addr) (string, error) {
	if !ip.IsValid() {
		return "", fmt.Errorf("ipam: release: name the address to release: %w", ErrInvalidRequest)
	}
	ip = ip.Unmap()
	var handle string
	err := m.retry(ctx, fmt.Sprintf("release %s", ip), func(int) error {
		e, err := m.blockFor(ctx, ip)
		if err != nil {
			return err
		}
		if e == nil {
			return fmt.Errorf("ipam: release %s: no block holds it: %w", ip, ErrNotAllocated)
		}
		ord := addrOrdinal(e.prefix, ip)
		bw := blockWriteFrom(e)
		i := slices.IndexFunc(bw.block.Allocations, func(a api.Allocation) bool { return a.Ordinal == ord })
		if ord < 0 || i < 0 {
			return fmt.Errorf("ipam: release %s: %w", ip, ErrNotAllocated)
		}
		handle = bw.block.Allocations[i].Handle
		bw.block.Allocations = slices.Delete(bw.block.Allocations, i, i+1)
		bw.settle()
		ws := &writeSet{blocks: []*blockWrite{bw}}
		h, hexp, err := m.readHandle(ctx, handle)
		if err != nil {
			return err
		}
		if hexp != datastore.MustNotExist {
			h.Blocks = maps.Clone(h.Blocks)
			if h.Blocks[e.block.CIDR]--; h.Blocks[e.block.CIDR] <= 0 {
				delete(h.Blocks, e.block.CIDR)
			}
			ws.handles = []*handleWrite{{id: handle, handle: h, expect: hexp, del: len(h.Blocks) == 0}}
		}
		return m.commit(ctx, ws)
	})
	if err != nil {
		return "", err
	}
	return handle, nil
}

// blockFor reads afresh the block that holds ip, or returns nil.
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
	if err := m.loadAll(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.blocks {
		if e.prefix.Contains(ip) {
			return e, nil
		}
	}
	return nil, nil
}
