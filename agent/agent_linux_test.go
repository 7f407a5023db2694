package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/internal/syncbuf"
	"twill.dev/twill/ipam"
	"twill.dev/twill/plan"
)

// Bounds of every wait on the kernel.
const (
	waitFor   = 10 * time.Second
	pollEvery = 10 * time.Millisecond
)

// liveAgent is an agent running in-process against a node namespace.
type liveAgent struct {
	node   *nettest.Node
	cancel context.CancelFunc
	done   chan error
	client *agentapi.Client
}

// cluster is the lab, its datastore and its agents.
type cluster struct {
	t      *testing.T
	store  datastore.Store
	ipam   *ipam.IPAM
	lab    *nettest.Lab
	agents map[string]*liveAgent
	logs   *syncbuf.Buffer
	sock   string
}

func newCluster(t *testing.T) *cluster {
	nettest.RequireRoot(t)
	c := &cluster{t: t, store: etcdtest.NewStore(t), agents: map[string]*liveAgent{}, logs: &syncbuf.Buffer{}, sock: t.TempDir()}
	c.ipam = ipam.New(c.store)
	pool := api.IPPool{Metadata: api.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: api.IPPoolSpec{CIDR: "172.16.0.0/16", BlockSize: 26, VXLANMode: api.EncapCrossSubnet, IPIPMode: api.EncapNever, NATOutgoing: true}}
	pool.Default()
	put(t, c.store, datastore.KindIPPool, pool.Metadata.Name, pool)
	c.lab = nettest.NewLab(t,
		nettest.Subnet{Name: "a", Router: netip.MustParsePrefix("192.168.3.130/24")},
		nettest.Subnet{Name: "b", Router: netip.MustParsePrefix("192.168.32.130/24")})
	// Registered after the lab's: agents stop before their namespaces go.
	t.Cleanup(func() {
		for _, a := range c.agents {
			c.stop(a.node.Name)
		}
		if t.Failed() {
			t.Logf("agent logs:\n%s", c.logs)
		}
	})
	return c
}

