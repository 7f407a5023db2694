package lab

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"twill.dev/twill/api"
)

// baseYAML is a small valid topology that the table tests break one rule at
// a time.
const baseYAML = `
subnets:
  - name: lan-a
    cidr: 192.168.3.0/24
    router: 192.168.3.130
  - name: lan-b
    cidr: 192.168.32.0/24
    router: 192.168.32.130
    hosts:
      - name: server
        address: 192.168.32.200
pools:
  - name: p
    cidr: 172.16.0.0/16
    blockSize: 26
    vxlanMode: CrossSubnet
vxlan: {device: vxlan.calico, vni: 4096, port: 4789, mtu: 1450}
nodes:
  - name: a
    address: 192.168.3.241/24
    mac: 00:15:5d:03:0b:0a
    block: 172.16.159.128/26
    pods: [172.16.159.145, 172.16.159.146]
  - name: b
    address: 192.168.32.105/24
    pods: 2
`

func parseBase(t *testing.T) *Topology {
	t.Helper()
	topo, err := Parse("base", []byte(baseYAML))
	if err != nil {
		t.Fatalf("base topology: %v", err)
	}
	return topo
}

func TestBuiltinTopologiesParse(t *testing.T) {
	names := Builtin()
	if !slices.Equal(names, []string{"seed", "three-subnets"}) {
		t.Fatalf("Builtin() = %v, want [seed three-subnets]", names)
	}
	for _, n := range names {
		topo, err := Load(n)
		if err != nil {
			t.Fatalf("Load(%q): %v", n, err)
		}
		if topo.Observed != nil {
			t.Errorf("%s: observed was kept; Parse must drop it", n)
		}
		if _, err := topo.Layout(""); err != nil {
			t.Errorf("%s: Layout: %v", n, err)
		}
	}
}

// TestSeedCopyMatchesShared keeps the embedded seed identical to the shared
// reference when the reference is there (it is not read at run time).
func TestSeedCopyMatchesShared(t *testing.T) {
	shared, err := os.ReadFile(filepath.Join("..", "..", "shared", "seed", "seed-cluster.yaml"))
	if err != nil {
		t.Skipf("shared seed not beside the repository: %v", err)
	}
	mine, err := BuiltinSource("seed")
	if err != nil {
		t.Fatal(err)
	}
	if string(mine) != string(shared) {
		t.Fatal("lab/topologies/seed.yaml differs from shared/seed/seed-cluster.yaml; copy it again")
	}
}

func TestSeedLayout(t *testing.T) {
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	l, err := topo.Layout("")
	if err != nil {
		t.Fatal(err)
	}
	if l.Router != "twl-r" || len(l.Subnets) != 2 || len(l.Members) != 4 || len(l.Pods) != 13 {
		t.Fatalf("layout: router %q, %d subnets, %d members, %d pods; want twl-r, 2, 4, 13", l.Router, len(l.Subnets), len(l.Members), len(l.Pods))
	}
	m, ok := l.Member("k8s-node1")
	if !ok {
		t.Fatal("k8s-node1 missing")
	}
	if m.Netns != "twl-k8s-node1" || m.Address.String() != "192.168.32.105/24" || m.Gateway.String() != "192.168.32.130" ||
		m.MAC.String() != "00:15:5d:03:0b:12" || m.Block.String() != "172.16.36.64/26" || l.Subnets[m.Subnet].Name != "lan-b" {
		t.Errorf("k8s-node1 = %+v", m)
	}
	for _, m := range l.Members {
		if len(m.RouterIface) > 15 || !strings.HasPrefix(m.RouterIface, "tw") {
			t.Errorf("router interface %q: want tw prefix and at most 15 bytes", m.RouterIface)
		}
	}
	ns, role, ok := l.Target("k8s-master1-pod-1")
	if !ok || ns != "twl-k8s-master1-p1" || role != RolePod {
		t.Errorf("Target(k8s-master1-pod-1) = %q %q %v", ns, role, ok)
	}
	if ns, role, ok := l.Target("router"); !ok || ns != "twl-r" || role != RoleRouter {
		t.Errorf("Target(router) = %q %q %v", ns, role, ok)
	}
	if _, _, ok := l.Target("nope"); ok {
		t.Error("Target(nope) found something")
	}
	p := l.Pods[0]
	if p.Name != "k8s-master1-pod-1" || p.IP != netip.MustParseAddr("172.16.159.145") || p.Namespace != "default" || p.Index != 1 {
		t.Errorf("first pod = %+v", p)
	}
	if got := len(l.Targets()); got != 1+4+13 {
		t.Errorf("%d targets, want 18", got)
	}
}

