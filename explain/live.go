package explain

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"twill.dev/twill/plan"
)

// Kernel is what one node's kernel holds for Twill, as plan values: the
// caller reads it (dataplane.Reconciler.Observe) and converts it.
type Kernel struct {
	// Device is the VXLAN device; nil when there is none.
	Device *plan.Device
	// DeviceUp says whether the device is administratively up.
	DeviceUp bool
	// Routes are the routes with protocol plan.RouteProtocol.
	Routes []plan.Route
	// Odd are owned routes no plan.Route can express, in `ip route` form.
	Odd       []string
	Neighbors []plan.Neighbor
	FDB       []plan.FDB
}

// LiveFinding is one comparison of the plan with a node's kernel.
type LiveFinding struct {
	Node string `json:"node"`
	// What names what was compared, e.g. "route to 172.16.36.80".
	What string `json:"what"`
	// OK is set when the kernel holds what the plan wants.
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// CheckLive compares the path's planned routes (and for VXLAN the device,
// neighbour and FDB entries) with the kernels of the sending nodes, keyed by
// node name; a node missing from kernels is not checked. The findings are
// appended to p.Live, and every difference to p.Problems.
func (p *Path) CheckLive(kernels map[string]*Kernel) {
	for _, d := range []*Direction{p.Forward, p.Return} {
		if d == nil {
			continue
		}
		k := kernels[d.From]
		if k == nil {
			continue
		}
		p.checkDirection(d, k)
		if p.SameNode {
			break
		}
	}
}

func (p *Path) live(node, what string, ok bool, format string, args ...any) {
	f := LiveFinding{Node: node, What: what, OK: ok, Detail: fmt.Sprintf(format, args...)}
	p.Live = append(p.Live, f)
	if !ok {
		p.problem("live %s: %s: %s", node, what, f.Detail)
	}
}

func (p *Path) checkDirection(d *Direction, k *Kernel) {
	a, err := netip.ParseAddr(d.ToAddress)
	if err != nil {
		return
	}
	what := "route to " + d.ToAddress
	kr := lookup(k.Routes, a)
	switch {
	case d.Route == nil && kr == nil:
		p.live(d.From, what, true, "no Twill route in the kernel either")
	case d.Route == nil:
		p.live(d.From, what, false, "the kernel has %q, which the plan does not want (stale; the agent should remove it)", kr.String())
	case kr == nil:
		p.live(d.From, what, false, "missing: the plan wants %q, the kernel has no Twill route to %s (is the agent running?)", d.Route.IPRoute, d.ToAddress)
	case kr.String() != d.Route.IPRoute:
		p.live(d.From, what, false, "different: the plan wants %q, the kernel has %q", d.Route.IPRoute, kr.String())
	default:
		p.live(d.From, what, true, "%s", kr.String())
	}
	v := d.VXLAN
	if v == nil {
		return
	}
	switch dev := k.Device; {
	case dev == nil:
		p.live(d.From, "VXLAN device", false, "missing: no %s device in the kernel", v.Device)
	case dev.Name != v.Device:
		p.live(d.From, "VXLAN device", false, "the kernel's device is %s, the plan's %s", dev.Name, v.Device)
	case !k.DeviceUp:
		p.live(d.From, "VXLAN device", false, "%s is down", dev.Name)
	case dev.VNI != v.VNI || dev.Port != v.Port || dev.MTU != v.DeviceMTU || dev.MAC != v.InnerSrcMAC:
		p.live(d.From, "VXLAN device", false, "different: the plan wants VNI %d port %d MTU %d MAC %s, the kernel has VNI %d port %d MTU %d MAC %s",
			v.VNI, v.Port, v.DeviceMTU, v.InnerSrcMAC, dev.VNI, dev.Port, dev.MTU, dev.MAC)
	default:
		p.live(d.From, "VXLAN device", true, "%s up, VNI %d, port %d, MTU %d, MAC %s", dev.Name, dev.VNI, dev.Port, dev.MTU, dev.MAC)
	}
	gw, err := netip.ParseAddr(v.Gateway)
	if err != nil || v.InnerDstMAC == "" {
		return
	}
	what = "neighbour " + v.Gateway
	i := slices.IndexFunc(k.Neighbors, func(n plan.Neighbor) bool { return n.IP == gw })
	switch {
	case i < 0:
		p.live(d.From, what, false, "missing: the plan wants %s lladdr %s, the kernel has no permanent entry for %s's VTEP", v.Gateway, v.InnerDstMAC, dash(d.To))
	case k.Neighbors[i].MAC != v.InnerDstMAC:
		p.live(d.From, what, false, "different: the plan wants lladdr %s, the kernel has %s", v.InnerDstMAC, k.Neighbors[i].MAC)
	default:
		p.live(d.From, what, true, "%s", NeighborString(k.Neighbors[i]))
	}
	if v.OuterDst == "" {
		return
	}
	what = "FDB " + v.InnerDstMAC
	dst, _ := netip.ParseAddr(v.OuterDst)
	switch i := slices.IndexFunc(k.FDB, func(f plan.FDB) bool { return f.MAC == v.InnerDstMAC }); {
	case i < 0:
		p.live(d.From, what, false, "missing: the plan wants %s dst %s, the kernel has no permanent entry for %s's VTEP MAC", v.InnerDstMAC, v.OuterDst, dash(d.To))
	case !slices.ContainsFunc(k.FDB, func(f plan.FDB) bool { return f.MAC == v.InnerDstMAC && f.Dst == dst }):
		p.live(d.From, what, false, "different: the plan wants dst %s, the kernel has dst %s", v.OuterDst, k.FDB[i].Dst)
	default:
		p.live(d.From, what, true, "%s dst %s", v.InnerDstMAC, v.OuterDst)
	}
}

// DiffState says how a planned line compares with the kernel's.
type DiffState string

// Comparison outcomes.
const (
	// Same: the kernel has exactly what the plan wants.
	Same DiffState = "same"
	// Missing: the plan wants it, the kernel lacks it.
	Missing DiffState = "missing"
	// Extra: the kernel has it, the plan does not want it.
	Extra DiffState = "extra"
	// Different: both have an entry for the same key, but they differ.
	Different DiffState = "different"
)

// RouteDiff is one destination compared: Planned is nil for an extra
// route, Kernel nil for a missing one.
type RouteDiff struct {
	State   DiffState
	Planned *plan.Route
	Kernel  *plan.Route
}

// DiffRoutes compares a node's planned routes with the Twill routes its
// kernel holds, destination by destination (Kind and Peer, which the kernel
// does not record, are ignored). The result is sorted as `route -n` lists
// routes: by destination address, longer prefix first.
func DiffRoutes(planned, kernel []plan.Route) []RouteDiff {
	byDst := map[netip.Prefix][2][]*plan.Route{}
	for i := range planned {
		e := byDst[planned[i].Dst]
		e[0] = append(e[0], &planned[i])
		byDst[planned[i].Dst] = e
	}
	for i := range kernel {
		e := byDst[kernel[i].Dst]
		e[1] = append(e[1], &kernel[i])
		byDst[kernel[i].Dst] = e
	}
	dsts := make([]netip.Prefix, 0, len(byDst))
	for d := range byDst {
		dsts = append(dsts, d)
	}
	slices.SortFunc(dsts, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(b.Bits(), a.Bits()))
	})
	var out []RouteDiff
	for _, d := range dsts {
		ps, ks := byDst[d][0], byDst[d][1]
		// Exact matches first, then pair the rest as different.
		for i := 0; i < len(ps); {
			j := slices.IndexFunc(ks, func(k *plan.Route) bool { return k.String() == ps[i].String() })
			if j < 0 {
				i++
				continue
			}
			out = append(out, RouteDiff{State: Same, Planned: ps[i], Kernel: ks[j]})
			ps = slices.Delete(ps, i, i+1)
			ks = slices.Delete(ks, j, j+1)
		}
		for len(ps) > 0 && len(ks) > 0 {
			out = append(out, RouteDiff{State: Different, Planned: ps[0], Kernel: ks[0]})
			ps, ks = ps[1:], ks[1:]
		}
		for _, r := range ps {
			out = append(out, RouteDiff{State: Missing, Planned: r})
		}
		for _, r := range ks {
			out = append(out, RouteDiff{State: Extra, Kernel: r})
		}
	}
	return out
}

