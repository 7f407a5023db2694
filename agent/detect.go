package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// HostAddress is the node's host address as the agent detected it.
type HostAddress struct {
	// Prefix is the address with the prefix length of its subnet, e.g.
	// 192.168.3.241/24 (not masked).
	Prefix netip.Prefix
	// Interface is the link that holds the address; empty when unknown.
	Interface string
	// MTU is that link's MTU; 0 when unknown.
	MTU int
}

// Autodetection method kinds, spelled as in Calico's IP_AUTODETECTION_METHOD.
const (
	MethodFirstFound    = "first-found"
	MethodInterface     = "interface"
	MethodSkipInterface = "skip-interface"
	MethodCIDR          = "cidr"
	MethodCanReach      = "can-reach"
)

// ErrDetect is wrapped by address detection failures.
var ErrDetect = errors.New("node address detection failed")

// AutodetectMethod is a parsed IP_AUTODETECTION_METHOD.
type AutodetectMethod struct {
	Kind string
	// Patterns are the regular expressions of interface= and
	// skip-interface=.
	Patterns []*regexp.Regexp
	// CIDRs are the networks of cidr=.
	CIDRs []netip.Prefix
	// Target is the destination of can-reach=.
	Target netip.Addr
}

// String returns the method as it would be written.
func (m AutodetectMethod) String() string {
	switch m.Kind {
	case MethodInterface, MethodSkipInterface:
		var ps []string
		for _, p := range m.Patterns {
			ps = append(ps, p.String())
		}
		return m.Kind + "=" + strings.Join(ps, ",")
	case MethodCIDR:
		var cs []string
		for _, c := range m.CIDRs {
			cs = append(cs, c.String())
		}
		return m.Kind + "=" + strings.Join(cs, ",")
	case MethodCanReach:
		return m.Kind + "=" + m.Target.String()
	}
	return m.Kind
}

// ParseAutodetectMethod parses an address autodetection method:
// first-found (also ""), interface=REGEX[,REGEX], skip-interface=REGEX[,REGEX],
// cidr=CIDR[,CIDR] or can-reach=IP.
func ParseAutodetectMethod(s string) (AutodetectMethod, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == MethodFirstFound {
		return AutodetectMethod{Kind: MethodFirstFound}, nil
	}
	kind, arg, ok := strings.Cut(s, "=")
	bad := func(format string, a ...any) (AutodetectMethod, error) {
		return AutodetectMethod{}, fmt.Errorf("autodetection method %q: "+format, append([]any{s}, a...)...)
	}
	if !ok || strings.TrimSpace(arg) == "" {
		return bad("must be first-found, interface=REGEX, skip-interface=REGEX, cidr=CIDR[,CIDR] or can-reach=IP")
	}
	m := AutodetectMethod{Kind: kind}
	parts := strings.Split(arg, ",")
	switch kind {
	case MethodInterface, MethodSkipInterface:
		for _, p := range parts {
			re, err := regexp.Compile(strings.TrimSpace(p))
			if err != nil {
				return bad("%q is not a regular expression: %v", p, err)
			}
			m.Patterns = append(m.Patterns, re)
		}
	case MethodCIDR:
		for _, p := range parts {
			c, err := netip.ParsePrefix(strings.TrimSpace(p))
			if err != nil {
				return bad("%q is not a CIDR such as 192.168.3.0/24", p)
			}
			m.CIDRs = append(m.CIDRs, c.Masked())
		}
	case MethodCanReach:
		a, err := netip.ParseAddr(strings.TrimSpace(arg))
		if err != nil || !a.Is4() {
			return bad("%q is not an IPv4 address; can-reach takes an address (no host names), e.g. can-reach=192.168.3.1", arg)
		}
		m.Target = a
	default:
		return bad("unknown method %q: use first-found, interface=, skip-interface=, cidr= or can-reach=", kind)
	}
	return m, nil
}

// linkInfo is what detection needs to know about one link.
type linkInfo struct {
	Name  string
	Index int
	// Type is the kernel's link kind: "veth", "bridge", "vxlan", "device"...
	Type string
	// Up is set when the link is administratively up and its operational
	// state is not down.
	Up    bool
	MTU   int
	Addrs []netip.Prefix
}

// skippedByFirstFound are name patterns of virtual interfaces that never
// carry the node address (Calico's defaults, plus Twill's own devices).
var skippedByFirstFound = regexp.MustCompile(`^(lo|cali.*|vxlan[.-].*|docker.*|veth.*|cbr.*|virbr.*|lxcbr.*|tunl.*|flannel.*|cni.*|kube-ipvs.*|kube-bridge.*|wireguard.*|nodelocaldns.*)$`)

