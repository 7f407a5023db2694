package plan_test

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/internal/seedtest"
	"twill.dev/twill/plan"
)

// ordinal is a's offset from the start of block.
func ordinal(t testing.TB, block netip.Prefix, a netip.Addr) int {
	t.Helper()
	if !block.Contains(a) {
		t.Fatalf("%s is not in %s", a, block)
	}
	b, x := block.Addr().As4(), a.As4()
	return int(x[3]-b[3]) + 256*int(x[2]-b[2])
}

// seedInput builds the planner input for node local from the seed cluster:
// nodes with their address, eth0, MTU 1500, the first block address as the
// tunnel address and the observed VTEP MAC; pinned blocks with the tunnel
// allocation at ordinal 0 and the pods at theirs; the local node's pods as
// workloads.
func seedInput(t testing.TB, s *seedtest.Cluster, local string) plan.Input {
	t.Helper()
	in := plan.Input{
		LocalNode: local,
		VXLAN:     plan.VXLANConfig{Device: s.VXLAN.Device, VNI: s.VXLAN.VNI, Port: s.VXLAN.Port},
	}
	for _, p := range s.Pools {
		uses := make([]api.IPPoolUse, 0, len(p.AllowedUses))
		for _, u := range p.AllowedUses {
			uses = append(uses, api.IPPoolUse(u))
		}
		in.Pools = append(in.Pools, api.IPPool{
			TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
			Metadata: api.ObjectMeta{Name: p.Name},
			Spec: api.IPPoolSpec{
				CIDR: p.CIDR, BlockSize: p.BlockSize,
				VXLANMode: api.EncapMode(p.VXLANMode), IPIPMode: api.EncapMode(p.IPIPMode),
				NATOutgoing: p.NATOutgoing, NodeSelector: p.Selector, AllowedUses: uses,
			},
		})
	}
	for _, n := range s.Nodes {
		block := netip.MustParsePrefix(n.Block)
		in.Nodes = append(in.Nodes, api.Node{
			TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
			Metadata: api.ObjectMeta{Name: n.Name},
			Spec: api.NodeSpec{
				Address: n.Address, Interface: "eth0", MTU: 1500,
				VTEPMAC: s.Observed.VTEPs[n.Name].MAC, TunnelAddress: block.Addr().String(),
			},
		})
		b := api.Block{
			TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock},
			CIDR:     n.Block, Affinity: n.Name, Pinned: true,
			Allocations: []api.Allocation{{
				Ordinal: 0, Handle: "vxlan-tunnel-addr-" + n.Name, Use: api.UseTunnel,
				Attrs: map[string]string{api.AttrNode: n.Name},
			}},
		}
		for i, ip := range n.Pods {
			pod := seedtest.PodName(n.Name, i)
			a := netip.MustParseAddr(ip)
			b.Allocations = append(b.Allocations, api.Allocation{
				Ordinal: ordinal(t, block, a), Handle: "default." + pod, Use: api.UseWorkload,
				Attrs: map[string]string{api.AttrNode: n.Name, api.AttrNamespace: "default", api.AttrPod: pod},
			})
			if n.Name == local {
				in.Workloads = append(in.Workloads, api.WorkloadEndpoint{
					TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
					Metadata: api.ObjectMeta{Name: pod},
					Spec: api.WorkloadEndpointSpec{
						Node: local, Namespace: "default", Pod: pod, ContainerID: "c-" + pod, IfName: "eth0",
						Handle: "default." + pod, HostIface: seedtest.CaliName(pod), Addresses: []string{ip + "/32"},
					},
				})
			}
		}
		in.Blocks = append(in.Blocks, b)
	}
	return in
}

var caliRE = regexp.MustCompile(`cali[0-9a-f]{11}$`)

// podNetworkLines keeps the seed's `route -n` lines that belong to the pod
// network: it drops the default route, the 192.168.x LAN routes and Docker's
// 172.17.0.0 route, and normalises cali interface names.
func podNetworkLines(table string) []string {
	var out []string
	for line := range strings.SplitSeq(strings.TrimRight(table, "\n"), "\n") {
		dst, _, _ := strings.Cut(line, " ")
		if dst == "0.0.0.0" || strings.HasPrefix(dst, "192.168.") || dst == "172.17.0.0" {
			continue
		}
		out = append(out, caliRE.ReplaceAllString(line, "cali<pod>"))
	}
	return out
}

func normaliseCali(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = caliRE.ReplaceAllString(l, "cali<pod>")
	}
	return out
}

