package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/api"
	"twill.dev/twill/dataplane"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/internal/nettest"
)

// The host firewall end to end, in a lab built from the seed cluster plus
// an outside subnet whose host has no route to the pods, and a rogue host
// in lan-a that forges VXLAN.

const (
	fwPool      = "default-ipv4-ippool"
	fwPoolCIDR  = "172.16.0.0/16"
	outsideAddr = "10.99.0.10"
	rogueAddr   = "192.168.3.66"
	// fakePodAddr is the inner source of the forged VXLAN frames: an
	// address in k8s-node1's block that no pod holds.
	fakePodAddr = "172.16.36.99"
)

// firewallTopology is the seed topology with one pod per node (the
// checks need no more), a rogue host in lan-a and a subnet "outside"
// holding a plain host, written out and parsed as a topology file.
func firewallTopology(t *testing.T) *Topology {
	t.Helper()
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	for i := range topo.Nodes {
		topo.Nodes[i].Pods = Pods{Addresses: topo.Nodes[i].Pods.Addresses[:1]}
	}
	i := slices.IndexFunc(topo.Subnets, func(s Subnet) bool { return s.Name == "lan-a" })
	if i < 0 {
		t.Fatal("the seed topology has no subnet lan-a")
	}
	topo.Subnets[i].Hosts = append(topo.Subnets[i].Hosts, Host{Name: "rogue", Address: rogueAddr})
	topo.Subnets = append(topo.Subnets, Subnet{Name: "outside", CIDR: "10.99.0.0/24", Router: "10.99.0.1",
		Hosts: []Host{{Name: "outside", Address: outsideAddr}}})
	src, err := yaml.Marshal(topo)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse("seed-firewall", src)
	if err != nil {
		t.Fatalf("the extended seed topology does not parse: %v\n%s", err, src)
	}
	return parsed
}

// udpIn opens a UDP socket bound to laddr inside the named namespace; the
// socket stays in that namespace whatever thread uses it.
func udpIn(t *testing.T, ns, laddr string) *net.UDPConn {
	t.Helper()
	return nettest.ListenUDP(t, NetnsPath(ns), laddr)
}

// udpServer records where each datagram came from and echoes it back.
type udpServer struct {
	*nettest.UDPServer
	addr netip.AddrPort
}

func newUDPServer(t *testing.T, ns, laddr string) *udpServer {
	t.Helper()
	return &udpServer{UDPServer: nettest.NewUDPServer(t, NetnsPath(ns), laddr, true), addr: netip.MustParseAddrPort(laddr)}
}

// udpProbe sends one datagram from a fresh socket in ns (a new flow, so a
// new conntrack entry) to srv and reports the source srv saw (invalid when
// nothing arrived within 5 s) and whether the echo came back within
// echoWait.
func udpProbe(t *testing.T, ns string, srv *udpServer, echoWait time.Duration) (seen netip.AddrPort, echoed bool) {
	t.Helper()
	conn := udpIn(t, ns, "0.0.0.0:0")
	defer conn.Close()
	payload := fmt.Sprintf("tw-probe-%08x", rand.Uint32())
	if _, err := conn.WriteToUDPAddrPort([]byte(payload), srv.addr); err != nil {
		t.Fatalf("send from %s to %s: %v", ns, srv.addr, err)
	}
	seen, _ = srv.Await(payload, 5*time.Second)
	if err := conn.SetReadDeadline(time.Now().Add(echoWait)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128)
	n, _, err := conn.ReadFromUDPAddrPort(buf)
	return seen, err == nil && string(buf[:n]) == payload
}

// tcpServer records the peer address of each connection it accepts.
type tcpServer struct {
	addr  string
	peers chan netip.AddrPort
}

