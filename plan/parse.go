package plan

import (
	"crypto/sha1"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"twill.dev/twill/api"
)

// parseHostPrefix parses a node address such as 192.168.3.241/24. A bare
// address is accepted as a /32 (the caller warns about it). The result keeps
// the host bits: Addr() is the node's address, Masked() its subnet.
func parseHostPrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("address is empty: set it to the node's host address with its prefix length, e.g. 192.168.3.241/24")
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("address %q is not an IP address with prefix length (e.g. 192.168.3.241/24): %w", s, err)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parseNetwork parses a pool or block CIDR, which must be a masked network.
func parseNetwork(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr %q is not a network such as 172.16.0.0/16: %w", s, err)
	}
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("cidr %s has host bits set: use %s", p, m)
	}
	return p, nil
}

// parseHostAddr parses a single address, bare or written as a host prefix
// (/32 for IPv4, /128 for IPv6).
func parseHostAddr(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address: %w", s, err)
	}
	a := p.Addr().Unmap()
	if p.Bits() != a.BitLen() {
		return netip.Addr{}, fmt.Errorf("%q is not a single address: write it as %s/%d", s, a, a.BitLen())
	}
	return a, nil
}

// parseMAC parses a 6-byte MAC address and returns it lower-case and
// colon-separated.
func parseMAC(s string) (string, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil {
		return "", fmt.Errorf("%q is not a MAC address such as 66:04:84:48:ab:6a: %w", s, err)
	}
	if len(hw) != 6 {
		return "", fmt.Errorf("%q is not a 6-byte Ethernet MAC address", s)
	}
	return hw.String(), nil
}

// defaultVTEPMAC derives a node's VTEP MAC as the reference does: 0x66
// followed by the first five bytes of sha1(node name).
func defaultVTEPMAC(node string) string {
	sum := sha1.Sum([]byte(node))
	hw := net.HardwareAddr{0x66, sum[0], sum[1], sum[2], sum[3], sum[4]}
	return hw.String()
}

// encapMode reads a pool's vxlanMode; empty means Never, as in Calico.
func encapMode(m api.EncapMode) (api.EncapMode, bool) {
	switch {
	case m == "":
		return api.EncapNever, true
	case strings.EqualFold(string(m), string(api.EncapNever)):
		return api.EncapNever, true
	case strings.EqualFold(string(m), string(api.EncapAlways)):
		return api.EncapAlways, true
	case strings.EqualFold(string(m), string(api.EncapCrossSubnet)):
		return api.EncapCrossSubnet, true
	}
	return "", false
}

// addrAt returns the address ordinal places after the start of block, or
// false when it lies outside the block.
func addrAt(block netip.Prefix, ordinal int) (netip.Addr, bool) {
	if !block.Addr().Is4() || ordinal < 0 {
		return netip.Addr{}, false
	}
	size := uint64(1) << (32 - block.Bits())
	if uint64(ordinal) >= size {
		return netip.Addr{}, false
	}
	b := block.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(ordinal)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}
