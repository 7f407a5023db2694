package api

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Reason classifies a FieldError, so that callers and tests can tell rules
// apart without reading messages.
type Reason string

// Reasons a field can be invalid.
const (
	ReasonRequired    Reason = "Required"    // the field is empty
	ReasonFormat      Reason = "Format"      // the value does not parse
	ReasonNotMasked   Reason = "NotMasked"   // a CIDR with host bits set
	ReasonReserved    Reason = "Reserved"    // a range that pods cannot use
	ReasonRange       Reason = "Range"       // a number out of bounds
	ReasonTooSmall    Reason = "TooSmall"    // a pool smaller than one block
	ReasonValue       Reason = "Value"       // not one of the accepted values
	ReasonUnsupported Reason = "Unsupported" // valid elsewhere, not built in Twill
	ReasonConflict    Reason = "Conflict"    // two fields that exclude each other
	ReasonDuplicate   Reason = "Duplicate"   // a list entry given twice
	ReasonImmutable   Reason = "Immutable"   // a field changed by an update
	ReasonOverlap     Reason = "Overlap"     // a pool overlapping another
	ReasonFamily      Reason = "Family"      // IPv4 and IPv6 mixed
)

// FieldError is one rule one field breaks.
type FieldError struct {
	// Field is the path of the field, for example spec.blockSize.
	Field string
	// Value is the offending value as written.
	Value string
	// Rule says what the value must be, and how to fix it.
	Rule string
	// Reason classifies the rule.
	Reason Reason
}

// Error implements error: "spec.blockSize: 33: must be between 20 and 32 for
// IPv4".
func (e FieldError) Error() string {
	v := e.Value
	if v == "" {
		v = `""`
	}
	return e.Field + ": " + v + ": " + e.Rule
}

// ValidationError lists every rule a resource breaks.
type ValidationError struct {
	Kind   string
	Name   string
	Errors []FieldError
}

// Error implements error.
func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		msgs[i] = fe.Error()
	}
	return fmt.Sprintf("%s %q is invalid: %s", e.Kind, e.Name, strings.Join(msgs, "; "))
}

// Unwrap returns the field errors, so that errors.As finds a FieldError.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		errs[i] = fe
	}
	return errs
}

// Has reports whether the error lists a field error for field with reason.
func (e *ValidationError) Has(field string, reason Reason) bool {
	return slices.ContainsFunc(e.Errors, func(fe FieldError) bool {
		return fe.Field == field && fe.Reason == reason
	})
}

type fieldErrors []FieldError

func (fs *fieldErrors) add(field, value string, reason Reason, format string, args ...any) {
	*fs = append(*fs, FieldError{Field: field, Value: value, Rule: fmt.Sprintf(format, args...), Reason: reason})
}

// result is nil when there are no errors, so that a nil error is a true nil.
func (fs fieldErrors) result(kind, name string) error {
	if len(fs) == 0 {
		return nil
	}
	return &ValidationError{Kind: kind, Name: name, Errors: fs}
}

// reserved ranges no pool may overlap: pods cannot use them.
var reservedV4 = []struct {
	pfx  netip.Prefix
	what string
}{
	{netip.MustParsePrefix("169.254.0.0/16"), "the IPv4 link-local range 169.254.0.0/16"},
	{netip.MustParsePrefix("127.0.0.0/8"), "the IPv4 loopback range 127.0.0.0/8"},
	{netip.MustParsePrefix("224.0.0.0/4"), "the IPv4 multicast range 224.0.0.0/4"},
}

var reservedV6 = []struct {
	pfx  netip.Prefix
	what string
}{
	{netip.MustParsePrefix("fe80::/10"), "the IPv6 link-local range fe80::/10"},
	{netip.MustParsePrefix("::1/128"), "the IPv6 loopback address ::1"},
	{netip.MustParsePrefix("ff00::/8"), "the IPv6 multicast range ff00::/8"},
}

// Block size bounds, as in Calico.
const (
	MinBlockSizeIPv4 = 20
	MaxBlockSizeIPv4 = 32
	MinBlockSizeIPv6 = 116
	MaxBlockSizeIPv6 = 128
)

var encapModes = []EncapMode{EncapNever, EncapAlways, EncapCrossSubnet}

