package plan_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/internal/seedtest"
	"twill.dev/twill/plan"
)

func mkNode(name, addr, tunnel, mac string) api.Node {
	return api.Node{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: name},
		Spec:     api.NodeSpec{Address: addr, Interface: "eth0", MTU: 1500, TunnelAddress: tunnel, VTEPMAC: mac},
	}
}

func mkPool(name, cidr string, mode api.EncapMode) api.IPPool {
	return api.IPPool{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
		Metadata: api.ObjectMeta{Name: name},
		Spec:     api.IPPoolSpec{CIDR: cidr, BlockSize: 26, VXLANMode: mode, NATOutgoing: true},
	}
}

func mkBlock(cidr, affinity string, allocs ...api.Allocation) api.Block {
	return api.Block{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock}, CIDR: cidr, Affinity: affinity, Allocations: allocs}
}

func alloc(ordinal int, node string) api.Allocation {
	return api.Allocation{Ordinal: ordinal, Handle: fmt.Sprintf("h-%s-%d", node, ordinal), Use: api.UseWorkload, Attrs: map[string]string{api.AttrNode: node}}
}

func mkWorkload(name, node, iface string, addrs ...string) api.WorkloadEndpoint {
	return api.WorkloadEndpoint{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
		Metadata: api.ObjectMeta{Name: name},
		Spec:     api.WorkloadEndpointSpec{Node: node, Pod: name, HostIface: iface, Addresses: addrs},
	}
}

// threeNodes is a small cluster: a and b share 10.0.1.0/24, c is in
// 10.0.2.0/24; one CrossSubnet pool with a block per node.
func threeNodes(mode api.EncapMode) plan.Input {
	return plan.Input{
		LocalNode: "a",
		Nodes: []api.Node{
			mkNode("a", "10.0.1.10/24", "172.16.0.0", "66:00:00:00:00:0a"),
			mkNode("b", "10.0.1.11/24", "172.16.0.64", "66:00:00:00:00:0b"),
			mkNode("c", "10.0.2.12/24", "172.16.0.128", "66:00:00:00:00:0c"),
		},
		Pools: []api.IPPool{mkPool("p", "172.16.0.0/16", mode)},
		Blocks: []api.Block{
			mkBlock("172.16.0.0/26", "a", alloc(0, "a")),
			mkBlock("172.16.0.64/26", "b", alloc(0, "b")),
			mkBlock("172.16.0.128/26", "c", alloc(0, "c")),
		},
	}
}

// routeStrings renders routes in `ip route` form.
func routeStrings(rs []plan.Route) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	return out
}

func wantRoutes(t *testing.T, dp plan.Dataplane, want ...string) {
	t.Helper()
	if got := routeStrings(dp.Routes); !slices.Equal(got, want) {
		t.Errorf("routes:\n  %s\nwant:\n  %s\nstatus: %q", strings.Join(got, "\n  "), strings.Join(want, "\n  "), dp.Status)
	}
}

func wantStatus(t *testing.T, dp plan.Dataplane, sub string) {
	t.Helper()
	if !hasStatus(dp, sub) {
		t.Errorf("status %q lacks %q", dp.Status, sub)
	}
}

