package dataplane

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/plan"
)

// seedFirewall is a node's firewall with one natOutgoing pool and two peers.
func seedFirewall() plan.Firewall {
	return plan.Firewall{
		AllPools:   []netip.Prefix{mp("172.16.0.0/16")},
		NATPools:   []netip.Prefix{mp("172.16.0.0/16")},
		VXLANPeers: []netip.Addr{ma("192.168.3.242"), ma("192.168.3.243")},
		VXLANPort:  4789,
		Complete:   true,
	}
}

// nftIn opens an nftables connection inside the test namespace at path, for
// inspecting and tampering by hand.
func nftIn(tb testing.TB, path string) *nftables.Conn {
	tb.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func mustFlush(tb testing.TB, c *nftables.Conn) {
	tb.Helper()
	if err := c.Flush(); err != nil {
		tb.Fatalf("nftables by hand: %v", err)
	}
}

func mustApplyFirewall(t *testing.T, r *Reconciler, fw plan.Firewall) Counts {
	t.Helper()
	res, err := r.ApplyFirewall(fw)
	if err != nil {
		t.Fatalf("ApplyFirewall: %v", err)
	}
	if res.Changes() != res.Firewall.Total() {
		t.Fatalf("ApplyFirewall changed more than the firewall: %+v", res)
	}
	return res.Firewall
}

// assertFirewall checks, through ObserveFirewall, that the table holds fw
// and matches it exactly.
func assertFirewall(t *testing.T, r *Reconciler, fw plan.Firewall) ObservedFirewall {
	t.Helper()
	o, err := r.ObserveFirewall()
	if err != nil {
		t.Fatalf("ObserveFirewall: %v", err)
	}
	all := slices.Concat(fw.AllPools, fw.NATPools)
	var wantAll []netip.Prefix
	for _, rg := range mergePrefixes(all) {
		wantAll = append(wantAll, rangePrefixes(rg)...)
	}
	var wantNAT []netip.Prefix
	for _, rg := range mergePrefixes(fw.NATPools) {
		wantNAT = append(wantNAT, rangePrefixes(rg)...)
	}
	if !o.Table || len(o.Drift) != 0 || !slices.Equal(o.NATPools, wantNAT) || !slices.Equal(o.AllPools, wantAll) ||
		!slices.Equal(o.VXLANPeers, fw.VXLANPeers) ||
		!slices.Equal(o.Chains, PlannedFirewall(fw).Chains) ||
		!slices.Equal(o.Sets, []string{SetAllPools, SetNATPools, SetVXLANPeers}) {
		t.Fatalf("observed firewall %+v\nwant NAT %v, all %v, peers %v, no drift", o, wantNAT, wantAll, fw.VXLANPeers)
	}
	return o
}

// ruleHandles lists the handles of the rules in one of Twill's chains.
func ruleHandles(t *testing.T, c *nftables.Conn, chain string) []uint64 {
	t.Helper()
	rs, err := c.GetRules(fwTable, &nftables.Chain{Table: fwTable, Name: chain})
	if err != nil {
		t.Fatal(err)
	}
	var hs []uint64
	for _, r := range rs {
		hs = append(hs, r.Handle)
	}
	return hs
}

// nftList returns `nft list table inet twill` in the namespace, or "" when
// nft is not installed.
func nftList(t *testing.T, ns string) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", FirewallTable).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table: %v: %s", err, out)
	}
	return string(out)
}