// start runs the agent of node and waits until it is ready.
func (c *cluster) start(name string) *liveAgent {
	c.t.Helper()
	n := c.lab.Nodes[name]
	sock := filepath.Join(c.sock, name+".sock")
	log := slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg := Config{NodeName: name, NetnsPath: n.NS.Path, SocketPath: sock, Logger: log, Getenv: func(string) string { return "" }}
	ctx, cancel := context.WithCancel(context.Background())
	a := &liveAgent{node: n, cancel: cancel, done: make(chan error, 1), client: agentapi.NewClient(sock, 2*time.Second)}
	go func() { a.done <- Run(ctx, c.store, cfg) }()
	c.agents[name] = a
	nettest.Eventually(c.t, waitFor, pollEvery, "agent "+name+" ready", func() (bool, string) {
		st, err := a.client.Status(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return st.Ready, st.Reason
	})
	return a
}

// stop stops the agent of node; the kernel keeps what it programmed.
func (c *cluster) stop(name string) {
	a, ok := c.agents[name]
	if !ok {
		return
	}
	delete(c.agents, name)
	a.cancel()
	select {
	case err := <-a.done:
		if err != nil {
			c.t.Errorf("agent %s: %v", name, err)
		}
	case <-time.After(waitFor):
		c.t.Errorf("agent %s did not stop within %s", name, waitFor)
	}
}

// registered returns the node as stored and the CIDR of its block.
func (c *cluster) registered(name string) (api.Node, netip.Prefix) {
	c.t.Helper()
	n := getNode(c.t, c.store, name).Value
	blocks := nodeBlocks(c.t, c.store, name)
	if len(blocks) != 1 {
		c.t.Fatalf("node %s holds %d blocks, want 1", name, len(blocks))
	}
	return n, netip.MustParsePrefix(blocks[0].CIDR)
}

// checkRoute reports whether ns routes dst via gw on dev, onlink, with
// Twill's protocol.
func checkRoute(ns *nettest.NS, dst netip.Prefix, gw netip.Addr, dev string) (bool, string) {
	r, err := ns.Route(dst)
	if err != nil {
		return false, err.Error()
	}
	if r == nil {
		return false, fmt.Sprintf("%s: no route to %s", ns.Name, dst)
	}
	got := fmt.Sprintf("%s: %s via %v dev %s proto %d flags %d", ns.Name, dst, r.Gw, ns.LinkName(r.LinkIndex), r.Protocol, r.Flags)
	if r.Gw.String() != gw.String() || ns.LinkName(r.LinkIndex) != dev || int(r.Protocol) != plan.RouteProtocol || r.Flags&unix.RTNH_F_ONLINK == 0 {
		return false, got + fmt.Sprintf(", want via %s dev %s proto %d onlink", gw, dev, plan.RouteProtocol)
	}
	return true, got
}

// expectPaths waits until every running node routes every other
// registered node's block the CrossSubnet way, with the VXLAN neighbour and
// FDB entries for peers in other subnets.
func (c *cluster) expectPaths(what string, peers ...string) {
	c.t.Helper()
	nettest.Eventually(c.t, waitFor, pollEvery, what, func() (bool, string) {
		for _, from := range peers {
			ns := c.lab.Nodes[from].NS
			local, localBlock := c.registered(from)
			lp := netip.MustParsePrefix(local.Spec.Address)
			if r, err := ns.Route(localBlock); err != nil || r == nil || r.Type != unix.RTN_BLACKHOLE {
				return false, fmt.Sprintf("%s: no blackhole for its own block %s", from, localBlock)
			}
			for _, to := range peers {
				if to == from {
					continue
				}
				peer, block := c.registered(to)
				pp := netip.MustParsePrefix(peer.Spec.Address)
				if lp.Contains(pp.Addr()) {
					if ok, d := checkRoute(ns, block, pp.Addr(), "eth0"); !ok {
						return false, d
					}
					continue
				}
				tunnel := netip.MustParseAddr(peer.Spec.TunnelAddress)
				if ok, d := checkRoute(ns, block, tunnel, "vxlan.calico"); !ok {
					return false, d
				}
				if ok, d := hasNeigh(ns, tunnel, peer.Spec.VTEPMAC); !ok {
					return false, d
				}
				if ok, d := hasFDB(ns, peer.Spec.VTEPMAC, pp.Addr()); !ok {
					return false, d
				}
			}
		}
		return true, ""
	})
}

func vxlanIndex(ns *nettest.NS) (int, error) {
	l, err := ns.Link("vxlan.calico")
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}

func hasNeigh(ns *nettest.NS, ip netip.Addr, mac string) (bool, string) {
	idx, err := vxlanIndex(ns)
	if err != nil {
		return false, err.Error()
	}
	ns2, err := ns.H.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		return false, err.Error()
	}
	for _, n := range ns2 {
		if n.IP.String() == ip.String() && n.HardwareAddr.String() == mac && n.State&netlink.NUD_PERMANENT != 0 {
			return true, ""
		}
	}
	return false, fmt.Sprintf("%s: no permanent neighbour %s lladdr %s on vxlan.calico", ns.Name, ip, mac)
}

func hasFDB(ns *nettest.NS, mac string, dst netip.Addr) (bool, string) {
	idx, err := vxlanIndex(ns)
	if err != nil {
		return false, err.Error()
	}
	fdb, err := ns.H.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return false, err.Error()
	}
	var have []string
	for _, n := range fdb {
		if n.HardwareAddr.String() == mac && n.IP.String() == dst.String() {
			return true, ""
		}
		have = append(have, fmt.Sprintf("%s dst %s state %#x flags %#x", n.HardwareAddr, n.IP, n.State, n.Flags))
	}
	return false, fmt.Sprintf("%s: no FDB entry %s dst %s on vxlan.calico; have %v", ns.Name, mac, dst, have)
}

