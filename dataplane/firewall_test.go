package dataplane

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/plan"
)

func TestMasqPorts(t *testing.T) {
	cases := []struct {
		port   int
		lo, hi uint16
	}{
		{4789, 4790, 65535},
		{8472, 8473, 65535},
		{60000, 1024, 59999},
		{65535, 1024, 65534},
		{1024, 1025, 65535},
		{80, 1024, 65535},
		{0, 1024, 65535},
	}
	for _, c := range cases {
		lo, hi := masqPorts(c.port)
		if lo != c.lo || hi != c.hi {
			t.Errorf("masqPorts(%d) = %d-%d, want %d-%d", c.port, lo, hi, c.lo, c.hi)
		}
	}
	// Whatever the port, the range leaves it out and keeps at least half
	// the unprivileged ports.
	for port := 1; port <= 65535; port += 97 {
		lo, hi := masqPorts(port)
		if int(lo) <= port && port <= int(hi) {
			t.Fatalf("masqPorts(%d) = %d-%d includes the VXLAN port", port, lo, hi)
		}
		if int(hi)-int(lo)+1 < (65535-1024)/2 || lo < 1024 {
			t.Fatalf("masqPorts(%d) = %d-%d is too small or privileged", port, lo, hi)
		}
	}
}

func TestMergeRangesAndElements(t *testing.T) {
	rs := mergePrefixes([]netip.Prefix{
		mp("10.0.1.0/24"), mp("10.0.0.0/24"), // touching: one range
		mp("172.16.0.0/16"), mp("172.16.5.0/24"), // nested
		mp("192.168.0.0/32"),
	})
	want := []ipRange{
		{ma("10.0.0.0"), ma("10.0.1.255")},
		{ma("172.16.0.0"), ma("172.16.255.255")},
		{ma("192.168.0.0"), ma("192.168.0.0")},
	}
	if !reflect.DeepEqual(rs, want) {
		t.Fatalf("mergePrefixes = %v, want %v", rs, want)
	}
	es := rangesToElems(rs)
	wantElems := []fwElem{
		{ma("10.0.0.0"), false}, {ma("10.0.2.0"), true},
		{ma("172.16.0.0"), false}, {ma("172.17.0.0"), true},
		{ma("192.168.0.0"), false}, {ma("192.168.0.1"), true},
	}
	if !reflect.DeepEqual(es, wantElems) {
		t.Fatalf("rangesToElems = %v, want %v", es, wantElems)
	}
	// The kernel lists elements in its own order.
	rev := slices.Clone(es)
	slices.Reverse(rev)
	back, ok := elemsToRanges(rev)
	if !ok || !reflect.DeepEqual(back, rs) {
		t.Fatalf("elemsToRanges(reversed) = %v, %v; want %v", back, ok, rs)
	}

	// A range up to the last address has no end element.
	all := mergePrefixes([]netip.Prefix{mp("0.0.0.0/0")})
	if es := rangesToElems(all); !reflect.DeepEqual(es, []fwElem{{ma("0.0.0.0"), false}}) {
		t.Fatalf("0.0.0.0/0 as elements = %v", es)
	}
	if back, ok := elemsToRanges([]fwElem{{ma("0.0.0.0"), false}}); !ok || !reflect.DeepEqual(back, all) {
		t.Fatalf("open interval decoded as %v, %v", back, ok)
	}
	// nft's lone interval-end at 0.0.0.0 holds nothing.
	if back, ok := elemsToRanges([]fwElem{{ma("0.0.0.0"), true}, {ma("10.0.0.0"), false}, {ma("10.1.0.0"), true}}); !ok ||
		!reflect.DeepEqual(back, []ipRange{{ma("10.0.0.0"), ma("10.0.255.255")}}) {
		t.Fatalf("with nft's 0.0.0.0 end: %v, %v", back, ok)
	}
	for _, bad := range [][]fwElem{
		{{ma("10.0.0.0"), true}}, // end without start
		{{ma("10.0.0.0"), false}, {ma("10.0.1.0"), false}, {ma("10.1.0.0"), true}}, // two starts
	} {
		if rs, ok := elemsToRanges(bad); ok {
			t.Errorf("elemsToRanges(%v) = %v, accepted", bad, rs)
		}
	}
}

