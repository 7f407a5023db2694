package dataplane

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/plan"
)

// conntrack is a ctnetlink handle inside a test namespace.
type conntrack struct{ h *netlink.Handle }

func conntrackIn(t *testing.T, ns *testNS) conntrack {
	t.Helper()
	nsh, err := netns.GetFromPath(ns.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatalf("ctnetlink in %s: %v", ns.name, err)
	}
	t.Cleanup(h.Close)
	return conntrack{h: h}
}

func (c conntrack) flush(t *testing.T) {
	t.Helper()
	if err := c.h.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		t.Fatalf("flush conntrack: %v", err)
	}
}

// tracked reports whether the namespace tracks a UDP flow whose original
// direction goes to dst:dport (from src, unless src is the invalid Addr).
func (c conntrack) tracked(t *testing.T, src, dst netip.Addr, dport uint16) bool {
	t.Helper()
	flows, err := c.h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list conntrack: %v", err)
	}
	for _, f := range flows {
		o := f.Forward
		if f.FamilyType != netlink.FAMILY_V4 || o.Protocol != unix.IPPROTO_UDP || o.DstPort != dport {
			continue
		}
		if d, ok := netip.AddrFromSlice(o.DstIP.To4()); !ok || d != dst {
			continue
		}
		if s, ok := netip.AddrFromSlice(o.SrcIP.To4()); src.IsValid() && (!ok || s != src) {
			continue
		}
		return true
	}
	return false
}

// sendUDP sends one datagram from a fresh socket bound to src inside ns
// to dst and returns the socket (closed when the test ends) and the
// payload. broadcast allows a broadcast destination.
func sendUDP(t *testing.T, ns *testNS, src, dst string, broadcast bool) (*net.UDPConn, string) {
	t.Helper()
	conn := udpIn(t, ns, src)
	if broadcast {
		rc, err := conn.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1) }); err != nil || serr != nil {
			t.Fatalf("SO_BROADCAST: %v %v", err, serr)
		}
	}
	payload := fmt.Sprintf("tw-notrack-%08x", rand.Uint32())
	if _, err := conn.WriteToUDPAddrPort([]byte(payload), netip.MustParseAddrPort(dst)); err != nil {
		t.Fatalf("send %s → %s: %v", src, dst, err)
	}
	return conn, payload
}

