package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/cni"
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/explain"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/plan"
)

// podLabOptions checks for the privileges, builds the real binaries and
// returns test options for a lab built up to its pods, which the CNI
// plugin plumbs.
func podLabOptions(t *testing.T) Options {
	t.Helper()
	nettest.RequireRoot(t, "ip")
	twill, plugin := buildBinaries(t)
	opts := testOptions(t, StagePods)
	opts.Exe, opts.CNIPlugin = twill, plugin
	pods, err := NewCNIPodAdder(opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Pods = pods
	return opts
}

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
	opts := podLabOptions(t)
	opts.ConvergeTimeout = 90 * time.Second
	seed := loadSeedObserved(t)
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	before := rootState(t)
	linksBefore := rootLinks(t)
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
	if want := "etcd at " + st.EtcdURL; st.Datastore != want {
		t.Errorf("status: datastore %q; want %q", st.Datastore, want)
	}
	var statusText bytes.Buffer
	st.WriteText(&statusText)
	if !strings.Contains(statusText.String(), "Datastore: etcd at "+st.EtcdURL) {
		t.Errorf("status text does not say which datastore the lab runs:\n%s", statusText.String())
	}
	for _, m := range st.Members {
		if m.Agent == nil || !m.Agent.Alive || !m.Ready {
			t.Errorf("status: %s agent %+v ready %v (%s)", m.Name, m.Agent, m.Ready, m.Reason)
		}
	}

	checkSeedCluster(ctx, t, opts, seed)

	if _, added := diff(before, rootState(t)); len(added) > 0 {
		t.Errorf("the root namespace gained %v", added)
	}
	recorded, err := LoadState(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recorded.Processes) != 5 {
		t.Errorf("%d processes recorded, want etcd and 4 agents", len(recorded.Processes))
	}
	if err := Down(ctx, opts); err != nil {
		t.Fatalf("Down: %v", err)
	}
	checkDownClean(t, opts, recorded, linksBefore)
}

// checkSeedCluster checks a running seed lab against what the seed
// observed: the report's VTEPs, the pod-network lines of every node's
// `route -n`, every pod reaching every other (156 pings), each node pair's
// path as captured on eth0 (the seed's own pairs line for line), `twill
// explain` agreeing with every capture, and a route deleted by hand coming
// back.
func checkSeedCluster(ctx context.Context, t *testing.T, opts Options, seed seedObserved) {
	t.Helper()
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

	// `twill explain` tells the captures' story, pair by pair.
	checkExplainAgrees(ctx, t, opts.Exe, opts, r)

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
}

// TestEndToEndThreeSubnets runs the three-subnet topology: pods given as
// counts (IPAM picks), /24, /25 and /22 subnets, a plain outside host that
// pods reach only through natOutgoing.
func TestEndToEndThreeSubnets(t *testing.T) {
	opts := podLabOptions(t)
	topo, err := Load("three-subnets")
	if err != nil {
		t.Fatal(err)
	}
	linksBefore := rootLinks(t)
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

	checkExplainAgrees(ctx, t, opts.Exe, opts, r)

	recorded, err := LoadState(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recorded.Processes) != 6 {
		t.Errorf("%d processes recorded, want etcd and 5 agents", len(recorded.Processes))
	}
	if err := Down(ctx, opts); err != nil {
		t.Fatalf("Down: %v", err)
	}
	checkDownClean(t, opts, recorded, linksBefore)
}

// capturedFrame is one line of a path capture (tcpdump -nne form), parsed
// back into the fields explain predicts.
type capturedFrame struct {
	srcMAC, dstMAC string
	length         int
	// src and dst are the IP addresses; port and vni are set for VXLAN.
	src, dst  string
	port, vni int
	vxlan     bool
}

var (
	frameLine = regexp.MustCompile(`^([0-9a-f:]{17}) > ([0-9a-f:]{17}), ethertype IPv4 \(0x0800\), length (\d+): (.*)$`)
	vxlanBody = regexp.MustCompile(`^(\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.(\d+): VXLAN, flags \[I\] \(0x08\), vni (\d+)$`)
	echoBody  = regexp.MustCompile(`^(\d+\.\d+\.\d+\.\d+) > (\d+\.\d+\.\d+\.\d+): ICMP echo request, id \d+, seq \d+, length \d+$`)
)

