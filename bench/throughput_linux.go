package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/lab"
)

// ErrNoIperf: iperf3 is not installed.
var ErrNoIperf = errors.New("iperf3 is missing: install it (apt-get install iperf3, or scripts/deps.sh)")

// iperfPort is the port of the bench's iperf3 servers, inside pod
// namespaces only.
const iperfPort = "5201"

// Names of the hand-built throughput namespaces: a router and three nodes
// (a, b in one subnet, c in another), each with one pod.
const (
	handRouter = "twbh-r"
	handPrefix = "twbh-"
)

// handNode is one node of the hand-built paths, mirroring a lab node.
type handNode struct {
	key     string // a, b or c
	member  lab.Member
	pod     netip.Addr
	tunnel  netip.Addr
	vtepMAC string
}

func (n handNode) netns() string    { return handPrefix + n.key }
func (n handNode) podNetns() string { return handPrefix + n.key + "p" }

// ip runs the ip command (or bridge, when args[0] is "bridge").
func ipCmd(ctx context.Context, args ...string) error {
	bin := "ip"
	if args[0] == "bridge" {
		bin, args = "bridge", args[1:]
	}
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sysctls writes sysctls inside a namespace.
func sysctls(ns string, kv ...string) error {
	return lab.InNetns(lab.NetnsPath(ns), func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			p := "/proc/sys/" + strings.ReplaceAll(kv[i], ".", "/")
			if err := os.WriteFile(p, []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("set %s in %s: %w", kv[i], ns, err)
			}
		}
		return nil
	})
}

