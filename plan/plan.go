package plan

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"twill.dev/twill/api"
)

// DefaultHostInterface is the local host interface assumed when the local
// node does not record one.
const DefaultHostInterface = "eth0"

// minIPv4MTU is the smallest MTU an IPv4 link may have.
const minIPv4MTU = 68

// Plan computes the dataplane that in.LocalNode should have.
//
// Plan is pure and deterministic: it reads only in, never modifies it, and
// returns the same Dataplane for the same cluster whatever the order of the
// input slices. Malformed objects (unparseable addresses, duplicate names or
// CIDRs, IPv6 pools and blocks) are skipped with a note in Status; Plan never
// panics on them. When the local node is missing or its address is unusable,
// the result holds only a Status explaining why.
//
// Per remote block the block's pool decides the path: vxlanMode Always
// encapsulates, Never routes directly (and only to peers inside the local
// node's subnet), CrossSubnet routes directly to peers inside the local
// node's subnet and encapsulates to the others. "Inside" means the local
// node's address prefix contains the peer's address; only the local prefix
// counts. Routes are sorted as the kernel lists them: by destination address,
// longer prefix first for the same address.
func Plan(in Input) Dataplane {
	p := &planner{in: in}
	if !p.indexNodes() {
		return Dataplane{Status: p.status()}
	}
	p.routes = make([]Route, 0, len(in.Blocks)+len(in.Workloads))
	p.indexPools()
	p.planDevice()
	p.planBlocks()
	p.planWorkloads()
	return p.finish()
}

// node is a node whose address parsed, as the planner sees it.
type node struct {
	name string
	// prefix is the host address with its prefix length.
	prefix netip.Prefix
	tunnel netip.Addr
	mac    string
	// noVTEP says why the node cannot be reached over VXLAN; empty if it can.
	noVTEP string
}

// pool is a valid IPv4 pool.
type pool struct {
	name     string
	cidr     netip.Prefix
	mode     api.EncapMode
	nat      bool
	disabled bool
}

// planner holds one Plan call's working state.
type planner struct {
	in    Input
	local *node
	iface string
	mtu   int
	// localNoTunnel says why the local node cannot encapsulate.
	localNoTunnel string
	// nodes are the usable remote nodes by name.
	nodes map[string]*node
	// skipped says why a named node is not usable.
	skipped map[string]string
	pools   []pool
	// extraPools are CIDRs of pools skipped for ambiguity; they still keep
	// traffic from being masqueraded.
	extraPools []netip.Prefix
	dev        *Device
	port       int
	// vxlanMissed counts routes dropped because the local node cannot
	// encapsulate.
	vxlanMissed int
	// warn holds local-node warnings, in the order they were found.
	warn []string
	// notes holds everything else; finish sorts them.
	notes  []string
	routes []Route
}

func (p *planner) notef(format string, args ...any) {
	p.notes = append(p.notes, fmt.Sprintf(format, args...))
}

func (p *planner) warnf(format string, args ...any) {
	p.warn = append(p.warn, fmt.Sprintf(format, args...))
}

// status returns the warnings followed by the sorted, de-duplicated notes.
func (p *planner) status() []string {
	notes := slices.Clone(p.notes)
	slices.Sort(notes)
	notes = slices.Compact(notes)
	out := append(slices.Clone(p.warn), notes...)
	if len(out) == 0 {
		return nil
	}
	return out
}