func newTCPServer(t *testing.T, ns, laddr string) *tcpServer {
	t.Helper()
	var ln net.Listener
	err := inNetns(NetnsPath(ns), func() (err error) {
		ln, err = net.Listen("tcp4", laddr)
		return err
	})
	if err != nil {
		t.Fatalf("TCP listener on %s in %s: %v", laddr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &tcpServer{addr: laddr, peers: make(chan netip.AddrPort, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case s.peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
			default:
			}
			c.Close()
		}
	}()
	return s
}

// tcpDial connects from ns to the server within timeout; on success it
// returns the peer address the server saw.
func tcpDial(t *testing.T, ns string, s *tcpServer, timeout time.Duration) (netip.AddrPort, error) {
	t.Helper()
	var conn net.Conn
	err := inNetns(NetnsPath(ns), func() (err error) {
		d := net.Dialer{Timeout: timeout}
		conn, err = d.Dial("tcp4", s.addr)
		return err
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer conn.Close()
	select {
	case p := <-s.peers:
		return p, nil
	case <-time.After(5 * time.Second):
		t.Fatalf("connected from %s to %s, but the server accepted nothing", ns, s.addr)
	}
	return netip.AddrPort{}, nil
}

// observeFirewall reads the table inet twill in the named namespace.
func observeFirewall(t *testing.T, ns string) dataplane.ObservedFirewall {
	t.Helper()
	r, err := dataplane.New(dataplane.Options{NetnsPath: NetnsPath(ns), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	o, err := r.ObserveFirewall()
	if err != nil {
		t.Fatalf("observe the firewall in %s: %v", ns, err)
	}
	return o
}

// waitFirewall polls the namespace's table (for up to 20 s) until ok
// holds, and fails the test with what it saw last otherwise.
func waitFirewall(t *testing.T, ns, what string, ok func(dataplane.ObservedFirewall) bool) dataplane.ObservedFirewall {
	t.Helper()
	var o dataplane.ObservedFirewall
	nettest.Eventually(t, 20*time.Second, 50*time.Millisecond, what, func() (bool, string) {
		o = observeFirewall(t, ns)
		return ok(o), fmt.Sprintf("the table in %s is %+v", ns, o)
	})
	return o
}

// nftIn opens an nftables connection into the named namespace.
func nftIn(t *testing.T, ns string) *nftables.Conn {
	t.Helper()
	h, err := netns.GetFromPath(NetnsPath(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatalf("nftables in %s: %v", ns, err)
	}
	return c
}

// foreignTables creates, in the named namespace, a table inet twforeign
// with a set, a chain and a rule, and a table ip twill (Twill's name in
// another family) with a set, and returns a check that both are still
// exactly so.
func foreignTables(t *testing.T, ns string) func() {
	t.Helper()
	c := nftIn(t, ns)
	inet := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "twforeign"})
	set := &nftables.Set{Table: inet, Name: "blocked", KeyType: nftables.TypeIPAddr}
	if err := c.AddSet(set, []nftables.SetElement{{Key: []byte{10, 9, 9, 9}}}); err != nil {
		t.Fatal(err)
	}
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Table: inet, Name: "input", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: inet, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}, UserData: []byte("twtest")})
	ip := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: dataplane.FirewallTable})
	ipSet := &nftables.Set{Table: ip, Name: dataplane.SetVXLANPeers, KeyType: nftables.TypeIPAddr}
	if err := c.AddSet(ipSet, []nftables.SetElement{{Key: []byte{10, 8, 8, 8}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("create the foreign tables: %v", err)
	}
	elems := func(s *nftables.Set) [][]byte {
		es, err := c.GetSetElements(s)
		if err != nil {
			t.Errorf("foreign set %s of table %s: %v", s.Name, s.Table.Name, err)
		}
		var out [][]byte
		for _, e := range es {
			out = append(out, e.Key)
		}
		return out
	}
	return func() {
		t.Helper()
		if got := elems(set); !reflect.DeepEqual(got, [][]byte{{10, 9, 9, 9}}) {
			t.Errorf("the foreign set inet twforeign blocked now holds %v", got)
		}
		if got := elems(ipSet); !reflect.DeepEqual(got, [][]byte{{10, 8, 8, 8}}) {
			t.Errorf("the foreign set ip twill vxlan-peers now holds %v", got)
		}
		rs, err := c.GetRules(inet, ch)
		if err != nil || len(rs) != 1 || string(rs[0].UserData) != "twtest" {
			t.Errorf("the foreign chain inet twforeign input changed: %d rules, %v", len(rs), err)
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
		if err != nil {
			t.Error(err)
		}
		for _, ch := range chains {
			if ch.Table.Name == dataplane.FirewallTable {
				t.Errorf("table ip twill gained chain %s", ch.Name)
			}
		}
	}
}

// forgedVXLAN is a VXLAN payload carrying an ICMP echo request from src to
// dst inside an Ethernet frame addressed to the VTEP MAC dstMAC.
func forgedVXLAN(vni uint32, srcMAC, dstMAC string, src, dst netip.Addr, id, seq uint16) []byte {
	return vxlanHdr(vni, ether(srcMAC, dstMAC, EtherTypeIPv4, ipv4(src.String(), dst.String(), ProtoICMP, icmpEcho(8, id, seq))))
}

// sendVXLAN sends each payload in its own datagram from a socket bound to
// src in ns to dst.
func sendVXLAN(t *testing.T, ns string, src netip.Addr, dst netip.AddrPort, payloads [][]byte) {
	t.Helper()
	conn := udpIn(t, ns, netip.AddrPortFrom(src, 0).String())
	defer conn.Close()
	for _, p := range payloads {
		if _, err := conn.WriteToUDPAddrPort(p, dst); err != nil {
			t.Fatalf("send VXLAN from %s (%s) to %s: %v", src, ns, dst, err)
		}
	}
}

// innerArrivals reads the capture until deadline, or until want frames
// matched, and returns the sequence numbers of the echo requests from src
// with the given ID that arrived.
func innerArrivals(t *testing.T, c *capture, src netip.Addr, id uint16, want int, deadline time.Time) map[uint16]bool {
	t.Helper()
	seen := map[uint16]bool{}
	buf := make([]byte, 1<<16)
	for range 100000 {
		if want > 0 && len(seen) >= want {
			break
		}
		b, out, err := c.next(buf, deadline)
		if errors.Is(err, errCaptureTimeout) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		f, err := DecodeFrame(b, 4789)
		if out || err != nil || f.IPv4 == nil || f.ICMP == nil {
			continue
		}
		if f.IPv4.Src == src && f.ICMP.Type == 8 && f.ICMP.ID == id {
			seen[f.ICMP.Seq] = true
		}
	}
	return seen
}

// setNATOutgoing switches natOutgoing of the pool through the datastore,
// as `twill apply` would.
func setNATOutgoing(t *testing.T, s datastore.Store, on bool) {
	t.Helper()
	ctx := context.Background()
	o, err := datastore.GetObject[api.IPPool](ctx, s, datastore.KindIPPool, fwPool)
	if err != nil {
		t.Fatal(err)
	}
	o.Value.Spec.NATOutgoing = on
	kv, err := datastore.NewKV(datastore.KindIPPool, fwPool, o.Value)
	if err != nil {
		t.Fatal(err)
	}
	kv.Labels, kv.Revision = o.Labels, o.Revision
	if _, err := s.Update(ctx, kv); err != nil {
		t.Fatalf("set natOutgoing=%t on pool %s: %v", on, fwPool, err)
	}
}

// outsideHasNoPodRoute replaces the outside host's default route by routes
// to the two node subnets only, and checks that neither the host nor the
// router has a route to pod addr: a reply can only come back to a
// masqueraded source.
func outsideHasNoPodRoute(t *testing.T, l *Layout, pod netip.Addr) {
	t.Helper()
	host, _ := l.Member("outside")
	err := withHandle(host.Netns, func(h *netlink.Handle, _ netns.NsHandle) error {
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := h.RouteDel(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: host.Gateway.AsSlice()}); err != nil {
			return fmt.Errorf("delete the default route: %w", err)
		}
		for _, s := range l.Subnets {
			if s.CIDR.Contains(host.Address.Addr()) {
				continue
			}
			r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(s.CIDR), Gw: host.Gateway.AsSlice()}
			if err := h.RouteAdd(r); err != nil {
				return fmt.Errorf("route to %s: %w", s.CIDR, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("outside host: %v", err)
	}
	for _, ns := range []string{host.Netns, l.Router} {
		err := withHandle(ns, func(h *netlink.Handle, _ netns.NsHandle) error {
			if rs, err := h.RouteGet(pod.AsSlice()); err == nil {
				return fmt.Errorf("route to %s: %+v", pod, rs)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s should have no route to the pods: %v", ns, err)
		}
	}
}

// TestFirewallEndToEnd builds the seed cluster with an outside host and a
// rogue host, and checks the host firewall's effects through real traffic:
// masquerade towards the outside (and its absence when the pool's
// natOutgoing is off), pod addresses kept between pods, forged VXLAN from
// a non-node dropped and counted while the same frames from a node pass,
// the table healing after hand edits, and a foreign table left alone.
func TestFirewallEndToEnd(t *testing.T) {
	opts := podLabOptions(t)
	topo := firewallTopology(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	before := rootState(t)
	if err := Up(ctx, topo, opts); err != nil {
		t.Fatalf("Up: %v", err)
	}
	st, err := LoadState(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	l, err := st.Layout()
	if err != nil {
		t.Fatal(err)
	}
	cfg, ok := st.StoreConfig()
	if !ok {
		t.Fatal("the lab state records no datastore")
	}
	store, err := open.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	member := func(name string) Member {
		m, ok := l.Member(name)
		if !ok {
			t.Fatalf("the lab has no %s", name)
		}
		return m
	}
	podOf := func(node string) PodState {
		for _, p := range st.Pods {
			if p.Node == node {
				return p
			}
		}
		t.Fatalf("no pod on %s", node)
		return PodState{}
	}
	master1, master2, node1 := member("k8s-master1"), member("k8s-master2"), member("k8s-node1")
	rogue, outside := member("rogue"), member("outside")
	target := podOf("k8s-master1") // the pod every check talks to
	targetAddr := netip.MustParseAddr(target.Address)
	var peers []netip.Addr // k8s-master1's VXLAN peers: the other nodes
	for _, n := range l.Nodes() {
		if n.Name != master1.Name {
			peers = append(peers, n.Address.Addr())
		}
	}
	slices.SortFunc(peers, netip.Addr.Compare)
	pool := []netip.Prefix{netip.MustParsePrefix(fwPoolCIDR)}
	planned := func(o dataplane.ObservedFirewall) bool {
		return o.Table && slices.Equal(o.VXLANPeers, peers) && slices.Equal(o.NATPools, pool) && slices.Equal(o.AllPools, pool) &&
			slices.Equal(o.Chains, []string{dataplane.ChainOutput, dataplane.ChainPostrouting, dataplane.ChainPrerouting})
	}
	waitFirewall(t, master1.Netns, "k8s-master1's firewall as planned", planned)
	checkForeign := foreignTables(t, master1.Netns)
	outsideHasNoPodRoute(t, l, targetAddr)

	udpOut := newUDPServer(t, outside.Netns, outsideAddr+":9999")
	tcpOut := newTCPServer(t, outside.Netns, outsideAddr+":9998")
	masqueraded := func(t *testing.T, what string) {
		t.Helper()
		seen, echoed := udpProbe(t, target.Netns, udpOut, 5*time.Second)
		if seen.Addr() != master1.Address.Addr() || !echoed {
			t.Errorf("%s: the outside host saw UDP from %v (echo back: %t); want k8s-master1's address %s and the echo",
				what, seen, echoed, master1.Address.Addr())
		}
		peer, err := tcpDial(t, target.Netns, tcpOut, 5*time.Second)
		if err != nil || peer.Addr() != master1.Address.Addr() {
			t.Errorf("%s: TCP to the outside host: %v, seen from %v; want a connection from %s", what, err, peer, master1.Address.Addr())
		}
	}

	t.Run("masquerade", func(t *testing.T) {
		masqueraded(t, "natOutgoing on")
	})

	t.Run("natOutgoing off", func(t *testing.T) {
		setNATOutgoing(t, store, false)
		defer func() {
			setNATOutgoing(t, store, true)
			waitFirewall(t, master1.Netns, "nat-pools back", planned)
			masqueraded(t, "natOutgoing on again")
		}()
		waitFirewall(t, master1.Netns, "nat-pools emptied", func(o dataplane.ObservedFirewall) bool {
			return o.Table && len(o.NATPools) == 0 && slices.Equal(o.AllPools, pool) && slices.Equal(o.VXLANPeers, peers)
		})
		seen, echoed := udpProbe(t, target.Netns, udpOut, 2*time.Second)
		if seen.Addr() != targetAddr || echoed {
			t.Errorf("without natOutgoing the outside host saw UDP from %v (echo back: %t); want the pod's own %s and no way back", seen, echoed, targetAddr)
		}
		if peer, err := tcpDial(t, target.Netns, tcpOut, 3*time.Second); err == nil {
			t.Errorf("without natOutgoing a TCP connection to the outside host succeeded (seen from %v)", peer)
		}
	})

	t.Run("pod to pod keeps pod addresses", func(t *testing.T) {
		srv := newUDPServer(t, target.Netns, netip.AddrPortFrom(targetAddr, 9997).String())
		for _, from := range []PodState{podOf(master2.Name), podOf(node1.Name)} { // direct, then VXLAN
			seen, echoed := udpProbe(t, from.Netns, srv, 5*time.Second)
			if seen.Addr().String() != from.Address || !echoed {
				t.Errorf("%s -> %s: the server saw %v (echo back: %t); want %s", from.Name, target.Name, seen, echoed, from.Address)
			}
		}
	})

	vtep, err := kernelVTEP(master1.Netns, master1.Name, l.VXLAN.Device)
	if err != nil || !vtep.Present {
		t.Fatalf("k8s-master1's VTEP: %+v, %v", vtep, err)
	}
	vtepN1, err := kernelVTEP(node1.Netns, node1.Name, l.VXLAN.Device)
	if err != nil || !vtepN1.Present {
		t.Fatalf("k8s-node1's VTEP: %+v, %v", vtepN1, err)
	}
	vxlanDst := netip.AddrPortFrom(master1.Address.Addr(), uint16(l.VXLAN.Port))
	fake := netip.MustParseAddr(fakePodAddr)
	const frames = 5
	forged := func(id uint16) [][]byte {
		var out [][]byte
		for seq := uint16(1); seq <= frames; seq++ {
			out = append(out, forgedVXLAN(uint32(l.VXLAN.VNI), vtepN1.MAC, vtep.MAC, fake, targetAddr, id, seq))
		}
		return out
	}
	dropped := func(t *testing.T) uint64 { return observeFirewall(t, master1.Netns).Dropped.Packets }

	t.Run("forged VXLAN from a non-node is dropped and counted", func(t *testing.T) {
		c, err := openCapture(target.Netns, PodIfName)
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		id := uint16(rand.N(0xffff) + 1)
		before := dropped(t)
		sendVXLAN(t, rogue.Netns, rogue.Address.Addr(), vxlanDst, forged(id))
		deadline := time.Now().Add(5 * time.Second)
		for dropped(t)-before < frames && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if got := innerArrivals(t, c, fake, id, 0, time.Now().Add(time.Second)); len(got) > 0 {
			t.Errorf("%d forged inner packets reached pod %s", len(got), target.Name)
		}
		if d := dropped(t) - before; d != frames {
			t.Errorf("vxlan-dropped rose by %d for %d forged frames from %s; want exactly %d", d, frames, rogue.Address.Addr(), frames)
		}
	})

	t.Run("the same frames from a node pass", func(t *testing.T) {
		c, err := openCapture(target.Netns, PodIfName)
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		id := uint16(rand.N(0xffff) + 1)
		before := dropped(t)
		sendVXLAN(t, master2.Netns, master2.Address.Addr(), vxlanDst, forged(id))
		if got := innerArrivals(t, c, fake, id, frames, time.Now().Add(5*time.Second)); len(got) != frames {
			t.Errorf("%d of %d inner packets sent from node %s reached pod %s", len(got), frames, master2.Name, target.Name)
		}
		if d := dropped(t) - before; d != 0 {
			t.Errorf("vxlan-dropped rose by %d for frames from node %s; want 0", d, master2.Name)
		}
	})

	t.Run("routes --live shows the firewall", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, opts.Exe, "routes", master1.Name, "--live", "--lab-state-dir", opts.StateDir, "--etcd-endpoints", st.Etcd)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("twill routes --live: %v\n%s%s", err, out.String(), errb.String())
		}
		o := observeFirewall(t, master1.Netns)
		for _, want := range []string{
			"\nFirewall (nft table inet twill):\n  table inet twill\n",
			fmt.Sprintf("\n  counter vxlan-dropped: %d packets, ", o.Dropped.Packets),
			"\nFirewall set vxlan-peers:\n  " + peers[0].String() + "\n",
			"\nFirewall set nat-pools:\n  " + fwPoolCIDR + "\n",
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("twill routes --live lacks %q:\n%s", want, out.String())
			}
		}
		if o.Dropped.Packets < frames {
			t.Errorf("vxlan-dropped is %d, want at least the %d forged frames", o.Dropped.Packets, frames)
		}
	})

	t.Run("healing", func(t *testing.T) {
		c := nftIn(t, master1.Netns)
		ours := &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.FirewallTable}
		c.DelTable(ours)
		if err := c.Flush(); err != nil {
			t.Fatalf("delete table inet twill: %v", err)
		}
		start := time.Now()
		waitFirewall(t, master1.Netns, "the deleted table back", planned)
		t.Logf("the deleted table came back after %v", time.Since(start).Round(time.Millisecond))

		set := &nftables.Set{Table: ours, Name: dataplane.SetVXLANPeers, KeyType: nftables.TypeIPAddr}
		gone := master2.Address.Addr().As4()
		if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: gone[:]}}); err != nil {
			t.Fatal(err)
		}
		if err := c.Flush(); err != nil {
			t.Fatalf("delete %s from set vxlan-peers: %v", master2.Address.Addr(), err)
		}
		start = time.Now()
		waitFirewall(t, master1.Netns, "the deleted peer back", planned)
		t.Logf("the deleted peer came back after %v", time.Since(start).Round(time.Millisecond))
	})

	checkForeign()
	if _, added := diff(before, rootState(t)); len(added) > 0 {
		t.Errorf("the root namespace gained %v", added)
	}
	if err := Down(ctx, opts); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if left := ourNetns(t, opts.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Down: %v", left)
	}
}
