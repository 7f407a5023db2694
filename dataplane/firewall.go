package dataplane

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"twill.dev/twill/plan"
)

// KindFirewall is the host firewall's nftables table and what it holds.
const KindFirewall Kind = "firewall"

// Names in the host firewall.
const (
	// FirewallTable is the table Twill owns, in the inet family.
	FirewallTable = "twill"
	// SetNATPools holds the natOutgoing pools' CIDRs as intervals.
	SetNATPools = "nat-pools"
	// SetAllPools holds every pool's CIDR as intervals.
	SetAllPools = "all-pools"
	// SetVXLANPeers holds the other nodes' host addresses.
	SetVXLANPeers = "vxlan-peers"
	// ChainPrerouting is a filter chain at the prerouting hook with raw
	// priority (-300, before connection tracking): it leaves the VXLAN
	// packets of known nodes to this node untracked and drops VXLAN from
	// other addresses (the allow-list).
	ChainPrerouting = "prerouting"
	// ChainOutput is a filter chain at the output hook with raw priority: it
	// leaves this node's VXLAN packets to known nodes untracked.
	ChainOutput = "output"
	// ChainPostrouting holds the masquerade rules. It exists only while
	// some pool has natOutgoing: a nat chain turns on connection tracking
	// (and NAT's hooks) for every packet of the namespace.
	ChainPostrouting = "postrouting"
	// CounterVXLANDropped counts VXLAN packets dropped for coming from an
	// address that is not a peer.
	CounterVXLANDropped = "vxlan-dropped"
)

// Rule comments: how Twill finds its rules again (nft shows them as
// comment "twill:...").
const (
	ruleMasqUDP    = "twill:masq-udp"
	ruleMasq       = "twill:masq"
	ruleVXLANAllow = "twill:vxlan-allow"
	// ruleNotrackIn and ruleNotrackOut leave node-to-node VXLAN untracked.
	ruleNotrackIn  = "twill:vxlan-notrack-in"
	ruleNotrackOut = "twill:vxlan-notrack-out"
)

// fwSets are Twill's sets, in creation order.
var fwSets = []string{SetNATPools, SetAllPools, SetVXLANPeers}

// fwChains are the chains Twill may create, in creation order; a table
// holds those that chains() wants.
var fwChains = []string{ChainPrerouting, ChainOutput, ChainPostrouting}

// CounterValue is an nftables counter.
type CounterValue struct {
	Packets uint64
	Bytes   uint64
}

// ObservedFirewall is what the kernel holds in Twill's table.
type ObservedFirewall struct {
	// Table is false when the namespace has no table inet twill; the other
	// fields are then empty.
	Table bool
	// NATPools and AllPools are the interval sets' contents, each interval
	// written as the fewest CIDRs that cover it (pools that touch show
	// merged).
	NATPools []netip.Prefix
	AllPools []netip.Prefix
	// VXLANPeers are the allow-list's addresses, sorted.
	VXLANPeers []netip.Addr
	// Chains are the table's chains, sorted by name.
	Chains []string
	// Sets are the table's sets, sorted by name.
	Sets []string
	// Dropped is the vxlan-dropped counter: VXLAN packets from non-peers.
	Dropped CounterValue
	// Drift says how the table differs from the last applied firewall; it
	// is empty when they match or nothing was applied yet.
	Drift []string
}

// ipRange is an inclusive range of IPv4 addresses.
type ipRange struct {
	First, Last netip.Addr
}

// fwWant is a checked firewall: pools merged into disjoint, non-touching
// ranges, peers sorted and unique. port 0 means "not given". local is the
// VXLAN device's local address (the invalid Addr when there is no device
// or it is not known): only with it does the table hold the notrack rules.
type fwWant struct {
	port     int
	natPools []ipRange
	allPools []ipRange
	peers    []netip.Addr
	local    netip.Addr
}