func parseCaptured(line string) (capturedFrame, error) {
	m := frameLine.FindStringSubmatch(line)
	if m == nil {
		return capturedFrame{}, fmt.Errorf("not an IPv4 frame line: %q", line)
	}
	f := capturedFrame{srcMAC: m[1], dstMAC: m[2]}
	f.length, _ = strconv.Atoi(m[3])
	if v := vxlanBody.FindStringSubmatch(m[4]); v != nil {
		f.vxlan, f.src, f.dst = true, v[1], v[2]
		f.port, _ = strconv.Atoi(v[3])
		f.vni, _ = strconv.Atoi(v[4])
		return f, nil
	}
	if e := echoBody.FindStringSubmatch(m[4]); e != nil {
		f.src, f.dst = e[1], e[2]
		return f, nil
	}
	return capturedFrame{}, fmt.Errorf("neither VXLAN nor an echo request: %q", line)
}

// eth0MAC reads the MAC of eth0 in a lab member's namespace.
func eth0MAC(t *testing.T, m Member) string {
	t.Helper()
	var mac string
	err := inNetns(NetnsPath(m.Netns), func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		mac = ifc.HardwareAddr.String()
		return nil
	})
	if err != nil {
		t.Fatalf("eth0 of %s: %v", m.Name, err)
	}
	return mac
}

// runExplain runs the real `twill explain SRC DST -o json --live` against
// the lab's datastore and kernels.
func runExplain(ctx context.Context, t *testing.T, twill string, opts Options, st *State, l *Layout, src, dst string) (explain.Path, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	store := []string{"--datastore", st.DatastoreType(), "--etcd-endpoints", st.Etcd}
	if st.DatastoreType() == open.TypeKubernetes {
		store = []string{"--datastore", st.DatastoreType(), "--kubeconfig", st.Kubeconfig}
	}
	args := append([]string{"explain", src, dst, "-o", "json", "--live"}, store...)
	cmd := exec.CommandContext(ctx, twill, append(args,
		"--lab-state-dir", opts.StateDir,
		"--vxlan-device", l.VXLAN.Device,
		"--vxlan-vni", strconv.Itoa(l.VXLAN.VNI),
		"--vxlan-port", strconv.Itoa(l.VXLAN.Port),
		"--vxlan-mtu", strconv.Itoa(l.VXLAN.MTU))...)
	cmd.Env = childEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return explain.Path{}, fmt.Errorf("twill explain %s %s: %w\n%s", src, dst, err, stderr.String())
	}
	var p explain.Path
	if err := json.Unmarshal(stdout.Bytes(), &p); err != nil {
		return explain.Path{}, fmt.Errorf("twill explain %s %s -o json: %w\n%s", src, dst, err, stdout.String())
	}
	return p, nil
}

