package explain_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/explain"
	"twill.dev/twill/internal/seedtest"
	"twill.dev/twill/plan"
)

func hasSub(list []string, sub string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, sub) })
}

// setNode changes one node of the cluster.
func setNode(c *explain.Cluster, name string, f func(*api.NodeSpec)) {
	for i := range c.Nodes {
		if c.Nodes[i].Metadata.Name == name {
			f(&c.Nodes[i].Spec)
		}
	}
}

// TestSeedPaths checks the paths the seed's author worked out by hand:
// same-subnet pods go directly over eth0, cross-subnet pods over VXLAN with
// the captured VNI, port, outer addresses, VTEP MACs and lengths.
func TestSeedPaths(t *testing.T) {
	s := seedtest.Load(t)
	c := seedClusterInput(t, s)
	same := s.Observed.Captures["same_subnet"]
	cross := s.Observed.Captures["cross_subnet"]
	podCap := parseCapture(t, cross.PodIface)
	vx := parseCapture(t, cross.VXLAN)
	outer := parseCapture(t, cross.ETH0)
	direct := parseCapture(t, same.ETH0)

	t.Run("master1 to master2 direct", func(t *testing.T) {
		// Source and destination as in the seed's same-subnet capture.
		p, err := explain.Explain(c, direct.src, direct.dst)
		if err != nil {
			t.Fatal(err)
		}
		if p.Src.Node != "k8s-master1" || p.Dst.Node != "k8s-master2" || p.Src.Kind != explain.KindPod || p.Dst.Pod != "k8s-master2-pod-0" {
			t.Fatalf("endpoints %+v → %+v", p.Src, p.Dst)
		}
		f := p.Forward
		if f == nil || f.Via != explain.ViaDirect || f.Expected != explain.ViaDirect || f.Direct == nil {
			t.Fatalf("forward %+v", f)
		}
		if f.Direct.NextHop != "192.168.3.242" || f.Direct.Interface != "eth0" || f.Direct.SourceAddress != direct.src {
			t.Errorf("direct %+v", f.Direct)
		}
		if f.Direct.Length != direct.length || f.Direct.PathMTU != 1500 {
			t.Errorf("length %d (seed captured %d), path MTU %d", f.Direct.Length, direct.length, f.Direct.PathMTU)
		}
		if got, want := collapse(f.Route.RouteN), seedRouteN(t, s, "k8s-master1", "172.16.224.0"); got != want {
			t.Errorf("route -n %q, seed %q", got, want)
		}
		if f.Route.IPRoute != "172.16.224.0/26 via 192.168.3.242 dev eth0 proto 80 onlink" {
			t.Errorf("ip route %q", f.Route.IPRoute)
		}
		if !f.Subnet.Same || f.Subnet.Subnet != "192.168.3.0/24" || !strings.Contains(f.Subnet.Why, "192.168.3.242 (k8s-master2) is inside 192.168.3.0/24") {
			t.Errorf("subnet %+v", f.Subnet)
		}
		if f.Pool != "default-ipv4-ippool" || f.VXLANMode != api.EncapCrossSubnet {
			t.Errorf("pool %s %s", f.Pool, f.VXLANMode)
		}
		r := p.Return
		if r == nil || r.Via != explain.ViaDirect || r.Direct.NextHop != "192.168.3.241" || r.ToAddress != direct.src {
			t.Fatalf("return %+v", r)
		}
		if got, want := collapse(r.Route.RouteN), seedRouteN(t, s, "k8s-master2", "172.16.159.128"); got != want {
			t.Errorf("return route -n %q, seed %q", got, want)
		}
		if len(p.Problems) != 0 {
			t.Errorf("problems %q", p.Problems)
		}
		if !hasSub(p.Notes, "source/destination checks") {
			t.Errorf("no cloud source/destination check warning in %q", p.Notes)
		}
	})

	t.Run("master1 to node1 VXLAN", func(t *testing.T) {
		p, err := explain.Explain(c, podCap.src, podCap.dst)
		if err != nil {
			t.Fatal(err)
		}
		f := p.Forward
		if f == nil || f.Via != explain.ViaVXLAN || f.VXLAN == nil {
			t.Fatalf("forward %+v", f)
		}
		v := f.VXLAN
		want := explain.VXLANInfo{
			Device: "vxlan.calico", VNI: outer.vni, Port: outer.dstPort, Gateway: "172.16.36.64",
			OuterSrc: outer.src, OuterDst: outer.dst, OuterInterface: "eth0",
			InnerSrcMAC: vx.srcMAC, InnerDstMAC: vx.dstMAC,
			InnerLength: vx.length, OuterLength: outer.length,
			DeviceMTU: s.Observed.VTEPs["k8s-master1"].MTU, HostMTU: 1500,
		}
		if *v != want {
			t.Errorf("vxlan\n got %+v\nwant %+v", *v, want)
		}
		// The values the brief spells out, as a cross-check of the parsing.
		if v.OuterSrc != "192.168.3.241" || v.OuterDst != "192.168.32.105" || v.Port != 4789 || v.VNI != 4096 ||
			v.InnerSrcMAC != "66:04:84:48:ab:6a" || v.InnerDstMAC != "66:8c:73:5a:90:99" || v.InnerLength != 98 || v.OuterLength != 148 {
			t.Errorf("vxlan %+v", v)
		}
		if got, want := collapse(f.Route.RouteN), seedRouteN(t, s, "k8s-master1", "172.16.36.64"); got != want {
			t.Errorf("route -n %q, seed %q", got, want)
		}
		if f.Subnet.Same || !strings.Contains(f.Subnet.Why, "192.168.32.105 (k8s-node1) is outside 192.168.3.0/24") {
			t.Errorf("subnet %+v", f.Subnet)
		}
		r := p.Return
		if r == nil || r.Via != explain.ViaVXLAN {
			t.Fatalf("return %+v", r)
		}
		if r.VXLAN.OuterSrc != outer.dst || r.VXLAN.OuterDst != outer.src || r.VXLAN.InnerSrcMAC != vx.dstMAC || r.VXLAN.InnerDstMAC != vx.srcMAC {
			t.Errorf("return vxlan %+v", r.VXLAN)
		}
		if got, want := collapse(r.Route.RouteN), seedRouteN(t, s, "k8s-node1", "172.16.159.128"); got != want {
			t.Errorf("return route -n %q, seed %q", got, want)
		}
		if len(p.Problems) != 0 || hasSub(p.Notes, "source/destination") {
			t.Errorf("problems %q notes %q", p.Problems, p.Notes)
		}
	})

	t.Run("node1 to master3 VXLAN by node name", func(t *testing.T) {
		p, err := explain.Explain(c, "k8s-node1", "k8s-master3")
		if err != nil {
			t.Fatal(err)
		}
		if p.Src.Kind != explain.KindNode || p.Src.Address != "172.16.36.64" || p.Dst.Address != "172.16.135.192" {
			t.Fatalf("endpoints %+v → %+v", p.Src, p.Dst)
		}
		f := p.Forward
		if f.Via != explain.ViaVXLAN || f.VXLAN.OuterSrc != "192.168.32.105" || f.VXLAN.OuterDst != "192.168.3.243" ||
			f.VXLAN.InnerDstMAC != s.Observed.VTEPs["k8s-master3"].MAC || f.VXLAN.InnerSrcMAC != s.Observed.VTEPs["k8s-node1"].MAC {
			t.Errorf("forward %+v %+v", f, f.VXLAN)
		}
		if got, want := collapse(f.Route.RouteN), seedRouteN(t, s, "k8s-node1", "172.16.135.192"); got != want {
			t.Errorf("route -n %q, seed %q", got, want)
		}
		if p.Return.Via != explain.ViaVXLAN {
			t.Errorf("return %+v", p.Return)
		}
	})
}

