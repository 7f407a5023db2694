package ipamtest

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// Holdings reads the stored blocks inside pool and returns every address
// they hold, with its handle. It fails t when two allocations (in one block
// or in overlapping blocks) carry the same address, or when a block lists
// an ordinal outside itself.
func Holdings(ctx context.Context, t *testing.T, s datastore.Store, pool netip.Prefix) map[netip.Addr]string {
	t.Helper()
	held := map[netip.Addr]string{}
	for _, b := range poolBlocks(ctx, t, s, pool) {
		bp, err := netip.ParsePrefix(b.CIDR)
		if err != nil {
			t.Errorf("block with a malformed CIDR %q: %v", b.CIDR, err)
			continue
		}
		size := 1 << (bp.Addr().BitLen() - bp.Bits())
		for _, a := range b.Allocations {
			if a.Ordinal < 0 || a.Ordinal >= size {
				t.Errorf("block %s lists ordinal %d (handle %s), outside its %d addresses", b.CIDR, a.Ordinal, a.Handle, size)
				continue
			}
			ip := addOrdinal(bp.Addr(), a.Ordinal)
			if prev, dup := held[ip]; dup {
				t.Errorf("%s is allocated twice: to %s and to %s (block %s)", ip, prev, a.Handle, b.CIDR)
				continue
			}
			held[ip] = a.Handle
		}
	}
	return held
}

// HandleMismatches compares the stored handles whose names start with
// prefix with what the blocks inside pool hold for them, and describes,
// sorted by handle name, every difference: a handle whose per-block counts
// are not the blocks' (an over- or under-count), a handle that counts
// addresses no block holds, and an allocation whose handle is missing.
func HandleMismatches(ctx context.Context, t *testing.T, s datastore.Store, pool netip.Prefix, prefix string) []string {
	t.Helper()
	truth := map[string]map[string]int{}
	for _, b := range poolBlocks(ctx, t, s, pool) {
		for _, a := range b.Allocations {
			if !strings.HasPrefix(a.Handle, prefix) {
				continue
			}
			if truth[a.Handle] == nil {
				truth[a.Handle] = map[string]int{}
			}
			truth[a.Handle][b.CIDR]++
		}
	}
	hs, _, err := datastore.ListObjects[api.Handle](ctx, s, datastore.KindHandle, datastore.ListOptions{})
	if err != nil {
		t.Fatalf("ipamtest: list handles: %v", err)
	}
	stored := map[string]map[string]int{}
	for _, h := range hs {
		if strings.HasPrefix(h.Name, prefix) {
			counts := map[string]int{}
			for c, n := range h.Value.Blocks {
				if n != 0 {
					counts[c] = n
				}
			}
			stored[h.Name] = counts
		}
	}
	var out []string
	for _, id := range slices.Sorted(maps.Keys(stored)) {
		have, want := stored[id], truth[id]
		switch {
		case want == nil:
			out = append(out, fmt.Sprintf("handle %s counts %v but holds no address", id, have))
		case !maps.Equal(have, want):
			out = append(out, fmt.Sprintf("handle %s counts %v, the blocks hold %v", id, have, want))
		}
	}
	for _, id := range slices.Sorted(maps.Keys(truth)) {
		if _, ok := stored[id]; !ok {
			out = append(out, fmt.Sprintf("handle %s is missing, the blocks hold %v for it", id, truth[id]))
		}
	}
	return out
}

// addOrdinal returns base + n for IPv4 and IPv6 addresses.
func addOrdinal(base netip.Addr, n int) netip.Addr {
	b := base.As16()
	carry := uint(n)
	for i := len(b) - 1; i >= 0 && carry > 0; i-- {
		v := uint(b[i]) + carry&0xff
		b[i] = byte(v)
		carry = carry>>8 + v>>8
	}
	ip := netip.AddrFrom16(b)
	if base.Is4() {
		return ip.Unmap()
	}
	return ip
}