func TestRangePrefixes(t *testing.T) {
	cases := []struct {
		r    ipRange
		want []netip.Prefix
	}{
		{ipRange{ma("10.0.0.0"), ma("10.0.1.255")}, []netip.Prefix{mp("10.0.0.0/23")}},
		{ipRange{ma("10.0.0.1"), ma("10.0.0.6")}, []netip.Prefix{mp("10.0.0.1/32"), mp("10.0.0.2/31"), mp("10.0.0.4/31"), mp("10.0.0.6/32")}},
		{ipRange{ma("0.0.0.0"), ma("255.255.255.255")}, []netip.Prefix{mp("0.0.0.0/0")}},
		{ipRange{ma("172.16.0.0"), ma("172.16.2.255")}, []netip.Prefix{mp("172.16.0.0/23"), mp("172.16.2.0/24")}},
	}
	for _, c := range cases {
		if got := rangePrefixes(c.r); !reflect.DeepEqual(got, c.want) {
			t.Errorf("rangePrefixes(%v) = %v, want %v", c.r, got, c.want)
		}
	}
}

func TestWantFirewallRejectsBadEntries(t *testing.T) {
	w, errs := wantFirewall(plan.Firewall{
		NATPools:   []netip.Prefix{mp("172.16.0.0/16"), mp("fd00::/64"), mp("10.1.0.1/24")},
		AllPools:   []netip.Prefix{mp("172.16.0.0/16"), {}},
		VXLANPeers: []netip.Addr{ma("192.168.3.242"), ma("fd00::1"), ma("192.168.3.242"), ma("192.168.3.240")},
		VXLANPort:  70000,
	})
	if len(errs) != 5 {
		t.Fatalf("got %d errors, want 5 (IPv6 pool, host bits, invalid prefix, IPv6 peer, port): %v", len(errs), errs)
	}
	for _, err := range errs {
		var oe *OpError
		if !errors.As(err, &oe) || oe.Kind != KindFirewall || !errors.Is(err, ErrInvalid) {
			t.Errorf("error %v is not a firewall *OpError wrapping ErrInvalid", err)
		}
	}
	if !reflect.DeepEqual(w.natPools, []ipRange{{ma("172.16.0.0"), ma("172.16.255.255")}}) ||
		!reflect.DeepEqual(w.peers, []netip.Addr{ma("192.168.3.240"), ma("192.168.3.242")}) || w.port != 0 {
		t.Fatalf("kept %+v", w)
	}
}

func TestEffectiveFirewallKeepsListsUnlessComplete(t *testing.T) {
	pools := []netip.Prefix{mp("172.16.0.0/16")}
	peers := []netip.Addr{ma("192.168.3.242"), ma("192.168.3.243")}
	prevIn := plan.Firewall{AllPools: pools, NATPools: pools, VXLANPeers: peers, VXLANPort: 8472, Complete: true}
	pw, _ := wantFirewall(prevIn)
	prev := effectiveFirewall(prevIn, pw, nil, fwKernel{})

	// A pool change while the node list is momentarily empty.
	hiccup := plan.Firewall{AllPools: []netip.Prefix{mp("172.16.0.0/16"), mp("10.50.0.0/16")}, NATPools: pools}
	hw, _ := wantFirewall(hiccup)
	got := effectiveFirewall(hiccup, hw, &prev, fwKernel{})
	if !reflect.DeepEqual(got.peers, prev.peers) || got.port != 8472 {
		t.Fatalf("incomplete firewall without peers: peers %v port %d, want the previous %v and 8472", got.peers, got.port, prev.peers)
	}
	if len(got.allPools) != 2 {
		t.Fatalf("the pool change was not applied: all pools %v", got.allPools)
	}

	// After a restart, the kernel's set stands in for the previous list.
	k := fwKernel{Table: true, Sets: map[string]fwSetState{
		SetVXLANPeers: {OK: true, Elems: []fwElem{{ma("192.168.3.243"), false}, {ma("192.168.3.242"), false}}},
		SetNATPools:   {OK: true, Elems: rangesToElems(mergePrefixes(pools))},
	}}
	got = effectiveFirewall(plan.Firewall{}, fwWant{}, nil, k)
	if !reflect.DeepEqual(got.peers, peers) || !reflect.DeepEqual(got.natPools, mergePrefixes(pools)) || got.port != plan.DefaultVXLANPort {
		t.Fatalf("zero firewall after restart = %+v; want the kernel's lists and port 4789", got)
	}
	// NAT pools always count as pools.
	if !reflect.DeepEqual(got.allPools, got.natPools) {
		t.Fatalf("all pools %v do not include the NAT pools %v", got.allPools, got.natPools)
	}

	// A complete firewall empties.
	done := plan.Firewall{Complete: true}
	got = effectiveFirewall(done, fwWant{}, &prev, k)
	if len(got.peers)+len(got.natPools)+len(got.allPools) != 0 || got.port != 8472 {
		t.Fatalf("complete empty firewall = %+v; want empty lists (port kept at 8472)", got)
	}
}

