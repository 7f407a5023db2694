package ipam

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// u128 is an address as a 128-bit unsigned number. IPv4 addresses use the
// low 32 bits only.
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func fromU128(v u128, is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(v.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.hi)
	binary.BigEndian.PutUint64(b[8:], v.lo)
	return netip.AddrFrom16(b)
}

func (v u128) add(w u128) u128 {
	lo, carry := bits.Add64(v.lo, w.lo, 0)
	hi, _ := bits.Add64(v.hi, w.hi, carry)
	return u128{hi, lo}
}

func (v u128) sub(w u128) u128 {
	lo, borrow := bits.Sub64(v.lo, w.lo, 0)
	hi, _ := bits.Sub64(v.hi, w.hi, borrow)
	return u128{hi, lo}
}

func (v u128) shl(n int) u128 {
	switch {
	case n <= 0:
		return v
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: v.lo << (n - 64)}
	default:
		return u128{hi: v.hi<<n | v.lo>>(64-n), lo: v.lo << n}
	}
}

func (v u128) shr(n int) u128 {
	switch {
	case n <= 0:
		return v
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{lo: v.hi >> (n - 64)}
	default:
		return u128{hi: v.hi >> n, lo: v.lo>>n | v.hi<<(64-n)}
	}
}

// addrAdd returns base + off.
func addrAdd(base netip.Addr, off uint64) netip.Addr {
	return fromU128(toU128(base).add(u128{lo: off}), base.Is4())
}

// addrOffset returns a - base, and false when a is below base or the
// difference does not fit in 64 bits.
func addrOffset(base, a netip.Addr) (uint64, bool) {
	if base.Is4() != a.Is4() || a.Less(base) {
		return 0, false
	}
	d := toU128(a).sub(toU128(base))
	if d.hi != 0 {
		return 0, false
	}
	return d.lo, true
}

// maxBlockHostBits bounds the size of a block IPAM works with: 2^16
// addresses. Pools allow at most 2^12 (/20 and /116); larger blocks found in
// the store are ignored rather than allocated from.
const maxBlockHostBits = 16

// blockSize is the number of addresses of block p, or 0 when p is larger than
// IPAM handles.
func blockSize(p netip.Prefix) int {
	hb := p.Addr().BitLen() - p.Bits()
	if hb < 0 || hb > maxBlockHostBits {
		return 0
	}
	return 1 << hb
}

// ordinalAddr is the address at ordinal o of block p.
func ordinalAddr(p netip.Prefix, o int) netip.Addr {
	return addrAdd(p.Addr(), uint64(o))
}

// addrOrdinal is the ordinal of a inside block p, or -1 when p does not
// contain a.
func addrOrdinal(p netip.Prefix, a netip.Addr) int {
	if !p.Contains(a) {
		return -1
	}
	off, ok := addrOffset(p.Addr(), a)
	if !ok || off >= uint64(blockSize(p)) {
		return -1
	}
	return int(off)
}

// prefixLess orders prefixes by address, then by length.
func prefixLess(a, b netip.Prefix) bool {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c < 0
	}
	return a.Bits() < b.Bits()
}

// poolSize is the number of addresses of p, saturated at the largest uint64.
func poolSize(p netip.Prefix) uint64 {
	hb := p.Addr().BitLen() - p.Bits()
	if hb >= 64 {
		return ^uint64(0)
	}
	return 1 << hb
}
