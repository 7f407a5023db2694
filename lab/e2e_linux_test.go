package lab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"twill.dev/twill/cni"
	"twill.dev/twill/plan"
)

// buildBinaries builds the twill binary and the CNI plugin for the lab to
// run: the real datastore, agents and plugin, not stand-ins.
func buildBinaries(t *testing.T) (twill, plugin string) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("the end-to-end test builds twill and needs the go tool")
		}
		t.Skip("needs the go tool to build twill")
	}
	dir := t.TempDir()
	twill = filepath.Join(dir, "twill")
	plugin = filepath.Join(dir, cni.PluginBinaryName)
	for _, b := range [][2]string{{twill, "twill.dev/twill/cmd/twill"}, {plugin, "twill.dev/twill/cmd/twill-cni"}} {
		out, err := exec.Command(gobin, "build", "-o", b[0], b[1]).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	return twill, plugin
}

// seedObserved is what the seed saw on the real cluster.
type seedObserved struct {
	VTEPs map[string]struct {
		Address string `json:"address"`
		MAC     string `json:"mac"`
		MTU     int    `json:"mtu"`
	} `json:"vteps"`
	RouteN   map[string]string            `json:"route_n"`
	Captures map[string]map[string]string `json:"captures"`
}

func loadSeedObserved(t *testing.T) seedObserved {
	t.Helper()
	b, err := BuiltinSource("seed")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Observed seedObserved `json:"observed"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Observed.VTEPs) != 4 || len(doc.Observed.RouteN) != 4 {
		t.Fatalf("seed observed: %d VTEPs, %d route tables", len(doc.Observed.VTEPs), len(doc.Observed.RouteN))
	}
	return doc.Observed
}

// podNetworkLines keeps the pod-network lines of a `route -n` table (the
// seed's tables also list the host's own routes and docker0), with the
// cali* interface names, which derive from pod names the seed does not
// show, replaced by "cali*".
func podNetworkLines(lines []string) []string {
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 8 {
			continue
		}
		dst, iface := f[0], f[7]
		if iface == "docker0" || (iface == "eth0" && (dst == "0.0.0.0" || strings.HasPrefix(dst, "192.168."))) {
			continue
		}
		if strings.HasPrefix(iface, "cali") {
			f[7] = "cali*"
		}
		out = append(out, strings.Join(f, " "))
	}
	slices.Sort(out)
	return out
}

// TestEndToEndSeed builds the whole seed cluster (etcd, four agents,
// thirteen pods plumbed by the CNI plugin) and checks that the kernels hold
// what the seed observed: VTEPs, pod-network routes, every pod reaching
// every other, and each node pair's path, captured on eth0, with the seed's
// tcpdump lines.
func TestEndToEndSeed(t *testing.T) {
	needPrivilege(t)
	twill, plugin := buildBinaries(t)
	seed := loadSeedObserved(t)
	opts := testOptions(t, StagePods)
	opts.Exe, opts.CNIPlugin = twill, plugin
	opts.ConvergeTimeout = 90 * time.Second
	pods, err := NewCNIPodAdder(opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Pods = pods
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	before := rootState(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := Up(ctx, topo, opts); err != nil {
		t.Fatalf("Up: %v", err)
	}

	st, err := Status(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.Etcd == nil || !st.Etcd.Alive || len(st.Pods) != 13 {
		t.Errorf("status: etcd %+v, %d pods", st.Etcd, len(st.Pods))
	}
	for _, m := range st.Members {
		if m.Agent == nil || !m.Agent.Alive || !m.Ready {
			t.Errorf("status: %s agent %+v ready %v (%s)", m.Name, m.Agent, m.Ready, m.Reason)
		}
	}

	r, err := Report(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	r.WriteText(&text)
	t.Log("\n" + text.String())
	if !r.OK() {
		t.Error("the report is not OK")
	}

	// VTEPs: the seed's addresses, MACs and MTU, read from the kernels.
	if len(r.VTEPs) != 4 {
		t.Fatalf("%d VTEPs, want 4", len(r.VTEPs))
	}
	for _, v := range r.VTEPs {
		want := seed.VTEPs[v.Node]
		if !v.Present || v.Address.String() != want.Address || v.MAC != want.MAC || v.MTU != want.MTU || v.VNI != 4096 || v.Port != 4789 {
			t.Errorf("VTEP of %s: %+v; the seed has %+v", v.Node, v, want)
		}
	}
	// Routes: the seed's pod-network lines of `route -n`, node by node.
	for _, nr := range r.Routes {
		got := podNetworkLines(nr.Lines)
		want := podNetworkLines(strings.Split(strings.TrimSpace(seed.RouteN[nr.Node]), "\n"))
		if len(want) < 6 {
			t.Fatalf("the seed's table of %s gave %d pod-network lines: %q", nr.Node, len(want), want)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s routes:\n got  %q\n want %q (the seed's)", nr.Node, got, want)
		}
	}
	// Every pod reaches every other.
	if r.Matrix == nil || len(r.Matrix.Pods) != 13 || r.Matrix.Failures() != 0 {
		t.Errorf("matrix: %+v", r.Matrix)
	}
	// Paths: direct within lan-a, VXLAN to and from k8s-node1, as the
	// seed captured them.
	if len(r.Paths) != 12 {
		t.Fatalf("%d node pairs checked, want 12", len(r.Paths))
	}
	vxlanOuter := regexp.MustCompile(`^([0-9a-f:]{17}) > [0-9a-f:]{17}, ethertype IPv4 \(0x0800\), length 148: (\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.4789: VXLAN, flags \[I\] \(0x08\), vni 4096$`)
	for _, p := range r.Paths {
		want := PathDirect
		if p.From == "k8s-node1" || p.To == "k8s-node1" {
			want = PathVXLAN
		}
		if p.Observed != want || p.Expected != want || !p.OK() {
			t.Errorf("%s -> %s: observed %s, planned %s, want %s (%s)", p.From, p.To, p.Observed, p.Expected, want, p.Err)
			continue
		}
		switch want {
		case PathDirect:
			if len(p.Lines) != 1 || !strings.Contains(p.Lines[0], ", length 98: "+p.Src.String()+" > "+p.Dst.String()+": ICMP echo request") {
				t.Errorf("%s -> %s: direct capture %q", p.From, p.To, p.Lines)
			}
		case PathVXLAN:
			if len(p.Lines) != 2 || !vxlanOuter.MatchString(p.Lines[0]) ||
				!strings.Contains(p.Lines[1], ", length 98: "+p.Src.String()+" > "+p.Dst.String()+": ICMP echo request") {
				t.Errorf("%s -> %s: VXLAN capture %q", p.From, p.To, p.Lines)
			}
		}
	}
	// The seed's own pair, line for line: k8s-master1-pod-1 to
	// k8s-master2-pod-1 (same subnet) and to k8s-node1-pod-1 (VXLAN).
	for _, p := range r.Paths {
		switch {
		case p.SrcPod == "k8s-master1-pod-1" && p.DstPod == "k8s-master2-pod-1":
			if w := seed.Captures["same_subnet"]["eth0"]; !strings.HasPrefix(p.Lines[0], w) {
				t.Errorf("same-subnet capture\n  %s\nwant the seed's\n  %s", p.Lines[0], w)
			}
		case p.SrcPod == "k8s-master1-pod-1" && p.DstPod == "k8s-node1-pod-1" && len(p.Lines) == 2:
			if w := seed.Captures["cross_subnet"]["vxlan"]; !strings.HasPrefix(p.Lines[1], w) {
				t.Errorf("inner frame\n  %s\nwant the seed's\n  %s", p.Lines[1], w)
			}
			m := vxlanOuter.FindStringSubmatch(p.Lines[0])
			if m == nil || m[1] != "00:15:5d:03:0b:0a" || m[2] != "192.168.3.241" || m[3] != "192.168.32.105" {
				t.Errorf("outer frame %q: want k8s-master1's eth0 MAC and the node addresses of the seed", p.Lines[0])
			}
		}
	}

	// A route deleted by hand comes back (the seed's closing remark).
	code, err := Exec(ctx, opts, "k8s-master1", []string{"ip", "route", "del", "172.16.36.64/26"}, nil, &strings.Builder{}, &strings.Builder{})
	if err != nil || code != 0 {
		t.Fatalf("delete a route in k8s-master1: %d %v", code, err)
	}
	healed := false
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		rs, err := kernelRoutes(opts.Prefix + "-k8s-master1")
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(rs, func(r plan.Route) bool { return r.Dst.String() == "172.16.36.64/26" }) {
			healed = true
			break
		}
	}
	if !healed {
		t.Error("the deleted route to k8s-node1's block did not come back within 5s")
	}

	if _, added := diff(before, rootState(t)); len(added) > 0 {
		t.Errorf("the root namespace gained %v", added)
	}
	recorded, err := LoadState(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := Down(ctx, opts); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if left := ourNetns(t, opts.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Down: %v", left)
	}
	if len(recorded.Processes) != 5 {
		t.Errorf("%d processes recorded, want etcd and 4 agents", len(recorded.Processes))
	}
	for _, p := range recorded.Processes {
		if p.alive() {
			t.Errorf("%s (pid %d) still runs after Down", p.Name, p.PID)
		}
	}
}

// TestEndToEndThreeSubnets runs the three-subnet topology: pods given as
// counts (IPAM picks), /24, /25 and /22 subnets, a plain outside host that
// pods reach only through natOutgoing.
func TestEndToEndThreeSubnets(t *testing.T) {
	needPrivilege(t)
	twill, plugin := buildBinaries(t)
	opts := testOptions(t, StagePods)
	opts.Exe, opts.CNIPlugin = twill, plugin
	pods, err := NewCNIPodAdder(opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Pods = pods
	topo, err := Load("three-subnets")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := Up(ctx, topo, opts); err != nil {
		t.Fatalf("Up: %v", err)
	}
	r, err := Report(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	r.WriteText(&text)
	t.Log("\n" + text.String())
	if !r.OK() {
		t.Error("the report is not OK")
	}
	if r.Matrix == nil || len(r.Matrix.Pods) != 10 || r.Matrix.Failures() != 0 {
		t.Errorf("matrix: %+v", r.Matrix)
	}
	sameSubnet := map[[2]string]bool{{"east-1", "east-2"}: true, {"east-2", "east-1"}: true, {"south-1", "south-2"}: true, {"south-2", "south-1"}: true}
	if len(r.Paths) != 20 {
		t.Errorf("%d node pairs checked, want 20", len(r.Paths))
	}
	for _, p := range r.Paths {
		want := PathVXLAN
		if sameSubnet[[2]string{p.From, p.To}] {
			want = PathDirect
		}
		if p.Observed != want || !p.OK() {
			t.Errorf("%s -> %s: observed %s, planned %s, want %s (%s)", p.From, p.To, p.Observed, p.Expected, want, p.Err)
		}
	}
	if len(r.Hosts) != 5 {
		t.Errorf("%d pod-to-host checks, want 5 (one per node)", len(r.Hosts))
	}
	for _, h := range r.Hosts {
		if h.Err != "" || !h.NATOutgoing {
			t.Errorf("%s -> %s: %s (natOutgoing %t)", h.Pod, h.Host, h.Err, h.NATOutgoing)
		}
	}
}