// buildHand builds, with ip and bridge commands only, the same paths as
// the lab's between a's pod and b's (direct: routed over the shared
// subnet) and c's (VXLAN: a hand-made VXLAN device with a static neighbour
// and FDB entry per peer), in namespaces of its own, through a router
// namespace of its own.
func (r *runner) buildHand(ctx context.Context, nodes []handNode, vni, port, vxMTU, podMTU int) error {
	cmds := [][]string{}
	add := func(args ...string) { cmds = append(cmds, args) }
	for _, ns := range []string{handRouter} {
		if err := r.newNetns(ns); err != nil {
			return err
		}
	}
	for _, n := range nodes {
		if err := r.newNetns(n.netns()); err != nil {
			return err
		}
		if err := r.newNetns(n.podNetns()); err != nil {
			return err
		}
	}
	for _, ns := range append([]string{handRouter}, func() (l []string) {
		for _, n := range nodes {
			l = append(l, n.netns(), n.podNetns())
		}
		return l
	}()...) {
		if err := sysctls(ns, "net.ipv6.conf.all.disable_ipv6", "1", "net.ipv6.conf.default.disable_ipv6", "1"); err != nil {
			return err
		}
		add("-n", ns, "link", "set", "lo", "up")
	}
	if err := sysctls(handRouter, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	bridges := map[int]string{}
	for _, n := range nodes {
		s := r.layout.Subnets[n.member.Subnet]
		if _, ok := bridges[n.member.Subnet]; !ok {
			br := "twbhbr" + strconv.Itoa(n.member.Subnet)
			bridges[n.member.Subnet] = br
			add("-n", handRouter, "link", "add", br, "type", "bridge")
			add("-n", handRouter, "addr", "add", netip.PrefixFrom(s.Router, s.CIDR.Bits()).String(), "dev", br)
			add("-n", handRouter, "link", "set", br, "up")
		}
		if err := sysctls(n.netns(), "net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
		leg := "twbhv" + n.key
		add("-n", handRouter, "link", "add", leg, "type", "veth", "peer", "name", "eth0", "netns", n.netns())
		add("-n", handRouter, "link", "set", leg, "master", bridges[n.member.Subnet], "up")
		add("-n", n.netns(), "addr", "add", n.member.Address.String(), "dev", "eth0")
		add("-n", n.netns(), "link", "set", "eth0", "up")
		add("-n", n.netns(), "route", "add", "default", "via", s.Router.String(), "dev", "eth0")
		// The pod: a veth, proxy ARP on the host side, a /32 and routes
		// via 169.254.1.1, as Calico and twill plumb it.
		hostIf := "twbhp" + n.key
		mtu := strconv.Itoa(podMTU)
		add("-n", n.netns(), "link", "add", hostIf, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", n.podNetns())
	}
	for _, c := range cmds {
		if err := ipCmd(ctx, c...); err != nil {
			return err
		}
	}
	cmds = nil
	for _, n := range nodes {
		hostIf := "twbhp" + n.key
		if err := sysctls(n.netns(), "net.ipv4.conf."+hostIf+".proxy_arp", "1", "net.ipv4.neigh."+hostIf+".proxy_delay", "0"); err != nil {
			return err
		}
		add("-n", n.netns(), "link", "set", hostIf, "up")
		add("-n", n.podNetns(), "addr", "add", n.pod.String()+"/32", "dev", "eth0")
		add("-n", n.podNetns(), "link", "set", "eth0", "up")
		add("-n", n.podNetns(), "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
		add("-n", n.podNetns(), "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
		add("-n", n.netns(), "route", "add", n.pod.String()+"/32", "dev", hostIf, "scope", "link")
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	// Direct: each of a and b routes the other's block via its address.
	add("-n", a.netns(), "route", "add", b.member.Block.String(), "via", b.member.Address.Addr().String(), "dev", "eth0", "onlink")
	add("-n", b.netns(), "route", "add", a.member.Block.String(), "via", a.member.Address.Addr().String(), "dev", "eth0", "onlink")
	// VXLAN between a and c.
	for _, pair := range [][2]handNode{{a, c}, {c, a}} {
		x, y := pair[0], pair[1]
		add("-n", x.netns(), "link", "add", "vxlan0", "address", x.vtepMAC, "mtu", strconv.Itoa(vxMTU), "type", "vxlan",
			"id", strconv.Itoa(vni), "dstport", strconv.Itoa(port), "local", x.member.Address.Addr().String(), "dev", "eth0", "nolearning")
		add("-n", x.netns(), "addr", "add", x.tunnel.String()+"/32", "dev", "vxlan0")
		add("-n", x.netns(), "link", "set", "vxlan0", "up")
		add("-n", x.netns(), "neigh", "add", y.tunnel.String(), "lladdr", y.vtepMAC, "dev", "vxlan0", "nud", "permanent")
		add("bridge", "-n", x.netns(), "fdb", "add", y.vtepMAC, "dev", "vxlan0", "dst", y.member.Address.Addr().String())
		add("-n", x.netns(), "route", "add", y.member.Block.String(), "via", y.tunnel.String(), "dev", "vxlan0", "onlink")
	}
	for _, c := range cmds {
		if err := ipCmd(ctx, c...); err != nil {
			return err
		}
	}
	return nil
}

// iperfResult is the part of iperf3 -J's output the bench reads.
type iperfResult struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// Iperf runs one bounded iperf3 TCP test from the namespace src to dst
// (an address in the namespace dstNs, where a one-off server listens on
// it) for secs seconds, and returns the received rate in Gbit/s.
func Iperf(ctx context.Context, srcNs, dstNs string, dst netip.Addr, secs int) (float64, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return 0, ErrNoIperf
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+20)*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", dstNs, "iperf3", "-s", "-1", "-B", dst.String(), "-p", iperfPort)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("start the iperf3 server in %s: %w", dstNs, err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	defer func() {
		select {
		case <-srvDone:
		case <-time.After(5 * time.Second):
			_ = srv.Process.Kill()
			<-srvDone
		}
	}()
	var res iperfResult
	for attempt := 1; ; attempt++ {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", srcNs, "iperf3", "-c", dst.String(), "-p", iperfPort,
			"-t", strconv.Itoa(secs), "-J", "--connect-timeout", "2000").Output()
		res = iperfResult{}
		jerr := json.Unmarshal(out, &res)
		if err == nil && jerr == nil && res.Error == "" {
			break
		}
		// The server may not listen yet: try again, a bounded number of
		// times.
		if attempt >= 40 || ctx.Err() != nil {
			return 0, fmt.Errorf("iperf3 from %s to %s: %w (%s); server: %s", srcNs, dst, errors.Join(err, jerr), res.Error, strings.TrimSpace(srvOut.String()))
		}
		select {
		case <-srvDone:
			return 0, fmt.Errorf("the iperf3 server in %s exited: %s", dstNs, strings.TrimSpace(srvOut.String()))
		case <-time.After(50 * time.Millisecond):
		}
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		return 0, fmt.Errorf("iperf3 from %s to %s reported no throughput", srcNs, dst)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// throughput is figure 5.
func (r *runner) throughput(ctx context.Context) []Row {
	goal := Goal{Stat: StatRatio, AtMost: false, Limit: 0.95}
	cases := []string{"direct", "vxlan"}
	fail := func(err error) []Row {
		var rows []Row
		for _, c := range cases {
			rows = append(rows, errorRow(FigThroughput, c, "Gbit/s", err, goal))
		}
		return rows
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return fail(ErrNoIperf)
	}
	local, direct, vxlan, objs, err := r.nodes(ctx)
	if err != nil {
		return fail(err)
	}
	firstPod := func(node string) (lab.PodState, error) {
		for _, p := range r.state.Pods {
			if p.Node == node {
				return p, nil
			}
		}
		return lab.PodState{}, fmt.Errorf("node %s has no pod in the lab", node)
	}
	var hand []handNode
	twill := map[string]lab.PodState{}
	for i, m := range []lab.Member{local, direct, vxlan} {
		p, err := firstPod(m.Name)
		if err != nil {
			return fail(err)
		}
		twill[m.Name] = p
		addr, err := netip.ParseAddr(p.Address)
		if err != nil {
			return fail(fmt.Errorf("pod %s's address %q: %w", p.Name, p.Address, err))
		}
		o := objs[m.Name]
		tunnel, err := netip.ParseAddr(o.Spec.TunnelAddress)
		if err != nil {
			return fail(fmt.Errorf("%s's tunnel address %q: %w", m.Name, o.Spec.TunnelAddress, err))
		}
		hand = append(hand, handNode{key: string(rune('a' + i)), member: m, pod: addr, tunnel: tunnel, vtepMAC: api.VTEPMAC(m.Name)})
	}
	podMTU, err := linkMTU(lab.NetnsPath(twill[local.Name].Netns), lab.PodIfName)
	if err != nil {
		return fail(err)
	}
	vx := r.layout.VXLAN
	r.progress("throughput: building the same paths by hand with ip commands (namespaces %s*)", handPrefix)
	if err := r.buildHand(ctx, hand, vx.VNI, vx.Port, vx.MTU, podMTU); err != nil {
		return fail(fmt.Errorf("hand-built paths: %w", err))
	}
	type path struct {
		name             string
		twillSrc, twillD lab.PodState
		handSrc, handDst handNode
	}
	paths := []path{
		{"direct", twill[local.Name], twill[direct.Name], hand[0], hand[1]},
		{"vxlan", twill[local.Name], twill[vxlan.Name], hand[0], hand[2]},
	}
	var rows []Row
	for _, p := range paths {
		var tw, hw []float64
		dst, _ := netip.ParseAddr(p.twillD.Address)
		var err error
		for round := range r.sz.iperfRounds {
			r.progress("throughput: %s, round %d of %d (iperf3 -t %d, twill then hand-built, alternating)", p.name, round+1, r.sz.iperfRounds, r.sz.iperfSeconds)
			runTwill := func() error {
				g, err := Iperf(ctx, p.twillSrc.Netns, p.twillD.Netns, dst, r.sz.iperfSeconds)
				tw = append(tw, g)
				return err
			}
			runHand := func() error {
				g, err := Iperf(ctx, p.handSrc.podNetns(), p.handDst.podNetns(), p.handDst.pod, r.sz.iperfSeconds)
				hw = append(hw, g)
				return err
			}
			if round%2 == 0 {
				err = errors.Join(runTwill(), runHand())
			} else {
				err = errors.Join(runHand(), runTwill())
			}
			if err != nil {
				break
			}
		}
		if err != nil {
			rows = append(rows, errorRow(FigThroughput, p.name, "Gbit/s", err, goal))
			continue
		}
		what := "(hand-built veth+routes, ip commands)"
		if p.name == "vxlan" {
			what = "(hand-built vxlan path, ip commands)"
		}
		row := valueRow(FigThroughput, p.name, "Gbit/s", Measurement{Samples: len(tw), Value: Median(tw)},
			Measurement{Samples: len(hw), Value: Median(hw)}, what, goal)
		row.Note = fmt.Sprintf("iperf3 TCP %s→%s, -t %d, median of %d round(s); twill %v, hand-built %v Gbit/s",
			p.twillSrc.Name, p.twillD.Name, r.sz.iperfSeconds, len(tw), roundAll(tw), roundAll(hw))
		rows = append(rows, row)
	}
	return rows
}

func roundAll(vs []float64) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = num(v)
	}
	return out
}

// linkMTU reads an interface's MTU inside a namespace.
func linkMTU(nsPath, name string) (int, error) {
	h, err := handleAt(nsPath)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find %s in %s: %w", name, nsPath, err)
	}
	return l.Attrs().MTU, nil
}