func TestModes(t *testing.T) {
	t.Run("CrossSubnet", func(t *testing.T) {
		dp := plan.Plan(threeNodes(api.EncapCrossSubnet))
		wantRoutes(t, dp,
			"blackhole 172.16.0.0/26 proto 80",
			"172.16.0.64/26 via 10.0.1.11 dev eth0 proto 80 onlink",
			"172.16.0.128/26 via 172.16.0.128 dev vxlan.calico proto 80 onlink",
		)
		if len(dp.Status) != 0 {
			t.Errorf("status = %q", dp.Status)
		}
	})
	t.Run("Always", func(t *testing.T) {
		dp := plan.Plan(threeNodes(api.EncapAlways))
		wantRoutes(t, dp,
			"blackhole 172.16.0.0/26 proto 80",
			"172.16.0.64/26 via 172.16.0.64 dev vxlan.calico proto 80 onlink",
			"172.16.0.128/26 via 172.16.0.128 dev vxlan.calico proto 80 onlink",
		)
		if dp.Device == nil || len(dp.Neighbors) != 2 || len(dp.FDB) != 2 {
			t.Errorf("device %+v neighbours %v fdb %v", dp.Device, dp.Neighbors, dp.FDB)
		}
	})
	t.Run("Never", func(t *testing.T) {
		dp := plan.Plan(threeNodes(api.EncapNever))
		wantRoutes(t, dp,
			"blackhole 172.16.0.0/26 proto 80",
			"172.16.0.64/26 via 10.0.1.11 dev eth0 proto 80 onlink",
		)
		wantStatus(t, dp, "no route to 172.16.0.128/26 on c: pool p has vxlanMode Never and c (10.0.2.12) is outside 10.0.1.0/24")
		if dp.Device != nil || dp.Neighbors != nil || dp.FDB != nil {
			t.Errorf("Never pool: device %+v neighbours %v fdb %v, want none", dp.Device, dp.Neighbors, dp.FDB)
		}
	})
	t.Run("empty mode is Never", func(t *testing.T) {
		in := threeNodes("")
		dp := plan.Plan(in)
		wantStatus(t, dp, "pool p has vxlanMode Never")
	})
	t.Run("seed Never", func(t *testing.T) {
		s := seedtest.Load(t)
		in := seedInput(t, s, "k8s-master1")
		in.Pools[0].Spec.VXLANMode = api.EncapNever
		dp := plan.Plan(in)
		wantStatus(t, dp, "no route to 172.16.36.64/26 on k8s-node1: pool default-ipv4-ippool has vxlanMode Never and k8s-node1 (192.168.32.105) is outside 192.168.3.0/24")
		for _, r := range dp.Routes {
			if r.Peer == "k8s-node1" || r.Device == "vxlan.calico" {
				t.Errorf("unexpected route %s", r)
			}
		}
	})
	t.Run("disabled pool still routes", func(t *testing.T) {
		in := threeNodes(api.EncapCrossSubnet)
		in.Pools[0].Spec.Disabled = true
		dp := plan.Plan(in)
		if len(dp.Routes) != 3 || dp.Device == nil {
			t.Errorf("routes %v device %v", dp.Routes, dp.Device)
		}
		if len(dp.Firewall.AllPools) != 1 || len(dp.Firewall.NATPools) != 0 {
			t.Errorf("firewall %+v: want the disabled pool in AllPools only", dp.Firewall)
		}
	})
	t.Run("per-pool modes", func(t *testing.T) {
		in := threeNodes(api.EncapCrossSubnet)
		in.Pools = append(in.Pools, mkPool("q", "172.17.0.0/16", api.EncapAlways))
		in.Blocks = append(in.Blocks, mkBlock("172.17.0.0/26", "b"))
		dp := plan.Plan(in)
		wantRoutes(t, dp,
			"blackhole 172.16.0.0/26 proto 80",
			"172.16.0.64/26 via 10.0.1.11 dev eth0 proto 80 onlink",
			"172.16.0.128/26 via 172.16.0.128 dev vxlan.calico proto 80 onlink",
			"172.17.0.0/26 via 172.16.0.64 dev vxlan.calico proto 80 onlink",
		)
	})
}

// TestAsymmetricPrefix: only the local prefix decides, so a /16 node sees a
// /24 peer as same-subnet while the peer does not return the favour.
func TestAsymmetricPrefix(t *testing.T) {
	in := plan.Input{
		Nodes: []api.Node{
			mkNode("wide", "10.0.1.10/16", "172.16.0.0", "66:00:00:00:00:01"),
			mkNode("narrow", "10.0.2.20/24", "172.16.0.64", "66:00:00:00:00:02"),
		},
		Pools:  []api.IPPool{mkPool("p", "172.16.0.0/16", api.EncapCrossSubnet)},
		Blocks: []api.Block{mkBlock("172.16.0.0/26", "wide"), mkBlock("172.16.0.64/26", "narrow")},
	}
	in.LocalNode = "wide"
	wantRoutes(t, plan.Plan(in),
		"blackhole 172.16.0.0/26 proto 80",
		"172.16.0.64/26 via 10.0.2.20 dev eth0 proto 80 onlink",
	)
	in.LocalNode = "narrow"
	wantRoutes(t, plan.Plan(in),
		"172.16.0.0/26 via 172.16.0.0 dev vxlan.calico proto 80 onlink",
		"blackhole 172.16.0.64/26 proto 80",
	)
}

