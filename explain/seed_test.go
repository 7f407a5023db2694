package explain_test

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"twill.dev/twill/api"
	"twill.dev/twill/explain"
	"twill.dev/twill/plan"
)

// seedPath is the seed cluster as data, shared with package plan's tests.
const seedPath = "../plan/testdata/seed-cluster.yaml"

// seedCluster is the part of the seed file these tests use.
type seedCluster struct {
	Pools []struct {
		Name      string `json:"name"`
		CIDR      string `json:"cidr"`
		BlockSize int    `json:"blockSize"`
		VXLANMode string `json:"vxlanMode"`
		IPIPMode  string `json:"ipipMode"`
	} `json:"pools"`
	VXLAN struct {
		Device string `json:"device"`
		VNI    int    `json:"vni"`
		Port   int    `json:"port"`
		MTU    int    `json:"mtu"`
	} `json:"vxlan"`
	Nodes []struct {
		Name    string   `json:"name"`
		Address string   `json:"address"`
		Block   string   `json:"block"`
		Pods    []string `json:"pods"`
	} `json:"nodes"`
	Observed struct {
		VTEPs map[string]struct {
			Address string `json:"address"`
			MAC     string `json:"mac"`
			MTU     int    `json:"mtu"`
		} `json:"vteps"`
		RouteN   map[string]string `json:"route_n"`
		Captures map[string]struct {
			PodIface string `json:"pod_iface"`
			VXLAN    string `json:"vxlan"`
			ETH0     string `json:"eth0"`
		} `json:"captures"`
	} `json:"observed"`
}

func loadSeed(t testing.TB) *seedCluster {
	t.Helper()
	b, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	var s seedCluster
	if err := yaml.Unmarshal(b, &s); err != nil {
		t.Fatalf("parse %s: %v", seedPath, err)
	}
	if len(s.Nodes) != 4 || len(s.Pools) != 1 || len(s.Observed.Captures) != 2 {
		t.Fatalf("seed parsed to %d nodes, %d pools, %d captures; want 4, 1, 2", len(s.Nodes), len(s.Pools), len(s.Observed.Captures))
	}
	return &s
}

// caliName is the host-side veth name of pod default/<pod>.
func caliName(pod string) string {
	sum := sha1.Sum([]byte("default." + pod))
	return "cali" + hex.EncodeToString(sum[:])[:11]
}

// podName names the seed node's i-th pod (from 0).
func podName(node string, i int) string { return fmt.Sprintf("%s-pod-%d", node, i) }

// seedClusterInput builds the cluster the seed describes: each node with
// eth0, MTU 1500, its block's first address as tunnel address and the
// observed VTEP MAC; pinned blocks holding the tunnel address and the pods;
// a workload endpoint per pod.
func seedClusterInput(t testing.TB, s *seedCluster) explain.Cluster {
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
			pod := podName(n.Name, i)
			a := netip.MustParseAddr(ip)
			off := int(a.As4()[3] - block.Addr().As4()[3])
			b.Allocations = append(b.Allocations, api.Allocation{Ordinal: off, Handle: "c-" + pod + ".eth0", Use: api.UseWorkload,
				Attrs: map[string]string{api.AttrNode: n.Name, api.AttrNamespace: "default", api.AttrPod: pod}})
			c.Workloads = append(c.Workloads, api.WorkloadEndpoint{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
				Metadata: api.ObjectMeta{Name: pod},
				Spec: api.WorkloadEndpointSpec{Node: n.Name, Namespace: "default", Pod: pod, ContainerID: "c-" + pod, IfName: "eth0",
					Handle: "c-" + pod + ".eth0", HostIface: caliName(pod), Addresses: []string{ip + "/32"}},
			})
		}
		c.Blocks = append(c.Blocks, b)
	}
	return c
}

// seedRouteN returns the seed's `route -n` line for dst on node, with
// runs of spaces collapsed.
func seedRouteN(t *testing.T, s *seedCluster, node, dst string) string {
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