// chains are the chains the table should hold, in creation order: the
// prerouting and output chains always, the nat chain only while some pool
// has natOutgoing.
func (w fwWant) chains() []string {
	out := []string{ChainPrerouting, ChainOutput}
	if len(w.natPools) > 0 {
		out = append(out, ChainPostrouting)
	}
	return out
}

// vxlanLocal is the address the notrack rules match on: d's local address
// when d is a VXLAN device with an IPv4 one, else the invalid Addr.
func vxlanLocal(d *plan.Device) netip.Addr {
	if d == nil {
		return netip.Addr{}
	}
	if a := d.LocalIP.Unmap(); a.Is4() {
		return a
	}
	return netip.Addr{}
}

// firewallZero reports whether fw is the zero value, which Apply leaves alone.
func firewallZero(fw plan.Firewall) bool {
	return len(fw.AllPools) == 0 && len(fw.NATPools) == 0 && len(fw.VXLANPeers) == 0 && fw.VXLANPort == 0 && !fw.Complete
}

// wantFirewall checks fw, returning what it can use and one error per entry
// it had to drop.
func wantFirewall(fw plan.Firewall) (fwWant, []error) {
	var errs []error
	bad := func(obj, format string, a ...any) {
		errs = append(errs, opErr(KindFirewall, obj, "check", fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)))
	}
	prefixes := func(list string, ps []netip.Prefix) []netip.Prefix {
		out := make([]netip.Prefix, 0, len(ps))
		for _, p := range ps {
			switch {
			case !p.IsValid() || !p.Addr().Is4():
				bad(p.String(), "%s entry %v is not an IPv4 prefix; Twill's firewall is IPv4 only", list, p)
			case p != p.Masked():
				bad(p.String(), "%s entry %s has host bits set; use %s", list, p, p.Masked())
			default:
				out = append(out, p)
			}
		}
		return out
	}
	var w fwWant
	nat := prefixes("NATPools", fw.NATPools)
	all := prefixes("AllPools", fw.AllPools)
	w.natPools = mergePrefixes(nat)
	w.allPools = mergePrefixes(all)
	for _, a := range fw.VXLANPeers {
		if !a.Is4() {
			bad(a.String(), "VXLAN peer %v is not an IPv4 address", a)
			continue
		}
		w.peers = append(w.peers, a)
	}
	slices.SortFunc(w.peers, netip.Addr.Compare)
	w.peers = slices.Compact(w.peers)
	switch p := fw.VXLANPort; {
	case p == 0:
	case p < 1 || p > 65535:
		bad(fmt.Sprint(p), "VXLAN port %d is outside 1-65535; keeping the previous port", p)
	default:
		w.port = p
	}
	return w, errs
}

// effectiveFirewall fills in what a checked firewall w leaves open: the
// port (the previous one, else plan.DefaultVXLANPort) and, unless in is
// Complete, every empty list (the previous one; with no previous one, what
// the kernel's set holds). NAT pools are added to all pools, so that
// traffic between NAT pools is never masqueraded.
func effectiveFirewall(in plan.Firewall, w fwWant, prev *fwWant, k fwKernel) fwWant {
	if w.port == 0 {
		w.port = plan.DefaultVXLANPort
		if prev != nil {
			w.port = prev.port
		}
	}
	if !in.Complete {
		kernelRanges := func(set string) []ipRange {
			if s, ok := k.Sets[set]; ok && s.OK {
				if rs, ok := elemsToRanges(s.Elems); ok {
					return rs
				}
			}
			return nil
		}
		if len(w.natPools) == 0 {
			if prev != nil {
				w.natPools = prev.natPools
			} else {
				w.natPools = kernelRanges(SetNATPools)
			}
		}
		if len(w.allPools) == 0 {
			if prev != nil {
				w.allPools = prev.allPools
			} else {
				w.allPools = kernelRanges(SetAllPools)
			}
		}
		if len(w.peers) == 0 {
			if prev != nil {
				w.peers = prev.peers
			} else if s, ok := k.Sets[SetVXLANPeers]; ok && s.OK {
				for _, e := range s.Elems {
					if !e.End {
						w.peers = append(w.peers, e.Key)
					}
				}
				slices.SortFunc(w.peers, netip.Addr.Compare)
			}
		}
	}
	w.allPools = mergeRanges(append(slices.Clone(w.allPools), w.natPools...))
	return w
}