func TestThreeSubnetsLayout(t *testing.T) {
	topo, err := Load("three-subnets")
	if err != nil {
		t.Fatal(err)
	}
	bits := map[int]bool{}
	for _, s := range topo.Subnets {
		bits[netip.MustParsePrefix(s.CIDR).Bits()] = true
	}
	if len(bits) != 3 {
		t.Errorf("subnet prefix lengths %v: want three different ones", bits)
	}
	if topo.Pools[0].BlockSize != 24 {
		t.Errorf("block size %d, want 24", topo.Pools[0].BlockSize)
	}
	l, err := topo.Layout("")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range l.Pods {
		if p.IP.IsValid() {
			t.Errorf("pod %s has an address; three-subnets gives counts", p.Name)
		}
	}
	if m, ok := l.Member("outside"); !ok || m.Role != RoleHost || m.Address.String() != "10.10.7.200/22" {
		t.Errorf("outside = %+v %v", m, ok)
	}
}

func TestLoadFileAndUnknownBuiltin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.yaml")
	if err := os.WriteFile(path, []byte(baseYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	topo, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if topo.Name != path || len(topo.Nodes) != 2 {
		t.Errorf("Load(file) = %q with %d nodes", topo.Name, len(topo.Nodes))
	}
	if _, err := Load("no-such-topology"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(unknown) = %v, want an error matching fs.ErrNotExist", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing file) = %v, want fs.ErrNotExist", err)
	}
}

func TestPodsCountOrList(t *testing.T) {
	topo := parseBase(t)
	if got := topo.Nodes[0].Pods; got.Len() != 2 || got.Addresses[1] != "172.16.159.146" {
		t.Errorf("list pods = %+v", got)
	}
	if got := topo.Nodes[1].Pods; got.Len() != 2 || got.Addresses != nil || got.Count != 2 {
		t.Errorf("counted pods = %+v", got)
	}
	for _, p := range []Pods{{Count: 3}, {Addresses: []string{"10.0.0.1"}}, {Addresses: []string{}}} {
		b, err := p.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var back Pods
		if err := back.UnmarshalJSON(b); err != nil {
			t.Fatal(err)
		}
		if back.Len() != p.Len() || (p.Addresses == nil) != (back.Addresses == nil) {
			t.Errorf("round trip of %+v gave %+v", p, back)
		}
	}
}