func TestFirewallApply(t *testing.T) {
	ns := newTestNS(t)
	r := ns.reconciler(t, testLogger(t))
	c := nftIn(t, ns.path)
	fw := seedFirewall()

	got := mustApplyFirewall(t, r, fw)
	// table, 3 sets, counter, 3 chains, 3 rules, 2+2+2 elements
	if want := (Counts{Added: 17}); got != want {
		t.Fatalf("first ApplyFirewall = %+v, want %+v", got, want)
	}
	assertFirewall(t, r, fw)

	// The rules, read straight from the kernel: the UDP masquerade has its
	// port range and the random flags both.
	rs, err := c.GetRules(fwTable, &nftables.Chain{Table: fwTable, Name: ChainPostrouting})
	if err != nil || len(rs) != 2 {
		t.Fatalf("postrouting rules = %d, %v; want 2", len(rs), err)
	}
	var masq *expr.Masq
	var ports []uint16
	for _, e := range rs[0].Exprs {
		switch e := e.(type) {
		case *expr.Masq:
			masq = e
		case *expr.Immediate:
			ports = append(ports, uint16(e.Data[0])<<8|uint16(e.Data[1]))
		}
	}
	if masq == nil || !masq.ToPorts || !masq.Random || !masq.FullyRandom || !slices.Equal(ports, []uint16{4790, 65535}) {
		t.Fatalf("UDP masquerade = %+v to ports %v; want random,fully-random to 4790-65535", masq, ports)
	}
	if out := nftList(t, ns.name); out != "" {
		for _, want := range []string{
			"type nat hook postrouting priority srcnat; policy accept;",
			`meta l4proto udp ip saddr @nat-pools ip daddr != @all-pools masquerade to :4790-65535 random,fully-random comment "twill:masq-udp"`,
			`ip saddr @nat-pools ip daddr != @all-pools masquerade random,fully-random comment "twill:masq"`,
			"type filter hook prerouting priority raw; policy accept;",
			`udp dport 4789 ip saddr != @vxlan-peers fib daddr type != unicast counter name "vxlan-dropped" drop comment "twill:vxlan-allow"`,
			"type filter hook output priority raw; policy accept;",
			"elements = { 192.168.3.242, 192.168.3.243 }",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("nft list table inet twill lacks %q:\n%s", want, out)
			}
		}
	} else {
		t.Log("nft not installed: checked through the nftables library only")
	}

	// Applying the same firewall again changes nothing.
	if got := mustApplyFirewall(t, r, fw); got != (Counts{}) {
		t.Fatalf("second ApplyFirewall = %+v, want no change", got)
	}

	// Pools and peers change in place: elements only, the rules stay.
	handles := ruleHandles(t, c, ChainPostrouting)
	fw.AllPools = append(fw.AllPools, mp("10.50.0.0/16"))
	fw.NATPools = append(fw.NATPools, mp("10.50.0.0/16"))
	fw.VXLANPeers = []netip.Addr{ma("192.168.3.242"), ma("192.168.3.244")}
	got = mustApplyFirewall(t, r, fw)
	// nat-pools and all-pools gain 10.50.0.0 and 10.51.0.0 (end); peers swap one.
	if want := (Counts{Added: 5, Deleted: 1}); got != want {
		t.Fatalf("ApplyFirewall after a pool and a peer change = %+v, want %+v", got, want)
	}
	assertFirewall(t, r, fw)
	if now := ruleHandles(t, c, ChainPostrouting); !slices.Equal(now, handles) {
		t.Fatalf("postrouting rules rewritten (handles %v, were %v); want elements changed in place", now, handles)
	}
	// A pool touching another merges with it: the end element moves.
	fw.AllPools = append(fw.AllPools, mp("10.51.0.0/16"))
	if got := mustApplyFirewall(t, r, fw); got != (Counts{Added: 1, Deleted: 1}) {
		t.Fatalf("ApplyFirewall with a touching pool = %+v, want one end element moved", got)
	}
	assertFirewall(t, r, fw)

	// Another VXLAN port rewrites the rules that use it.
	fw.VXLANPort = 8472
	if got := mustApplyFirewall(t, r, fw); got != (Counts{Added: 3, Deleted: 3}) {
		t.Fatalf("ApplyFirewall with port 8472 = %+v, want the 3 rules rewritten", got)
	}
	assertFirewall(t, r, fw)
	if out := nftList(t, ns.name); out != "" && (!strings.Contains(out, "udp dport 8472 ") || !strings.Contains(out, "masquerade to :8473-65535 random,fully-random")) {
		t.Fatalf("rules do not follow port 8472:\n%s", out)
	}
}