func TestDiffFirewall(t *testing.T) {
	in := plan.Firewall{AllPools: []netip.Prefix{mp("172.16.0.0/16")}, NATPools: []netip.Prefix{mp("172.16.0.0/16")},
		VXLANPeers: []netip.Addr{ma("192.168.3.242")}, Complete: true}
	cw, _ := wantFirewall(in)
	w := effectiveFirewall(in, cw, nil, fwKernel{})
	rules := map[string][]ruleWant{
		ChainPostrouting: {{Comment: "udp", Sig: "udp-full", Interim: "udp-interim"}, {Comment: "all", Sig: "all"}},
		ChainPrerouting:  {{Comment: "vx", Sig: "vx"}},
	}
	converged := func() fwKernel {
		k := fwKernel{Table: true, Counter: true, CounterOK: true, Sets: map[string]fwSetState{}, Chains: map[string]fwChainState{
			ChainPostrouting: {OK: true, Rules: []fwRuleState{{1, "udp-full"}, {2, "all"}}},
			ChainPrerouting:  {OK: true, Rules: []fwRuleState{{3, "vx"}}},
			ChainOutput:      {OK: true},
		}}
		for _, s := range fwSets {
			k.Sets[s] = fwSetState{OK: true, Elems: w.elems(s)}
		}
		return k
	}
	if c := diffFirewall(w, rules, converged()); !c.empty() {
		t.Fatalf("converged table drifts: %v", c.Drift)
	}
	if c := diffFirewall(w, rules, fwKernel{}); c.Recreate == "" {
		t.Fatalf("missing table: %+v, want a rebuild", c)
	}

	k := converged()
	k.Stray = []string{"chain foreign"}
	if c := diffFirewall(w, rules, k); c.Recreate == "" || len(c.Refill) != 0 {
		t.Fatalf("stray chain: %+v, want only a rebuild", c)
	}

	k = converged()
	k.Sets[SetVXLANPeers] = fwSetState{OK: true, Elems: []fwElem{{ma("192.168.3.99"), false}}}
	delete(k.Sets, SetAllPools)
	c := diffFirewall(w, rules, k)
	if c.Recreate != "" || !reflect.DeepEqual(c.CreateSets, []string{SetAllPools}) ||
		!reflect.DeepEqual(c.AddElems[SetVXLANPeers], []fwElem{{ma("192.168.3.242"), false}}) ||
		!reflect.DeepEqual(c.DelElems[SetVXLANPeers], []fwElem{{ma("192.168.3.99"), false}}) {
		t.Fatalf("element drift: %+v", c)
	}

	k = converged()
	k.Chains[ChainPostrouting] = fwChainState{OK: true, Rules: []fwRuleState{{7, "udp-interim"}, {2, "all"}}}
	c = diffFirewall(w, rules, k)
	if len(c.Refill) != 0 || !reflect.DeepEqual(c.Upgrade, []upgrade{{ChainPostrouting, 0, 7}}) {
		t.Fatalf("interim rule: %+v, want one upgrade of handle 7", c)
	}

	k = converged()
	k.Chains[ChainPrerouting] = fwChainState{OK: true, Rules: []fwRuleState{{9, "accept"}, {3, "vx"}}}
	delete(k.Chains, ChainPostrouting)
	k.Counter = false
	c = diffFirewall(w, rules, k)
	if !slices.Equal(c.Refill, []string{ChainPrerouting, ChainPostrouting}) || !slices.Equal(c.CreateChains, []string{ChainPostrouting}) || !c.CreateCounter {
		t.Fatalf("chain drift: %+v", c)
	}

	k = converged()
	k.Chains[ChainPrerouting] = fwChainState{OK: false, Rules: []fwRuleState{{3, "vx"}}}
	if c := diffFirewall(w, rules, k); c.Recreate == "" {
		t.Fatalf("chain with another hook: %+v, want a rebuild", c)
	}
}