// TestFirewallNotrackKeepsAllowList checks the notrack rules Apply adds
// for a node with a VXLAN device: a peer's VXLAN to the node's VTEP address
// is delivered and left untracked; VXLAN from a stranger is still dropped
// and counted, to the VTEP address, to another local address and to the
// broadcast address; and a peer's traffic on the VXLAN port that is not
// for the VTEP address (here to a pod, forwarded) is still tracked, so the
// pod's reply is not masqueraded.
func TestFirewallNotrackKeepsAllowList(t *testing.T) {
	l := newLab(t)
	r := l.node.reconciler(t, testLogger(t))
	node, peer := ma("192.168.50.1"), ma("192.168.50.2")
	pool := []netip.Prefix{mp("172.16.0.0/16")}
	fw := plan.Firewall{AllPools: pool, NATPools: pool, VXLANPeers: []netip.Addr{peer}, VXLANPort: 4789, Complete: true}
	// The device takes another port, so that a plain socket on 4789 can
	// stand for the VXLAN socket and show what gets through.
	dev := &plan.Device{Name: "twvx0", VNI: 4096, Port: 8472, MTU: 1450, Parent: "twn0", LocalIP: node,
		MAC: "66:00:00:00:00:01", Address: mp("172.16.5.1/32")}
	dp := plan.Dataplane{Device: dev, Firewall: fw}
	mustApply(t, r, dp)
	assertFirewall(t, r, fw)
	assertNoop(t, r, dp)
	if out := nftList(t, l.node.name); out != "" {
		for _, want := range []string{
			`udp dport 4789 ip daddr 192.168.50.1 ip saddr @vxlan-peers notrack accept comment "twill:vxlan-notrack-in"`,
			`udp dport 4789 ip saddr != @vxlan-peers fib daddr type != unicast counter name "vxlan-dropped" drop comment "twill:vxlan-allow"`,
			`udp dport 4789 ip saddr 192.168.50.1 ip daddr @vxlan-peers notrack comment "twill:vxlan-notrack-out"`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("nft list table inet twill lacks %q:\n%s", want, out)
			}
		}
	}
	vx := newUDPServer(t, l.node, "0.0.0.0:4789", false)
	ct := conntrackIn(t, l.node)
	ct.flush(t)
	dropped := func() uint64 {
		t.Helper()
		o, err := r.ObserveFirewall()
		if err != nil {
			t.Fatal(err)
		}
		return o.Dropped.Packets
	}
	// The counter is the proof that a packet was dropped; wait for it.
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
	delivered := func(what, payload string) {
		t.Helper()
		if _, ok := vx.Await(payload, 5*time.Second); !ok {
			t.Fatalf("%s never reached the node's socket on 4789", what)
		}
	}

	before := dropped()
	_, p := sendUDP(t, l.out, "192.168.50.2:0", "192.168.50.1:4789", false)
	delivered("the peer's VXLAN", p)
	if ct.tracked(t, peer, node, 4789) {
		t.Fatal("the peer's VXLAN to the VTEP address is tracked; want it left untracked")
	}
	// To another local address the peer is let through as before, tracked:
	// the notrack rule is for the VTEP address only. This also shows that
	// conntrack is on and that the check above could fail.
	_, p = sendUDP(t, l.out, "192.168.50.2:0", "192.168.51.1:4789", false)
	delivered("the peer's VXLAN to the second link", p)
	if !ct.tracked(t, peer, ma("192.168.51.1"), 4789) {
		t.Fatal("the peer's datagram to 192.168.51.1:4789 is not tracked; want conntrack on and only VTEP-to-VTEP VXLAN untracked")
	}
	if d := dropped(); d != before {
		t.Fatalf("the peer's datagrams were counted as dropped (%d → %d)", before, d)
	}

	for _, tc := range []struct {
		what, src, dst string
		broadcast      bool
	}{
		{"a stranger to the VTEP address", "192.168.50.3:0", "192.168.50.1:4789", false},
		{"a stranger on the second link", "192.168.51.2:0", "192.168.51.1:4789", false},
		{"a stranger to the broadcast address", "192.168.50.3:0", "192.168.50.255:4789", true},
	} {
		before := dropped()
		_, p := sendUDP(t, l.out, tc.src, tc.dst, tc.broadcast)
		awaitDrops(tc.what, before, 1)
		if _, ok := vx.Await(p, 200*time.Millisecond); ok {
			t.Fatalf("%s: the datagram reached the node's socket", tc.what)
		}
	}

	// A peer's datagram to a pod on the VXLAN port is forwarded, not for
	// the VTEP: tracked, so the pod's echo comes back from the pod itself
	// and not masqueraded (a reply without a conntrack entry would look
	// like a new flow from a NAT pool to outside the pools).
	l.out.ip(t, "route add 172.16.5.10/32 via 192.168.50.1 dev two0")
	podSrv := newUDPServer(t, l.pod, "172.16.5.10:4789", true)
	before = dropped()
	conn, p := sendUDP(t, l.out, "192.168.50.2:0", "172.16.5.10:4789", false)
	if from, ok := podSrv.Await(p, 5*time.Second); !ok || from.Addr() != peer {
		t.Fatalf("the pod got the peer's datagram: %v from %v; want it from %v", ok, from, peer)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != p {
		t.Fatalf("no echo from the pod: %v", err)
	}
	if from != netip.MustParseAddrPort("172.16.5.10:4789") {
		t.Fatalf("the pod's echo came from %v, want 172.16.5.10:4789 (not masqueraded)", from)
	}
	if !ct.tracked(t, peer, ma("172.16.5.10"), 4789) {
		t.Fatal("the peer's datagram to the pod is not tracked")
	}
	if d := dropped(); d != before {
		t.Fatalf("the peer's datagram to the pod was counted as dropped (%d → %d)", before, d)
	}
}

// twoNodes is two namespaces joined by a veth pair (twn0 on both sides,
// 192.168.60.1/24 and .2/24), each planned as a Twill node with a VXLAN
// device, a block and a route to the other's block over VXLAN.
type twoNodes struct {
	a, b   *testNS
	planA  plan.Dataplane
	planB  plan.Dataplane
	fw     func(peer string) plan.Firewall
	tunA   netip.Addr
	tunB   netip.Addr
	localA netip.Addr
	localB netip.Addr
}