func TestApplyLeavesZeroFirewallAlone(t *testing.T) {
	ns, r := seedNS(t)
	c := nftIn(t, ns.path)
	mustApply(t, r, seedPlan())
	tabs, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil || len(tabs) != 0 {
		t.Fatalf("Apply with a zero Firewall made tables %v (%v)", tabs, err)
	}
	dp := seedPlan()
	dp.Firewall = seedFirewall()
	res := mustApply(t, r, dp)
	// As from ApplyFirewall, and the two notrack rules of the device's
	// local address.
	if res.Firewall != (Counts{Added: 19}) {
		t.Fatalf("Apply with a firewall: %+v", res)
	}
	assertFirewall(t, r, dp.Firewall)
	assertNoop(t, r, dp)
	// A plan that lost the local node (zero Firewall) changes nothing.
	if res := mustApply(t, r, plan.Dataplane{Device: dp.Device, Routes: dp.Routes, Neighbors: dp.Neighbors, FDB: dp.FDB}); res.Firewall != (Counts{}) {
		t.Fatalf("Apply with a zero Firewall changed the firewall: %+v", res)
	}
	assertFirewall(t, r, dp.Firewall)
}

// foreignTable creates table inet twforeign with a chain, a set and a rule,
// and returns a check that it is still exactly so.
func foreignTable(t *testing.T, c *nftables.Conn) func() {
	t.Helper()
	tab := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "twforeign"})
	set := &nftables.Set{Table: tab, Name: "blocked", KeyType: nftables.TypeIPAddr}
	if err := c.AddSet(set, []nftables.SetElement{{Key: []byte{10, 9, 9, 9}}}); err != nil {
		t.Fatal(err)
	}
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Table: tab, Name: "input", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: tab, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
	mustFlush(t, c)
	return func() {
		t.Helper()
		els, err := c.GetSetElements(&nftables.Set{Table: tab, Name: "blocked"})
		if err != nil || len(els) != 1 || !reflect.DeepEqual(els[0].Key, []byte{10, 9, 9, 9}) {
			t.Fatalf("foreign set changed: %v, %v", els, err)
		}
		rs, err := c.GetRules(tab, ch)
		if err != nil || len(rs) != 1 {
			t.Fatalf("foreign chain changed: %d rules, %v", len(rs), err)
		}
	}
}

