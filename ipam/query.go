package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// AllocationInfo is one allocated address with its owner.
type AllocationInfo struct {
	IP     netip.Addr
	Handle string
	Use    api.IPPoolUse
	Attrs  map[string]string
	// Block is the block the address was allocated from.
	Block netip.Prefix
}

// BlockUsage is how full one block is.
type BlockUsage struct {
	CIDR     netip.Prefix
	Affinity string
	Pinned   bool
	Used     int
	Free     int
}

// PoolUsage is how full one pool is. Size and Free count addresses of the
// whole pool (saturated at the largest uint64 for huge IPv6 pools); Blocks
// lists the blocks that exist, in address order.
type PoolUsage struct {
	Pool   string
	CIDR   netip.Prefix
	Size   uint64
	Used   uint64
	Free   uint64
	Blocks []BlockUsage
}

// HandleAddrs reads afresh the addresses handle holds, in address order.
// It trusts the handle as an index: it reads the blocks the handle names
// and returns the allocations there that carry handle. A handle that does
// not exist holds none. (Only a handle deleted or edited behind IPAM's back
// can under-count; ReleaseHandle scans all blocks in that case, HandleAddrs
// does not, so that it stays cheap on every pod start.)
func (m *IPAM) HandleAddrs(ctx context.Context, handle string) ([]netip.Addr, error) {
	h, _, found, err := m.readHandle(ctx, handle)
	if err != nil || !found {
		return nil, err
	}
	var out []netip.Addr
	for _, c := range slices.Sorted(maps.Keys(h.Blocks)) {
		p, err := netip.ParsePrefix(c)
		if err != nil || blockSize(p.Masked()) == 0 {
			continue
		}
		e, err := m.readBlock(ctx, p.Masked())
		if err != nil {
			return nil, err
		}
		if e == nil {
			continue
		}
		for _, a := range e.block.Allocations {
			if a.Handle == handle {
				out = append(out, ordinalAddr(e.prefix, a.Ordinal))
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

func infos(e *blockEntry, keep func(api.Allocation) bool) []AllocationInfo {
	var out []AllocationInfo
	for _, a := range e.block.Allocations {
		if keep(a) {
			out = append(out, AllocationInfo{
				IP:     ordinalAddr(e.prefix, a.Ordinal),
				Handle: a.Handle,
				Use:    a.Use,
				Attrs:  maps.Clone(a.Attrs),
				Block:  e.prefix,
			})
		}
	}
	return out
}

// allBlocks lists every block afresh, in address order.
func (m *IPAM) allBlocks(ctx context.Context) ([]*blockEntry, error) {
	return m.loadAll(ctx)
}

// AllAllocations lists afresh every allocated address, in address order,
// with its handle, use, attributes (namespace, pod, node...) and block:
// what a garbage collector compares with the pods and nodes that exist.
func (m *IPAM) AllAllocations(ctx context.Context) ([]AllocationInfo, error) {
	blocks, err := m.allBlocks(ctx)
	if err != nil {
		return nil, err
	}
	var out []AllocationInfo
	for _, e := range blocks {
		out = append(out, infos(e, func(api.Allocation) bool { return true })...)
	}
	return out, nil
}

// Allocations lists every address allocated for node (Attrs["node"] ==
// node), wherever its block is, in address order. The CNI garbage collector
// compares it with the node's pods.
func (m *IPAM) Allocations(ctx context.Context, node string) ([]AllocationInfo, error) {
	blocks, err := m.allBlocks(ctx)
	if err != nil {
		return nil, err
	}
	var out []AllocationInfo
	for _, e := range blocks {
		out = append(out, infos(e, func(a api.Allocation) bool { return a.Attrs[api.AttrNode] == node })...)
	}
	return out, nil
}

// PoolAllocations lists every address allocated from pool, in address
// order. A pool that does not exist gives an error matching
// datastore.ErrNotFound.
func (m *IPAM) PoolAllocations(ctx context.Context, pool string) ([]AllocationInfo, error) {
	o, err := datastore.GetObject[api.IPPool](ctx, m.s, datastore.KindIPPool, pool)
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, fmt.Errorf("ipam: IP pool %q does not exist: %w", pool, err)
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: read IP pool %q: %w", pool, err)
	}
	p := o.Value
	p.Default()
	pfx, err := p.Prefix()
	if err != nil {
		return nil, fmt.Errorf("ipam: IP pool %q: %w", pool, err)
	}
	pfx = pfx.Masked()
	blocks, err := m.allBlocks(ctx)
	if err != nil {
		return nil, err
	}
	var out []AllocationInfo
	for _, e := range blocks {
		if pfx.Overlaps(e.prefix) {
			out = append(out, infos(e, func(a api.Allocation) bool { return pfx.Contains(ordinalAddr(e.prefix, a.Ordinal)) })...)
		}
	}
	return out, nil
}

// Usage reports, for every valid pool (by name), its size, used and free
// addresses and its blocks. Blocks outside every pool are not reported.
func (m *IPAM) Usage(ctx context.Context) ([]PoolUsage, error) {
	pools, err := m.readPools(ctx)
	if err != nil {
		return nil, err
	}
	blocks, err := m.allBlocks(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(pools, func(a, b *poolInfo) int { return strings.Compare(a.name, b.name) })
	out := make([]PoolUsage, 0, len(pools))
	for _, p := range pools {
		u := PoolUsage{Pool: p.name, CIDR: p.prefix, Size: poolSize(p.prefix)}
		for _, e := range blocks {
			if !p.holds(e.prefix) {
				continue
			}
			used := len(e.block.Allocations)
			u.Blocks = append(u.Blocks, BlockUsage{
				CIDR:     e.prefix,
				Affinity: e.block.Affinity,
				Pinned:   e.block.Pinned,
				Used:     used,
				Free:     blockSize(e.prefix) - used,
			})
			u.Used += uint64(used)
		}
		u.Free = u.Size - u.Used
		out = append(out, u)
	}
	return out, nil
}