func TestMisconfigurations(t *testing.T) {
	s := seedtest.Load(t)
	cases := []struct {
		name     string
		change   func(c *explain.Cluster)
		src, dst string
		fwd, ret explain.Via
		problems []string
		notes    []string
		status   string // a planner note expected on the forward direction
	}{
		{
			name: "node address recorded as /32",
			change: func(c *explain.Cluster) {
				setNode(c, "k8s-master1", func(n *api.NodeSpec) { n.Address = "192.168.3.241/32" })
			},
			src:      "k8s-master1-pod-0",
			dst:      "k8s-master2-pod-0",
			fwd:      explain.ViaVXLAN, // master1 sees nobody in its "subnet"
			ret:      explain.ViaDirect,
			problems: []string{"recorded as 192.168.3.241/32", "192.168.3.241/24"},
			notes:    []string{"the two directions differ"},
			status:   "has no subnet",
		},
		{
			name: "bare node address",
			change: func(c *explain.Cluster) {
				setNode(c, "k8s-master2", func(n *api.NodeSpec) { n.Address = "192.168.3.242" })
			},
			src:      "default/k8s-master1-pod-0",
			dst:      "default/k8s-master2-pod-1",
			fwd:      explain.ViaDirect,
			ret:      explain.ViaVXLAN,
			problems: []string{"node k8s-master2's address is recorded as 192.168.3.242/32"},
		},
		{
			name:     "missing VTEP",
			change:   func(c *explain.Cluster) { setNode(c, "k8s-node1", func(n *api.NodeSpec) { n.VTEPMAC = "" }) },
			src:      "k8s-master1-pod-0",
			dst:      "k8s-node1-pod-0",
			fwd:      explain.ViaNone,
			ret:      explain.ViaVXLAN,
			problems: []string{"no VTEP known for peer k8s-node1: it has no vtepMAC"},
			status:   "no VTEP known for peer k8s-node1",
		},
		{
			name:     "missing tunnel address",
			change:   func(c *explain.Cluster) { setNode(c, "k8s-node1", func(n *api.NodeSpec) { n.TunnelAddress = "" }) },
			src:      "k8s-master1-pod-0",
			dst:      "k8s-node1-pod-0",
			fwd:      explain.ViaNone,
			ret:      explain.ViaNone, // node1 has no VXLAN device either
			problems: []string{"no VTEP known for peer k8s-node1: it has no tunnelAddress", "k8s-node1 itself has no tunnelAddress"},
		},
		{
			name:     "Never across subnets",
			change:   func(c *explain.Cluster) { c.Pools[0].Spec.VXLANMode = api.EncapNever },
			src:      "k8s-master1-pod-0",
			dst:      "k8s-node1-pod-1",
			fwd:      explain.ViaNone,
			ret:      explain.ViaNone,
			problems: []string{"pool default-ipv4-ippool has vxlanMode Never", "is outside 192.168.3.0/24"},
			status:   "has vxlanMode Never",
		},
		{
			name:   "Never within a subnet still routes",
			change: func(c *explain.Cluster) { c.Pools[0].Spec.VXLANMode = api.EncapNever },
			src:    "k8s-master1-pod-0",
			dst:    "k8s-master3-pod-0",
			fwd:    explain.ViaDirect,
			ret:    explain.ViaDirect,
		},
		{
			name:   "Always encapsulates within a subnet",
			change: func(c *explain.Cluster) { c.Pools[0].Spec.VXLANMode = api.EncapAlways },
			src:    "k8s-master1-pod-0",
			dst:    "k8s-master2-pod-0",
			fwd:    explain.ViaVXLAN,
			ret:    explain.ViaVXLAN,
		},
		{
			name:   "same node",
			src:    "k8s-master1-pod-0",
			dst:    "k8s-master1-pod-3",
			fwd:    explain.ViaLocal,
			ret:    explain.ViaLocal,
			notes:  []string{"are both on k8s-master1", seedtest.CaliName("k8s-master1-pod-3")},
			status: "",
		},
		{
			name:     "destination in no pool",
			src:      "k8s-master1-pod-0",
			dst:      "10.9.9.9",
			fwd:      explain.ViaNone,
			problems: []string{"10.9.9.9 is in no IP pool"},
		},
		{
			name:     "unallocated address",
			src:      "k8s-master1-pod-0",
			dst:      "172.16.36.100",
			fwd:      explain.ViaVXLAN, // the block route still covers it
			ret:      explain.ViaVXLAN,
			problems: []string{"172.16.36.100 is not allocated"},
		},
		{
			name: "unallocated address on the same node",
			src:  "k8s-master1-pod-0", dst: "172.16.159.150",
			fwd: explain.ViaBlackhole, ret: explain.ViaLocal,
			problems: []string{"172.16.159.150 is not allocated", "blackhole"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := seedClusterInput(t, s)
			if tc.change != nil {
				tc.change(&c)
			}
			p, err := explain.Explain(c, tc.src, tc.dst)
			if err != nil {
				t.Fatal(err)
			}
			if p.Forward == nil || p.Forward.Via != tc.fwd {
				t.Errorf("forward via %v, want %s", p.Forward, tc.fwd)
			}
			switch {
			case tc.ret == "" && p.Return != nil:
				t.Errorf("return %+v, want none", p.Return)
			case tc.ret != "" && (p.Return == nil || p.Return.Via != tc.ret):
				t.Errorf("return via %v, want %s", p.Return, tc.ret)
			}
			for _, w := range tc.problems {
				if !hasSub(p.Problems, w) {
					t.Errorf("problems lack %q:\n  %s", w, strings.Join(p.Problems, "\n  "))
				}
			}
			if len(tc.problems) == 0 && len(p.Problems) != 0 {
				t.Errorf("unexpected problems %q", p.Problems)
			}
			for _, w := range tc.notes {
				if !hasSub(p.Notes, w) {
					t.Errorf("notes lack %q: %q", w, p.Notes)
				}
			}
			if tc.status != "" && !hasSub(p.Forward.Status, tc.status) {
				t.Errorf("forward status lacks %q: %q", tc.status, p.Forward.Status)
			}
			if tc.fwd == explain.ViaNone && p.Forward.Route != nil {
				t.Errorf("no route expected, got %+v", p.Forward.Route)
			}
			// The report always renders, and says what is wrong.
			txt := p.Text()
			for _, pr := range p.Problems {
				if !strings.Contains(txt, pr) {
					t.Errorf("text lacks problem %q", pr)
				}
			}
		})
	}
}

