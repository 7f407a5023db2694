package explain_test

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/explain"
	"twill.dev/twill/internal/seedtest"
	"twill.dev/twill/plan"
)

// seedClusterInput builds the cluster the seed describes: each node with
// eth0, MTU 1500, its block's first address as tunnel address and the
// observed VTEP MAC; pinned blocks holding the tunnel address and the pods;
// a workload endpoint per pod.
func seedClusterInput(t testing.TB, s *seedtest.Cluster) explain.Cluster {
	t.Helper()
	c := explain.Cluster{VXLAN: plan.VXLANConfig{Device: s.VXLAN.Device, VNI: s.VXLAN.VNI, Port: s.VXLAN.Port}}
	for _, p := range s.Pools {
		c.Pools = append(c.Pools, api.IPPool{
			TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
			Metadata: api.ObjectMeta{Name: p.Name},
			Spec: api.IPPoolSpec{CIDR: p.CIDR, BlockSize: p.BlockSize,
				VXLANMode: api.EncapMode(p.VXLANMode), IPIPMode: api.EncapMode(p.IPIPMode)},
		})
	}
	for _, n := range s.Nodes {
		block := netip.MustParsePrefix(n.Block)
		c.Nodes = append(c.Nodes, api.Node{
			TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
			Metadata: api.ObjectMeta{Name: n.Name},
			Spec: api.NodeSpec{Address: n.Address, Interface: "eth0", MTU: 1500,
				VTEPMAC: s.Observed.VTEPs[n.Name].MAC, TunnelAddress: block.Addr().String()},
		})
		b := api.Block{
			TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock},
			CIDR:     n.Block, Affinity: n.Name, Pinned: true,
			Allocations: []api.Allocation{{Ordinal: 0, Handle: "vxlan-tunnel-addr-" + n.Name, Use: api.UseTunnel,
				Attrs: map[string]string{api.AttrNode: n.Name}}},
		}
		for i, ip := range n.Pods {
			pod := seedtest.PodName(n.Name, i)
			a := netip.MustParseAddr(ip)
			off := int(a.As4()[3] - block.Addr().As4()[3])
			b.Allocations = append(b.Allocations, api.Allocation{Ordinal: off, Handle: "c-" + pod + ".eth0", Use: api.UseWorkload,
				Attrs: map[string]string{api.AttrNode: n.Name, api.AttrNamespace: "default", api.AttrPod: pod}})
			c.Workloads = append(c.Workloads, api.WorkloadEndpoint{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
				Metadata: api.ObjectMeta{Name: pod},
				Spec: api.WorkloadEndpointSpec{Node: n.Name, Namespace: "default", Pod: pod, ContainerID: "c-" + pod, IfName: "eth0",
					Handle: "c-" + pod + ".eth0", HostIface: seedtest.CaliName(pod), Addresses: []string{ip + "/32"}},
			})
		}
		c.Blocks = append(c.Blocks, b)
	}
	return c
}

// seedRouteN returns the seed's `route -n` line for dst on node, with
// runs of spaces collapsed.
func seedRouteN(t *testing.T, s *seedtest.Cluster, node, dst string) string {
	t.Helper()
	for _, l := range strings.Split(s.Observed.RouteN[node], "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == dst {
			return strings.Join(f, " ")
		}
	}
	t.Fatalf("the seed's route -n of %s has no line for %s", node, dst)
	return ""
}

func collapse(s string) string { return strings.Join(strings.Fields(s), " ") }

// capture is one tcpdump -nne line of the seed, taken apart.
type capture struct {
	srcMAC, dstMAC string
	length         int
	src, dst       string
	dstPort        int
	vni            int
}

var captureRE = regexp.MustCompile(`^([0-9a-f:]{17}) > ([0-9a-f:]{17}), ethertype IPv4 \(0x0800\), length (\d+): ` +
	`(\d+\.\d+\.\d+\.\d+)(?:\.\d+)? > (\d+\.\d+\.\d+\.\d+)(?:\.(\d+))?: (?:VXLAN, flags \[I\] \(0x08\), vni (\d+)|ICMP)`)

func parseCapture(t *testing.T, line string) capture {
	t.Helper()
	m := captureRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("cannot read capture %q", line)
	}
	c := capture{srcMAC: m[1], dstMAC: m[2], src: m[4], dst: m[5]}
	c.length, _ = strconv.Atoi(m[3])
	if m[6] != "" {
		c.dstPort, _ = strconv.Atoi(m[6])
	}
	if m[7] != "" {
		c.vni, _ = strconv.Atoi(m[7])
	}
	return c
}