// expectNoRoute waits until ns has no route to dst.
func expectNoRoute(t *testing.T, ns *nettest.NS, dst netip.Prefix, what string) {
	t.Helper()
	nettest.Eventually(t, waitFor, pollEvery, what, func() (bool, string) {
		r, err := ns.Route(dst)
		if err != nil {
			return false, err.Error()
		}
		if r != nil {
			return false, fmt.Sprintf("%s still routes %s via %v", ns.Name, dst, r.Gw)
		}
		return true, ""
	})
}

func TestAgentsInNamespaces(t *testing.T) {
	c := newCluster(t)
	c.lab.AddNode(t, "k8s-master1", "a", "192.168.3.241/24")
	c.lab.AddNode(t, "k8s-master2", "a", "192.168.3.242/24")
	c.lab.AddNode(t, "k8s-node1", "b", "192.168.32.105/24")
	m1 := c.lab.Nodes["k8s-master1"].NS

	// Joining: every peer gets a route, direct within a subnet, VXLAN across.
	c.start("k8s-master1")
	c.start("k8s-master2")
	c.expectPaths("two nodes in one subnet route each other directly", "k8s-master1", "k8s-master2")
	c.start("k8s-node1")
	c.expectPaths("a node in the other subnet is reached over VXLAN", "k8s-master1", "k8s-master2", "k8s-node1")
	all := []string{"k8s-master1", "k8s-master2", "k8s-node1"}

	n1, n1Block := c.registered("k8s-node1")
	n1Tunnel := netip.MustParseAddr(n1.Spec.TunnelAddress)
	n1Addr := netip.MustParsePrefix(n1.Spec.Address).Addr()

	// Healing: each owned object deleted by hand comes back.
	t.Run("heal route", func(t *testing.T) {
		r, err := m1.Route(n1Block)
		if err != nil || r == nil {
			t.Fatalf("no route to %s: %v", n1Block, err)
		}
		if err := m1.H.RouteDel(r); err != nil {
			t.Fatal(err)
		}
		c.expectPaths("the deleted route comes back", all...)
	})
	t.Run("heal neighbour", func(t *testing.T) {
		idx, err := vxlanIndex(m1)
		if err != nil {
			t.Fatal(err)
		}
		if err := m1.H.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, IP: net.IP(n1Tunnel.AsSlice())}); err != nil {
			t.Fatal(err)
		}
		c.expectPaths("the deleted neighbour comes back", all...)
	})
	t.Run("heal fdb", func(t *testing.T) {
		idx, err := vxlanIndex(m1)
		if err != nil {
			t.Fatal(err)
		}
		mac, _ := net.ParseMAC(n1.Spec.VTEPMAC)
		if err := m1.H.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT, IP: net.IP(n1Addr.AsSlice()), HardwareAddr: mac}); err != nil {
			t.Fatal(err)
		}
		c.expectPaths("the deleted FDB entry comes back", all...)
	})
	t.Run("heal device", func(t *testing.T) {
		l, err := m1.Link("vxlan.calico")
		if err != nil {
			t.Fatal(err)
		}
		if err := m1.H.LinkDel(l); err != nil {
			t.Fatal(err)
		}
		c.expectPaths("the deleted VXLAN device comes back with its routes, neighbours and FDB", all...)
	})

	// Foreign objects on eth0 are never touched.
	t.Run("foreign objects stay", func(t *testing.T) {
		eth0, err := m1.Link("eth0")
		if err != nil {
			t.Fatal(err)
		}
		_, foreignDst, _ := net.ParseCIDR("10.99.0.0/24")
		foreign := &netlink.Route{Dst: foreignDst, Gw: net.ParseIP("192.168.3.130"), LinkIndex: eth0.Attrs().Index}
		if err := m1.H.RouteAdd(foreign); err != nil {
			t.Fatal(err)
		}
		mac, _ := net.ParseMAC("02:00:00:00:00:77")
		neigh := &netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP("192.168.3.77"), HardwareAddr: mac}
		if err := m1.H.NeighAdd(neigh); err != nil {
			t.Fatal(err)
		}
		// Force a full reconcile (which prunes) through a kernel event.
		r, err := m1.Route(n1Block)
		if err != nil || r == nil {
			t.Fatalf("no route to %s: %v", n1Block, err)
		}
		if err := m1.H.RouteDel(r); err != nil {
			t.Fatal(err)
		}
		c.expectPaths("the deleted route comes back", all...)
		if r, err := m1.Route(netip.MustParsePrefix("10.99.0.0/24")); err != nil || r == nil {
			t.Errorf("the foreign route 10.99.0.0/24 was removed (%v)", err)
		}
		ns, err := m1.H.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, n := range ns {
			found = found || (n.IP.Equal(neigh.IP) && n.State&netlink.NUD_PERMANENT != 0)
		}
		if !found {
			t.Errorf("the foreign neighbour 192.168.3.77 on eth0 was removed")
		}
	})

	// A pod recorded through the socket gets its /32 once its veth is up,
	// and loses it when the endpoint is deleted.
	t.Run("pod route follows its veth", func(t *testing.T) {
		ctx := context.Background()
		client := c.agents["k8s-master1"].client
		res, err := client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "feed01", IfName: "eth0", Namespace: "default", Pod: "web-0"})
		if err != nil {
			t.Fatal(err)
		}
		podIP := netip.MustParsePrefix(res.Addresses[0])
		const hostIface = "calitw0000001"
		if _, err := client.PutEndpoint(ctx, "feed01.eth0", agentapi.Endpoint{ContainerID: "feed01", IfName: "eth0",
			HostIface: hostIface, Addresses: res.Addresses}); err != nil {
			t.Fatal(err)
		}
		if r, _ := m1.Route(podIP); r != nil {
			t.Fatalf("a route to %s exists before its veth does", podIP)
		}
		// The veth appears (the CNI plugin's work): the route follows.
		if err := m1.Veth(hostIface, m1, "twpod0"); err != nil {
			t.Fatal(err)
		}
		nettest.Eventually(t, waitFor, pollEvery, "the pod route appears with its veth", func() (bool, string) {
			r, err := m1.Route(podIP)
			if err != nil || r == nil {
				return false, fmt.Sprintf("no route to %s (%v)", podIP, err)
			}
			ok := m1.LinkName(r.LinkIndex) == hostIface && r.Scope == netlink.SCOPE_LINK && int(r.Protocol) == plan.RouteProtocol
			return ok, fmt.Sprintf("%s dev %s scope %d proto %d", podIP, m1.LinkName(r.LinkIndex), r.Scope, r.Protocol)
		})
		if _, err := client.DeleteEndpoint(ctx, "feed01.eth0"); err != nil {
			t.Fatal(err)
		}
		expectNoRoute(t, m1, podIP, "the pod route goes with its endpoint")
		l, err := m1.Link(hostIface)
		if err != nil {
			t.Fatal(err)
		}
		if err := m1.H.LinkDel(l); err != nil {
			t.Fatal(err)
		}
	})

	// A restart changes nothing in the kernel.
	t.Run("restart changes nothing", func(t *testing.T) {
		before, err := m1.Dump()
		if err != nil {
			t.Fatal(err)
		}
		c.stop("k8s-master1")
		c.start("k8s-master1")
		after, err := m1.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if before != after {
			t.Errorf("kernel state changed across a restart:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if !strings.Contains(after, "vxlan.calico") {
			t.Errorf("dump lacks the VXLAN device:\n%s", after)
		}
	})

	// An address that moves to the other subnet switches the peers' paths.
	t.Run("node moves subnet", func(t *testing.T) {
		c.stop("k8s-master2")
		c.lab.MoveNode(t, c.lab.Nodes["k8s-master2"], "b", "192.168.32.106/24")
		c.start("k8s-master2")
		nettest.Eventually(t, waitFor, pollEvery, "k8s-master2 re-registered", func() (bool, string) {
			n, _ := c.registered("k8s-master2")
			return n.Spec.Address == "192.168.32.106/24", n.Spec.Address
		})
		c.expectPaths("paths follow the move: master1↔master2 over VXLAN, master2↔node1 direct", all...)
	})

	// A node that leaves takes its routes with it, also from an agent that
	// was down while it left.
	t.Run("node leaves", func(t *testing.T) {
		c.stop("k8s-master1")
		c.stop("k8s-node1")
		ctx := context.Background()
		remove(t, c.store, datastore.KindNode, "k8s-node1")
		if _, err := c.ipam.ReleaseHandle(ctx, TunnelHandlePrefix+"k8s-node1"); err != nil {
			t.Fatal(err)
		}
		if err := c.ipam.ReleaseNodeAffinities(ctx, "k8s-node1"); err != nil {
			t.Fatal(err)
		}
		m2 := c.lab.Nodes["k8s-master2"].NS
		expectNoRoute(t, m2, n1Block, "a running peer drops the departed node's route")
		if ok, _ := hasFDB(m2, n1.Spec.VTEPMAC, n1Addr); ok {
			nettest.Eventually(t, waitFor, pollEvery, "FDB entry of the departed node goes", func() (bool, string) {
				ok, _ := hasFDB(m2, n1.Spec.VTEPMAC, n1Addr)
				return !ok, "still there"
			})
		}
		if r, _ := m1.Route(n1Block); r == nil {
			t.Fatalf("the stopped agent's namespace lost the route early; the test cannot show pruning at start")
		}
		c.start("k8s-master1")
		expectNoRoute(t, m1, n1Block, "a restarted agent prunes the route of a node deleted while it was down")
		if ok, _ := hasNeigh(m1, n1Tunnel, n1.Spec.VTEPMAC); ok {
			t.Errorf("the departed node's neighbour entry survived the restart")
		}
		c.expectPaths("the remaining nodes still reach each other", "k8s-master1", "k8s-master2")
	})
}