// Validate checks a pool against every rule and returns a *ValidationError
// listing all the broken ones, or nil. Call it after Default: it checks the
// defaulted form, so an empty blockSize, mode or allowedUses is an error.
// Overlap with other pools is checked by CheckPoolOverlap.
func (p IPPool) Validate() error {
	var errs fieldErrors
	if p.APIVersion != Version {
		errs.add("apiVersion", p.APIVersion, ReasonValue, "must be %s", Version)
	}
	if p.Kind != KindIPPool {
		errs.add("kind", p.Kind, ReasonValue, "must be %s", KindIPPool)
	}
	validateName(&errs, p.Metadata.Name)

	pfx, pfxOK := validatePoolCIDR(&errs, p.Spec.CIDR)
	validateBlockSize(&errs, p.Spec.BlockSize, pfx, pfxOK)

	vxOK := validateMode(&errs, "spec.vxlanMode", p.Spec.VXLANMode)
	ipOK := validateMode(&errs, "spec.ipipMode", p.Spec.IPIPMode)
	if ipOK && p.Spec.IPIPMode != EncapNever {
		errs.add("spec.ipipMode", string(p.Spec.IPIPMode), ReasonUnsupported,
			"IPIP is not built in Twill; use vxlanMode (%s or %s) and set ipipMode: Never", EncapAlways, EncapCrossSubnet)
	}
	if vxOK && ipOK && p.Spec.VXLANMode != EncapNever && p.Spec.IPIPMode != EncapNever {
		errs.add("spec.vxlanMode", string(p.Spec.VXLANMode), ReasonConflict,
			"vxlanMode and ipipMode (%s) cannot both be enabled; set one of them to Never", p.Spec.IPIPMode)
	}

	if _, err := ParseSelector(p.Spec.NodeSelector); err != nil {
		var se *SelectorError
		rule := err.Error()
		if errors.As(err, &se) {
			rule = fmt.Sprintf("at position %d: expected %s, found %s", se.Pos, se.Expected, se.Found)
		}
		errs.add("spec.nodeSelector", p.Spec.NodeSelector, ReasonFormat, "%s", rule)
	}

	validateUses(&errs, p.Spec.AllowedUses)
	return errs.result(KindIPPool, p.Metadata.Name)
}

func validateName(errs *fieldErrors, name string) {
	if name == "" {
		errs.add("metadata.name", name, ReasonRequired, "is required")
		return
	}
	if msg := dns1123Subdomain(name); msg != "" {
		errs.add("metadata.name", name, ReasonFormat, "%s", msg)
	}
}

// dns1123Subdomain returns why name is not a DNS-1123 subdomain, or "".
func dns1123Subdomain(name string) string {
	const rule = "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
	if len(name) > 253 {
		return "must be at most 253 characters"
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return rule + " (empty part between dots)"
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
			if !alnum && (c != '-' || i == 0 || i == len(label)-1) {
				return rule
			}
		}
	}
	return ""
}

func validatePoolCIDR(errs *fieldErrors, cidr string) (netip.Prefix, bool) {
	const f = "spec.cidr"
	if cidr == "" {
		errs.add(f, cidr, ReasonRequired, "is required, for example 10.244.0.0/16")
		return netip.Prefix{}, false
	}
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		if a, aerr := netip.ParseAddr(cidr); aerr == nil {
			errs.add(f, cidr, ReasonFormat, "must be a network with a prefix length, for example %s/%d", a, a.BitLen()/2)
		} else {
			errs.add(f, cidr, ReasonFormat, "must be a network in CIDR notation, for example 10.244.0.0/16")
		}
		return netip.Prefix{}, false
	}
	if pfx.Addr().Is4In6() {
		errs.add(f, cidr, ReasonFormat, "is an IPv4-mapped IPv6 network; write it as an IPv4 network")
		return netip.Prefix{}, false
	}
	if m := pfx.Masked(); m != pfx {
		errs.add(f, cidr, ReasonNotMasked, "has host bits set; did you mean %s?", m)
		pfx = m
	}
	reserved := reservedV4
	if pfx.Addr().Is6() {
		reserved = reservedV6
	}
	for _, r := range reserved {
		if pfx.Overlaps(r.pfx) {
			errs.add(f, cidr, ReasonReserved, "overlaps %s, which pods cannot use", r.what)
			break
		}
	}
	return pfx, true
}