// TestSeedRouteN is the golden test: for each node of the seed cluster, the
// planned routes render exactly as the seed's `route -n` pod-network lines,
// and the VXLAN device matches the observed one.
func TestSeedRouteN(t *testing.T) {
	s := seedtest.Load(t)
	for _, n := range s.Nodes {
		t.Run(n.Name, func(t *testing.T) {
			in := seedInput(t, s, n.Name)
			dp := plan.Plan(in)
			if len(dp.Status) != 0 {
				t.Errorf("status = %q, want none", dp.Status)
			}
			want := podNetworkLines(s.Observed.RouteN[n.Name])
			got := normaliseCali(plan.RouteN(dp.Routes))
			if !slices.Equal(got, want) {
				t.Errorf("route -n mismatch\ngot:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}

			obs := s.Observed.VTEPs[n.Name]
			if dp.Device == nil {
				t.Fatal("no VXLAN device planned")
			}
			d := dp.Device
			if d.Address.String() != obs.Address || d.MAC != obs.MAC || d.MTU != obs.MTU {
				t.Errorf("device address/mac/mtu = %s %s %d, want %s %s %d", d.Address, d.MAC, d.MTU, obs.Address, obs.MAC, obs.MTU)
			}
			if d.MTU != s.VXLAN.MTU || d.Name != s.VXLAN.Device || d.VNI != s.VXLAN.VNI || d.Port != s.VXLAN.Port {
				t.Errorf("device = %+v, want name %s vni %d port %d mtu %d", *d, s.VXLAN.Device, s.VXLAN.VNI, s.VXLAN.Port, s.VXLAN.MTU)
			}
			host := netip.MustParsePrefix(n.Address).Addr()
			if d.Parent != "eth0" || d.LocalIP != host {
				t.Errorf("device parent/local = %s %s, want eth0 %s", d.Parent, d.LocalIP, host)
			}

			// One neighbour and one FDB entry per other node.
			var wantNeigh []plan.Neighbor
			var wantFDB []plan.FDB
			var wantPeers []netip.Addr
			for _, o := range s.Nodes {
				if o.Name == n.Name {
					continue
				}
				vt := s.Observed.VTEPs[o.Name]
				tun := netip.MustParsePrefix(vt.Address).Addr()
				addr := netip.MustParsePrefix(o.Address).Addr()
				wantNeigh = append(wantNeigh, plan.Neighbor{Device: "vxlan.calico", IP: tun, MAC: vt.MAC})
				wantFDB = append(wantFDB, plan.FDB{Device: "vxlan.calico", MAC: vt.MAC, Dst: addr})
				wantPeers = append(wantPeers, addr)
			}
			sortedEq(t, "neighbours", dp.Neighbors, wantNeigh, func(a, b plan.Neighbor) int { return a.IP.Compare(b.IP) })
			sortedEq(t, "fdb", dp.FDB, wantFDB, func(a, b plan.FDB) int { return strings.Compare(a.MAC, b.MAC) })
			sortedEq(t, "vxlan peers", dp.Firewall.VXLANPeers, wantPeers, netip.Addr.Compare)
			pool := netip.MustParsePrefix(s.Pools[0].CIDR)
			if !slices.Equal(dp.Firewall.AllPools, []netip.Prefix{pool}) || !slices.Equal(dp.Firewall.NATPools, []netip.Prefix{pool}) || dp.Firewall.VXLANPort != 4789 {
				t.Errorf("firewall = %+v", dp.Firewall)
			}

			// Each pod's /32 goes to that pod's own veth.
			for _, w := range in.Workloads {
				dst := netip.MustParsePrefix(w.Spec.Addresses[0])
				i := slices.IndexFunc(dp.Routes, func(r plan.Route) bool { return r.Dst == dst })
				if i < 0 || dp.Routes[i].Device != w.Spec.HostIface || dp.Routes[i].Kind != plan.KindWorkload {
					t.Errorf("no workload route %s dev %s in %v", dst, w.Spec.HostIface, dp.Routes)
				}
			}
		})
	}
}

// sortedEq checks that got is sorted by cmpf and holds exactly want's items.
func sortedEq[T comparable](t *testing.T, what string, got, want []T, cmpf func(a, b T) int) {
	t.Helper()
	if !slices.IsSortedFunc(got, cmpf) {
		t.Errorf("%s not sorted: %v", what, got)
	}
	w := slices.Clone(want)
	slices.SortFunc(w, cmpf)
	if !slices.Equal(got, w) {
		t.Errorf("%s = %v, want %v", what, got, w)
	}
}

// TestSeedVTEPMACDerived checks that without a recorded vtepMAC the device
// MAC is derived from the node name exactly as the seed observed.
func TestSeedVTEPMACDerived(t *testing.T) {
	s := seedtest.Load(t)
	for _, n := range s.Nodes {
		in := seedInput(t, s, n.Name)
		for i := range in.Nodes {
			in.Nodes[i].Spec.VTEPMAC = ""
		}
		dp := plan.Plan(in)
		if dp.Device == nil || dp.Device.MAC != s.Observed.VTEPs[n.Name].MAC {
			t.Errorf("%s: device %+v, want MAC %s", n.Name, dp.Device, s.Observed.VTEPs[n.Name].MAC)
		}
		// Peers without a recorded MAC have no known VTEP: the cross-subnet
		// routes are missing and say why.
		var vxlanRoutes int
		for _, r := range dp.Routes {
			if r.Kind == plan.KindVXLAN {
				vxlanRoutes++
			}
		}
		if vxlanRoutes != 0 || !hasStatus(dp, "no VTEP known for peer") {
			t.Errorf("%s: %d vxlan routes, status %q", n.Name, vxlanRoutes, dp.Status)
		}
	}
}

func hasStatus(dp plan.Dataplane, sub string) bool {
	return slices.ContainsFunc(dp.Status, func(s string) bool { return strings.Contains(s, sub) })
}