func TestBorrowed(t *testing.T) {
	in := threeNodes(api.EncapCrossSubnet)
	// a's block lends .5 to b (same subnet) and .6 to c (other subnet).
	in.Blocks[0].Allocations = append(in.Blocks[0].Allocations, alloc(5, "b"), alloc(6, "c"))
	// b's block lends .70 to a, which has a pod on it.
	in.Blocks[1].Allocations = append(in.Blocks[1].Allocations, alloc(6, "a"))
	in.Workloads = []api.WorkloadEndpoint{mkWorkload("pod1", "a", "cali0000000001", "172.16.0.70/32")}
	// An unclaimed block: its borrowed addresses are routed, the block is not;
	// c's tunnel address comes from it.
	tun := api.Allocation{Ordinal: 1, Handle: "tunnel-c", Use: api.UseTunnel, Attrs: map[string]string{api.AttrNode: "c"}}
	in.Blocks = append(in.Blocks, mkBlock("172.16.1.0/26", "", tun, alloc(2, "b")))
	dp := plan.Plan(in)
	wantRoutes(t, dp,
		"blackhole 172.16.0.0/26 proto 80",
		"172.16.0.5 via 10.0.1.11 dev eth0 proto 80 onlink",
		"172.16.0.6 via 172.16.0.128 dev vxlan.calico proto 80 onlink",
		"172.16.0.64/26 via 10.0.1.11 dev eth0 proto 80 onlink",
		"172.16.0.70 dev cali0000000001 proto 80 scope link",
		"172.16.0.128/26 via 172.16.0.128 dev vxlan.calico proto 80 onlink",
		"172.16.1.1 via 172.16.0.128 dev vxlan.calico proto 80 onlink",
		"172.16.1.2 via 10.0.1.11 dev eth0 proto 80 onlink",
	)
	kinds := map[string]plan.RouteKind{}
	for _, r := range dp.Routes {
		kinds[r.Dst.String()] = r.Kind
	}
	if kinds["172.16.0.5/32"] != plan.KindBorrowDirect || kinds["172.16.0.6/32"] != plan.KindBorrowVXLAN || kinds["172.16.0.70/32"] != plan.KindWorkload {
		t.Errorf("kinds = %v", kinds)
	}
	// Borrowed under Never from another subnet: no route, and a note.
	in.Pools[0].Spec.VXLANMode = api.EncapNever
	dp = plan.Plan(in)
	wantStatus(t, dp, "no route to 172.16.0.6/32 on c: pool p has vxlanMode Never")
}

// TestAddressChange: moving a peer's address moves it between direct and
// VXLAN, and back.
func TestAddressChange(t *testing.T) {
	in := threeNodes(api.EncapCrossSubnet)
	via := func(dp plan.Dataplane, peer string) string {
		for _, r := range dp.Routes {
			if r.Peer == peer {
				return r.String()
			}
		}
		return ""
	}
	if got := via(plan.Plan(in), "b"); got != "172.16.0.64/26 via 10.0.1.11 dev eth0 proto 80 onlink" {
		t.Errorf("before: %q", got)
	}
	in.Nodes[1].Spec.Address = "10.0.9.11/24"
	if got := via(plan.Plan(in), "b"); got != "172.16.0.64/26 via 172.16.0.64 dev vxlan.calico proto 80 onlink" {
		t.Errorf("moved away: %q", got)
	}
	in.Nodes[2].Spec.Address = "10.0.1.12/24"
	if got := via(plan.Plan(in), "c"); got != "172.16.0.128/26 via 10.0.1.12 dev eth0 proto 80 onlink" {
		t.Errorf("moved in: %q", got)
	}
	// The local node moving changes everyone's verdict.
	in.Nodes[0].Spec.Address = "10.0.9.10/24"
	dp := plan.Plan(in)
	if via(dp, "b") != "172.16.0.64/26 via 10.0.9.11 dev eth0 proto 80 onlink" || via(dp, "c") != "172.16.0.128/26 via 172.16.0.128 dev vxlan.calico proto 80 onlink" {
		t.Errorf("local moved: %v", routeStrings(dp.Routes))
	}
	if dp.Device.LocalIP != netip.MustParseAddr("10.0.9.10") {
		t.Errorf("device local IP %s", dp.Device.LocalIP)
	}
	if !slices.Equal(dp.Firewall.VXLANPeers, []netip.Addr{netip.MustParseAddr("10.0.1.12"), netip.MustParseAddr("10.0.9.11")}) {
		t.Errorf("vxlan peers %v", dp.Firewall.VXLANPeers)
	}
}

