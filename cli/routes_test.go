package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/api"
	"twill.dev/twill/dataplane"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/explain"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/internal/seedtest"
	"twill.dev/twill/ipam"
	"twill.dev/twill/lab"
	"twill.dev/twill/plan"
)

// seedCaliName is the reference's host-side veth name of a seed node's
// i-th pod.
func seedCaliName(node string, i int) string {
	return seedtest.CaliName(seedtest.PodName(node, i))
}

// writeSeed fills the datastore at ep the way agents and the CNI plugin
// would for the seed cluster: the pool (through `twill apply`), the nodes
// with host interface iface, MTU 1500, observed VTEP MAC and their block's
// first address as tunnel address, each node's block pinned, the tunnel
// and pod addresses allocated, and a workload endpoint per pod whose host
// veth is named by vethName.
func writeSeed(t *testing.T, ep string, s *seedtest.Cluster, iface string, vethName func(node string, i int) string) {
	t.Helper()
	mustSucceed(t, twill(t, ep, seedPool, "apply", "-f", "-"))
	st := etcdtest.Connect(t, ep, etcd.Config{})
	ctx := context.Background()
	m := ipam.New(st)
	for _, n := range s.Nodes {
		block := netip.MustParsePrefix(n.Block)
		node := api.Node{
			TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
			Metadata: api.ObjectMeta{Name: n.Name},
			Spec: api.NodeSpec{Address: n.Address, Interface: iface, MTU: 1500,
				VTEPMAC: s.Observed.VTEPs[n.Name].MAC, TunnelAddress: block.Addr().String()},
		}
		put(t, st, datastore.KindNode, n.Name, nil, node)
		if err := m.PinBlock(ctx, block, n.Name); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Allocate(ctx, ipam.AllocateRequest{Handle: "vxlan-tunnel-addr-" + n.Name, Node: n.Name, Use: api.UseTunnel, IP: block.Addr()}); err != nil {
			t.Fatal(err)
		}
		for i, ip := range n.Pods {
			pod := seedtest.PodName(n.Name, i)
			handle := "c-" + pod + ".eth0"
			attrs := map[string]string{api.AttrNamespace: "default", api.AttrPod: pod}
			if _, err := m.Allocate(ctx, ipam.AllocateRequest{Handle: handle, Node: n.Name, IP: netip.MustParseAddr(ip), Attrs: attrs}); err != nil {
				t.Fatal(err)
			}
			put(t, st, datastore.KindWorkload, handle, map[string]string{datastore.LabelNode: n.Name}, api.WorkloadEndpoint{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
				Metadata: api.ObjectMeta{Name: handle, Labels: map[string]string{datastore.LabelNode: n.Name}},
				Spec: api.WorkloadEndpointSpec{Node: n.Name, Namespace: "default", Pod: pod, ContainerID: "c-" + pod, IfName: "eth0",
					Handle: handle, HostIface: vethName(n.Name, i), Addresses: []string{ip + "/32"}},
			})
		}
	}
}

// put writes v as kind/name with labels, whether or not it exists.
func put(t *testing.T, st datastore.Store, kind datastore.Kind, name string, labels map[string]string, v any) {
	t.Helper()
	kv, err := datastore.NewKV(kind, name, v)
	if err != nil {
		t.Fatal(err)
	}
	kv.Labels = labels
	if _, err := datastore.Put(context.Background(), st, kv); err != nil {
		t.Fatalf("put %s %s: %v", kind, name, err)
	}
}

var caliRE = regexp.MustCompile(`cali[0-9a-f]{11}`)

// podNetworkLines returns the seed's `route -n` lines that are the pod
// network's (172.16.0.0/16), with cali names normalised.
func podNetworkLines(s *seedtest.Cluster, node string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s.Observed.RouteN[node], "\n"), "\n") {
		if strings.HasPrefix(l, "172.16.") {
			out = append(out, caliRE.ReplaceAllString(l, "caliXXXXXXXXXXX"))
		}
	}
	return out
}