// LineDiff is one line of a set comparison.
type LineDiff struct {
	State DiffState
	Line  string
}

// DiffLines compares two sets of lines (neighbour or FDB entries, a
// device), in sorted order: lines in both are Same, lines only planned
// Missing, lines only in the kernel Extra.
func DiffLines(planned, kernel []string) []LineDiff {
	in := func(set []string, s string) bool { return slices.Contains(set, s) }
	all := slices.Concat(planned, kernel)
	slices.Sort(all)
	all = slices.Compact(all)
	out := make([]LineDiff, 0, len(all))
	for _, s := range all {
		switch p, k := in(planned, s), in(kernel, s); {
		case p && k:
			out = append(out, LineDiff{Same, s})
		case p:
			out = append(out, LineDiff{Missing, s})
		default:
			out = append(out, LineDiff{Extra, s})
		}
	}
	return out
}

// NeighborString renders a neighbour entry as `ip neigh` shows it.
func NeighborString(n plan.Neighbor) string {
	return fmt.Sprintf("%s dev %s lladdr %s PERMANENT", n.IP, n.Device, n.MAC)
}

// FDBString renders an FDB entry as `bridge fdb` shows it.
func FDBString(f plan.FDB) string {
	return fmt.Sprintf("%s dev %s dst %s self permanent", f.MAC, f.Device, f.Dst)
}

// DeviceString renders a VXLAN device's settings on one line, in the
// words of `ip -d link` and `ip addr`; up is its administrative state.
func DeviceString(d plan.Device, up bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: vxlan id %d dstport %d", d.Name, d.VNI, d.Port)
	if d.LocalIP.IsValid() {
		fmt.Fprintf(&b, " local %s", d.LocalIP)
	}
	if d.Parent != "" {
		fmt.Fprintf(&b, " dev %s", d.Parent)
	}
	fmt.Fprintf(&b, " mtu %d", d.MTU)
	if d.MAC != "" {
		fmt.Fprintf(&b, " link/ether %s", d.MAC)
	}
	if d.Address.IsValid() {
		fmt.Fprintf(&b, " inet %s", d.Address)
	}
	if up {
		b.WriteString(" UP")
	} else {
		b.WriteString(" DOWN")
	}
	return b.String()
}