func TestResolve(t *testing.T) {
	s := seedtest.Load(t)
	c := seedClusterInput(t, s)
	same := func(a, b string) {
		t.Helper()
		pa, err := explain.Explain(c, a, "k8s-node1")
		if err != nil {
			t.Fatal(err)
		}
		pb, err := explain.Explain(c, b, "k8s-node1")
		if err != nil {
			t.Fatal(err)
		}
		pa.Src.Query, pb.Src.Query = "", ""
		if !reflect.DeepEqual(pa, pb) {
			t.Errorf("%q and %q resolve differently:\n%+v\n%+v", a, b, pa.Src, pb.Src)
		}
	}
	same("k8s-master2-pod-1", "default/k8s-master2-pod-1")
	same("default/k8s-master2-pod-1", "172.16.224.16")
	same("172.16.224.16/32", "172.16.224.16")
	same("k8s-master2", "172.16.224.0")

	p, err := explain.Explain(c, "192.168.3.241", "k8s-node1-pod-0")
	if err != nil {
		t.Fatal(err)
	}
	if p.Src.Kind != explain.KindHost || p.Src.Node != "k8s-master1" || !hasSub(p.Problems, "host address") {
		t.Errorf("host address: %+v %q", p.Src, p.Problems)
	}

	for _, tc := range []struct {
		src, dst string
		want     error
	}{
		{"", "k8s-node1", explain.ErrUnknownEndpoint},
		{"nope", "k8s-node1", explain.ErrUnknownEndpoint},
		{"kube-system/k8s-master1-pod-0", "k8s-node1", explain.ErrUnknownEndpoint},
		{"k8s-node1", "fd00::1", explain.ErrUnknownEndpoint},
		{"10.1.1.1", "10.2.2.2", explain.ErrNoNode},
		{"k8s-node1", "172.16.224.0/26", explain.ErrUnknownEndpoint},
	} {
		if _, err := explain.Explain(c, tc.src, tc.dst); !errors.Is(err, tc.want) {
			t.Errorf("Explain(%q, %q) = %v, want %v", tc.src, tc.dst, err, tc.want)
		}
	}
	if _, err := explain.Explain(c, "nope", "k8s-node1"); err == nil || !strings.Contains(err.Error(), "k8s-master1") {
		t.Errorf("unknown name error does not list the nodes: %v", err)
	}
}