func newTwoNodes(t *testing.T) *twoNodes {
	n := &twoNodes{a: newBareNS(t, "fw-a"), b: newBareNS(t, "fw-b"),
		tunA: ma("172.16.1.0"), tunB: ma("172.16.2.0"), localA: ma("192.168.60.1"), localB: ma("192.168.60.2")}
	n.a.ip(t, "link add twn0 type veth peer name twn0 netns "+n.b.name)
	n.a.ip(t, "addr add 192.168.60.1/24 dev twn0")
	n.b.ip(t, "addr add 192.168.60.2/24 dev twn0")
	n.a.ip(t, "link set twn0 up")
	n.b.ip(t, "link set twn0 up")
	pool := []netip.Prefix{mp("172.16.0.0/16")}
	n.fw = func(peer string) plan.Firewall {
		return plan.Firewall{AllPools: pool, NATPools: pool, VXLANPeers: []netip.Addr{ma(peer)}, VXLANPort: 4789, Complete: true}
	}
	node := func(local, tun netip.Addr, mac string, peerLocal, peerTun netip.Addr, peerMAC, peerBlock string) plan.Dataplane {
		const dev = "twvx0"
		return plan.Dataplane{
			Device: &plan.Device{Name: dev, VNI: 4096, Port: 4789, MTU: 1450, Parent: "twn0", LocalIP: local, MAC: mac,
				Address: netip.PrefixFrom(tun, 32)},
			Routes:    []plan.Route{{Dst: mp(peerBlock), Gateway: peerTun, Device: dev, OnLink: true, Kind: plan.KindVXLAN, Peer: "peer"}},
			Neighbors: []plan.Neighbor{{Device: dev, IP: peerTun, MAC: peerMAC}},
			FDB:       []plan.FDB{{Device: dev, MAC: peerMAC, Dst: peerLocal}},
			Firewall:  n.fw(peerLocal.String()),
		}
	}
	n.planA = node(n.localA, n.tunA, "66:00:00:00:00:0a", n.localB, n.tunB, "66:00:00:00:00:0b", "172.16.2.0/26")
	n.planB = node(n.localB, n.tunB, "66:00:00:00:00:0b", n.localA, n.tunA, "66:00:00:00:00:0a", "172.16.1.0/26")
	return n
}