// indexNodes parses the local node and the remote nodes; false means there
// is nothing to plan.
func (p *planner) indexNodes() bool {
	localName := p.in.LocalNode
	if localName == "" {
		p.warnf("no local node name given: nothing to plan; start the agent with its node name")
		return false
	}
	count := make(map[string]int, len(p.in.Nodes))
	for i := range p.in.Nodes {
		count[p.in.Nodes[i].Metadata.Name]++
	}
	switch count[localName] {
	case 0:
		p.warnf("local node %q is not among the %d registered nodes: nothing to plan; register the node first", localName, len(p.in.Nodes))
		return false
	case 1:
	default:
		p.warnf("local node %q is registered %d times: nothing to plan; remove the duplicates", localName, count[localName])
		return false
	}

	p.nodes = make(map[string]*node, len(p.in.Nodes))
	p.skipped = make(map[string]string)
	var localSpec api.NodeSpec
	for i := range p.in.Nodes {
		n := &p.in.Nodes[i]
		if n.Metadata.Name == localName {
			localSpec = n.Spec
		}
	}
	pre, err := parseHostPrefix(localSpec.Address)
	if err != nil {
		p.warnf("local node %s: %v: nothing to plan", localName, err)
		return false
	}
	if !pre.Addr().Is4() {
		p.warnf("local node %s address %s is IPv6: Twill plans IPv4 only, nothing to plan; give the node an IPv4 address", localName, pre)
		return false
	}
	if pre.Bits() == 32 {
		p.warnf("node %s address %s has no subnet: every peer will be encapsulated; set the prefix length", localName, pre)
	}
	p.local = &node{name: localName, prefix: pre}
	p.iface = localSpec.Interface
	if p.iface == "" {
		p.iface = DefaultHostInterface
	}
	p.mtu = localSpec.MTU
	if p.mtu <= 0 {
		p.mtu = DefaultHostMTU
	}
	switch ta := strings.TrimSpace(localSpec.TunnelAddress); {
	case ta == "":
		p.localNoTunnel = "has no tunnelAddress"
	default:
		a, err := parseHostAddr(ta)
		switch {
		case err != nil:
			p.localNoTunnel = "has an invalid tunnelAddress"
			p.warnf("local node %s tunnelAddress: %v", localName, err)
		case !a.Is4():
			p.localNoTunnel = "has an IPv6 tunnelAddress"
			p.warnf("local node %s tunnelAddress %s is IPv6: VXLAN needs an IPv4 tunnel address", localName, a)
		default:
			p.local.tunnel = a
		}
	}
	switch m := strings.TrimSpace(localSpec.VTEPMAC); {
	case m == "":
		p.local.mac = defaultVTEPMAC(localName)
	default:
		mac, err := parseMAC(m)
		if err != nil {
			p.local.mac = defaultVTEPMAC(localName)
			p.warnf("local node %s vtepMAC: %v; using the derived %s", localName, err, p.local.mac)
		} else {
			p.local.mac = mac
		}
	}

	for i := range p.in.Nodes {
		n := &p.in.Nodes[i]
		name := n.Metadata.Name
		switch {
		case name == localName:
			continue
		case name == "":
			p.notef("a node with address %q has no name: ignored", n.Spec.Address)
			continue
		case count[name] > 1:
			p.skip(name, fmt.Sprintf("it is registered %d times; remove the duplicates", count[name]))
			continue
		}
		pre, err := parseHostPrefix(n.Spec.Address)
		if err != nil {
			p.skip(name, err.Error())
			continue
		}
		if !pre.Addr().Is4() {
			p.skip(name, fmt.Sprintf("its address %s is IPv6; Twill routes IPv4 only", pre))
			continue
		}
		if pre.Addr() == p.local.prefix.Addr() {
			p.skip(name, fmt.Sprintf("it has the same address %s as the local node %s", pre.Addr(), localName))
			continue
		}
		rn := &node{name: name, prefix: pre}
		if ta := strings.TrimSpace(n.Spec.TunnelAddress); ta == "" {
			rn.noVTEP = "it has no tunnelAddress"
		} else if a, err := parseHostAddr(ta); err != nil || !a.Is4() {
			rn.noVTEP = fmt.Sprintf("its tunnelAddress %q is not an IPv4 address", ta)
			p.notef("node %s: tunnelAddress %q is not an IPv4 address", name, ta)
		} else {
			rn.tunnel = a
		}
		if m := strings.TrimSpace(n.Spec.VTEPMAC); m == "" {
			if rn.noVTEP == "" {
				rn.noVTEP = "it has no vtepMAC"
			}
		} else if mac, err := parseMAC(m); err != nil {
			if rn.noVTEP == "" {
				rn.noVTEP = fmt.Sprintf("its vtepMAC %q is invalid", m)
			}
			p.notef("node %s vtepMAC: %v", name, err)
		} else {
			rn.mac = mac
		}
		p.nodes[name] = rn
	}
	p.markVTEPConflicts()
	return true
}