func TestSlash32Warning(t *testing.T) {
	for _, addr := range []string{"10.0.1.10/32", "10.0.1.10"} {
		in := threeNodes(api.EncapCrossSubnet)
		in.Nodes[0].Spec.Address = addr
		dp := plan.Plan(in)
		if len(dp.Status) == 0 || dp.Status[0] != "node a address 10.0.1.10/32 has no subnet: every peer will be encapsulated; set the prefix length" {
			t.Errorf("%s: status = %q", addr, dp.Status)
		}
		for _, r := range dp.Routes {
			if r.Peer != "" && r.Kind != plan.KindVXLAN {
				t.Errorf("%s: %s not encapsulated", addr, r)
			}
		}
	}
}

func TestMissingVTEP(t *testing.T) {
	t.Run("peer without MAC", func(t *testing.T) {
		in := threeNodes(api.EncapAlways)
		in.Nodes[2].Spec.VTEPMAC = ""
		dp := plan.Plan(in)
		wantStatus(t, dp, "no route to 172.16.0.128/26 on c: no VTEP known for peer c (it has no vtepMAC)")
		if len(dp.Routes) != 2 || len(dp.Neighbors) != 1 || dp.Neighbors[0].MAC != "66:00:00:00:00:0b" || len(dp.FDB) != 1 {
			t.Errorf("routes %v neighbours %v fdb %v", dp.Routes, dp.Neighbors, dp.FDB)
		}
	})
	t.Run("peer without tunnel address", func(t *testing.T) {
		in := threeNodes(api.EncapCrossSubnet)
		in.Nodes[2].Spec.TunnelAddress = ""
		dp := plan.Plan(in)
		wantStatus(t, dp, "no VTEP known for peer c (it has no tunnelAddress)")
		// The same-subnet peer needs no VTEP.
		wantRoutes(t, dp, "blackhole 172.16.0.0/26 proto 80", "172.16.0.64/26 via 10.0.1.11 dev eth0 proto 80 onlink")
	})
	t.Run("local without tunnel address", func(t *testing.T) {
		in := threeNodes(api.EncapCrossSubnet)
		in.Nodes[0].Spec.TunnelAddress = ""
		dp := plan.Plan(in)
		if dp.Device != nil || dp.Neighbors != nil {
			t.Errorf("device %+v neighbours %v, want none", dp.Device, dp.Neighbors)
		}
		wantStatus(t, dp, "no route to 172.16.0.128/26 on c: pool p needs VXLAN to reach c but local node a has no tunnelAddress")
		wantStatus(t, dp, "local node a has no tunnelAddress: 1 route(s) that need VXLAN are missing")
		wantRoutes(t, dp, "blackhole 172.16.0.0/26 proto 80", "172.16.0.64/26 via 10.0.1.11 dev eth0 proto 80 onlink")
	})
}