func TestNodeEndpoints(t *testing.T) {
	s := seedtest.Load(t)
	c := seedClusterInput(t, s)
	// A node to itself: its tunnel address is local, not blackholed.
	p, err := explain.Explain(c, "k8s-master1-pod-0", "k8s-master1")
	if err != nil {
		t.Fatal(err)
	}
	if !p.SameNode || p.Forward.Via != explain.ViaLocal || len(p.Problems) != 0 || !hasSub(p.Notes, "own tunnel address") {
		t.Errorf("pod to own node: forward %+v problems %q notes %q", p.Forward, p.Problems, p.Notes)
	}
	// A node's own traffic on a direct path leaves with its host address,
	// which no source/destination check minds; the reply is pod-addressed.
	p, err = explain.Explain(c, "k8s-master1", "k8s-master2-pod-0")
	if err != nil {
		t.Fatal(err)
	}
	if p.Forward.Via != explain.ViaDirect || p.Forward.Direct.SourceAddress != "192.168.3.241" {
		t.Errorf("node to pod: %+v", p.Forward.Direct)
	}
	if p.Return.Via != explain.ViaDirect || p.Return.ToAddress != "172.16.159.128" || !hasSub(p.Notes, "k8s-master2 → k8s-master1 leaves eth0 with the pod source address 172.16.224.15") {
		t.Errorf("return %+v notes %q", p.Return, p.Notes)
	}
}