func TestRoutesMatchSeed(t *testing.T) {
	s := seedtest.Load(t)
	ep := etcdtest.Start(t)
	writeSeed(t, ep, s, "eth0", seedCaliName)

	for _, n := range s.Nodes {
		t.Run(n.Name, func(t *testing.T) {
			r := mustSucceed(t, twill(t, ep, "", "routes", n.Name))
			lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
			want := append([]string{
				"Kernel IP routing table",
				"Destination     Gateway         Genmask         Flags Metric Ref    Use Iface",
			}, podNetworkLines(s, n.Name)...)
			for i := range lines {
				lines[i] = caliRE.ReplaceAllString(lines[i], "caliXXXXXXXXXXX")
			}
			if strings.Join(lines, "\n") != strings.Join(want, "\n") {
				t.Errorf("twill routes %s:\n%s\nwant (the seed's pod-network lines):\n%s", n.Name, strings.Join(lines, "\n"), strings.Join(want, "\n"))
			}
		})
	}

	r := mustSucceed(t, twill(t, ep, "", "routes", "k8s-master1", "-o", "ip"))
	ipLines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(ipLines) != len(podNetworkLines(s, "k8s-master1")) ||
		!strings.Contains(r.stdout, "172.16.36.64/26 via 172.16.36.64 dev vxlan.calico proto 80 onlink\n") ||
		!strings.Contains(r.stdout, "blackhole 172.16.159.128/26 proto 80\n") ||
		!strings.Contains(r.stdout, "172.16.159.145 dev "+seedCaliName("k8s-master1", 0)+" proto 80 scope link\n") {
		t.Errorf("routes -o ip:\n%s", r.stdout)
	}

	r = mustSucceed(t, twill(t, ep, "", "routes", "k8s-master1", "-o", "yaml"))
	var dp plan.Dataplane
	if err := yaml.Unmarshal([]byte(r.stdout), &dp); err != nil {
		t.Fatalf("routes -o yaml does not decode: %v\n%s", err, r.stdout)
	}
	if dp.Device == nil || dp.Device.MAC != s.Observed.VTEPs["k8s-master1"].MAC || dp.Device.MTU != 1450 || dp.Device.VNI != 4096 ||
		len(dp.Routes) != len(ipLines) || len(dp.Neighbors) != 3 || len(dp.FDB) != 3 {
		t.Errorf("routes -o yaml: %+v", dp)
	}

	mustFail(t, twill(t, ep, "", "routes", "k8s-nope"), `node "k8s-nope" is not registered`, "k8s-master1")
	if r := twill(t, ep, "", "routes", "k8s-master1", "-o", "table"); r.code != 2 {
		t.Errorf("bad -o: exit %d", r.code)
	}
	if r := twill(t, ep, "", "routes", "k8s-master1", "--netns", "/var/run/netns/x"); r.code != 2 {
		t.Errorf("--netns without --live: exit %d", r.code)
	}
	if r := twill(t, ep, "", "routes"); r.code != 2 {
		t.Errorf("no node: exit %d", r.code)
	}

	// A peer in another subnet without a VTEP: no route, and the planner
	// says why after the routes.
	st := etcdtest.Connect(t, ep, etcd.Config{})
	put(t, st, datastore.KindNode, "k8s-node2", nil, api.Node{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: "k8s-node2"},
		Spec:     api.NodeSpec{Address: "192.168.33.7/24", Interface: "eth0", TunnelAddress: "172.16.1.0"},
	})
	if err := ipam.New(st).PinBlock(context.Background(), netip.MustParsePrefix("172.16.1.0/26"), "k8s-node2"); err != nil {
		t.Fatal(err)
	}
	r = mustSucceed(t, twill(t, ep, "", "routes", "k8s-master1"))
	if strings.Contains(r.stdout, "172.16.1.0 ") || !strings.Contains(r.stdout, "\nStatus:\n  - no route to 172.16.1.0/26 on k8s-node2: no VTEP known for peer k8s-node2 (it has no vtepMAC)") {
		t.Errorf("routes with a VTEP-less peer:\n%s", r.stdout)
	}
	r = mustSucceed(t, twill(t, ep, "", "explain", "k8s-master1-pod-0", "k8s-node2", "--live=false"))
	if !strings.Contains(r.stdout, "no VTEP known for peer k8s-node2: it has no vtepMAC") {
		t.Errorf("explain to a VTEP-less peer:\n%s", r.stdout)
	}
}