// TestDecodeErrors: strict decoding names the key path.
func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		yaml   string
		path   string
		reason Reason
	}{
		{"empty", "", "", ReasonRequired},
		{"only comments", "# nothing\n", "", ReasonRequired},
		{"syntax", "subnets: [\n", "", ReasonSyntax},
		{"duplicate key", "subnets: []\nsubnets: []\n", "", ReasonSyntax},
		{"unknown top-level key", baseYAML + "extra: 1\n", "extra", ReasonUnknownField},
		{"unknown nested key", strings.Replace(baseYAML, "    router: 192.168.3.130", "    router: 192.168.3.130\n    gateway: 1.2.3.4", 1), "subnets[0].gateway", ReasonUnknownField},
		{"unknown key, wrong case", strings.Replace(baseYAML, "blockSize: 26", "blocksize: 26", 1), "pools[0].blocksize", ReasonUnknownField},
		{"unknown host key", strings.Replace(baseYAML, "address: 192.168.32.200", "address: 192.168.32.200\n        mac: 02:00:00:00:00:01", 1), "subnets[1].hosts[0].mac", ReasonUnknownField},
		{"unknown vxlan key", strings.Replace(baseYAML, "mtu: 1450}", "mtu: 1450, ttl: 3}", 1), "vxlan.ttl", ReasonUnknownField},
		{"number for string", strings.Replace(baseYAML, "name: lan-a", "name: 7", 1), "subnets[0].name", ReasonType},
		{"string for number", strings.Replace(baseYAML, "blockSize: 26", "blockSize: big", 1), "pools[0].blockSize", ReasonType},
		{"fraction for number", strings.Replace(baseYAML, "blockSize: 26", "blockSize: 26.5", 1), "pools[0].blockSize", ReasonType},
		{"string for bool", strings.Replace(baseYAML, "vxlanMode: CrossSubnet", "vxlanMode: CrossSubnet\n    natOutgoing: sometimes", 1), "pools[0].natOutgoing", ReasonType},
		{"pods as a string", strings.Replace(baseYAML, "pods: 2\n", "pods: two\n", 1), "nodes[1].pods", ReasonType},
		{"pods huge", strings.Replace(baseYAML, "pods: 2\n", "pods: 99999999999\n", 1), "nodes[1].pods", ReasonType},
		{"pod address a number", strings.Replace(baseYAML, "[172.16.159.145, 172.16.159.146]", "[172.16.159.145, 5]", 1), "nodes[0].pods[1]", ReasonType},
		{"subnets not a list", "subnets: {a: 1}\n", "subnets", ReasonType},
		{"top level a list", "- a\n", "", ReasonType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t", []byte(tc.yaml))
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("Parse = %v (%T), want *Error", err, err)
			}
			if !te.Has(tc.path, tc.reason) {
				t.Fatalf("Parse = %v; want a %s problem at %q", err, tc.reason, tc.path)
			}
			if !strings.Contains(err.Error(), "topology t") {
				t.Errorf("message %q does not name the topology", err)
			}
		})
	}
}