// markVTEPConflicts withdraws the VTEP of remote nodes that share a tunnel
// address or VTEP MAC with another node: neither the neighbour nor the FDB
// table can hold both, so routes through either would be ambiguous.
func (p *planner) markVTEPConflicts() {
	tunnels := make(map[netip.Addr]int, len(p.nodes)+1)
	macs := make(map[string]int, len(p.nodes)+1)
	if p.local.tunnel.IsValid() {
		tunnels[p.local.tunnel]++
	}
	macs[p.local.mac]++
	for _, n := range p.nodes {
		if n.noVTEP == "" {
			tunnels[n.tunnel]++
			macs[n.mac]++
		}
	}
	// Only clashing nodes are grouped, so the common case allocates little.
	byTunnel := make(map[netip.Addr][]string)
	byMAC := make(map[string][]string)
	for name, n := range p.nodes {
		if n.noVTEP != "" {
			continue
		}
		if tunnels[n.tunnel] > 1 {
			byTunnel[n.tunnel] = append(byTunnel[n.tunnel], name)
		}
		if macs[n.mac] > 1 {
			byMAC[n.mac] = append(byMAC[n.mac], name)
		}
	}
	mark := func(names []string, what, value, localOwner string) {
		slices.Sort(names)
		others := strings.Join(names, ", ")
		if localOwner != "" {
			others = localOwner + " (local), " + others
		}
		for _, name := range names {
			if n := p.nodes[name]; n.noVTEP == "" {
				n.noVTEP = fmt.Sprintf("its %s %s is shared by nodes %s", what, value, others)
				p.notef("node %s has no usable VTEP: %s", name, n.noVTEP)
			}
		}
	}
	for a, names := range byTunnel {
		owner := ""
		if a == p.local.tunnel {
			owner = p.local.name
		}
		mark(names, "tunnelAddress", a.String(), owner)
	}
	for m, names := range byMAC {
		owner := ""
		if m == p.local.mac {
			owner = p.local.name
		}
		mark(names, "vtepMAC", m, owner)
	}
}

// skip records that a remote node is unusable and why.
func (p *planner) skip(name, why string) {
	p.skipped[name] = why
	p.notef("node %s skipped: %s", name, why)
}

// peer returns the usable remote node called name, or why there is none.
func (p *planner) peer(name string) (*node, string) {
	if n, ok := p.nodes[name]; ok {
		return n, ""
	}
	if why, ok := p.skipped[name]; ok {
		return nil, fmt.Sprintf("node %s was skipped (%s)", name, why)
	}
	return nil, fmt.Sprintf("node %s is not registered", name)
}

// indexPools parses the pools, keeping the valid IPv4 ones.
func (p *planner) indexPools() {
	byCIDR := make(map[netip.Prefix][]pool, len(p.in.Pools))
	for i := range p.in.Pools {
		ip := &p.in.Pools[i]
		name := ip.Metadata.Name
		cidr, err := parseNetwork(ip.Spec.CIDR)
		if err != nil {
			p.notef("pool %s skipped: %v", name, err)
			continue
		}
		if !cidr.Addr().Is4() {
			p.notef("pool %s (%s) skipped: IPv6 pools are not supported yet", name, cidr)
			continue
		}
		mode, ok := encapMode(ip.Spec.VXLANMode)
		if !ok {
			p.notef("pool %s (%s) skipped: vxlanMode %q is not Never, Always or CrossSubnet", name, cidr, ip.Spec.VXLANMode)
			continue
		}
		if m, ok := encapMode(ip.Spec.IPIPMode); ok && m != api.EncapNever {
			p.notef("pool %s: ipipMode %s is ignored: Twill encapsulates with VXLAN only (set vxlanMode instead)", name, ip.Spec.IPIPMode)
		}
		byCIDR[cidr] = append(byCIDR[cidr], pool{
			name:     name,
			cidr:     cidr,
			mode:     mode,
			nat:      ip.Spec.NATOutgoing,
			disabled: ip.Spec.Disabled,
		})
	}
	for cidr, ps := range byCIDR {
		if len(ps) > 1 {
			names := make([]string, len(ps))
			for i := range ps {
				names[i] = ps[i].name
			}
			slices.Sort(names)
			p.notef("pools %s share cidr %s: all skipped; delete all but one", strings.Join(names, ", "), cidr)
			p.extraPools = append(p.extraPools, cidr)
			continue
		}
		p.pools = append(p.pools, ps[0])
	}
	slices.SortFunc(p.pools, func(a, b pool) int { return comparePrefix(a.cidr, b.cidr) })
}