func TestFirewallZero(t *testing.T) {
	if !firewallZero(plan.Firewall{}) {
		t.Fatal("zero Firewall not recognised")
	}
	for _, fw := range []plan.Firewall{{Complete: true}, {VXLANPort: 4789}, {VXLANPeers: []netip.Addr{ma("10.0.0.1")}}} {
		if firewallZero(fw) {
			t.Errorf("%+v taken for the zero Firewall", fw)
		}
	}
}

// TestPlanMarksFirewallComplete checks the planner's side of the empty-list
// rule: a plan that found the local node is complete; one that did not
// leaves the firewall alone.
func TestPlanMarksFirewallComplete(t *testing.T) {
	node := func(name, addr string) api.Node {
		n := api.Node{Spec: api.NodeSpec{Address: addr}}
		n.Metadata.Name = name
		return n
	}
	dp := plan.Plan(plan.Input{LocalNode: "n1", Nodes: []api.Node{node("n1", "192.168.3.241/24")}})
	if !dp.Firewall.Complete || len(dp.Firewall.VXLANPeers) != 0 {
		t.Fatalf("single-node plan firewall = %+v; want complete with no peers", dp.Firewall)
	}
	dp = plan.Plan(plan.Input{LocalNode: "n1"})
	if !firewallZero(dp.Firewall) {
		t.Fatalf("plan without the local node has firewall %+v; want the zero value", dp.Firewall)
	}
}

func TestPlannedFirewall(t *testing.T) {
	got := PlannedFirewall(plan.Firewall{
		AllPools:   []netip.Prefix{mp("10.0.0.0/24"), mp("172.16.0.0/16")},
		NATPools:   []netip.Prefix{mp("10.0.1.0/24"), mp("172.16.5.0/24"), mp("10.9.0.1/16")}, // the last has host bits: left out
		VXLANPeers: []netip.Addr{ma("192.168.3.243"), ma("192.168.3.242"), ma("192.168.3.243")},
		Complete:   true,
	})
	want := ObservedFirewall{
		Table:      true,
		NATPools:   []netip.Prefix{mp("10.0.1.0/24"), mp("172.16.5.0/24")},
		AllPools:   []netip.Prefix{mp("10.0.0.0/23"), mp("172.16.0.0/16")}, // NAT pools count as pools; touching ones merge
		VXLANPeers: []netip.Addr{ma("192.168.3.242"), ma("192.168.3.243")},
		Chains:     []string{ChainOutput, ChainPostrouting, ChainPrerouting},
		Sets:       []string{SetAllPools, SetNATPools, SetVXLANPeers},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("PlannedFirewall =\n %+v\nwant\n %+v", got, want)
	}
	if empty := PlannedFirewall(plan.Firewall{Complete: true}); !empty.Table || len(empty.NATPools)+len(empty.AllPools)+len(empty.VXLANPeers) != 0 {
		t.Fatalf("PlannedFirewall of an empty plan = %+v, want the table with empty sets", empty)
	}
}