// masqPorts is the source port range UDP is masqueraded into: the larger
// side of the unprivileged port space around the VXLAN port, so that the
// VXLAN port is never picked.
func masqPorts(vxlanPort int) (lo, hi uint16) {
	const first, last = 1024, 65535
	switch {
	case vxlanPort < first || vxlanPort > last:
		return first, last
	case vxlanPort-first >= last-vxlanPort:
		return first, uint16(vxlanPort - 1)
	default:
		return uint16(vxlanPort + 1), last
	}
}

// prefixRange is the inclusive address range of an IPv4 prefix.
func prefixRange(p netip.Prefix) ipRange {
	p = p.Masked()
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	last := v | (1<<(32-p.Bits()) - 1)
	if p.Bits() == 0 {
		last = ^uint32(0)
	}
	return ipRange{First: p.Addr(), Last: addr4(last)}
}

func addr4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// mergePrefixes turns IPv4 prefixes into sorted, disjoint, non-touching ranges.
func mergePrefixes(ps []netip.Prefix) []ipRange {
	rs := make([]ipRange, 0, len(ps))
	for _, p := range ps {
		rs = append(rs, prefixRange(p))
	}
	return mergeRanges(rs)
}

// mergeRanges sorts ranges and merges those that overlap or touch.
func mergeRanges(rs []ipRange) []ipRange {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b ipRange) int { return cmp.Or(a.First.Compare(b.First), a.Last.Compare(b.Last)) })
	out := []ipRange{rs[0]}
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		if u32(r.First) <= u32(cur.Last) || u32(r.First) == u32(cur.Last)+1 {
			if r.Last.Compare(cur.Last) > 0 {
				cur.Last = r.Last
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// rangePrefixes writes a range as the fewest CIDRs that cover exactly it.
func rangePrefixes(r ipRange) []netip.Prefix {
	var out []netip.Prefix
	lo, hi := uint64(u32(r.First)), uint64(u32(r.Last))
	for lo <= hi {
		bits := 32
		for bits > 0 {
			size := uint64(1) << (32 - (bits - 1))
			if lo%size != 0 || lo+size-1 > hi {
				break
			}
			bits--
		}
		out = append(out, netip.PrefixFrom(addr4(uint32(lo)), bits))
		lo += uint64(1) << (32 - bits)
	}
	return out
}

// fwElem is one element of an nftables set: in an interval set, a range is
// a start element and, unless it runs to 255.255.255.255, an end element
// (flag interval-end) holding the first address after it.
type fwElem struct {
	Key netip.Addr
	End bool
}

func compareElem(a, b fwElem) int {
	if c := a.Key.Compare(b.Key); c != 0 {
		return c
	}
	switch {
	case a.End == b.End:
		return 0
	case a.End:
		return -1
	}
	return 1
}

// rangesToElems encodes ranges as interval set elements.
func rangesToElems(rs []ipRange) []fwElem {
	out := make([]fwElem, 0, 2*len(rs))
	for _, r := range rs {
		out = append(out, fwElem{Key: r.First})
		if l := u32(r.Last); l != ^uint32(0) {
			out = append(out, fwElem{Key: addr4(l + 1), End: true})
		}
	}
	return out
}

// elemsToRanges decodes interval set elements; false means they do not form
// well-nested intervals.
func elemsToRanges(es []fwElem) ([]ipRange, bool) {
	es = slices.Clone(es)
	slices.SortFunc(es, compareElem)
	var out []ipRange
	open := false
	var start netip.Addr
	for _, e := range es {
		switch {
		case !e.End && !open:
			start, open = e.Key, true
		case e.End && open:
			if u32(e.Key) == 0 || e.Key.Compare(start) <= 0 {
				return nil, false
			}
			out = append(out, ipRange{First: start, Last: addr4(u32(e.Key) - 1)})
			open = false
		case e.End && !open && u32(e.Key) == 0:
			// nft writes a lone interval-end at 0.0.0.0 before the first
			// interval; it holds nothing.
		default:
			return nil, false
		}
	}
	if open {
		out = append(out, ipRange{First: start, Last: addr4(^uint32(0))})
	}
	return mergeRanges(out), true
}

// elems is what set name should hold.
func (w fwWant) elems(set string) []fwElem {
	switch set {
	case SetNATPools:
		return rangesToElems(w.natPools)
	case SetAllPools:
		return rangesToElems(w.allPools)
	case SetVXLANPeers:
		out := make([]fwElem, len(w.peers))
		for i, a := range w.peers {
			out[i] = fwElem{Key: a}
		}
		return out
	}
	return nil
}

// fwSetState is one of Twill's sets as the kernel holds it.
type fwSetState struct {
	// OK is false when the set's key type or flags are not what Twill
	// creates; it is then rebuilt with the table.
	OK    bool
	Elems []fwElem
}

// fwRuleState is a rule as the kernel holds it.
type fwRuleState struct {
	Handle uint64
	// Sig is the rule's canonical form: its expressions and comment.
	Sig string
}

// fwChainState is one of Twill's chains as the kernel holds it.
type fwChainState struct {
	// OK is false when the chain's type, hook, priority or policy are not
	// what Twill creates.
	OK    bool
	Rules []fwRuleState
}

// fwKernel is Twill's table as the kernel holds it.
type fwKernel struct {
	Table  bool
	Sets   map[string]fwSetState
	Chains map[string]fwChainState
	// Counter says whether the vxlan-dropped counter exists; CounterOK
	// whether it is a counter.
	Counter   bool
	CounterOK bool
	Dropped   CounterValue
	// Stray lists what the table holds that Twill did not create, e.g.
	// "chain foo", "set bar", "quota baz".
	Stray []string
}

// ruleWant is a wanted rule.
type ruleWant struct {
	Comment string
	Sig     string
	// Interim is the canonical form of the placeholder the rule is first
	// written as when the nftables library cannot write it; "" when it can.
	Interim string
}

// upgrade is a rule held as its placeholder, to be replaced in place.
type upgrade struct {
	Chain  string
	Index  int
	Handle uint64
}

// fwChanges is what a reconcile must do.
type fwChanges struct {
	// Recreate says why the table must be deleted (when present) and
	// created again; the fields below are then unused.
	Recreate      string
	CreateSets    []string
	AddElems      map[string][]fwElem
	DelElems      map[string][]fwElem
	CreateCounter bool
	CreateChains  []string
	// DeleteChains are chains the table holds but should not (the nat
	// chain once no pool has natOutgoing).
	DeleteChains []string
	// Refill are chains flushed and refilled (created ones included).
	Refill  []string
	Upgrade []upgrade
	// Drift describes each difference found.
	Drift []string
}

func (c fwChanges) empty() bool { return len(c.Drift) == 0 }

// diffFirewall compares the kernel's table with the wanted firewall.
func diffFirewall(w fwWant, rules map[string][]ruleWant, k fwKernel) fwChanges {
	var c fwChanges
	drift := func(format string, a ...any) { c.Drift = append(c.Drift, fmt.Sprintf(format, a...)) }
	if !k.Table {
		c.Recreate = "table inet " + FirewallTable + " is missing"
		drift("%s", c.Recreate)
		return c
	}
	for _, s := range k.Stray {
		drift("stray %s in table inet %s", s, FirewallTable)
		c.Recreate = "it holds objects Twill did not create"
	}
	c.AddElems = map[string][]fwElem{}
	c.DelElems = map[string][]fwElem{}
	for _, name := range fwSets {
		s, ok := k.Sets[name]
		switch {
		case !ok:
			drift("set %s is missing", name)
			c.CreateSets = append(c.CreateSets, name)
			continue
		case !s.OK:
			drift("set %s has another type or flags", name)
			c.Recreate = "set " + name + " has another type or flags"
			continue
		}
		add, del := diffElems(w.elems(name), s.Elems)
		if len(add)+len(del) > 0 {
			drift("set %s: %d element(s) to add, %d to remove", name, len(add), len(del))
			if len(add) > 0 {
				c.AddElems[name] = add
			}
			if len(del) > 0 {
				c.DelElems[name] = del
			}
		}
	}
	switch {
	case !k.Counter:
		drift("counter %s is missing", CounterVXLANDropped)
		c.CreateCounter = true
	case !k.CounterOK:
		drift("%s is not a counter", CounterVXLANDropped)
		c.Recreate = CounterVXLANDropped + " is not a counter"
	}
	wanted := w.chains()
	for _, name := range fwChains {
		ch, ok := k.Chains[name]
		switch {
		case !slices.Contains(wanted, name):
			if ok {
				drift("chain %s should not exist: no pool has natOutgoing", name)
				c.DeleteChains = append(c.DeleteChains, name)
			}
			continue
		case !ok:
			drift("chain %s is missing", name)
			c.CreateChains = append(c.CreateChains, name)
			c.Refill = append(c.Refill, name)
			continue
		case !ch.OK:
			drift("chain %s has another type, hook, priority or policy", name)
			c.Recreate = "chain " + name + " has another type, hook, priority or policy"
			continue
		}
		want := rules[name]
		same, ups := len(ch.Rules) == len(want), []upgrade(nil)
		for i := 0; same && i < len(want); i++ {
			switch got := ch.Rules[i].Sig; {
			case got == want[i].Sig:
			case want[i].Interim != "" && got == want[i].Interim:
				ups = append(ups, upgrade{Chain: name, Index: i, Handle: ch.Rules[i].Handle})
			default:
				same = false
			}
		}
		switch {
		case !same:
			drift("chain %s: %d rule(s), not the %d wanted", name, len(ch.Rules), len(want))
			c.Refill = append(c.Refill, name)
		case len(ups) > 0:
			for _, u := range ups {
				drift("chain %s: rule %s lacks its masquerade flags", name, want[u.Index].Comment)
			}
			c.Upgrade = append(c.Upgrade, ups...)
		}
	}
	if c.Recreate != "" {
		c = fwChanges{Recreate: c.Recreate, Drift: c.Drift}
	}
	return c
}

// diffElems returns the elements of want missing from got, and those of got
// not in want, each sorted.
func diffElems(want, got []fwElem) (add, del []fwElem) {
	w := make(map[fwElem]bool, len(want))
	for _, e := range want {
		w[e] = true
	}
	g := make(map[fwElem]bool, len(got))
	for _, e := range got {
		g[e] = true
		if !w[e] {
			del = append(del, e)
		}
	}
	for _, e := range want {
		if !g[e] {
			add = append(add, e)
		}
	}
	slices.SortFunc(add, compareElem)
	slices.SortFunc(del, compareElem)
	del = slices.Compact(del)
	return add, del
}

// PlannedFirewall is what ObserveFirewall reports once fw is applied to a
// namespace without a table inet twill: the pools merged and written as
// the fewest CIDRs (NAT pools included in all pools), the peers sorted and
// unique, Twill's sets and chains. Entries ApplyFirewall would refuse are
// left out. `twill routes --live` compares the kernel's table with it.
func PlannedFirewall(fw plan.Firewall) ObservedFirewall {
	w, _ := wantFirewall(fw)
	w = effectiveFirewall(fw, w, nil, fwKernel{})
	o := ObservedFirewall{Table: true, Chains: slices.Sorted(slices.Values(w.chains())), Sets: slices.Sorted(slices.Values(fwSets))}
	for _, r := range w.natPools {
		o.NATPools = append(o.NATPools, rangePrefixes(r)...)
	}
	for _, r := range w.allPools {
		o.AllPools = append(o.AllPools, rangePrefixes(r)...)
	}
	o.VXLANPeers = slices.Clone(w.peers)
	return o
}