// skippedTypes are link kinds first-found never picks.
var skippedTypes = map[string]bool{"bridge": true, "vxlan": true, "ipip": true, "wireguard": true, "openvswitch": true}

// usable reports whether a is a host address a node can be reached at.
func usable(a netip.Addr) bool {
	return a.Is4() && a.IsGlobalUnicast() && !a.IsLinkLocalUnicast()
}

// firstUsable returns the link's first usable IPv4 address.
func (l linkInfo) firstUsable(keep func(netip.Prefix) bool) (HostAddress, bool) {
	for _, p := range l.Addrs {
		if usable(p.Addr()) && (keep == nil || keep(p)) {
			return HostAddress{Prefix: p, Interface: l.Name, MTU: l.MTU}, true
		}
	}
	return HostAddress{}, false
}

// selectAddress picks the node address from links (sorted by index) by a
// method other than can-reach.
func selectAddress(m AutodetectMethod, links []linkInfo) (HostAddress, error) {
	matches := func(name string) bool {
		for _, re := range m.Patterns {
			if re.MatchString(name) {
				return true
			}
		}
		return false
	}
	for _, l := range links {
		if !l.Up {
			continue
		}
		switch m.Kind {
		case MethodFirstFound, MethodSkipInterface:
			if skippedByFirstFound.MatchString(l.Name) || skippedTypes[l.Type] {
				continue
			}
			if m.Kind == MethodSkipInterface && matches(l.Name) {
				continue
			}
			if h, ok := l.firstUsable(nil); ok {
				return h, nil
			}
		case MethodInterface:
			if !matches(l.Name) {
				continue
			}
			if h, ok := l.firstUsable(nil); ok {
				return h, nil
			}
		case MethodCIDR:
			in := func(p netip.Prefix) bool {
				for _, c := range m.CIDRs {
					if c.Contains(p.Addr()) {
						return true
					}
				}
				return false
			}
			if h, ok := l.firstUsable(in); ok {
				return h, nil
			}
		default:
			return HostAddress{}, fmt.Errorf("%w: method %s cannot select from the link list", ErrDetect, m.Kind)
		}
	}
	return HostAddress{}, fmt.Errorf("%w: no up interface has an IPv4 address matching %s; set --ip or another --ip-autodetection-method", ErrDetect, m)
}

// addressOnLink returns the address the route lookup of can-reach chose:
// src on the link with index idx (or that link's first usable address when
// the route names no source).
func addressOnLink(links []linkInfo, idx int, src netip.Addr, target netip.Addr) (HostAddress, error) {
	for _, l := range links {
		if l.Index != idx {
			continue
		}
		if src.IsValid() {
			for _, p := range l.Addrs {
				if p.Addr() == src {
					return HostAddress{Prefix: p, Interface: l.Name, MTU: l.MTU}, nil
				}
			}
		}
		if h, ok := l.firstUsable(nil); ok {
			return h, nil
		}
		return HostAddress{}, fmt.Errorf("%w: the route to %s leaves through %s, which has no usable IPv4 address", ErrDetect, target, l.Name)
	}
	return HostAddress{}, fmt.Errorf("%w: the route to %s uses link index %d, which was not found", ErrDetect, target, idx)
}

// findAddress returns the link holding a, with a's prefix length there.
func findAddress(links []linkInfo, a netip.Addr) (HostAddress, bool) {
	for _, l := range links {
		for _, p := range l.Addrs {
			if p.Addr() == a {
				return HostAddress{Prefix: p, Interface: l.Name, MTU: l.MTU}, true
			}
		}
	}
	return HostAddress{}, false
}

// resolveIP turns the --ip value into the host address: a bare address is
// given the prefix length of the interface that holds it; an address with a
// prefix length is kept as given, with the interface that holds it when one
// does.
func resolveIP(ip string, links []linkInfo) (HostAddress, error) {
	ip = strings.TrimSpace(ip)
	if p, err := netip.ParsePrefix(ip); err == nil {
		if !p.Addr().Is4() {
			return HostAddress{}, fmt.Errorf("%w: --ip %s is not IPv4; Twill's node addresses are IPv4", ErrDetect, ip)
		}
		h, ok := findAddress(links, p.Addr())
		if !ok {
			return HostAddress{Prefix: p}, nil
		}
		h.Prefix = p
		return h, nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return HostAddress{}, fmt.Errorf("%w: --ip %q is not an IPv4 address such as 192.168.3.241 (or 192.168.3.241/24)", ErrDetect, ip)
	}
	h, ok := findAddress(links, a)
	if !ok {
		return HostAddress{}, fmt.Errorf("%w: no interface holds --ip %s; give the address of one of the node's interfaces, or add its prefix length (e.g. %s/24) to use it as is", ErrDetect, a, a)
	}
	return h, nil
}