// checkExplainAgrees runs `twill explain` for every node pair the report
// captured and checks that it tells the capture's story: the same path
// kind and, frame by frame, the addresses, MACs, VNI, port and lengths on
// the wire; and that it finds nothing wrong, the kernels included.
func checkExplainAgrees(ctx context.Context, t *testing.T, twill string, opts Options, r *LabReport) {
	t.Helper()
	st, err := LoadState(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	l, err := st.Layout()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.StoreConfig(); !ok {
		t.Fatalf("the lab state records no way to reach its datastore (%s)", st.DatastoreDescription())
	}
	vtepMAC := map[string]string{}
	for _, v := range r.VTEPs {
		vtepMAC[v.Node] = v.MAC
	}
	macs := map[string]string{}
	member := func(name string) Member {
		m, ok := l.Member(name)
		if !ok {
			t.Fatalf("node %s is not in the lab's layout", name)
		}
		if macs[name] == "" {
			macs[name] = eth0MAC(t, m)
		}
		return m
	}
	checked := 0
	for _, pc := range r.Paths {
		if !pc.OK() {
			continue // already reported; there is no capture to compare with
		}
		pair := pc.From + " -> " + pc.To
		p, err := runExplain(ctx, t, twill, opts, st, l, pc.SrcPod, pc.DstPod)
		if err != nil {
			t.Errorf("%s: %v", pair, err)
			continue
		}
		checked++
		from, to := member(pc.From), member(pc.To)
		if p.Src.Pod != pc.SrcPod || p.Src.Node != pc.From || p.Src.Address != pc.Src.String() ||
			p.Dst.Pod != pc.DstPod || p.Dst.Node != pc.To || p.Dst.Address != pc.Dst.String() {
			t.Errorf("%s: explain resolved %+v -> %+v; the capture pinged %s (%s on %s) -> %s (%s on %s)",
				pair, p.Src, p.Dst, pc.SrcPod, pc.Src, pc.From, pc.DstPod, pc.Dst, pc.To)
		}
		if len(p.Problems) > 0 {
			t.Errorf("%s: explain reports problems: %q", pair, p.Problems)
		}
		liveNodes := map[string]bool{}
		for _, f := range p.Live {
			liveNodes[f.Node] = true
			if !f.OK {
				t.Errorf("%s: live check on %s: %s: %s", pair, f.Node, f.What, f.Detail)
			}
		}
		if !liveNodes[pc.From] || !liveNodes[pc.To] {
			t.Errorf("%s: explain --live checked the kernels of %v, want both %s and %s", pair, liveNodes, pc.From, pc.To)
		}
		d := p.Forward
		if d == nil || d.From != pc.From || d.To != pc.To || d.Via != d.Expected {
			t.Errorf("%s: explain's forward direction %+v", pair, d)
			continue
		}
		var frames []capturedFrame
		for _, line := range pc.Lines {
			f, err := parseCaptured(line)
			if err != nil {
				t.Errorf("%s: capture: %v", pair, err)
				continue
			}
			frames = append(frames, f)
		}
		if len(frames) != len(pc.Lines) || len(frames) == 0 {
			continue
		}
		outer := frames[0]
		if outer.srcMAC != macs[pc.From] {
			t.Errorf("%s: captured frame from %s, not %s's eth0 (%s)", pair, outer.srcMAC, pc.From, macs[pc.From])
		}
		switch pc.Observed {
		case PathDirect:
			x := d.Direct
			if d.Via != explain.ViaDirect || x == nil || d.VXLAN != nil {
				t.Errorf("%s: captured direct, explain says %s (direct %+v, vxlan %+v)", pair, d.Via, x, d.VXLAN)
				continue
			}
			if len(frames) != 1 || outer.vxlan {
				t.Errorf("%s: direct capture %q", pair, pc.Lines)
				continue
			}
			// The frame goes straight to the peer's eth0, unencapsulated,
			// with the pod addresses and the length explain predicts.
			if x.Interface != "eth0" || x.NextHop != to.Address.Addr().String() || outer.dstMAC != macs[pc.To] {
				t.Errorf("%s: explain: next hop %s dev %s; capture: to MAC %s; %s's eth0 is %s with MAC %s",
					pair, x.NextHop, x.Interface, outer.dstMAC, pc.To, to.Address.Addr(), macs[pc.To])
			}
			if x.SourceAddress != outer.src || d.ToAddress != outer.dst {
				t.Errorf("%s: explain: %s > %s; capture: %s > %s", pair, x.SourceAddress, d.ToAddress, outer.src, outer.dst)
			}
			if x.Length != outer.length || outer.length != 98 {
				t.Errorf("%s: explain: length %d; capture: length %d; want 98", pair, x.Length, outer.length)
			}
		case PathVXLAN:
			x := d.VXLAN
			if d.Via != explain.ViaVXLAN || x == nil || d.Direct != nil {
				t.Errorf("%s: captured VXLAN, explain says %s (direct %+v, vxlan %+v)", pair, d.Via, d.Direct, x)
				continue
			}
			if len(frames) != 2 || !outer.vxlan || frames[1].vxlan {
				t.Errorf("%s: VXLAN capture %q", pair, pc.Lines)
				continue
			}
			inner := frames[1]
			if x.VNI != outer.vni || x.Port != outer.port || x.OuterInterface != "eth0" {
				t.Errorf("%s: explain: vni %d port %d via %s; capture on eth0: vni %d port %d", pair, x.VNI, x.Port, x.OuterInterface, outer.vni, outer.port)
			}
			if x.OuterSrc != outer.src || x.OuterDst != outer.dst ||
				outer.src != from.Address.Addr().String() || outer.dst != to.Address.Addr().String() {
				t.Errorf("%s: explain: outer %s > %s; capture: %s > %s; node addresses %s > %s",
					pair, x.OuterSrc, x.OuterDst, outer.src, outer.dst, from.Address.Addr(), to.Address.Addr())
			}
			if x.InnerSrcMAC != inner.srcMAC || x.InnerDstMAC != inner.dstMAC ||
				inner.srcMAC != vtepMAC[pc.From] || inner.dstMAC != vtepMAC[pc.To] {
				t.Errorf("%s: explain: inner %s > %s; capture: %s > %s; VTEPs %s > %s",
					pair, x.InnerSrcMAC, x.InnerDstMAC, inner.srcMAC, inner.dstMAC, vtepMAC[pc.From], vtepMAC[pc.To])
			}
			if d.FromAddress != inner.src || d.ToAddress != inner.dst {
				t.Errorf("%s: explain: %s > %s; inner frame: %s > %s", pair, d.FromAddress, d.ToAddress, inner.src, inner.dst)
			}
			if x.InnerLength != inner.length || x.OuterLength != outer.length || inner.length != 98 || outer.length != 148 {
				t.Errorf("%s: explain: lengths %d/%d; capture: %d/%d; want 98/148", pair, x.InnerLength, x.OuterLength, inner.length, outer.length)
			}
		default:
			t.Errorf("%s: captured path %s", pair, pc.Observed)
		}
	}
	if checked != len(r.Paths) {
		t.Errorf("explain checked %d of %d captured pairs", checked, len(r.Paths))
	}
}

// rootLinks lists the root namespace's links as "index name".
func rootLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list the root namespace's links: %v", err)
	}
	out := make([]string, 0, len(links))
	for _, l := range links {
		out = append(out, fmt.Sprintf("%d %s", l.Attrs().Index, l.Attrs().Name))
	}
	slices.Sort(out)
	return out
}