func TestExplainCommand(t *testing.T) {
	s := seedtest.Load(t)
	ep := etcdtest.Start(t)
	writeSeed(t, ep, s, "eth0", seedCaliName)
	noLab := t.TempDir() // no lab is up here: the nodes' kernels are unknown

	r := mustSucceed(t, twill(t, ep, "", "explain", "k8s-master1-pod-0", "default/k8s-node1-pod-0", "-o", "json", "--lab-state-dir", noLab))
	var p explain.Path
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("explain -o json: %v\n%s", err, r.stdout)
	}
	if p.Forward == nil || p.Forward.Via != explain.ViaVXLAN || p.Forward.VXLAN == nil {
		t.Fatalf("forward %+v", p.Forward)
	}
	v := p.Forward.VXLAN
	if v.OuterSrc != "192.168.3.241" || v.OuterDst != "192.168.32.105" || v.Port != 4789 || v.VNI != 4096 ||
		v.InnerSrcMAC != "66:04:84:48:ab:6a" || v.InnerDstMAC != "66:8c:73:5a:90:99" || v.OuterLength != 148 {
		t.Errorf("vxlan %+v", v)
	}
	if p.Src.Address != "172.16.159.145" || p.Dst.HostIface != seedCaliName("k8s-node1", 0) || len(p.Live) != 0 || len(p.Problems) != 0 {
		t.Errorf("src %+v dst %+v live %v problems %q", p.Src, p.Dst, p.Live, p.Problems)
	}

	r = mustSucceed(t, twill(t, ep, "", "explain", "172.16.159.145", "172.16.224.15", "--lab-state-dir", noLab))
	for _, want := range []string{
		"Forward: k8s-master1 → k8s-master2", "direct, unencapsulated",
		"172.16.224.0/26 via 192.168.3.242 dev eth0 proto 80 onlink",
		"172.16.224.0    192.168.3.242   255.255.255.192 UG    0      0        0 eth0",
		"source/destination checks",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("explain text lacks %q:\n%s", want, r.stdout)
		}
	}

	mustFail(t, twill(t, ep, "", "explain", "k8s-master1-pod-0", "nope", "--lab-state-dir", noLab), "destination", "unknown endpoint", "k8s-master1")
	mustFail(t, twill(t, ep, "", "explain", "k8s-master1-pod-0", "k8s-node1", "--live", "--lab-state-dir", noLab), "--live", "--src-netns")
	for _, args := range [][]string{
		{"explain", "k8s-master1"},
		{"explain", "a", "b", "c"},
		{"explain", "k8s-master1", "k8s-node1", "-o", "yaml"},
	} {
		if r := twill(t, ep, "", args...); r.code != 2 {
			t.Errorf("twill %v: exit %d, want 2 (stderr %q)", args, r.code, r.stderr)
		}
	}
}

// ipIn runs `ip -n ns args`.
func ipIn(t *testing.T, ns string, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
}

// nftIn opens an nftables connection into the namespace at path.
func nftIn(t *testing.T, path string) *nftables.Conn {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatalf("nftables in %s: %v", path, err)
	}
	return c
}