func TestDevice(t *testing.T) {
	in := threeNodes(api.EncapCrossSubnet)
	in.Nodes[0].Spec.Interface = ""
	in.Nodes[0].Spec.MTU = 9000
	in.Nodes[0].Spec.VTEPMAC = "66:00:00:00:00:AA"
	dp := plan.Plan(in)
	want := plan.Device{
		Name: "vxlan.calico", VNI: 4096, Port: 4789, MTU: 8950, Parent: "eth0",
		LocalIP: netip.MustParseAddr("10.0.1.10"), MAC: "66:00:00:00:00:aa", Address: netip.MustParsePrefix("172.16.0.0/32"),
	}
	if dp.Device == nil || *dp.Device != want {
		t.Errorf("device = %+v, want %+v", dp.Device, want)
	}
	in.Nodes[0].Spec.Interface = "ens5"
	in.Nodes[0].Spec.MTU = 0
	in.VXLAN = plan.VXLANConfig{Device: "vx0", VNI: 7, Port: 8472}
	dp = plan.Plan(in)
	if d := dp.Device; d.Name != "vx0" || d.VNI != 7 || d.Port != 8472 || d.MTU != 1450 || d.Parent != "ens5" || dp.Firewall.VXLANPort != 8472 {
		t.Errorf("device = %+v, firewall port %d", *d, dp.Firewall.VXLANPort)
	}
	if r := dp.Routes[1]; r.Device != "ens5" {
		t.Errorf("direct route %s not on the host interface", r)
	}
	in.VXLAN.MTU = 1400
	if dp = plan.Plan(in); dp.Device.MTU != 1400 {
		t.Errorf("MTU override: %d", dp.Device.MTU)
	}
	in.VXLAN = plan.VXLANConfig{VNI: 1 << 24, Port: 70000}
	in.Nodes[0].Spec.MTU = 100
	dp = plan.Plan(in)
	if d := dp.Device; d.VNI != plan.DefaultVNI || d.Port != plan.DefaultVXLANPort || d.MTU != 50 {
		t.Errorf("out-of-range settings: device %+v", *d)
	}
	for _, w := range []string{"VXLAN port 70000", "VXLAN VNI 16777216", "VXLAN device MTU 50 is below"} {
		wantStatus(t, dp, w)
	}
}