// checkDownClean checks that Down left nothing of the lab recorded in
// recorded: no namespace with the lab's prefix, no process, no interface
// in the root namespace that was not there before Up, no socket and no
// state file in the state directory.
func checkDownClean(t *testing.T, opts Options, recorded *State, linksBefore []string) {
	t.Helper()
	if _, err := LoadState(opts.StateDir); !errors.Is(err, ErrNotUp) {
		t.Errorf("after Down, the state file is still there (LoadState: %v)", err)
	}
	// Namespaces: none in /var/run/netns, none in `ip netns list`.
	if len(recorded.Namespaces) == 0 {
		t.Error("the lab recorded no namespaces")
	}
	entries, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read %s: %v", NetnsDir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), opts.Prefix+"-") {
			t.Errorf("namespace %s left in %s after Down", e.Name(), NetnsDir)
		}
	}
	for _, ns := range recorded.Namespaces {
		if _, err := os.Lstat(NetnsPath(ns)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("recorded namespace %s: %s still there (%v)", ns, NetnsPath(ns), err)
		}
	}
	if _, err := exec.LookPath("ip"); err == nil {
		if left := ourNetns(t, opts.Prefix); len(left) > 0 {
			t.Errorf("`ip netns list` shows namespaces left after Down: %v", left)
		}
	}
	// Processes: every recorded PID gone from /proc (zombies included),
	// or reused by a process with another start time. The test process
	// reaps its children asynchronously, so give that a moment.
	for _, p := range recorded.Processes {
		var state byte
		var start uint64
		var err error
		for range 40 {
			state, start, err = procStat(p.PID)
			if err != nil || start != p.StartTime {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		switch {
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			t.Errorf("%s (pid %d): %v", p.Name, p.PID, err)
		case err == nil && start == p.StartTime:
			t.Errorf("%s (pid %d) is still in /proc after Down, state %c", p.Name, p.PID, state)
		}
	}
	// Interfaces: the root namespace's list is what it was before Up.
	if gone, added := diff(linksBefore, rootLinks(t)); len(gone)+len(added) > 0 {
		t.Errorf("the root namespace's links changed across the lab: gone %v, added %v", gone, added)
	}
	// Sockets: none left in the state directory.
	sockets := 0
	for _, p := range recorded.Processes {
		if p.Socket == "" {
			continue
		}
		sockets++
		if _, err := os.Lstat(p.Socket); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s's socket %s is still there (%v)", p.Name, p.Socket, err)
		}
	}
	if sockets == 0 {
		t.Error("the lab recorded no agent sockets")
	}
	err = filepath.WalkDir(opts.StateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSocket != 0 {
			t.Errorf("socket %s left in the state directory after Down", path)
		}
		return nil
	})
	if err != nil {
		t.Errorf("walk the state directory %s: %v", opts.StateDir, err)
	}
}