func TestFirewallHealsHandEdits(t *testing.T) {
	ns := newTestNS(t)
	r := ns.reconciler(t, testLogger(t))
	c := nftIn(t, ns.path)
	untouched := foreignTable(t, c)
	fw := seedFirewall()
	mustApplyFirewall(t, r, fw)
	untouched()

	peers := &nftables.Set{Table: fwTable, Name: SetVXLANPeers}
	cases := []struct {
		name    string
		breakIt func(t *testing.T)
		want    Counts
	}{
		{"set element deleted", func(t *testing.T) {
			if err := c.SetDeleteElements(peers, []nftables.SetElement{{Key: []byte{192, 168, 3, 242}}}); err != nil {
				t.Fatal(err)
			}
			mustFlush(t, c)
		}, Counts{Added: 1}},
		{"stray set element", func(t *testing.T) {
			if err := c.SetAddElements(peers, []nftables.SetElement{{Key: []byte{10, 6, 6, 6}}}); err != nil {
				t.Fatal(err)
			}
			mustFlush(t, c)
		}, Counts{Deleted: 1}},
		{"chain flushed", func(t *testing.T) {
			c.FlushChain(&nftables.Chain{Table: fwTable, Name: ChainPrerouting})
			mustFlush(t, c)
		}, Counts{Added: 1}},
		{"rule inserted before ours", func(t *testing.T) {
			c.InsertRule(&nftables.Rule{Table: fwTable, Chain: &nftables.Chain{Table: fwTable, Name: ChainPrerouting},
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
			mustFlush(t, c)
		}, Counts{Added: 1, Deleted: 2}},
		{"udp masquerade left as its placeholder", func(t *testing.T) {
			replaceMasqUDP(t, c, func(f fwRule) []expr.Any { return f.interim })
		}, Counts{Updated: 1}},
		{"udp masquerade rewritten without flags", func(t *testing.T) {
			// What google/nftables writes: a range the kernel ignores.
			replaceMasqUDP(t, c, func(f fwRule) []expr.Any {
				es := slices.Clone(f.exprs)
				es[len(es)-1] = &expr.Masq{ToPorts: true, RegProtoMin: 1, RegProtoMax: 2}
				return es
			})
		}, Counts{Added: 2, Deleted: 2}},
		{"table deleted", func(t *testing.T) {
			c.DelTable(fwTable)
			mustFlush(t, c)
		}, Counts{Added: 17}},
		{"stray chain", func(t *testing.T) {
			c.AddChain(&nftables.Chain{Table: fwTable, Name: "twstray"})
			mustFlush(t, c)
		}, Counts{Added: 17, Deleted: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.breakIt(t)
			if o, err := r.ObserveFirewall(); err != nil || len(o.Drift) == 0 {
				t.Fatalf("ObserveFirewall after the edit = %+v, %v; want drift", o, err)
			}
			if got := mustApplyFirewall(t, r, fw); got != tc.want {
				t.Fatalf("ApplyFirewall = %+v, want %+v", got, tc.want)
			}
			assertFirewall(t, r, fw)
			untouched()
		})
	}
}

// TestFirewallRebuildsWhenRefused applies from a stale view of the table,
// so that the in-place update deletes an element that is already gone: the
// kernel refuses the batch and the table is rebuilt instead.
func TestFirewallRebuildsWhenRefused(t *testing.T) {
	ns := newTestNS(t)
	r := ns.reconciler(t, testLogger(t))
	c := nftIn(t, ns.path)
	fw := seedFirewall()
	mustApplyFirewall(t, r, fw)
	stale, err := readFirewall(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetDeleteElements(&nftables.Set{Table: fwTable, Name: SetVXLANPeers}, []nftables.SetElement{{Key: []byte{192, 168, 3, 243}}}); err != nil {
		t.Fatal(err)
	}
	mustFlush(t, c)
	fw.VXLANPeers = fw.VXLANPeers[:1] // drop .243, which the stale view still holds
	checked, errs := wantFirewall(fw)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	var res Result
	r.mu.Lock()
	errs = r.reconcileFirewall(c, fw, checked, stale, &res)
	r.mu.Unlock()
	if len(errs) != 0 {
		t.Fatalf("reconcile from a stale view: %v", errs)
	}
	if res.Firewall != (Counts{Added: 16, Deleted: 1}) {
		t.Fatalf("reconcile from a stale view = %+v; want the table rebuilt", res.Firewall)
	}
	assertFirewall(t, r, fw)
}

// replaceMasqUDP replaces Twill's UDP masquerade rule by hand with what
// with returns.
func replaceMasqUDP(t *testing.T, c *nftables.Conn, with func(fwRule) []expr.Any) {
	t.Helper()
	hs := ruleHandles(t, c, ChainPostrouting)
	f := fwRules(fwWant{port: 4789}, func(string) uint32 { return 0 })[ChainPostrouting][0]
	c.ReplaceRule(&nftables.Rule{Table: fwTable, Chain: &nftables.Chain{Table: fwTable, Name: ChainPostrouting},
		Handle: hs[0], Exprs: with(f), UserData: f.userData()})
	mustFlush(t, c)
}

// TestFirewallKeepsCounterOnRebuild checks that rebuilding the table keeps
// the drop counter's values.
func TestFirewallKeepsCounterOnRebuild(t *testing.T) {
	ns := newTestNS(t)
	r := ns.reconciler(t, testLogger(t))
	c := nftIn(t, ns.path)
	fw := seedFirewall()
	mustApplyFirewall(t, r, fw)
	// VXLAN from 127.0.0.1, which is no peer, is dropped and counted.
	conn := udpIn(t, ns, "127.0.0.1:0")
	for range 3 {
		if _, err := conn.WriteToUDPAddrPort([]byte("tw-vxlan"), netip.MustParseAddrPort("127.0.0.1:4789")); err != nil {
			t.Fatal(err)
		}
	}
	if o, err := r.ObserveFirewall(); err != nil || o.Dropped.Packets != 3 {
		t.Fatalf("drop counter = %+v, %v; want 3 packets", o.Dropped, err)
	}
	c.AddObj(&nftables.NamedObj{Table: fwTable, Name: "twstray", Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
	mustFlush(t, c)
	o, err := r.ObserveFirewall()
	if err != nil || len(o.Drift) == 0 {
		t.Fatalf("stray counter not seen: %+v, %v", o, err)
	}
	before := o.Dropped
	if got := mustApplyFirewall(t, r, fw); got != (Counts{Added: 17, Deleted: 1}) {
		t.Fatalf("ApplyFirewall = %+v, want the table rebuilt", got)
	}
	if o := assertFirewall(t, r, fw); o.Dropped != before {
		t.Fatalf("counter after the rebuild = %+v, want %+v", o.Dropped, before)
	}
}

func TestFirewallSubscribe(t *testing.T) {
	ns := newTestNS(t)
	r := ns.reconciler(t, testLogger(t))
	c := nftIn(t, ns.path)
	fw := seedFirewall()
	mustApplyFirewall(t, r, fw)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sig := subscribe(t, ctx, r, 300*time.Millisecond)

	// Twill's own writes do not signal.
	fw.VXLANPeers = append(fw.VXLANPeers, ma("192.168.3.250"))
	if got := mustApplyFirewall(t, r, fw); got != (Counts{Added: 1}) {
		t.Fatalf("ApplyFirewall = %+v", got)
	}
	if waitSignal(sig, 500*time.Millisecond) {
		t.Fatal("Twill's own firewall write signalled")
	}
	// Nor do changes to other tables.
	foreignTable(t, c)
	if waitSignal(sig, 500*time.Millisecond) {
		t.Fatal("a foreign table signalled")
	}

	heal := func(t *testing.T, what string, breakIt func()) {
		t.Helper()
		breakIt()
		mustFlush(t, c)
		if !waitSignal(sig, 5*time.Second) {
			t.Fatalf("no signal within 5s after %s", what)
		}
		if got := mustApplyFirewall(t, r, fw); got.Total() == 0 {
			t.Fatalf("signal after %s, but ApplyFirewall found nothing to do", what)
		}
		assertFirewall(t, r, fw)
		settle(sig, 300*time.Millisecond)
	}
	heal(t, "deleting a peer", func() {
		if err := c.SetDeleteElements(&nftables.Set{Table: fwTable, Name: SetVXLANPeers}, []nftables.SetElement{{Key: []byte{192, 168, 3, 250}}}); err != nil {
			t.Fatal(err)
		}
	})
	heal(t, "flushing the postrouting chain", func() { c.FlushChain(&nftables.Chain{Table: fwTable, Name: ChainPostrouting}) })
	heal(t, "deleting the table", func() { c.DelTable(fwTable) })
	if _, err := exec.LookPath("nft"); err == nil {
		heal(t, "nft delete element", func() {
			out, err := exec.Command("ip", "netns", "exec", ns.name, "nft", "delete", "element", "inet", FirewallTable, SetNATPools, "{ 172.16.0.0/16 }").CombinedOutput()
			if err != nil {
				t.Fatalf("nft delete element: %v: %s", err, out)
			}
		})
	}
	cancel()
	awaitClosed(t, sig)
}

// lab is three namespaces: a pod, its node (where the reconciler works) and
// a host outside the cluster, linked by veth pairs:
//
//	pod tweth0 172.16.5.10/32 ── twp0 (ee:ee:ee:ee:ee:ee) node twn0 192.168.50.1/24 ── two0 outside 192.168.50.2,.3/24
//	                                                   node twn1 192.168.51.1/24 ── two1 outside 192.168.51.2/24
//
// The node routes the pod's /32 to twp0 and everything else to the outside
// host, which has no route back to 172.16.0.0/16. The outside host also
// holds 172.16.9.9 on a spare veth: an address in the pool, routed by the
// node.
type lab struct {
	pod, node, out *testNS
}

func newLab(t *testing.T) *lab {
	l := &lab{pod: newBareNS(t, "fw-pod"), node: newBareNS(t, "fw-node"), out: newBareNS(t, "fw-out")}
	n, o, p := l.node, l.out, l.pod
	n.ip(t, "link add twp0 address ee:ee:ee:ee:ee:ee type veth peer name tweth0 netns "+p.name)
	n.ip(t, "link add twn0 type veth peer name two0 netns "+o.name)
	n.ip(t, "link add twn1 type veth peer name two1 netns "+o.name)
	for _, dev := range []string{"twp0", "twn0", "twn1"} {
		n.ip(t, "link set "+dev+" up")
	}
	n.ip(t, "addr add 192.168.50.1/24 dev twn0")
	n.ip(t, "addr add 192.168.51.1/24 dev twn1")
	n.ip(t, "route add 172.16.5.10/32 dev twp0 scope link")
	n.ip(t, "route add 172.16.9.9/32 via 192.168.50.2 dev twn0")
	n.ip(t, "route add default via 192.168.50.2 dev twn0")
	inNetns(t, n.path, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) })

	p.ip(t, "link set tweth0 up")
	p.ip(t, "addr add 172.16.5.10/32 dev tweth0")
	p.ip(t, "route add 169.254.1.1 dev tweth0 scope link")
	p.ip(t, "route add default via 169.254.1.1 dev tweth0")
	p.ip(t, "neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev tweth0 nud permanent")

	for _, dev := range []string{"two0", "two1"} {
		o.ip(t, "link set "+dev+" up")
	}
	o.ip(t, "addr add 192.168.50.2/24 dev two0")
	o.ip(t, "addr add 192.168.50.3/24 dev two0")
	o.ip(t, "addr add 192.168.51.2/24 dev two1")
	o.ip(t, "link add twd0 type veth peer name twd0p") // dummy may be missing
	o.ip(t, "link set twd0 up")
	o.ip(t, "link set twd0p up")
	o.ip(t, "addr add 172.16.9.9/32 dev twd0")
	return l
}

// inNetns runs f on a thread switched into the namespace at path and fails
// the test if f or the switch fails.
func inNetns(tb testing.TB, path string, f func() error) {
	tb.Helper()
	if err := nettest.InNetns(path, f); err != nil {
		tb.Fatalf("in %s: %v", path, err)
	}
}

// udpIn opens a UDP socket bound to laddr inside the namespace.
func udpIn(tb testing.TB, ns *testNS, laddr string) *net.UDPConn {
	tb.Helper()
	return nettest.ListenUDP(tb, ns.path, laddr)
}

// newUDPServer listens on laddr inside the namespace, echoing if asked.
func newUDPServer(tb testing.TB, ns *testNS, laddr string, echo bool) *nettest.UDPServer {
	tb.Helper()
	return nettest.NewUDPServer(tb, ns.path, laddr, echo)
}

// probe sends one datagram from a fresh socket bound to src in ns (a new
// flow, so a new conntrack entry) to the server at dst, and reports the
// source the server saw and whether the echo came back. An echo that is
// not wanted is waited for briefly; one that is, up to 5 s.
func probe(t *testing.T, ns *testNS, src string, srv *nettest.UDPServer, dst string, wantEcho bool) (from netip.AddrPort, local netip.AddrPort, echoed bool) {
	t.Helper()
	conn := udpIn(t, ns, src)
	defer conn.Close()
	payload := fmt.Sprintf("tw-probe-%08x", rand.Uint32())
	if _, err := conn.WriteToUDPAddrPort([]byte(payload), netip.MustParseAddrPort(dst)); err != nil {
		t.Fatalf("send to %s: %v", dst, err)
	}
	from, ok := srv.Await(payload, 5*time.Second)
	if !ok {
		t.Fatalf("the server at %s never got the probe from %s", dst, src)
	}
	wait := 500 * time.Millisecond
	if wantEcho {
		wait = 5 * time.Second
	}
	conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64)
	n, _, err := conn.ReadFromUDPAddrPort(buf)
	local = conn.LocalAddr().(*net.UDPAddr).AddrPort()
	return from, local, err == nil && string(buf[:n]) == payload
}

func TestFirewallMasquerade(t *testing.T) {
	l := newLab(t)
	r := l.node.reconciler(t, testLogger(t))
	srv := newUDPServer(t, l.out, "192.168.50.2:9999", true)
	inPool := newUDPServer(t, l.out, "172.16.9.9:9999", false)
	pod, node := ma("172.16.5.10"), ma("192.168.50.1")

	noNAT := plan.Firewall{AllPools: []netip.Prefix{mp("172.16.0.0/16")}, VXLANPort: 4789, Complete: true}
	mustApplyFirewall(t, r, noNAT)
	if from, _, echoed := probe(t, l.pod, "172.16.5.10:0", srv, "192.168.50.2:9999", false); from.Addr() != pod || echoed {
		t.Fatalf("without natOutgoing the outside saw %v (echo back: %v); want the pod's address and no way back", from, echoed)
	}

	nat := noNAT
	nat.NATPools = []netip.Prefix{mp("172.16.0.0/16")}
	mustApplyFirewall(t, r, nat)
	if from, _, echoed := probe(t, l.pod, "172.16.5.10:0", srv, "192.168.50.2:9999", true); from.Addr() != node || !echoed {
		t.Fatalf("with natOutgoing the outside saw %v (echo back: %v); want the node's address and the echo", from, echoed)
	}
	// Masqueraded UDP never takes the VXLAN port, even from a pod bound to
	// it, and ports are fully random (not the pod's own).
	if from, _, echoed := probe(t, l.pod, "172.16.5.10:4789", srv, "192.168.50.2:9999", true); from.Addr() != node || from.Port() < 4790 || !echoed {
		t.Fatalf("a pod sending from port 4789 was seen as %v (echo %v); want the node's address and a port in 4790-65535", from, echoed)
	}
	const probes = 100
	kept := 0
	for range probes {
		from, local, echoed := probe(t, l.pod, "172.16.5.10:0", srv, "192.168.50.2:9999", true)
		if from.Addr() != node || from.Port() < 4790 || !echoed {
			t.Fatalf("probe from %v seen as %v (echo %v); want the node's address and a port in 4790-65535", local, from, echoed)
		}
		if from.Port() == local.Port() {
			kept++
		}
	}
	// Without fully-random the kernel keeps a free source port; at random,
	// two of 100 ports matching has a chance below 1e-5.
	if kept > 2 {
		t.Fatalf("%d of %d masqueraded probes kept the pod's source port; want fully random ports", kept, probes)
	}
	// TCP takes the generic rule.
	tcpFrom := tcpProbe(t, l, "192.168.50.2:9998")
	if tcpFrom.Addr() != node {
		t.Fatalf("TCP from the pod seen as %v, want the node's address", tcpFrom)
	}
	// Traffic to a pool keeps the pod's address.
	if from, _, _ := probe(t, l.pod, "172.16.5.10:0", inPool, "172.16.9.9:9999", false); from.Addr() != pod {
		t.Fatalf("pod to pool address seen as %v, want the pod's own address", from)
	}

	mustApplyFirewall(t, r, noNAT)
	if from, _, echoed := probe(t, l.pod, "172.16.5.10:0", srv, "192.168.50.2:9999", false); from.Addr() != pod || echoed {
		t.Fatalf("after natOutgoing was turned off the outside saw %v (echo %v); want the pod's address", from, echoed)
	}
}

// tcpProbe connects from the pod to a TCP listener outside and returns the
// peer address the listener saw.
func tcpProbe(t *testing.T, l *lab, dst string) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	inNetns(t, l.out.path, func() (err error) {
		ln, err = net.Listen("tcp4", dst)
		return err
	})
	defer ln.Close()
	accepted := make(chan netip.AddrPort, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		accepted <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		c.Close()
	}()
	var conn net.Conn
	inNetns(t, l.pod.path, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err = d.Dial("tcp4", dst)
		return err
	})
	defer conn.Close()
	select {
	case a := <-accepted:
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("the TCP listener accepted nothing")
	}
	return netip.AddrPort{}
}

