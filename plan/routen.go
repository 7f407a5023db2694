package plan

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// routeNFormat is net-tools' `route -n` line layout: Destination, Gateway,
// Genmask, Flags, Metric, Ref, Use, Iface.
const routeNFormat = "%-15s %-15s %-15s %-5s %-6d %-2d %7d %s"

// RouteN renders IPv4 routes as the lines `route -n` prints for them, in the
// order it prints them (the kernel's: by destination address, longer prefix
// first for the same address). Blackholes show gateway 0.0.0.0, flags U and
// iface "*"; a gateway adds flag G and a /32 destination flag H. Metric, Ref
// and Use are always 0. IPv6 routes are left out, as `route -n` does.
func RouteN(routes []Route) []string {
	rs := make([]Route, 0, len(routes))
	for _, r := range routes {
		if r.Dst.Addr().Is4() {
			rs = append(rs, r)
		}
	}
	slices.SortStableFunc(rs, compareRoute)
	lines := make([]string, 0, len(rs))
	for _, r := range rs {
		gw := "0.0.0.0"
		flags := "U"
		if r.Type != RouteBlackhole && r.Gateway.IsValid() {
			gw = r.Gateway.String()
			flags += "G"
		}
		if r.Dst.Bits() == 32 {
			flags += "H"
		}
		iface := r.Device
		if r.Type == RouteBlackhole || iface == "" {
			iface = "*"
		}
		lines = append(lines, fmt.Sprintf(routeNFormat,
			r.Dst.Masked().Addr(), gw, genmask(r.Dst.Bits()), flags, 0, 0, 0, iface))
	}
	return lines
}

// genmask renders an IPv4 prefix length as a dotted netmask.
func genmask(bits int) string {
	var m uint32
	if bits > 0 {
		m = ^uint32(0) << (32 - bits)
	}
	return netip.AddrFrom4([4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}).String()
}

// String renders the route as `ip route` shows it, for example
// "172.16.36.64/26 via 172.16.36.64 dev vxlan.calico proto 80 onlink",
// "blackhole 172.16.159.128/26 proto 80" or
// "172.16.159.145 dev cali64d6bf8fbc2 proto 80 scope link".
func (r Route) String() string {
	var b strings.Builder
	if r.Type == RouteBlackhole {
		b.WriteString("blackhole ")
	}
	if r.Dst.IsValid() && r.Dst.Bits() == r.Dst.Addr().BitLen() {
		b.WriteString(r.Dst.Addr().String())
	} else {
		b.WriteString(r.Dst.String())
	}
	if r.Type != RouteBlackhole {
		if r.Gateway.IsValid() {
			b.WriteString(" via ")
			b.WriteString(r.Gateway.String())
		}
		if r.Device != "" {
			b.WriteString(" dev ")
			b.WriteString(r.Device)
		}
	}
	fmt.Fprintf(&b, " proto %d", RouteProtocol)
	if r.ScopeLink {
		b.WriteString(" scope link")
	}
	if r.OnLink && r.Type != RouteBlackhole {
		b.WriteString(" onlink")
	}
	return b.String()
}