// TestFirewallNotrackTunnel checks, between two real Twill nodes, that the
// VXLAN packets between them are left untracked on both sides while the
// tunnelled flow is tracked on both (encapsulation and decapsulation give
// it conntrack state of its own), and, as a control, that without the
// notrack rules the VXLAN packets are tracked.
func TestFirewallNotrackTunnel(t *testing.T) {
	n := newTwoNodes(t)
	ra, rb := n.a.reconciler(t, testLogger(t)), n.b.reconciler(t, testLogger(t))
	mustApply(t, ra, n.planA)
	mustApply(t, rb, n.planB)
	cta, ctb := conntrackIn(t, n.a), conntrackIn(t, n.b)
	srv := newUDPServer(t, n.b, n.tunB.String()+":9999", true)
	// probe sends over the tunnel from a's tunnel address to b's and
	// waits for the echo.
	probe := func(what string) {
		t.Helper()
		conn, p := sendUDP(t, n.a, n.tunA.String()+":0", n.tunB.String()+":9999", false)
		if from, ok := srv.Await(p, 5*time.Second); !ok || from.Addr() != n.tunA {
			t.Fatalf("%s: b got %v from %v; want the datagram from %v", what, ok, from, n.tunA)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		if k, _, err := conn.ReadFromUDPAddrPort(buf); err != nil || string(buf[:k]) != p {
			t.Fatalf("%s: no echo back over the tunnel: %v", what, err)
		}
	}
	cta.flush(t)
	ctb.flush(t)
	probe("with notrack")
	for _, side := range []struct {
		name string
		ct   conntrack
	}{{"a", cta}, {"b", ctb}} {
		if !side.ct.tracked(t, n.tunA, n.tunB, 9999) {
			t.Errorf("%s does not track the tunnelled flow %v → %v:9999", side.name, n.tunA, n.tunB)
		}
		if side.ct.tracked(t, netip.Addr{}, n.localA, 4789) || side.ct.tracked(t, netip.Addr{}, n.localB, 4789) {
			t.Errorf("%s tracks VXLAN between the nodes; want it untracked", side.name)
		}
	}

	// Control: the firewall applied by fresh reconcilers, which know no
	// VXLAN device, has no notrack rules; the same traffic is then tracked.
	fa, fb := n.a.reconciler(t, testLogger(t)), n.b.reconciler(t, testLogger(t))
	for _, x := range []struct {
		r  *Reconciler
		fw plan.Firewall
	}{{fa, n.planA.Firewall}, {fb, n.planB.Firewall}} {
		// The two notrack rules go: the prerouting chain is refilled (2
		// rules out, 1 in) and the output chain flushed.
		if got := mustApplyFirewall(t, x.r, x.fw); got != (Counts{Added: 1, Deleted: 3}) {
			t.Fatalf("ApplyFirewall without the device = %+v, want the notrack rules removed", got)
		}
	}
	cta.flush(t)
	ctb.flush(t)
	probe("without notrack")
	if !ctb.tracked(t, n.localA, n.localB, 4789) {
		t.Fatal("without the notrack rules b does not track a's VXLAN either: the check above proves nothing")
	}

	// Apply with the device puts them back.
	if res := mustApply(t, ra, n.planA); res.Firewall != (Counts{Added: 3, Deleted: 1}) {
		t.Fatalf("Apply with the device = %+v, want the notrack rules back", res.Firewall)
	}
}

// TestFirewallUpgradesOldLayout checks that a table in the layout of
// earlier versions (the allow-list in a chain at the input hook) is
// rebuilt, keeping its drop counter.
func TestFirewallUpgradesOldLayout(t *testing.T) {
	nettest.RequireRoot(t, "ip", "nft") // nft writes the old layout
	ns := newTestNS(t)
	old := `table inet twill {
	counter vxlan-dropped { packets 7 bytes 700 }
	set nat-pools { type ipv4_addr; flags interval; elements = { 172.16.0.0/16 } }
	set all-pools { type ipv4_addr; flags interval; elements = { 172.16.0.0/16 } }
	set vxlan-peers { type ipv4_addr; elements = { 192.168.3.242, 192.168.3.243 } }
	chain postrouting { type nat hook postrouting priority srcnat; policy accept;
		meta l4proto udp ip saddr @nat-pools ip daddr != @all-pools masquerade to :4790-65535 random,fully-random comment "twill:masq-udp"
		ip saddr @nat-pools ip daddr != @all-pools masquerade random,fully-random comment "twill:masq"
	}
	chain input { type filter hook input priority filter - 1; policy accept;
		udp dport 4789 ip saddr != @vxlan-peers counter name "vxlan-dropped" drop comment "twill:vxlan-allow"
	}
}
`
	cmd := exec.Command("ip", "netns", "exec", ns.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(old)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f (old layout): %v: %s", err, out)
	}
	r := ns.reconciler(t, testLogger(t))
	o, err := r.ObserveFirewall()
	if err != nil || !o.Table {
		t.Fatalf("ObserveFirewall of the old layout = %+v, %v", o, err)
	}
	fw := seedFirewall()
	if got := mustApplyFirewall(t, r, fw); got.Deleted != 1 || got.Added != 17 {
		t.Fatalf("ApplyFirewall over the old layout = %+v, want the table rebuilt (1 deleted, 17 added)", got)
	}
	if o := assertFirewall(t, r, fw); o.Dropped != (CounterValue{Packets: 7, Bytes: 700}) {
		t.Fatalf("drop counter after the upgrade = %+v, want the old 7 packets, 700 bytes", o.Dropped)
	}
	if out := nftList(t, ns.name); strings.Contains(out, "hook input") {
		t.Fatalf("the input chain survived the upgrade:\n%s", out)
	}
}

// TestFirewallNATChainOnlyWithNATPools checks that without a natOutgoing
// pool the table has no nat chain, so the namespace tracks no connections
// at all, and that the chain comes and goes with the NAT pools.
func TestFirewallNATChainOnlyWithNATPools(t *testing.T) {
	l := newLab(t)
	r := l.node.reconciler(t, testLogger(t))
	ct := conntrackIn(t, l.node)
	srv := newUDPServer(t, l.out, "192.168.50.2:9999", false)
	pool := []netip.Prefix{mp("172.16.0.0/16")}
	noNAT := plan.Firewall{AllPools: pool, VXLANPeers: []netip.Addr{ma("192.168.50.2")}, VXLANPort: 4789, Complete: true}
	nat := noNAT
	nat.NATPools = pool
	pod, out := ma("172.16.5.10"), ma("192.168.50.2")
	send := func() {
		t.Helper()
		_, p := sendUDP(t, l.pod, "172.16.5.10:0", "192.168.50.2:9999", false)
		if _, ok := srv.Await(p, 5*time.Second); !ok {
			t.Fatal("the pod's datagram never reached the outside host")
		}
	}
	for round := range 2 {
		got := mustApplyFirewall(t, r, noNAT)
		// Round 1 turns natOutgoing off: the chain, its rules and the
		// elements go.
		if want := (Counts{Deleted: 5}); round == 1 && got != want {
			t.Fatalf("turning natOutgoing off = %+v, want %+v", got, want)
		}
		if o := assertFirewall(t, r, noNAT); slices.Contains(o.Chains, ChainPostrouting) {
			t.Fatalf("round %d: chains %v without natOutgoing; want no nat chain", round, o.Chains)
		}
		ct.flush(t)
		send()
		if ct.tracked(t, pod, out, 9999) {
			t.Fatalf("round %d: the node tracks the pod's flow without natOutgoing; want connection tracking off", round)
		}
		// The nat chain, its 2 rules and nat-pools' 2 elements.
		if got := mustApplyFirewall(t, r, nat); got != (Counts{Added: 5}) {
			t.Fatalf("round %d: turning natOutgoing on = %+v, want the nat chain, its 2 rules and 2 set elements added", round, got)
		}
		assertFirewall(t, r, nat)
		send()
		if !ct.tracked(t, pod, out, 9999) {
			t.Fatalf("round %d: the pod's flow is not tracked with natOutgoing", round)
		}
	}
}

// TestFirewallNATOnFillsPoolsAfterUpgrade checks the order of the writes
// when natOutgoing is turned on: the nat chain's UDP rule is first written
// as a placeholder that drops and then replaced; nat-pools must get its
// elements only after that, so that no packet ever meets the placeholder.
func TestFirewallNATOnFillsPoolsAfterUpgrade(t *testing.T) {
	ns := newTestNS(t)
	r := ns.reconciler(t, testLogger(t))
	nat := seedFirewall()
	noNAT := nat
	noNAT.NATPools = nil
	mustApplyFirewall(t, r, noNAT)

	nsh, err := netns.GetFromPath(ns.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(nsh)))
	if err != nil {
		t.Fatal(err)
	}
	mon := nftables.NewMonitor()
	events, err := c.AddGenerationalMonitor(mon)
	if err != nil {
		t.Fatalf("nftables monitor: %v", err)
	}
	defer func() {
		mon.Close()
		for range events {
		}
	}()
	mustApplyFirewall(t, r, nat)

	// What happened, in order: "placeholder", "rule" (the UDP masquerade
	// in its final form) and "pools" (nat-pools' first element).
	var seen []string
	deadline := time.After(5 * time.Second)
	for !slices.Contains(seen, "pools") {
		select {
		case b, ok := <-events:
			if !ok {
				t.Fatalf("the monitor ended; seen %v", seen)
			}
			for _, e := range b.Changes {
				switch d := e.Data.(type) {
				case *nftables.Rule:
					if e.Type != nftables.MonitorEventTypeNewRule || !strings.Contains(string(d.UserData), ruleMasqUDP) {
						continue
					}
					what := "rule"
					if slices.ContainsFunc(d.Exprs, func(x expr.Any) bool { v, ok := x.(*expr.Verdict); return ok && v.Kind == expr.VerdictDrop }) {
						what = "placeholder"
					}
					seen = append(seen, what)
				case []nftables.SetElement:
					if e.Type == nftables.MonitorEventTypeNewSetElem &&
						slices.ContainsFunc(d, func(el nftables.SetElement) bool { return net.IP(el.Key).Equal(net.IPv4(172, 16, 0, 0)) }) {
						seen = append(seen, "pools")
					}
				}
			}
		case <-deadline:
			t.Fatalf("no nat-pools element within 5 s; seen %v", seen)
		}
	}
	if !slices.Equal(seen, []string{"placeholder", "rule", "pools"}) {
		t.Fatalf("writes when natOutgoing turned on: %v; want the placeholder, the rule, then the pools", seen)
	}
	assertFirewall(t, r, nat)
}