func TestFirewallVXLANAllowList(t *testing.T) {
	l := newLab(t)
	r := l.node.reconciler(t, testLogger(t))
	vx := newUDPServer(t, l.node, "0.0.0.0:4789", false)
	peer, stranger := ma("192.168.50.2"), ma("192.168.50.3")
	fw := plan.Firewall{AllPools: []netip.Prefix{mp("172.16.0.0/16")}, NATPools: []netip.Prefix{mp("172.16.0.0/16")},
		VXLANPeers: []netip.Addr{peer}, VXLANPort: 4789, Complete: true}
	mustApplyFirewall(t, r, fw)

	dropped := func() uint64 {
		t.Helper()
		o, err := r.ObserveFirewall()
		if err != nil {
			t.Fatal(err)
		}
		return o.Dropped.Packets
	}
	// send sends one datagram to dst from src and returns its payload.
	send := func(src netip.Addr, dst string) string {
		t.Helper()
		conn := udpIn(t, l.out, src.String()+":0")
		defer conn.Close()
		payload := fmt.Sprintf("tw-vxlan-%08x", rand.Uint32())
		if _, err := conn.WriteToUDPAddrPort([]byte(payload), netip.MustParseAddrPort(dst)); err != nil {
			t.Fatal(err)
		}
		return payload
	}
	// awaitDrops waits up to 5 s for the drop counter to rise by want from
	// before, then checks it rose by exactly that. The counter is the
	// proof: a packet it counts is dropped.
	awaitDrops := func(what string, before, want uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for dropped()-before < want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if d := dropped() - before; d != want {
			t.Fatalf("%s: drop counter rose by %d, want %d", what, d, want)
		}
	}
	// check sends VXLAN from a stranger, then from the peer, to the node.
	check := func(what string, peerOK bool) {
		t.Helper()
		before := dropped()
		send(stranger, "192.168.50.1:4789")
		p := send(peer, "192.168.50.1:4789")
		if peerOK {
			if _, ok := vx.Await(p, 5*time.Second); !ok {
				t.Fatalf("%s: the peer's VXLAN never reached the node", what)
			}
			awaitDrops(what+" (the stranger's)", before, 1)
			return
		}
		awaitDrops(what+" (both)", before, 2)
	}
	check("allow-list", true)
	// VXLAN may reach the host on any interface.
	before := dropped()
	send(ma("192.168.51.2"), "192.168.51.1:4789")
	awaitDrops("a stranger on the second link", before, 1)

	// A pool change while the node list is momentarily empty: the pools
	// change, the peers stay.
	hiccup := plan.Firewall{AllPools: []netip.Prefix{mp("172.16.0.0/16"), mp("10.50.0.0/16")}, NATPools: fw.NATPools, VXLANPort: 4789}
	if got := mustApplyFirewall(t, r, hiccup); got != (Counts{Added: 2}) {
		t.Fatalf("ApplyFirewall during the hiccup = %+v, want only all-pools' two new elements", got)
	}
	if o, err := r.ObserveFirewall(); err != nil || !slices.Equal(o.VXLANPeers, []netip.Addr{peer}) || len(o.AllPools) != 2 {
		t.Fatalf("after the hiccup: %+v, %v; want the peer kept and two pools", o, err)
	}
	check("allow-list during a datastore hiccup", true)
	// The same through Apply with a plan that lost the local node.
	if res := mustApply(t, r, plan.Dataplane{}); res.Firewall != (Counts{}) {
		t.Fatalf("Apply of an empty plan changed the firewall: %+v", res)
	}
	check("allow-list after an empty plan", true)

	// A complete plan without peers (the last other node left) empties it.
	gone := hiccup
	gone.Complete = true
	if got := mustApplyFirewall(t, r, gone); got != (Counts{Deleted: 1}) {
		t.Fatalf("ApplyFirewall with no peers, complete = %+v, want the peer removed", got)
	}
	check("no peers", false)
}