// TestFirewallNATChainFollowsNATPools checks that the nat chain, which turns
// on connection tracking for the whole namespace, is wanted only while some
// pool has natOutgoing, and that a table holding it without one drops it.
func TestFirewallNATChainFollowsNATPools(t *testing.T) {
	pools := []netip.Prefix{mp("172.16.0.0/16")}
	noNAT := plan.Firewall{AllPools: pools, VXLANPeers: []netip.Addr{ma("192.168.3.242")}, Complete: true}
	nat := noNAT
	nat.NATPools = pools
	want := func(fw plan.Firewall) fwWant {
		cw, errs := wantFirewall(fw)
		if len(errs) != 0 {
			t.Fatal(errs)
		}
		return effectiveFirewall(fw, cw, nil, fwKernel{})
	}
	if got := want(noNAT).chains(); !slices.Equal(got, []string{ChainPrerouting, ChainOutput}) {
		t.Fatalf("chains without natOutgoing = %v, want prerouting and output only", got)
	}
	if got := want(nat).chains(); !slices.Equal(got, []string{ChainPrerouting, ChainOutput, ChainPostrouting}) {
		t.Fatalf("chains with natOutgoing = %v, want prerouting, output and postrouting", got)
	}
	if got := PlannedFirewall(noNAT).Chains; !slices.Equal(got, []string{ChainOutput, ChainPrerouting}) {
		t.Fatalf("PlannedFirewall without natOutgoing lists chains %v", got)
	}

	// A table made while a pool had natOutgoing: once none has, the nat
	// chain goes (with its rules), in place.
	w := want(noNAT)
	k := fwKernel{Table: true, Counter: true, CounterOK: true, Sets: map[string]fwSetState{}, Chains: map[string]fwChainState{
		ChainPrerouting:  {OK: true, Rules: []fwRuleState{{1, "vx"}}},
		ChainOutput:      {OK: true},
		ChainPostrouting: {OK: true, Rules: []fwRuleState{{2, "udp"}, {3, "all"}}},
	}}
	for _, s := range fwSets {
		k.Sets[s] = fwSetState{OK: true, Elems: w.elems(s)}
	}
	rules := map[string][]ruleWant{ChainPrerouting: {{Comment: "vx", Sig: "vx"}}}
	c := diffFirewall(w, rules, k)
	if c.Recreate != "" || !slices.Equal(c.DeleteChains, []string{ChainPostrouting}) || len(c.Refill) != 0 || len(c.CreateChains) != 0 {
		t.Fatalf("nat chain without NAT pools: %+v, want it deleted in place and nothing else", c)
	}
	// Without it, the table matches.
	delete(k.Chains, ChainPostrouting)
	if c := diffFirewall(w, rules, k); !c.empty() {
		t.Fatalf("table without the nat chain drifts: %v", c.Drift)
	}
	// A chain of an older layout (the input chain before raw-priority
	// chains) is not Twill's any more: the table is rebuilt.
	k.Stray = []string{"chain input"}
	if c := diffFirewall(w, rules, k); c.Recreate == "" {
		t.Fatalf("old input chain: %+v, want a rebuild", c)
	}
}

func TestVXLANLocal(t *testing.T) {
	for _, tc := range []struct {
		dev  *plan.Device
		want netip.Addr
	}{
		{nil, netip.Addr{}},
		{&plan.Device{}, netip.Addr{}},
		{&plan.Device{LocalIP: ma("192.168.3.241")}, ma("192.168.3.241")},
		{&plan.Device{LocalIP: ma("::ffff:192.168.3.241")}, ma("192.168.3.241")},
		{&plan.Device{LocalIP: ma("fd00::1")}, netip.Addr{}}, // the firewall is IPv4 only
	} {
		if got := vxlanLocal(tc.dev); got != tc.want {
			t.Errorf("vxlanLocal(%+v) = %v, want %v", tc.dev, got, tc.want)
		}
	}
}