// TestRoutesLive applies k8s-master1's plan to a namespace of its own,
// deletes a route and a VXLAN peer by hand and adds a foreign route with
// Twill's protocol, and checks that `routes --live` and `explain --live`
// mark them, then that a deleted firewall table shows as missing.
func TestRoutesLive(t *testing.T) {
	nettest.RequireRoot(t, "ip")
	s := seedtest.Load(t)
	ep := etcdtest.Start(t)
	veth := func(node string, i int) string { return fmt.Sprintf("twcali%d", i) }
	writeSeed(t, ep, s, "tweth0", veth)

	// The namespace is laid out as a lab's node k8s-master1 (prefix
	// "tw" + 6 hex digits), so that a lab state file can point at it.
	prefix := fmt.Sprintf("tw%06x", rand.Uint32()&0xffffff)
	nsh := nettest.Named(t, prefix+"-k8s-master1")
	ns, path := nsh.Name, nsh.Path
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(nsh.Veth("tweth0", nsh, "tweth0p"))
	must(nsh.AddrAdd("tweth0", "192.168.3.241/24"))
	for i := range s.Nodes[0].Pods {
		name := veth("k8s-master1", i)
		must(nsh.Veth(name, nsh, name+"p"))
	}

	// The plan as `twill routes -o yaml` prints it, applied as the agent would.
	r := mustSucceed(t, twill(t, ep, "", "routes", "k8s-master1", "-o", "yaml"))
	var dp plan.Dataplane
	if err := yaml.Unmarshal([]byte(r.stdout), &dp); err != nil {
		t.Fatal(err)
	}
	rec, err := dataplane.New(dataplane.Options{NetnsPath: path, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close() })
	res, err := rec.Apply(dp)
	if err != nil || len(res.Pending) > 0 || len(res.Conflicts) > 0 {
		t.Fatalf("apply: %v, pending %v, conflicts %v", err, res.Pending, res.Conflicts)
	}

	noLab := t.TempDir()
	live := func(extra ...string) string {
		t.Helper()
		args := append([]string{"routes", "k8s-master1", "--live", "--netns", path, "--lab-state-dir", noLab}, extra...)
		return mustSucceed(t, twill(t, ep, "", args...)).stdout
	}
	out := live()
	if !strings.Contains(out, "\nlive: 0 missing, 0 extra, 0 different\n") {
		t.Fatalf("routes --live right after apply:\n%s", out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "- ") || strings.HasPrefix(l, "+ ") || strings.HasPrefix(l, "! ") {
			t.Errorf("difference marked on a converged node: %q", l)
		}
	}
	want := plan.RouteN([]plan.Route{{Dst: netip.MustParsePrefix("172.16.224.0/26"), Gateway: netip.MustParseAddr("192.168.3.242"), Device: "tweth0", OnLink: true}})[0]
	if !strings.Contains(out, "\n  "+want+"\n") {
		t.Errorf("route -n line %q not listed as the same:\n%s", want, out)
	}
	// The host firewall, as Apply wrote it: the table with its chains,
	// sets and counter, and every planned element, all the same.
	fwWant := strings.Join([]string{
		"Firewall (nft table inet twill):",
		"  table inet twill",
		"  chain output",
		"  chain postrouting",
		"  chain prerouting",
		"  counter vxlan-dropped",
		"  set all-pools",
		"  set nat-pools",
		"  set vxlan-peers",
		"  counter vxlan-dropped: 0 packets, 0 bytes (VXLAN from addresses that are not nodes, dropped)",
		"",
		"Firewall set nat-pools:",
		"  172.16.0.0/16",
		"",
		"Firewall set all-pools:",
		"  172.16.0.0/16",
		"",
		"Firewall set vxlan-peers:",
		"  192.168.3.242",
		"  192.168.3.243",
		"  192.168.32.105",
	}, "\n")
	if !strings.Contains(out, "\n"+fwWant+"\n") {
		t.Errorf("routes --live lacks the firewall section\n%s\nin:\n%s", fwWant, out)
	}

	ipIn(t, ns, "route", "del", "172.16.224.0/26")
	ipIn(t, ns, "route", "add", "172.16.99.0/26", "via", "192.168.3.9", "dev", "tweth0", "proto", "80", "onlink")
	// One peer's address taken out of the VXLAN allow-list by hand (rec
	// does not subscribe: nothing heals it).
	nft := nftIn(t, path)
	peers := &nftables.Set{Table: &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.FirewallTable}, Name: dataplane.SetVXLANPeers, KeyType: nftables.TypeIPAddr}
	if err := nft.SetDeleteElements(peers, []nftables.SetElement{{Key: []byte{192, 168, 3, 243}}}); err != nil {
		t.Fatal(err)
	}
	if err := nft.Flush(); err != nil {
		t.Fatalf("delete 192.168.3.243 from set vxlan-peers: %v", err)
	}
	out = live()
	if !strings.Contains(out, "\n- "+want+"  # missing\n") {
		t.Errorf("deleted route not marked missing:\n%s", out)
	}
	if !regexp.MustCompile(`\n\+ 172\.16\.99\.0 +192\.168\.3\.9 +255\.255\.255\.192 UG .* tweth0  # extra\n`).MatchString(out) {
		t.Errorf("foreign route not marked extra:\n%s", out)
	}
	if !strings.Contains(out, "\nFirewall set vxlan-peers:\n  192.168.3.242\n- 192.168.3.243  # missing\n  192.168.32.105\n") {
		t.Errorf("deleted set element not marked missing:\n%s", out)
	}
	if !strings.Contains(out, "\nlive: 2 missing, 1 extra, 0 different\n") {
		t.Errorf("summary:\n%s", out)
	}
	out = live("-o", "ip")
	if !strings.Contains(out, "\n- 172.16.224.0/26 via 192.168.3.242 dev tweth0 proto 80 onlink  # missing\n") {
		t.Errorf("-o ip: deleted route not marked missing:\n%s", out)
	}
	out = live("-o", "yaml")
	var rep struct {
		Differences []string                    `json:"differences"`
		Firewall    *dataplane.ObservedFirewall `json:"firewall"`
	}
	if err := yaml.Unmarshal([]byte(out), &rep); err != nil || len(rep.Differences) != 3 || !slices.Contains(rep.Differences, "- 192.168.3.243  # missing") {
		t.Errorf("-o yaml differences %q (%v):\n%s", rep.Differences, err, out)
	}
	if rep.Firewall == nil || !rep.Firewall.Table || len(rep.Firewall.VXLANPeers) != 2 || len(rep.Firewall.NATPools) != 1 {
		t.Errorf("-o yaml firewall %+v:\n%s", rep.Firewall, out)
	}

	// Without the table, everything in it is missing.
	nft.DelTable(peers.Table)
	if err := nft.Flush(); err != nil {
		t.Fatalf("delete table inet twill: %v", err)
	}
	out = live()
	for _, w := range []string{"\n- table inet twill  # missing\n", "\n- chain prerouting  # missing\n", "\n- counter vxlan-dropped  # missing\n",
		"\nFirewall set nat-pools:\n- 172.16.0.0/16  # missing\n", "\n- 192.168.32.105  # missing\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("without the table, routes --live lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "counter vxlan-dropped: ") {
		t.Errorf("counter values shown without a table:\n%s", out)
	}
	// 1 route, table, 3 chains, 3 sets, counter, 2 pools, 3 peers.
	if !strings.Contains(out, "\nlive: 14 missing, 1 extra, 0 different\n") {
		t.Errorf("summary without the table:\n%s", out)
	}

	// A running lab's state file names the namespace of lab node k8s-master1.
	labDir := t.TempDir()
	topo, err := lab.BuiltinSource("seed")
	if err != nil {
		t.Fatal(err)
	}
	state, err := json.Marshal(map[string]any{"version": 1, "topology": "seed", "topologyYAML": string(topo), "prefix": prefix, "phase": "up"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(labDir, "state.json"), state, 0o644); err != nil {
		t.Fatal(err)
	}
	r = mustSucceed(t, twill(t, ep, "", "routes", "k8s-master1", "--live", "--lab-state-dir", labDir))
	if !strings.Contains(r.stdout, "compared with the kernel of "+path+" (lab node k8s-master1)") || !strings.Contains(r.stdout, "\n- "+want+"  # missing\n") {
		t.Errorf("routes --live for a lab node:\n%s", r.stdout)
	}
	// explain reads a lab node's kernel without being asked.
	r = mustSucceed(t, twill(t, ep, "", "explain", "k8s-master1-pod-0", "k8s-master2-pod-0", "--lab-state-dir", labDir))
	if !strings.Contains(r.stdout, "live k8s-master1: route to 172.16.224.15: missing") ||
		!strings.Contains(r.stdout, "lab node k8s-master2's namespace /var/run/netns/"+prefix+"-k8s-master2 is gone") {
		t.Errorf("explain with a lab:\n%s", r.stdout)
	}
	r = mustSucceed(t, twill(t, ep, "", "explain", "k8s-master1-pod-0", "k8s-master2-pod-0", "--live=false", "--lab-state-dir", labDir))
	if strings.Contains(r.stdout, "live ") || strings.Contains(r.stdout, "Live kernel state") {
		t.Errorf("explain --live=false read a kernel:\n%s", r.stdout)
	}

	r = mustSucceed(t, twill(t, ep, "", "explain", "k8s-master1-pod-0", "k8s-master2-pod-0", "--live", "--src-netns", path, "--lab-state-dir", noLab))
	if !strings.Contains(r.stdout, "live k8s-master1: route to 172.16.224.15: missing") ||
		!strings.Contains(r.stdout, "the kernel of k8s-master2 was not read") {
		t.Errorf("explain --live:\n%s", r.stdout)
	}
	r = mustSucceed(t, twill(t, ep, "", "explain", "k8s-master1-pod-0", "k8s-node1-pod-0", "--live", "--src-netns", path, "--lab-state-dir", noLab))
	for _, want := range []string{"ok   k8s-master1: route to 172.16.36.80", "ok   k8s-master1: VXLAN device", "ok   k8s-master1: neighbour 172.16.36.64", "ok   k8s-master1: FDB 66:8c:73:5a:90:99"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("explain --live lacks %q:\n%s", want, r.stdout)
		}
	}
}