// poolFor returns the most specific pool containing block, or nil.
func (p *planner) poolFor(block netip.Prefix) *pool {
	var best *pool
	for i := range p.pools {
		pl := &p.pools[i]
		if pl.cidr.Bits() <= block.Bits() && pl.cidr.Contains(block.Addr()) {
			if best == nil || pl.cidr.Bits() > best.cidr.Bits() {
				best = pl
			}
		}
	}
	return best
}

// planDevice decides whether the node needs a VXLAN device and its settings.
func (p *planner) planDevice() {
	cfg := p.in.VXLAN
	p.port = DefaultVXLANPort
	if cfg.Port != 0 {
		if cfg.Port > 0 && cfg.Port <= 65535 {
			p.port = cfg.Port
		} else {
			p.warnf("VXLAN port %d is not a UDP port: using %d", cfg.Port, DefaultVXLANPort)
		}
	}
	needed := false
	for i := range p.pools {
		if p.pools[i].mode != api.EncapNever {
			needed = true
			break
		}
	}
	if !needed || !p.local.tunnel.IsValid() {
		return
	}
	vni := DefaultVNI
	if cfg.VNI != 0 {
		if cfg.VNI > 0 && cfg.VNI < 1<<24 {
			vni = cfg.VNI
		} else {
			p.warnf("VXLAN VNI %d is outside 1-16777215: using %d", cfg.VNI, DefaultVNI)
		}
	}
	mtu := p.mtu - VXLANOverhead
	if cfg.MTU > 0 {
		mtu = cfg.MTU
	}
	if mtu < minIPv4MTU {
		p.warnf("VXLAN device MTU %d is below IPv4's minimum of %d: check the node's MTU (%d) or set the VXLAN MTU", mtu, minIPv4MTU, p.mtu)
	}
	p.dev = &Device{
		Name:    cmp.Or(cfg.Device, DefaultVXLANDevice),
		VNI:     vni,
		Port:    p.port,
		MTU:     mtu,
		Parent:  p.iface,
		LocalIP: p.local.prefix.Addr(),
		MAC:     p.local.mac,
		Address: netip.PrefixFrom(p.local.tunnel, 32),
	}
}