func TestObservedIsIgnored(t *testing.T) {
	topo, err := Parse("t", []byte(baseYAML+"observed:\n  anything: [1, {x: y}]\n  route_n: {a: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if topo.Observed != nil {
		t.Error("observed kept")
	}
}

// TestValidationErrors breaks one rule per case and expects exactly that
// rule to be reported at that path.
func TestValidationErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Topology)
		path   string
		reason Reason
	}{
		{"no subnets", func(t *Topology) { t.Subnets = nil; t.Nodes = t.Nodes[:0] }, "subnets", ReasonRequired},
		{"no pools", func(t *Topology) { t.Pools = nil; t.Nodes[0].Block = ""; t.Nodes[0].Pods = Pods{} }, "pools", ReasonRequired},
		{"no nodes", func(t *Topology) { t.Nodes = nil }, "nodes", ReasonRequired},
		{"subnet without name", func(t *Topology) { t.Subnets[0].Name = "" }, "subnets[0].name", ReasonRequired},
		{"subnet bad name", func(t *Topology) { t.Subnets[0].Name = "LAN_A" }, "subnets[0].name", ReasonName},
		{"duplicate subnet names", func(t *Topology) { t.Subnets[1].Name = "lan-a" }, "subnets[1].name", ReasonDuplicate},
		{"subnet cidr missing", func(t *Topology) { t.Subnets[0].CIDR = "" }, "subnets[0].cidr", ReasonRequired},
		{"subnet cidr garbage", func(t *Topology) { t.Subnets[0].CIDR = "lan" }, "subnets[0].cidr", ReasonFormat},
		{"subnet cidr ipv6", func(t *Topology) { t.Subnets[0].CIDR = "fd00::/64" }, "subnets[0].cidr", ReasonFormat},
		{"subnet cidr host bits", func(t *Topology) { t.Subnets[0].CIDR = "192.168.3.7/24" }, "subnets[0].cidr", ReasonFormat},
		{"subnet too small", func(t *Topology) { t.Subnets[0].CIDR = "192.168.3.0/31" }, "subnets[0].cidr", ReasonRange},
		{"subnet link-local", func(t *Topology) { t.Subnets[0].CIDR = "169.254.0.0/24" }, "subnets[0].cidr", ReasonReserved},
		{"subnet loopback", func(t *Topology) { t.Subnets[0].CIDR = "127.0.0.0/24" }, "subnets[0].cidr", ReasonReserved},
		{"overlapping subnets", func(t *Topology) { t.Subnets[1].CIDR = "192.168.0.0/16" }, "subnets[1].cidr", ReasonOverlap},
		{"router missing", func(t *Topology) { t.Subnets[0].Router = "" }, "subnets[0].router", ReasonRequired},
		{"router garbage", func(t *Topology) { t.Subnets[0].Router = "gw" }, "subnets[0].router", ReasonFormat},
		{"router outside subnet", func(t *Topology) { t.Subnets[0].Router = "192.168.4.1" }, "subnets[0].router", ReasonOutside},
		{"router is broadcast", func(t *Topology) { t.Subnets[0].Router = "192.168.3.255" }, "subnets[0].router", ReasonReserved},
		{"host without name", func(t *Topology) { t.Subnets[1].Hosts[0].Name = "" }, "subnets[1].hosts[0].name", ReasonRequired},
		{"host address missing", func(t *Topology) { t.Subnets[1].Hosts[0].Address = "" }, "subnets[1].hosts[0].address", ReasonRequired},
		{"host address garbage", func(t *Topology) { t.Subnets[1].Hosts[0].Address = "x" }, "subnets[1].hosts[0].address", ReasonFormat},
		{"host outside its subnet", func(t *Topology) { t.Subnets[1].Hosts[0].Address = "192.168.3.9" }, "subnets[1].hosts[0].address", ReasonOutside},
		{"host prefix mismatch", func(t *Topology) { t.Subnets[1].Hosts[0].Address = "192.168.32.200/16" }, "subnets[1].hosts[0].address", ReasonMismatch},
		{"host named like a node", func(t *Topology) { t.Subnets[1].Hosts[0].Name = "a" }, "nodes[0].name", ReasonDuplicate},
		{"host on the router address", func(t *Topology) { t.Subnets[1].Hosts[0].Address = "192.168.32.130" }, "subnets[1].hosts[0].address", ReasonDuplicate},
		{"pool invalid block size", func(t *Topology) { t.Pools[0].BlockSize = 33 }, "pools[0].blockSize", ReasonPool},
		{"pool invalid mode", func(t *Topology) { t.Pools[0].VXLANMode = "crosssubnet" }, "pools[0].vxlanMode", ReasonPool},
		{"pool ipip", func(t *Topology) { t.Pools[0].IPIPMode = "Always" }, "pools[0].ipipMode", ReasonPool},
		{"pool bad selector", func(t *Topology) { t.Pools[0].NodeSelector = "all(" }, "pools[0].nodeSelector", ReasonPool},
		{"pool bad use", func(t *Topology) { t.Pools[0].AllowedUses = []string{"Pods"} }, "pools[0].allowedUses[0]", ReasonPool},
		{"pool without name", func(t *Topology) { t.Pools[0].Name = "" }, "pools[0].name", ReasonPool},
		{"pool ipv6", func(t *Topology) { t.Pools[0].CIDR = "fd00::/48"; t.Pools[0].BlockSize = 122 }, "pools[0].cidr", ReasonFormat},
		{"overlapping pools", func(t *Topology) {
			t.Pools = append(t.Pools, Pool{Name: "q", CIDR: "172.16.128.0/17"})
		}, "pools[1].cidr", ReasonOverlap},
		{"duplicate pool names", func(t *Topology) {
			t.Pools = append(t.Pools, Pool{Name: "p", CIDR: "10.0.0.0/16"})
		}, "pools[1].name", ReasonDuplicate},
		{"pool overlapping a subnet", func(t *Topology) { t.Pools[0].CIDR = "192.168.0.0/16"; t.Nodes[0].Block = ""; t.Nodes[0].Pods = Pods{} }, "pools[0].cidr", ReasonOverlap},
		{"vxlan device name", func(t *Topology) { t.VXLAN.Device = "vxlan.calico.too.long" }, "vxlan.device", ReasonName},
		{"vxlan vni", func(t *Topology) { t.VXLAN.VNI = 1 << 24 }, "vxlan.vni", ReasonRange},
		{"vxlan port", func(t *Topology) { t.VXLAN.Port = 70000 }, "vxlan.port", ReasonRange},
		{"vxlan mtu", func(t *Topology) { t.VXLAN.MTU = 1500 }, "vxlan.mtu", ReasonRange},
		{"node without name", func(t *Topology) { t.Nodes[0].Name = "" }, "nodes[0].name", ReasonRequired},
		{"node name cannot make a namespace", func(t *Topology) { t.Nodes[0].Name = "K8s_Master" }, "nodes[0].name", ReasonName},
		{"node name with slash", func(t *Topology) { t.Nodes[0].Name = "a/b" }, "nodes[0].name", ReasonName},
		{"node name too long", func(t *Topology) { t.Nodes[0].Name = strings.Repeat("n", MaxNameLen+1) }, "nodes[0].name", ReasonName},
		{"node named router", func(t *Topology) { t.Nodes[0].Name = "router" }, "nodes[0].name", ReasonName},
		{"duplicate node names", func(t *Topology) { t.Nodes[1].Name = "a" }, "nodes[1].name", ReasonDuplicate},
		{"node address missing", func(t *Topology) { t.Nodes[0].Address = "" }, "nodes[0].address", ReasonRequired},
		{"node address without prefix", func(t *Topology) { t.Nodes[0].Address = "192.168.3.241" }, "nodes[0].address", ReasonFormat},
		{"node address ipv6", func(t *Topology) { t.Nodes[0].Address = "fd00::1/64" }, "nodes[0].address", ReasonFormat},
		{"node address in no subnet", func(t *Topology) { t.Nodes[0].Address = "10.0.0.1/24" }, "nodes[0].address", ReasonOutside},
		{"node prefix differs from subnet", func(t *Topology) { t.Nodes[0].Address = "192.168.3.241/16" }, "nodes[0].address", ReasonMismatch},
		{"node on the network address", func(t *Topology) { t.Nodes[0].Address = "192.168.3.0/24" }, "nodes[0].address", ReasonReserved},
		{"node on the router address", func(t *Topology) { t.Nodes[0].Address = "192.168.3.130/24" }, "nodes[0].address", ReasonDuplicate},
		{"duplicate node addresses", func(t *Topology) { t.Nodes[1].Address = "192.168.3.241/24" }, "nodes[1].address", ReasonDuplicate},
		{"node on a host's address", func(t *Topology) { t.Nodes[1].Address = "192.168.32.200/24" }, "nodes[1].address", ReasonDuplicate},
		{"bad mac", func(t *Topology) { t.Nodes[0].MAC = "00:15:5d" }, "nodes[0].mac", ReasonFormat},
		{"multicast mac", func(t *Topology) { t.Nodes[0].MAC = "01:00:5e:00:00:01" }, "nodes[0].mac", ReasonFormat},
		{"zero mac", func(t *Topology) { t.Nodes[0].MAC = "00:00:00:00:00:00" }, "nodes[0].mac", ReasonFormat},
		{"eui-64 mac", func(t *Topology) { t.Nodes[0].MAC = "00:15:5d:03:0b:0a:00:01" }, "nodes[0].mac", ReasonFormat},
		{"duplicate macs", func(t *Topology) { t.Nodes[1].MAC = "00:15:5D:03:0B:0A" }, "nodes[1].mac", ReasonDuplicate},
		{"block garbage", func(t *Topology) { t.Nodes[0].Block = "block" }, "nodes[0].block", ReasonFormat},
		{"block outside every pool", func(t *Topology) { t.Nodes[0].Block = "10.9.0.0/26"; t.Nodes[0].Pods = Pods{Count: 1} }, "nodes[0].block", ReasonOutside},
		{"block not aligned", func(t *Topology) { t.Nodes[0].Block = "172.16.159.130/26" }, "nodes[0].block", ReasonAlign},
		{"block of the wrong size", func(t *Topology) { t.Nodes[0].Block = "172.16.159.128/27" }, "nodes[0].block", ReasonAlign},
		{"duplicate blocks", func(t *Topology) { t.Nodes[1].Block = "172.16.159.128/26" }, "nodes[1].block", ReasonDuplicate},
		{"pod list without block", func(t *Topology) { t.Nodes[0].Block = "" }, "nodes[0].block", ReasonRequired},
		{"pod outside the block", func(t *Topology) { t.Nodes[0].Pods.Addresses[1] = "172.16.160.1" }, "nodes[0].pods[1]", ReasonOutside},
		{"pod garbage", func(t *Topology) { t.Nodes[0].Pods.Addresses[1] = "pod" }, "nodes[0].pods[1]", ReasonFormat},
		{"pod with prefix", func(t *Topology) { t.Nodes[0].Pods.Addresses[1] = "172.16.159.146/26" }, "nodes[0].pods[1]", ReasonFormat},
		{"pod on the tunnel address", func(t *Topology) { t.Nodes[0].Pods.Addresses[1] = "172.16.159.128" }, "nodes[0].pods[1]", ReasonReserved},
		{"duplicate pod addresses", func(t *Topology) { t.Nodes[0].Pods.Addresses[1] = "172.16.159.145" }, "nodes[0].pods[1]", ReasonDuplicate},
		{"negative pod count", func(t *Topology) { t.Nodes[1].Pods = Pods{Count: -1} }, "nodes[1].pods", ReasonRange},
		{"too many pods", func(t *Topology) { t.Nodes[1].Pods = Pods{Count: MaxPodsPerNode + 1} }, "nodes[1].pods", ReasonRange},
		{"more pods than the block holds", func(t *Topology) {
			t.Pools[0].BlockSize = 29
			t.Nodes[0].Block = "172.16.159.144/29"
			t.Nodes[0].Pods = Pods{Count: 8}
		}, "nodes[0].pods", ReasonRange},
		{"node name collides with a pod name", func(t *Topology) { t.Nodes[1].Name = "a-pod-1" }, "nodes[0].pods", ReasonDuplicate},
		{"node namespace collides with a pod namespace", func(t *Topology) { t.Nodes[1].Name = "a-p2" }, "nodes[0].pods", ReasonName},
		{"node namespace collides with the router", func(t *Topology) { t.Nodes[1].Name = "r" }, "nodes[1].name", ReasonName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := parseBase(t)
			tc.mutate(topo)
			err := topo.Validate()
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("Validate = %v (%T), want *Error", err, err)
			}
			if !te.Has(tc.path, tc.reason) {
				t.Fatalf("Validate = %v\nwant a %s problem at %q", err, tc.reason, tc.path)
			}
			for _, p := range te.Problems {
				if p.Rule == "" || p.Error() == "" {
					t.Errorf("problem %+v has no rule", p)
				}
			}
			if _, err := topo.Layout(""); err == nil {
				t.Error("Layout accepted an invalid topology")
			}
		})
	}
}