func TestPodWithoutWorkload(t *testing.T) {
	s := seedtest.Load(t)
	c := seedClusterInput(t, s)
	// Drop node1's first workload: the pod keeps its address in IPAM.
	c.Workloads = slices.DeleteFunc(c.Workloads, func(w api.WorkloadEndpoint) bool { return w.Spec.Pod == "k8s-node1-pod-0" })
	p, err := explain.Explain(c, "k8s-master1-pod-0", "k8s-node1-pod-0")
	if err != nil {
		t.Fatal(err)
	}
	if p.Dst.Address != "172.16.36.80" || p.Dst.Node != "k8s-node1" || !hasSub(p.Problems, "has no workload endpoint on node k8s-node1") {
		t.Errorf("dst %+v problems %q", p.Dst, p.Problems)
	}
}

func TestTextAndJSON(t *testing.T) {
	s := seedtest.Load(t)
	c := seedClusterInput(t, s)
	p, err := explain.Explain(c, "k8s-master1-pod-0", "k8s-node1-pod-0")
	if err != nil {
		t.Fatal(err)
	}
	txt := p.Text()
	for _, want := range []string{
		"Path from pod default/k8s-master1-pod-0 (172.16.159.145) to pod default/k8s-node1-pod-0 (172.16.36.80)",
		"Forward: k8s-master1 → k8s-node1", "Return: k8s-node1 → k8s-master1",
		"VNI 4096, UDP port 4789", "192.168.3.241 → 192.168.32.105", "66:04:84:48:ab:6a → 66:8c:73:5a:90:99",
		"148 bytes", "98 bytes", "1450 on vxlan.calico",
		p.Forward.Route.IPRoute, p.Forward.Route.RouteN, seedtest.CaliName("k8s-master1-pod-0"),
	} {
		if !strings.Contains(txt, want) {
			t.Errorf("text lacks %q:\n%s", want, txt)
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back explain.Path
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, p) {
		t.Errorf("JSON round trip differs:\n%s", b)
	}
	if !strings.Contains(string(b), `"outerDst":"192.168.32.105"`) {
		t.Errorf("JSON lacks camel-case fields: %s", b)
	}
}

// kernelOf is what a node's kernel holds once its plan is applied.
func kernelOf(dp plan.Dataplane) *explain.Kernel {
	k := &explain.Kernel{DeviceUp: true, Neighbors: slices.Clone(dp.Neighbors), FDB: slices.Clone(dp.FDB)}
	if dp.Device != nil {
		d := *dp.Device
		k.Device = &d
	}
	for _, r := range dp.Routes {
		r.Kind, r.Peer = "", "" // the kernel does not record them
		k.Routes = append(k.Routes, r)
	}
	return k
}

func TestCheckLive(t *testing.T) {
	s := seedtest.Load(t)
	c := seedClusterInput(t, s)
	kernels := func() map[string]*explain.Kernel {
		return map[string]*explain.Kernel{
			"k8s-master1": kernelOf(explain.PlanNode(c, "k8s-master1")),
			"k8s-node1":   kernelOf(explain.PlanNode(c, "k8s-node1")),
		}
	}
	p, err := explain.Explain(c, "k8s-master1-pod-0", "k8s-node1-pod-0")
	if err != nil {
		t.Fatal(err)
	}
	good := p
	good.CheckLive(kernels())
	if len(good.Live) != 8 || len(good.Problems) != 0 {
		t.Fatalf("in-sync kernels: %d findings, problems %q: %+v", len(good.Live), good.Problems, good.Live)
	}
	for _, f := range good.Live {
		if !f.OK {
			t.Errorf("finding not ok: %+v", f)
		}
	}

	ks := kernels()
	m1 := ks["k8s-master1"]
	m1.Routes = slices.DeleteFunc(m1.Routes, func(r plan.Route) bool { return r.Dst == netip.MustParsePrefix("172.16.36.64/26") })
	n1 := ks["k8s-node1"]
	for i := range n1.Neighbors {
		if n1.Neighbors[i].IP == netip.MustParseAddr("172.16.159.128") {
			n1.Neighbors[i].MAC = "66:00:00:00:00:01"
		}
	}
	n1.FDB = nil
	bad := p
	bad.CheckLive(ks)
	for _, want := range []string{
		"live k8s-master1: route to 172.16.36.80: missing",
		"live k8s-node1: neighbour 172.16.159.128: different",
		"live k8s-node1: FDB 66:04:84:48:ab:6a: missing",
	} {
		if !hasSub(bad.Problems, want) {
			t.Errorf("problems lack %q:\n  %s", want, strings.Join(bad.Problems, "\n  "))
		}
	}
	if !strings.Contains(bad.Text(), "DIFF k8s-master1: route to 172.16.36.80") {
		t.Errorf("text lacks the live difference:\n%s", bad.Text())
	}

	// Only the nodes whose kernel was read are checked.
	one := p
	one.CheckLive(map[string]*explain.Kernel{"k8s-node1": kernelOf(explain.PlanNode(c, "k8s-node1"))})
	for _, f := range one.Live {
		if f.Node != "k8s-node1" {
			t.Errorf("checked an unread node: %+v", f)
		}
	}
}

func TestDiffRoutes(t *testing.T) {
	s := seedtest.Load(t)
	c := seedClusterInput(t, s)
	dp := explain.PlanNode(c, "k8s-master1")
	k := kernelOf(dp)
	if d := explain.DiffRoutes(dp.Routes, k.Routes); len(d) != len(dp.Routes) || slices.ContainsFunc(d, func(x explain.RouteDiff) bool { return x.State != explain.Same }) {
		t.Fatalf("in-sync diff: %+v", d)
	}
	missing := netip.MustParsePrefix("172.16.224.0/26")
	changed := netip.MustParsePrefix("172.16.135.192/26")
	extra := netip.MustParsePrefix("172.16.99.0/26")
	k.Routes = slices.DeleteFunc(k.Routes, func(r plan.Route) bool { return r.Dst == missing })
	for i := range k.Routes {
		if k.Routes[i].Dst == changed {
			k.Routes[i].Gateway = netip.MustParseAddr("192.168.3.250")
		}
	}
	k.Routes = append(k.Routes, plan.Route{Dst: extra, Gateway: netip.MustParseAddr("192.168.3.9"), Device: "eth0", OnLink: true})
	states := map[netip.Prefix]explain.DiffState{}
	d := explain.DiffRoutes(dp.Routes, k.Routes)
	for i, x := range d {
		dst := x.Planned
		if dst == nil {
			dst = x.Kernel
		}
		states[dst.Dst] = x.State
		if i > 0 {
			prev := d[i-1].Planned
			if prev == nil {
				prev = d[i-1].Kernel
			}
			if prev.Dst.Addr().Compare(dst.Dst.Addr()) > 0 {
				t.Errorf("diff not in route -n order at %s", dst.Dst)
			}
		}
	}
	if states[missing] != explain.Missing || states[changed] != explain.Different || states[extra] != explain.Extra {
		t.Errorf("states %v", states)
	}
	if n := len(d); n != len(dp.Routes)+1 {
		t.Errorf("%d diff lines, want %d", n, len(dp.Routes)+1)
	}

	lines := explain.DiffLines([]string{"a", "b"}, []string{"b", "c"})
	want := []explain.LineDiff{{explain.Missing, "a"}, {explain.Same, "b"}, {explain.Extra, "c"}}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("DiffLines = %v", lines)
	}
}
