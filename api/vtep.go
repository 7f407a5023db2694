package api

import (
	"crypto/sha1"
	"fmt"
	"net/netip"
)

// VTEPMAC returns the MAC address of a node's VXLAN device, derived from the
// node name as Calico does: 0x66 followed by the first five bytes of
// sha1(name), lower-case and colon-separated (k8s-master1 → 66:04:84:48:ab:6a).
// The first byte makes it a locally administered unicast address.
func VTEPMAC(node string) string {
	sum := sha1.Sum([]byte(node))
	return fmt.Sprintf("66:%02x:%02x:%02x:%02x:%02x", sum[0], sum[1], sum[2], sum[3], sum[4])
}

// AddressError reports a string that is not the expected address form.
type AddressError struct {
	// Value is the string that was parsed.
	Value string
	// Rule says what the value must be, and how to fix it.
	Rule string
}

// Error implements error.
func (e *AddressError) Error() string {
	return fmt.Sprintf("%q: %s", e.Value, e.Rule)
}

// ParseNodeAddress parses a node address with its prefix length, such as
// 192.168.3.241/24. The host address is kept (the prefix is not masked): the
// address identifies the node and the prefix length says which peers share
// its subnet. A bare address is an error, because silently treating it as a
// /32 would put every peer in "another subnet".
func ParseNodeAddress(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, &AddressError{Value: s, Rule: "is required: the node's host address with its prefix length, for example 192.168.3.241/24"}
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			ex := "/24"
			if a.Is6() {
				ex = "/64"
			}
			return netip.Prefix{}, &AddressError{Value: s, Rule: fmt.Sprintf(
				"has no prefix length; add the prefix length of the node's subnet, for example %s%s", s, ex)}
		}
		return netip.Prefix{}, &AddressError{Value: s, Rule: "must be an address with its prefix length, for example 192.168.3.241/24"}
	}
	return p, nil
}

// Prefix returns the node's address with its prefix length (not masked).
func (n Node) Prefix() (netip.Prefix, error) {
	return ParseNodeAddress(n.Spec.Address)
}

// parseNetwork parses a masked CIDR such as a pool's or a block's.
func parseNetwork(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, &AddressError{Value: s, Rule: "must be a network in CIDR notation, for example 10.244.0.0/16"}
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, &AddressError{Value: s, Rule: fmt.Sprintf("has host bits set; did you mean %s?", m)}
	}
	return p, nil
}

// Prefix returns the pool's cidr; an error when it does not parse or has
// host bits set.
func (p IPPool) Prefix() (netip.Prefix, error) {
	return parseNetwork(p.Spec.CIDR)
}

// Prefix returns the block's cidr; an error when it does not parse or has
// host bits set.
func (b Block) Prefix() (netip.Prefix, error) {
	return parseNetwork(b.CIDR)
}

// Allows reports whether the pool's addresses may be used for u. A pool that
// lists no uses allows the default ones (Workload and Tunnel).
func (p IPPool) Allows(u IPPoolUse) bool {
	uses := p.Spec.AllowedUses
	if len(uses) == 0 {
		uses = DefaultAllowedUses()
	}
	for _, a := range uses {
		if a == u {
			return true
		}
	}
	return false
}