func TestPoolProblemsWrapAPIErrors(t *testing.T) {
	topo := parseBase(t)
	topo.Pools[0].BlockSize = 40
	err := topo.Validate()
	var fe api.FieldError
	if !errors.As(err, &fe) || fe.Reason != api.ReasonRange {
		t.Fatalf("Validate = %v; want an api.FieldError with reason Range inside", err)
	}
}

func TestManyProblemsAreAllListed(t *testing.T) {
	topo := parseBase(t)
	topo.Nodes[0].MAC = "zz"
	topo.Nodes[1].Address = "10.1.1.1/24"
	topo.VXLAN.Port = -1
	err := topo.Validate()
	var te *Error
	if !errors.As(err, &te) || len(te.Problems) != 3 {
		t.Fatalf("Validate = %v; want 3 problems", err)
	}
	if !strings.Contains(err.Error(), "3 problems") {
		t.Errorf("message %q does not count the problems", err)
	}
}

func TestLayoutPrefix(t *testing.T) {
	topo := parseBase(t)
	for _, bad := range []string{"x", "lab", "tw-a", "TWL", "tw1234567", "tw/a"} {
		if _, err := topo.Layout(bad); !errors.Is(err, ErrPrefix) {
			t.Errorf("Layout(%q) = %v, want ErrPrefix", bad, err)
		}
	}
	l, err := topo.Layout("tw9a")
	if err != nil {
		t.Fatal(err)
	}
	if l.Router != "tw9a-r" || l.Members[0].Netns != "tw9a-a" || l.Pods[0].Netns != "tw9a-a-p1" {
		t.Errorf("names with prefix tw9a: %s %s %s", l.Router, l.Members[0].Netns, l.Pods[0].Netns)
	}
}

func TestVXLANDefaults(t *testing.T) {
	c := VXLAN{}.Config()
	if c.Device != "vxlan.calico" || c.VNI != 4096 || c.Port != 4789 || c.MTU != 1450 {
		t.Errorf("defaults = %+v", c)
	}
}