// planBlocks adds the routes for every block: blackholes for local blocks,
// paths to remote blocks, and /32s for addresses borrowed by peers.
func (p *planner) planBlocks() {
	byCIDR := make(map[netip.Prefix]int, len(p.in.Blocks))
	parsed := make([]netip.Prefix, len(p.in.Blocks))
	for i := range p.in.Blocks {
		b := &p.in.Blocks[i]
		cidr, err := parseNetwork(b.CIDR)
		if err != nil {
			p.notef("block %q (affinity %q) skipped: %v", b.CIDR, b.Affinity, err)
			continue
		}
		parsed[i] = cidr
		byCIDR[cidr]++
	}
	for i := range p.in.Blocks {
		b := &p.in.Blocks[i]
		cidr := parsed[i]
		if !cidr.IsValid() {
			continue
		}
		if n := byCIDR[cidr]; n > 1 {
			p.notef("block %s skipped: it is stored %d times", cidr, n)
			continue
		}
		if !cidr.Addr().Is4() {
			p.notef("block %s skipped: IPv6 blocks are not supported yet", cidr)
			continue
		}
		pl := p.poolFor(cidr)
		if pl == nil {
			p.notef("block %s skipped: it is in no IP pool", cidr)
			continue
		}
		owner := b.Affinity
		switch owner {
		case p.local.name:
			p.routes = append(p.routes, Route{Dst: cidr, Type: RouteBlackhole, Kind: KindLocalBlock})
		case "":
			// Unclaimed: only its borrowed addresses are routed.
		default:
			if n, why := p.peer(owner); n == nil {
				p.notef("no route to %s on %s: %s", cidr, owner, why)
			} else {
				p.routeTo(cidr, pl, n, KindDirect, KindVXLAN)
			}
		}
		for j := range b.Allocations {
			a := &b.Allocations[j]
			borrower := a.Attrs[api.AttrNode]
			if borrower == "" || borrower == owner {
				continue
			}
			ip, ok := addrAt(cidr, a.Ordinal)
			if !ok {
				p.notef("block %s: allocation %q has ordinal %d outside the block: ignored", cidr, a.Handle, a.Ordinal)
				continue
			}
			if borrower == p.local.name {
				continue // the local workload's own route covers it
			}
			dst := netip.PrefixFrom(ip, 32)
			if n, why := p.peer(borrower); n == nil {
				p.notef("no route to %s on %s: %s", dst, borrower, why)
			} else {
				p.routeTo(dst, pl, n, KindBorrowDirect, KindBorrowVXLAN)
			}
		}
	}
}

// routeTo adds the route to dst on peer n, following pool pl's vxlanMode,
// or notes why there is none.
func (p *planner) routeTo(dst netip.Prefix, pl *pool, n *node, direct, vxlan RouteKind) {
	same := p.local.prefix.Contains(n.prefix.Addr())
	encap := pl.mode == api.EncapAlways || (pl.mode == api.EncapCrossSubnet && !same)
	if !encap {
		if !same {
			p.notef("no route to %s on %s: pool %s has vxlanMode Never and %s (%s) is outside %s",
				dst, n.name, pl.name, n.name, n.prefix.Addr(), p.local.prefix.Masked())
			return
		}
		p.routes = append(p.routes, Route{
			Dst: dst, Gateway: n.prefix.Addr(), Device: p.iface, OnLink: true, Kind: direct, Peer: n.name,
		})
		return
	}
	if p.dev == nil {
		p.vxlanMissed++
		p.notef("no route to %s on %s: pool %s needs VXLAN to reach %s but local node %s %s",
			dst, n.name, pl.name, n.name, p.local.name, p.localNoTunnel)
		return
	}
	if n.noVTEP != "" {
		p.notef("no route to %s on %s: no VTEP known for peer %s (%s)", dst, n.name, n.name, n.noVTEP)
		return
	}
	p.routes = append(p.routes, Route{
		Dst: dst, Gateway: n.tunnel, Device: p.dev.Name, OnLink: true, Kind: vxlan, Peer: n.name,
	})
}

// planWorkloads adds a link-scope /32 route per local pod address.
func (p *planner) planWorkloads() {
	for i := range p.in.Workloads {
		w := &p.in.Workloads[i]
		if w.Spec.Node != p.local.name {
			continue
		}
		name := w.Metadata.Name
		if name == "" {
			name = w.Spec.Namespace + "/" + w.Spec.Pod
		}
		if w.Spec.HostIface == "" {
			p.notef("workload %s skipped: it has no hostIface", name)
			continue
		}
		for _, s := range w.Spec.Addresses {
			a, err := parseHostAddr(s)
			if err != nil {
				p.notef("workload %s: address skipped: %v", name, err)
				continue
			}
			if !a.Is4() {
				p.notef("workload %s: address %s skipped: IPv6 is not supported yet", name, a)
				continue
			}
			p.routes = append(p.routes, Route{
				Dst: netip.PrefixFrom(a, 32), Device: w.Spec.HostIface, ScopeLink: true, Kind: KindWorkload,
			})
		}
	}
}

// routeRank orders routes claiming the same destination: a local pod beats a
// peer's borrowed address, which beats a whole block.
func routeRank(k RouteKind) int {
	switch k {
	case KindWorkload:
		return 0
	case KindBorrowDirect, KindBorrowVXLAN:
		return 1
	}
	return 2
}