func TestMalformed(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(in *plan.Input)
		note   string
		routes int // routes still planned
	}{
		{"bad peer address", func(in *plan.Input) { in.Nodes[1].Spec.Address = "10.0.1.999/24" }, "node b skipped", 2},
		{"empty peer address", func(in *plan.Input) { in.Nodes[1].Spec.Address = "" }, "node b skipped", 2},
		{"IPv6 peer", func(in *plan.Input) { in.Nodes[1].Spec.Address = "fd00::1/64" }, "node b skipped: its address fd00::1/64 is IPv6", 2},
		{"peer same address as local", func(in *plan.Input) { in.Nodes[1].Spec.Address = "10.0.1.10/24" }, "node b skipped: it has the same address", 2},
		{"duplicate peer", func(in *plan.Input) { in.Nodes = append(in.Nodes, in.Nodes[1]) }, "node b skipped: it is registered 2 times", 2},
		{"nameless node", func(in *plan.Input) { in.Nodes = append(in.Nodes, mkNode("", "10.0.1.50/24", "", "")) }, "has no name", 3},
		{"bad peer tunnel", func(in *plan.Input) { in.Nodes[2].Spec.TunnelAddress = "nope" }, "node c: tunnelAddress \"nope\"", 2},
		{"bad peer MAC", func(in *plan.Input) { in.Nodes[2].Spec.VTEPMAC = "zz" }, "node c vtepMAC", 2},
		{"shared tunnel address", func(in *plan.Input) { in.Nodes[2].Spec.TunnelAddress = "172.16.0.64" }, "node c has no usable VTEP: its tunnelAddress 172.16.0.64 is shared by nodes b, c", 2},
		{"MAC shared with local", func(in *plan.Input) { in.Nodes[2].Spec.VTEPMAC = "66:00:00:00:00:0A" }, "no VTEP known for peer c (its vtepMAC 66:00:00:00:00:0a is shared by nodes a (local), c)", 2},
		{"bad pool cidr", func(in *plan.Input) { in.Pools[0].Spec.CIDR = "172.16.0.0/99" }, "pool p skipped", 0},
		{"pool host bits", func(in *plan.Input) { in.Pools[0].Spec.CIDR = "172.16.0.1/16" }, "pool p skipped: cidr 172.16.0.1/16 has host bits set: use 172.16.0.0/16", 0},
		{"IPv6 pool", func(in *plan.Input) { in.Pools[0].Spec.CIDR = "fd00::/48" }, "pool p (fd00::/48) skipped: IPv6", 0},
		{"unknown mode", func(in *plan.Input) { in.Pools[0].Spec.VXLANMode = "Sometimes" }, "vxlanMode \"Sometimes\"", 0},
		{"duplicate pool cidr", func(in *plan.Input) { in.Pools = append(in.Pools, mkPool("p2", "172.16.0.0/16", api.EncapAlways)) }, "pools p, p2 share cidr 172.16.0.0/16", 0},
		{"bad block cidr", func(in *plan.Input) { in.Blocks[1].CIDR = "garbage" }, "block \"garbage\" (affinity \"b\") skipped", 2},
		{"block host bits", func(in *plan.Input) { in.Blocks[1].CIDR = "172.16.0.65/26" }, "has host bits set", 2},
		{"block outside pools", func(in *plan.Input) { in.Blocks[1].CIDR = "10.99.0.0/26" }, "block 10.99.0.0/26 skipped: it is in no IP pool", 2},
		{"IPv6 block", func(in *plan.Input) { in.Blocks[1].CIDR = "fd00::/122" }, "block fd00::/122 skipped: IPv6", 2},
		{"duplicate block", func(in *plan.Input) { in.Blocks = append(in.Blocks, mkBlock("172.16.0.64/26", "c")) }, "block 172.16.0.64/26 skipped: it is stored 2 times", 2},
		{"block of unknown node", func(in *plan.Input) { in.Blocks[1].Affinity = "ghost" }, "no route to 172.16.0.64/26 on ghost: node ghost is not registered", 3}, // b's tunnel /32 is still routed
		{"ordinal out of range", func(in *plan.Input) { in.Blocks[0].Allocations = append(in.Blocks[0].Allocations, alloc(64, "b")) }, "ordinal 64 outside the block", 3},
		{"negative ordinal", func(in *plan.Input) { in.Blocks[0].Allocations = append(in.Blocks[0].Allocations, alloc(-1, "b")) }, "ordinal -1 outside the block", 3},
		{"borrower unknown", func(in *plan.Input) { in.Blocks[0].Allocations = append(in.Blocks[0].Allocations, alloc(3, "ghost")) }, "no route to 172.16.0.3/32 on ghost", 3},
		{"bad workload address", func(in *plan.Input) {
			in.Workloads = []api.WorkloadEndpoint{mkWorkload("w", "a", "cali1", "172.16.0.5/24", "x", "172.16.0.6")}
		}, "workload w: address skipped", 4},
		{"IPv6 workload address", func(in *plan.Input) { in.Workloads = []api.WorkloadEndpoint{mkWorkload("w", "a", "cali1", "fd00::5")} }, "workload w: address fd00::5 skipped", 3},
		{"workload without iface", func(in *plan.Input) { in.Workloads = []api.WorkloadEndpoint{mkWorkload("w", "a", "", "172.16.0.5")} }, "workload w skipped: it has no hostIface", 3},
		{"conflicting workloads", func(in *plan.Input) {
			in.Workloads = []api.WorkloadEndpoint{mkWorkload("w1", "a", "cali1", "172.16.0.5"), mkWorkload("w2", "a", "cali2", "172.16.0.5")}
		}, "conflicting routes to 172.16.0.5/32", 4},
		{"bad local tunnel", func(in *plan.Input) { in.Nodes[0].Spec.TunnelAddress = "1.2.3" }, "local node a tunnelAddress", 2},
		{"bad local MAC", func(in *plan.Input) { in.Nodes[0].Spec.VTEPMAC = "66:00" }, "using the derived", 3},
		{"local missing", func(in *plan.Input) { in.LocalNode = "zz" }, "local node \"zz\" is not among the 3 registered nodes", 0},
		{"no local name", func(in *plan.Input) { in.LocalNode = "" }, "no local node name given", 0},
		{"local duplicated", func(in *plan.Input) { in.Nodes = append(in.Nodes, in.Nodes[0]) }, "local node \"a\" is registered 2 times", 0},
		{"local address bad", func(in *plan.Input) { in.Nodes[0].Spec.Address = "10.0.1/24" }, "local node a: address \"10.0.1/24\"", 0},
		{"local address IPv6", func(in *plan.Input) { in.Nodes[0].Spec.Address = "fd00::1/64" }, "local node a address fd00::1/64 is IPv6", 0},
		{"everything nil", func(in *plan.Input) { *in = plan.Input{LocalNode: "a"} }, "not among the 0 registered nodes", 0},
		{"nil maps and slices", func(in *plan.Input) {
			in.Blocks[1].Allocations = []api.Allocation{{Ordinal: 1}}
			in.Workloads = []api.WorkloadEndpoint{{Spec: api.WorkloadEndpointSpec{Node: "a", HostIface: "cali1"}}}
			in.Pools[0].Spec.VXLANMode = api.EncapNever
		}, "no route to 172.16.0.128/26 on c", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := threeNodes(api.EncapCrossSubnet)
			tc.mutate(&in)
			dp := plan.Plan(in)
			wantStatus(t, dp, tc.note)
			if len(dp.Routes) != tc.routes {
				t.Errorf("%d routes, want %d: %v", len(dp.Routes), tc.routes, routeStrings(dp.Routes))
			}
		})
	}
}