func validateBlockSize(errs *fieldErrors, size int, pfx netip.Prefix, pfxOK bool) {
	const f = "spec.blockSize"
	v := strconv.Itoa(size)
	switch {
	case !pfxOK:
		// Without a family, accept either range.
		if (size < MinBlockSizeIPv4 || size > MaxBlockSizeIPv4) && (size < MinBlockSizeIPv6 || size > MaxBlockSizeIPv6) {
			errs.add(f, v, ReasonRange, "must be between %d and %d for IPv4 or between %d and %d for IPv6",
				MinBlockSizeIPv4, MaxBlockSizeIPv4, MinBlockSizeIPv6, MaxBlockSizeIPv6)
		}
		return
	case pfx.Addr().Is4() && (size < MinBlockSizeIPv4 || size > MaxBlockSizeIPv4):
		errs.add(f, v, ReasonRange, "must be between %d and %d for IPv4", MinBlockSizeIPv4, MaxBlockSizeIPv4)
		return
	case pfx.Addr().Is6() && (size < MinBlockSizeIPv6 || size > MaxBlockSizeIPv6):
		errs.add(f, v, ReasonRange, "must be between %d and %d for IPv6", MinBlockSizeIPv6, MaxBlockSizeIPv6)
		return
	}
	if pfx.Bits() > size {
		errs.add("spec.cidr", pfx.String(), ReasonTooSmall,
			"pool /%d is smaller than one /%d block; use a cidr of /%d or wider, or a blockSize of at least %d",
			pfx.Bits(), size, size, pfx.Bits())
	}
}

// validateMode checks an encapsulation mode; it reports whether the mode is
// one of the accepted values.
func validateMode(errs *fieldErrors, field string, m EncapMode) bool {
	if slices.Contains(encapModes, m) {
		return true
	}
	hint := ""
	for _, ok := range encapModes {
		if strings.EqualFold(string(ok), string(m)) {
			hint = fmt.Sprintf(" (values are case-sensitive: did you mean %s?)", ok)
		}
	}
	if m == "" {
		errs.add(field, "", ReasonRequired, "is required: one of Never, Always, CrossSubnet (call Default to set Never)")
		return false
	}
	errs.add(field, string(m), ReasonValue, "must be one of Never, Always, CrossSubnet%s", hint)
	return false
}

func validateUses(errs *fieldErrors, uses []IPPoolUse) {
	if len(uses) == 0 {
		errs.add("spec.allowedUses", "[]", ReasonRequired, "must list at least one of Workload, Tunnel")
		return
	}
	seen := map[IPPoolUse]bool{}
	for i, u := range uses {
		f := fmt.Sprintf("spec.allowedUses[%d]", i)
		switch {
		case u != UseWorkload && u != UseTunnel:
			errs.add(f, string(u), ReasonValue, "must be Workload or Tunnel")
		case seen[u]:
			errs.add(f, string(u), ReasonDuplicate, "is listed twice; list each use once")
		}
		seen[u] = true
	}
}

// ValidatePoolUpdate checks that an update of old to new leaves the fields
// that cannot change alone: cidr and blockSize (blocks already cut from the
// pool depend on both). It returns a *ValidationError or nil; validate new
// itself with Validate.
func ValidatePoolUpdate(old, new IPPool) error {
	old.Default()
	new.Default()
	var errs fieldErrors
	op, oerr := netip.ParsePrefix(old.Spec.CIDR)
	np, nerr := netip.ParsePrefix(new.Spec.CIDR)
	changed := old.Spec.CIDR != new.Spec.CIDR
	if oerr == nil && nerr == nil {
		changed = op != np
	}
	if changed {
		errs.add("spec.cidr", new.Spec.CIDR, ReasonImmutable,
			"cannot change (was %s); create a new pool and disable this one instead", old.Spec.CIDR)
	}
	if old.Spec.BlockSize != new.Spec.BlockSize {
		errs.add("spec.blockSize", strconv.Itoa(new.Spec.BlockSize), ReasonImmutable,
			"cannot change (was %d); create a new pool and disable this one instead", old.Spec.BlockSize)
	}
	return errs.result(KindIPPool, new.Metadata.Name)
}