// finish de-duplicates and sorts the routes and derives the neighbours, FDB
// and firewall.
func (p *planner) finish() Dataplane {
	var dp Dataplane
	dp.Device = p.dev

	slices.SortFunc(p.routes, func(a, b Route) int {
		if c := compareKernel(a.Dst, b.Dst); c != 0 {
			return c
		}
		if c := cmp.Compare(routeRank(a.Kind), routeRank(b.Kind)); c != 0 {
			return c
		}
		return compareRoute(a, b)
	})
	if len(p.routes) > 0 {
		dp.Routes = make([]Route, 0, len(p.routes))
	}
	for i, r := range p.routes {
		if i > 0 && p.routes[i-1].Dst == r.Dst {
			kept := dp.Routes[len(dp.Routes)-1]
			if r != kept && !(kept.Kind == KindWorkload && r.Kind == KindLocalBlock) {
				p.notef("conflicting routes to %s: kept %q (%s), dropped %q (%s)", r.Dst, kept, kept.Kind, r, r.Kind)
			}
			continue
		}
		dp.Routes = append(dp.Routes, r)
	}

	if p.dev != nil {
		dp.Neighbors = make([]Neighbor, 0, len(p.nodes))
		dp.FDB = make([]FDB, 0, len(p.nodes))
		for _, n := range p.nodes {
			if n.noVTEP != "" {
				continue
			}
			dp.Neighbors = append(dp.Neighbors, Neighbor{Device: p.dev.Name, IP: n.tunnel, MAC: n.mac})
			dp.FDB = append(dp.FDB, FDB{Device: p.dev.Name, MAC: n.mac, Dst: n.prefix.Addr()})
		}
		// Tunnel addresses and MACs are unique here (markVTEPConflicts).
		slices.SortFunc(dp.Neighbors, func(a, b Neighbor) int { return a.IP.Compare(b.IP) })
		slices.SortFunc(dp.FDB, func(a, b FDB) int { return strings.Compare(a.MAC, b.MAC) })
	}

	for _, pl := range p.pools {
		dp.Firewall.AllPools = append(dp.Firewall.AllPools, pl.cidr)
		if pl.nat && !pl.disabled {
			dp.Firewall.NATPools = append(dp.Firewall.NATPools, pl.cidr)
		}
	}
	dp.Firewall.AllPools = append(dp.Firewall.AllPools, p.extraPools...)
	slices.SortFunc(dp.Firewall.AllPools, comparePrefix)
	for _, n := range p.nodes {
		dp.Firewall.VXLANPeers = append(dp.Firewall.VXLANPeers, n.prefix.Addr())
	}
	slices.SortFunc(dp.Firewall.VXLANPeers, netip.Addr.Compare)
	dp.Firewall.VXLANPeers = slices.Compact(dp.Firewall.VXLANPeers)
	dp.Firewall.VXLANPort = p.port
	dp.Firewall.Complete = true

	if p.vxlanMissed > 0 {
		p.warnf("local node %s %s: %d route(s) that need VXLAN are missing; give the node a tunnel address", p.local.name, p.localNoTunnel, p.vxlanMissed)
	}
	dp.Status = p.status()
	return dp
}

// comparePrefix orders prefixes by address, then shorter prefix first.
func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// compareKernel orders destinations as the kernel lists them in
// /proc/net/route: by address, then longer prefix first.
func compareKernel(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(b.Bits(), a.Bits()))
}

// compareRoute is a total order on routes, used to break ties.
func compareRoute(a, b Route) int {
	return cmp.Or(
		compareKernel(a.Dst, b.Dst),
		cmp.Compare(a.Type, b.Type),
		a.Gateway.Compare(b.Gateway),
		strings.Compare(a.Device, b.Device),
		compareBool(a.OnLink, b.OnLink),
		compareBool(a.ScopeLink, b.ScopeLink),
		strings.Compare(string(a.Kind), string(b.Kind)),
		strings.Compare(a.Peer, b.Peer),
	)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}