func TestDetectAddressInNamespace(t *testing.T) {
	nettest.RequireRoot(t)
	lab := nettest.NewLab(t,
		nettest.Subnet{Name: "a", Router: netip.MustParsePrefix("192.168.3.130/24")},
		nettest.Subnet{Name: "b", Router: netip.MustParsePrefix("192.168.32.130/24")})
	n := lab.AddNode(t, "n", "a", "192.168.3.241/24")
	// Clutter that first-found must skip, created before eth0 would be
	// found: a veth pair inside the node and a bridge.
	if err := n.NS.Veth("veth-tw0", n.NS, "twpeer0"); err != nil {
		t.Fatal(err)
	}
	if err := n.NS.AddrAdd("veth-tw0", "10.30.0.1/24"); err != nil {
		t.Fatal(err)
	}
	if err := n.NS.AddrAdd("twpeer0", "10.40.0.1/16"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		ip, method string
		want       string
		iface      string
	}{
		{"", "first-found", "192.168.3.241/24", "eth0"},
		{"", "interface=twpeer.*", "10.40.0.1/16", "twpeer0"},
		{"", "skip-interface=eth0", "10.40.0.1/16", "twpeer0"},
		{"", "cidr=10.30.0.0/16", "10.30.0.1/24", "veth-tw0"},
		{"", "can-reach=192.168.32.105", "192.168.3.241/24", "eth0"},
		{"", "can-reach=10.40.9.9", "10.40.0.1/16", "twpeer0"},
		{"192.168.3.241", "", "192.168.3.241/24", "eth0"},
	}
	for _, tc := range cases {
		got, err := DetectAddress(n.NS.Path, tc.ip, tc.method)
		if err != nil {
			t.Errorf("ip=%q method=%q: %v", tc.ip, tc.method, err)
			continue
		}
		if got.Prefix.String() != tc.want || got.Interface != tc.iface || got.MTU != 1500 {
			t.Errorf("ip=%q method=%q: got %+v, want %s on %s with MTU 1500", tc.ip, tc.method, got, tc.want, tc.iface)
		}
	}
	if _, err := DetectAddress(n.NS.Path, "192.168.3.99", ""); err == nil {
		t.Errorf("an --ip no interface holds was accepted")
	}
	if _, err := DetectAddress(filepath.Join(nettest.NetnsDir, "twnope-"+nettest.RandomSuffix(6)), "", ""); err == nil {
		t.Errorf("a missing namespace was accepted")
	}
}