// CheckPoolOverlap reports, as a *ValidationError naming every other pool
// involved, whether p's cidr overlaps the cidr of any pool in existing. A pool
// of the same name is p's own earlier version and is skipped; existing pools
// whose cidr does not parse are skipped too.
func CheckPoolOverlap(p IPPool, existing []IPPool) error {
	var errs fieldErrors
	pfx, err := netip.ParsePrefix(p.Spec.CIDR)
	if err != nil {
		errs.add("spec.cidr", p.Spec.CIDR, ReasonFormat, "must be a network in CIDR notation, for example 10.244.0.0/16")
		return errs.result(KindIPPool, p.Metadata.Name)
	}
	pfx = pfx.Masked()
	for _, o := range existing {
		if o.Metadata.Name == p.Metadata.Name {
			continue
		}
		opfx, err := netip.ParsePrefix(o.Spec.CIDR)
		if err != nil {
			continue
		}
		if pfx.Overlaps(opfx.Masked()) {
			errs.add("spec.cidr", p.Spec.CIDR, ReasonOverlap,
				"overlaps pool %q (%s); pools must not share addresses", o.Metadata.Name, o.Spec.CIDR)
		}
	}
	return errs.result(KindIPPool, p.Metadata.Name)
}

// Validate checks a node and returns a *ValidationError listing every broken
// rule, or nil: the name, the address (ADDR/PREFIX), the VTEP MAC and the
// tunnel address.
func (n Node) Validate() error {
	var errs fieldErrors
	if n.APIVersion != Version {
		errs.add("apiVersion", n.APIVersion, ReasonValue, "must be %s", Version)
	}
	if n.Kind != KindNode {
		errs.add("kind", n.Kind, ReasonValue, "must be %s", KindNode)
	}
	validateName(&errs, n.Metadata.Name)

	addr, addrErr := ParseNodeAddress(n.Spec.Address)
	if addrErr != nil {
		reason := ReasonFormat
		if n.Spec.Address == "" {
			reason = ReasonRequired
		}
		var ae *AddressError
		rule := addrErr.Error()
		if errors.As(addrErr, &ae) {
			rule = ae.Rule
		}
		errs.add("spec.address", n.Spec.Address, reason, "%s", rule)
	} else if a := addr.Addr(); a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
		errs.add("spec.address", n.Spec.Address, ReasonReserved,
			"must be the unicast address the node's peers reach it at, not a loopback, multicast or unspecified address")
	}

	if n.Spec.MTU != 0 && (n.Spec.MTU < 68 || n.Spec.MTU > 65535) {
		errs.add("spec.mtu", strconv.Itoa(n.Spec.MTU), ReasonRange, "must be 0 (unknown) or between 68 and 65535")
	}

	if n.Spec.VTEPMAC != "" {
		mac, err := net.ParseMAC(n.Spec.VTEPMAC)
		switch {
		case err != nil || len(mac) != 6:
			errs.add("spec.vtepMAC", n.Spec.VTEPMAC, ReasonFormat,
				"must be a 6-byte MAC address such as %s (or empty to derive it from the node name)", VTEPMAC(n.Metadata.Name))
		case mac[0]&1 == 1:
			errs.add("spec.vtepMAC", n.Spec.VTEPMAC, ReasonValue,
				"is a multicast MAC address; the lowest bit of the first byte must be 0")
		case slices.Equal(mac, net.HardwareAddr{0, 0, 0, 0, 0, 0}):
			errs.add("spec.vtepMAC", n.Spec.VTEPMAC, ReasonValue, "must not be all zeros")
		}
	}

	if n.Spec.TunnelAddress != "" {
		ta, err := netip.ParseAddr(n.Spec.TunnelAddress)
		switch {
		case err != nil:
			msg := "must be an IP address without prefix length, for example 172.16.159.128"
			if p, perr := netip.ParsePrefix(n.Spec.TunnelAddress); perr == nil {
				msg = fmt.Sprintf("must be an IP address without prefix length; write %s", p.Addr())
			}
			errs.add("spec.tunnelAddress", n.Spec.TunnelAddress, ReasonFormat, "%s", msg)
		case ta.Zone() != "":
			errs.add("spec.tunnelAddress", n.Spec.TunnelAddress, ReasonFormat, "must not carry an IPv6 zone")
		case addrErr == nil && ta.Is4() != addr.Addr().Is4():
			errs.add("spec.tunnelAddress", n.Spec.TunnelAddress, ReasonFamily,
				"must be of the same IP family as spec.address (%s)", n.Spec.Address)
		}
	}
	return errs.result(KindNode, n.Metadata.Name)
}