func TestPlanDoesNotModifyInput(t *testing.T) {
	s := seedtest.Load(t)
	in := seedInput(t, s, "k8s-master2")
	in.Blocks[0].Allocations = append(in.Blocks[0].Allocations, alloc(40, "k8s-node1"), alloc(41, "k8s-master3"))
	before := cloneInput(in)
	plan.Plan(in)
	if !reflect.DeepEqual(in, before) {
		t.Error("Plan modified its input")
	}
}

func TestRouteString(t *testing.T) {
	cases := []struct {
		r    plan.Route
		want string
	}{
		{plan.Route{Dst: netip.MustParsePrefix("172.16.36.64/26"), Gateway: netip.MustParseAddr("172.16.36.64"), Device: "vxlan.calico", OnLink: true, Kind: plan.KindVXLAN},
			"172.16.36.64/26 via 172.16.36.64 dev vxlan.calico proto 80 onlink"},
		{plan.Route{Dst: netip.MustParsePrefix("172.16.159.128/26"), Type: plan.RouteBlackhole, Kind: plan.KindLocalBlock},
			"blackhole 172.16.159.128/26 proto 80"},
		{plan.Route{Dst: netip.MustParsePrefix("172.16.159.145/32"), Device: "cali64d6bf8fbc2", ScopeLink: true, Kind: plan.KindWorkload},
			"172.16.159.145 dev cali64d6bf8fbc2 proto 80 scope link"},
		{plan.Route{Dst: netip.MustParsePrefix("172.16.224.0/26"), Gateway: netip.MustParseAddr("192.168.3.242"), Device: "eth0", OnLink: true},
			"172.16.224.0/26 via 192.168.3.242 dev eth0 proto 80 onlink"},
		{plan.Route{Dst: netip.MustParsePrefix("172.16.224.7/32"), Gateway: netip.MustParseAddr("192.168.3.242"), Device: "eth0"},
			"172.16.224.7 via 192.168.3.242 dev eth0 proto 80"},
	}
	for _, tc := range cases {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

func TestRouteN(t *testing.T) {
	gw := netip.MustParseAddr("10.0.1.11")
	rs := []plan.Route{
		{Dst: netip.MustParsePrefix("172.16.0.64/26"), Gateway: gw, Device: "eth0", OnLink: true},
		{Dst: netip.MustParsePrefix("172.16.0.64/32"), Gateway: gw, Device: "eth0", OnLink: true},
		{Dst: netip.MustParsePrefix("172.16.0.0/32"), Type: plan.RouteBlackhole},
		{Dst: netip.MustParsePrefix("10.0.0.0/8"), Device: "eth0"},
		{Dst: netip.MustParsePrefix("fd00::/64"), Device: "eth0"},
	}
	want := []string{
		"10.0.0.0        0.0.0.0         255.0.0.0       U     0      0        0 eth0",
		"172.16.0.0      0.0.0.0         255.255.255.255 UH    0      0        0 *",
		// The kernel lists the longer prefix first for the same address.
		"172.16.0.64     10.0.1.11       255.255.255.255 UGH   0      0        0 eth0",
		"172.16.0.64     10.0.1.11       255.255.255.192 UG    0      0        0 eth0",
	}
	if got := plan.RouteN(rs); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if rs[0].Dst.Bits() != 26 {
		t.Error("RouteN reordered its argument")
	}
}
