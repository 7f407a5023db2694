package explain

import (
	"fmt"
	"strings"

	"twill.dev/twill/api"
)

// Text renders the path as a human report: the endpoints and their nodes,
// then each direction with its subnet verdict, pool, route (in `ip route`
// and `route -n` form) and what goes on the wire, then the problems, notes
// and live findings.
func (p Path) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Path from %s to %s\n\n", p.Src.Name(), p.Dst.Name())
	endpoint(&b, "Source:", p.Src)
	endpoint(&b, "Destination:", p.Dst)
	if p.SrcNode != nil || p.DstNode != nil {
		b.WriteString("Nodes:\n")
		for _, n := range []*NodeInfo{p.SrcNode, p.DstNode} {
			if n == nil || (n == p.DstNode && p.SameNode) {
				continue
			}
			fmt.Fprintf(&b, "  %-14s %s on %s (MTU %d), tunnel %s, VTEP MAC %s\n",
				n.Name, dash(n.Address), n.Interface, n.MTU, dash(n.TunnelAddress), dash(n.VTEPMAC))
		}
	}
	if p.Forward != nil {
		b.WriteString("\n")
		direction(&b, "Forward", p.Forward)
	}
	if p.Return != nil {
		b.WriteString("\n")
		direction(&b, "Return", p.Return)
	}
	list(&b, "Problems", p.Problems)
	list(&b, "Notes", p.Notes)
	if len(p.Live) > 0 {
		b.WriteString("\nLive kernel state:\n")
		for _, f := range p.Live {
			mark := "ok  "
			if !f.OK {
				mark = "DIFF"
			}
			fmt.Fprintf(&b, "  %s %s: %s: %s\n", mark, f.Node, f.What, f.Detail)
		}
	}
	return b.String()
}

func endpoint(b *strings.Builder, label string, e Endpoint) {
	fmt.Fprintf(b, "%-13s%s", label, e.Name())
	if e.Node != "" && e.Kind != KindNode && e.Kind != KindHost {
		fmt.Fprintf(b, " on %s", e.Node)
	}
	if e.HostIface != "" {
		fmt.Fprintf(b, ", veth %s", e.HostIface)
	}
	if e.Block != "" {
		fmt.Fprintf(b, ", block %s", e.Block)
		if e.BlockAffinity != "" && e.BlockAffinity != e.Node {
			fmt.Fprintf(b, " (%s's)", e.BlockAffinity)
		}
	}
	if e.Pool != "" {
		fmt.Fprintf(b, ", pool %s", e.Pool)
	} else {
		b.WriteString(", in no pool")
	}
	b.WriteString("\n")
}

// modeText says what a pool's vxlanMode does.
func modeText(m api.EncapMode) string {
	switch m {
	case api.EncapAlways:
		return "encapsulates every path between nodes"
	case api.EncapCrossSubnet:
		return "routes directly within the sender's subnet, over VXLAN across subnets"
	}
	return "never encapsulates; it routes only within the sender's subnet"
}

func viaText(v Via) string {
	switch v {
	case ViaLocal:
		return "local delivery"
	case ViaDirect:
		return "direct, unencapsulated"
	case ViaVXLAN:
		return "VXLAN"
	case ViaBlackhole:
		return "dropped (blackhole)"
	}
	return "no route"
}

func direction(b *strings.Builder, label string, d *Direction) {
	fmt.Fprintf(b, "%s: %s → %s (%s → %s): %s\n", label, d.From, dash(d.To), d.FromAddress, d.ToAddress, viaText(d.Via))
	row := func(k, format string, args ...any) {
		fmt.Fprintf(b, "  %-10s %s\n", k+":", fmt.Sprintf(format, args...))
	}
	if d.Subnet.Why != "" {
		row("subnet", "%s", d.Subnet.Why)
	}
	if d.Pool != "" {
		row("pool", "%s, vxlanMode %s: %s", d.Pool, d.VXLANMode, modeText(d.VXLANMode))
	} else {
		row("pool", "%s is in no IP pool", d.ToAddress)
	}
	if d.Expected != d.Via {
		row("expected", "%s, but the planned routes give %s", viaText(d.Expected), viaText(d.Via))
	}
	if r := d.Route; r != nil {
		row("route", "%s", r.IPRoute)
		row("route -n", "%s", r.RouteN)
	} else {
		row("route", "none: %s has no Twill route to %s", d.From, d.ToAddress)
	}
	switch {
	case d.Via == ViaLocal && d.Route != nil:
		row("delivery", "%s hands the packet to the pod's veth; it never leaves the node", d.From)
	case d.Direct != nil:
		x := d.Direct
		row("next hop", "%s on %s (the peer's host address, on-link)", x.NextHop, x.Interface)
		row("on wire", "%s → %s unchanged, no encapsulation: the frame is %d bytes on %s for a default ping", x.SourceAddress, d.ToAddress, x.Length, x.Interface)
		row("MTU", "%d (%s, the host MTU: no VXLAN overhead on a direct path)", x.PathMTU, x.Interface)
		row("capture", "tcpdump -i %s -nne icmp and host %s", x.Interface, d.ToAddress)
	case d.VXLAN != nil:
		v := d.VXLAN
		row("VXLAN", "VNI %d, UDP port %d, device %s", v.VNI, v.Port, v.Device)
		row("outer", "%s → %s, UDP to port %d, leaving by %s: %d bytes for a default ping (%d + %d)",
			dash(v.OuterSrc), dash(v.OuterDst), v.Port, dash(v.OuterInterface), v.OuterLength, v.InnerLength, v.OuterLength-v.InnerLength)
		row("inner", "%s → %s (VTEP MACs), %s → %s: %d bytes on %s",
			dash(v.InnerSrcMAC), dash(v.InnerDstMAC), d.FromAddress, d.ToAddress, v.InnerLength, v.Device)
		row("next hop", "%s, %s's tunnel address", v.Gateway, dash(d.To))
		row("MTU", "%d on %s (%s %d minus %d); a direct path would allow %d", v.DeviceMTU, v.Device, dash(v.OuterInterface), v.HostMTU, v.HostMTU-v.DeviceMTU, v.HostMTU)
		row("capture", "tcpdump -i %s -nne udp port %d  and  tcpdump -i %s -nne icmp", dash(v.OuterInterface), v.Port, v.Device)
	}
	for i, s := range d.Status {
		k := ""
		if i == 0 {
			k = "planner"
		}
		if k == "" {
			fmt.Fprintf(b, "  %-10s %s\n", "", s)
		} else {
			row(k, "%s", s)
		}
	}
}

func list(b *strings.Builder, title string, items []string) {
	if len(items) == 0 {
		return
	}
	fmt.Fprintf(b, "\n%s:\n", title)
	for _, s := range items {
		fmt.Fprintf(b, "  - %s\n", s)
	}
}
