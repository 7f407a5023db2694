package cni

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"twill.dev/twill/agent"
	"twill.dev/twill/agentapi"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/internal/syncbuf"
	"twill.dev/twill/ipam"
)

// The node namespace's uplink: eth0 with this address (inside
// the test's own namespace) and an MTU the agent passes on to pods.
const (
	nodeAddr = "10.99.0.1/24"
	nodeMTU  = 1400
	podNSNS  = "twtest" // the Kubernetes namespace of test pods
)

// ipCmd runs ip with args and fails the test on error.
func ipCmd(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// nodeOpts shape a test node.
type nodeOpts struct {
	poolCIDR  string // default 10.244.0.0/16
	blockSize int    // default 26
	vxlan     string // default CrossSubnet
	mtu       int    // the conflist's mtu; 0 asks the agent
	logLevel  string // the plugin's; default debug
	// cniVersion is the conflist's; default DefaultCNIVersion (what
	// install-cni writes). libcni sends STATUS and GC from 1.1.0 only.
	cniVersion string
}

// testNode is a node namespace with an agent (in this process, against an
// embedded etcd), the installed plugin and a conflist, driven through
// libcni as a container runtime drives it.
type testNode struct {
	tb      testing.TB
	ns      *nettest.NS
	name    string
	path    string
	h       *netlink.Handle
	sock    string
	logFile string
	store   datastore.Store
	client  *agentapi.Client
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	opts    nodeOpts

	agentLog   *syncbuf.Buffer
	stopAgent  func()
	agentAlive bool
}

func newNode(tb testing.TB, opts nodeOpts) *testNode {
	tb.Helper()
	nettest.RequireRoot(tb, "ip")
	bin := pluginBinary(tb)
	if opts.poolCIDR == "" {
		opts.poolCIDR = "10.244.0.0/16"
	}
	if opts.blockSize == 0 {
		opts.blockSize = 26
	}
	if opts.vxlan == "" {
		opts.vxlan = "CrossSubnet"
	}
	if opts.logLevel == "" {
		opts.logLevel = "debug"
	}
	if opts.cniVersion == "" {
		opts.cniVersion = DefaultCNIVersion
	}
	n := &testNode{tb: tb, opts: opts, agentLog: &syncbuf.Buffer{}}
	n.ns = nettest.New(tb, "cn")
	n.name, n.path, n.h = n.ns.Name, n.ns.Path, n.ns.H
	// eth0 is a veth whose peer stays in the node namespace (the sandbox's
	// kernel may lack the dummy driver).
	if err := n.ns.VethMTU("eth0", n.ns, "tweth0p", nodeMTU); err != nil {
		tb.Fatal(err)
	}
	if err := n.ns.AddrAdd("eth0", nodeAddr); err != nil {
		tb.Fatal(err)
	}
	// Proxy ARP answers for 169.254.1.1 only when the node has a route to
	// it through another interface, as a real node's default route is.
	ipCmd(tb, "-n", n.name, "route", "add", "default", "dev", "eth0")

	// A short socket path: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "twcni-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(sockDir) })
	n.sock = filepath.Join(sockDir, "agent.sock")
	n.client = agentapi.NewClient(n.sock, 10*time.Second)
	n.store = etcdtest.NewStore(tb)
	n.startAgent()

	dir := tb.TempDir()
	n.logFile = filepath.Join(dir, "cni.log")
	inst, err := Install(InstallOptions{
		BinDir: filepath.Join(dir, "bin"), ConfDir: filepath.Join(dir, "net.d"), PluginBinary: bin,
		AgentSocket: n.sock, MTU: opts.mtu, LogLevel: opts.logLevel, LogFile: n.logFile, CNIVersion: opts.cniVersion,
	})
	if err != nil {
		tb.Fatal(err)
	}
	n.list, err = libcni.ConfListFromFile(inst.Conflist)
	if err != nil {
		tb.Fatal(err)
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(inst.Binary)}, filepath.Join(dir, "cache"), nil)
	tb.Cleanup(func() {
		if tb.Failed() {
			b, _ := os.ReadFile(n.logFile)
			tb.Logf("plugin log:\n%s", b)
			tb.Logf("agent log:\n%s", n.agentLog.String())
		}
	})
	return n
}

// startAgent runs the agent against the node namespace and waits until it
// is ready.
func (n *testNode) startAgent() {
	tb := n.tb
	tb.Helper()
	env := map[string]string{
		"TWILL_IPV4POOL_CIDR":       n.opts.poolCIDR,
		"TWILL_IPV4POOL_BLOCK_SIZE": fmt.Sprint(n.opts.blockSize),
		"TWILL_IPV4POOL_VXLAN":      n.opts.vxlan,
	}
	level := slog.LevelInfo
	var w io.Writer = n.agentLog
	if _, ok := tb.(*testing.B); ok {
		level = slog.LevelWarn
	}
	cfg := agent.Config{
		NodeName:   n.name,
		IP:         nodeAddr,
		NetnsPath:  n.path,
		SocketPath: n.sock,
		GCGrace:    -1, // GC tests release at once
		Getenv:     func(k string) string { return env[k] },
		Logger:     slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, n.store, cfg) }()
	var once sync.Once
	n.stopAgent = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("agent: %v", err)
				}
			case <-time.After(30 * time.Second):
				tb.Errorf("agent did not stop within 30s")
			}
			n.agentAlive = false
		})
	}
	tb.Cleanup(n.stopAgent)
	n.agentAlive = true
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := n.client.Status(context.Background())
		if err == nil && st.Ready {
			return
		}
		select {
		case err := <-done:
			tb.Fatalf("agent exited: %v\n%s", err, n.agentLog.String())
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("agent not ready after 60s (status %+v, %v)\n%s", st, err, n.agentLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testPod is a pod namespace and its runtime configuration.
type testPod struct {
	name   string // Kubernetes pod name
	uid    string // Kubernetes pod UID
	ns     *nettest.NS
	nsName string
	path   string
	rt     *libcni.RuntimeConf
	handle string
	veth   string
}

// newPod creates a pod namespace. Extra CNI_ARGS and capability args may
// be set on rt before ADD.
func (n *testNode) newPod(tb testing.TB) *testPod {
	tb.Helper()
	p := &testPod{}
	p.ns = nettest.New(tb, "cp")
	p.nsName, p.path = p.ns.Name, p.ns.Path
	p.name = "pod-" + strings.TrimPrefix(p.nsName, "twcp-")
	id := fmt.Sprintf("twtest%016x", rand.Uint64())
	p.uid = fmt.Sprintf("%08x-0000-4000-8000-%012x", rand.Uint32(), rand.Uint64()&(1<<48-1))
	p.rt = &libcni.RuntimeConf{
		ContainerID: id, NetNS: p.path, IfName: "eth0",
		Args: [][2]string{{"K8S_POD_NAMESPACE", podNSNS}, {"K8S_POD_NAME", p.name}, {"K8S_POD_INFRA_CONTAINER_ID", id}, {"K8S_POD_UID", p.uid}},
	}
	p.handle = agentapi.HandleID(id, "eth0")
	p.veth = HostVethName(podNSNS, p.name, id, "eth0")
	return p
}

// add runs ADD through libcni from the node namespace.
func (n *testNode) add(p *testPod) (*current.Result, error) {
	var res types.Result
	err := nettest.InNetns(n.path, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var err error
		res, err = n.cni.AddNetworkList(ctx, n.list, p.rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (n *testNode) mustAdd(tb testing.TB, p *testPod) *current.Result {
	tb.Helper()
	res, err := n.add(p)
	if err != nil {
		tb.Fatalf("ADD %s: %v", p.name, err)
	}
	return res
}

// do runs one of libcni's list operations from the node namespace.
func (n *testNode) do(f func(ctx context.Context) error) error {
	return nettest.InNetns(n.path, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		return f(ctx)
	})
}

func (n *testNode) del(p *testPod) error {
	return n.do(func(ctx context.Context) error { return n.cni.DelNetworkList(ctx, n.list, p.rt) })
}

func (n *testNode) check(p *testPod) error {
	return n.do(func(ctx context.Context) error { return n.cni.CheckNetworkList(ctx, n.list, p.rt) })
}

// status runs STATUS through libcni. libcni skips STATUS (and answers
// nil) for a list older than 1.1.0, which would let a test pass unseen, so
// such a list is an error here.
func (n *testNode) status() error {
	if ok, err := version.GreaterThanOrEqualTo(n.list.CNIVersion, MinStatusVersion); err != nil || !ok {
		return fmt.Errorf("test bug: libcni does not send STATUS for cniVersion %q; give the node cniVersion %s", n.list.CNIVersion, MinStatusVersion)
	}
	return n.do(func(ctx context.Context) error { return n.cni.GetStatusNetworkList(ctx, n.list) })
}

// podAddr returns the single pod address of a result.
func podAddr(tb testing.TB, res *current.Result) netip.Addr {
	tb.Helper()
	if len(res.IPs) != 1 {
		tb.Fatalf("result has %d addresses; want 1: %v", len(res.IPs), res)
	}
	a, ok := netip.AddrFromSlice(res.IPs[0].Address.IP)
	if !ok {
		tb.Fatalf("result address %v", res.IPs[0].Address)
	}
	return a.Unmap()
}

// hostRoute returns the node's route to addr/32, if any.
func (n *testNode) hostRoute(tb testing.TB, addr netip.Addr) (netlink.Route, bool) {
	tb.Helper()
	rs, err := dump(func() ([]netlink.Route, error) {
		return n.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN, Dst: hostNet(addr)}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
	})
	if err != nil {
		tb.Fatal(err)
	}
	if len(rs) == 0 {
		return netlink.Route{}, false
	}
	return rs[0], true
}

// cali lists the node's cali* links.
func (n *testNode) cali(tb testing.TB) []string {
	tb.Helper()
	ls, err := dump(n.h.LinkList)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		if strings.HasPrefix(l.Attrs().Name, VethPrefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// handleAddrs asks IPAM directly (not the agent) what handle holds.
func (n *testNode) handleAddrs(tb testing.TB, handle string) []netip.Addr {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := ipam.New(n.store).HandleAddrs(ctx, handle)
	if err != nil {
		tb.Fatal(err)
	}
	return addrs
}

// podHandle opens a netlink handle in the pod's namespace.
func podHandle(tb testing.TB, p *testPod) *netlink.Handle {
	tb.Helper()
	ns, err := netns.GetFromPath(p.path)
	if err != nil {
		tb.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	return h
}

// assertGone checks that nothing of p is left: no host veth, no pod
// interface, no allocation.
func (n *testNode) assertGone(tb testing.TB, p *testPod) {
	tb.Helper()
	if _, err := n.h.LinkByName(p.veth); err == nil {
		tb.Errorf("host veth %s is left behind", p.veth)
	}
	if _, err := os.Stat(p.path); err == nil {
		if _, err := podHandle(tb, p).LinkByName(p.rt.IfName); err == nil {
			tb.Errorf("pod interface %s is left behind in %s", p.rt.IfName, p.nsName)
		}
	}
	if addrs := n.handleAddrs(tb, p.handle); len(addrs) > 0 {
		tb.Errorf("handle %s still holds %v", p.handle, addrs)
	}
}

// ping sends ICMP echo requests from the namespace at path to dst until a
// reply comes back (at most 3 requests, 1s apart).
func ping(path string, dst netip.Addr) error {
	var conn net.PacketConn
	err := nettest.InNetns(path, func() error {
		var err error
		conn, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return fmt.Errorf("open an ICMP socket in %s: %w", path, err)
	}
	defer conn.Close()
	id := uint16(rand.Uint32())
	buf := make([]byte, 1500)
	for seq := uint16(1); seq <= 3; seq++ {
		msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 't', 'w', 'i', 'l', 'l'}
		cs := icmpChecksum(msg)
		msg[2], msg[3] = byte(cs>>8), byte(cs)
		if _, err := conn.WriteTo(msg, &net.IPAddr{IP: net.IP(dst.AsSlice())}); err != nil {
			return fmt.Errorf("send echo request to %s: %w", dst, err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		for {
			nr, from, err := conn.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				return err
			}
			src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			if nr >= 8 && buf[0] == 0 && src.Unmap() == dst &&
				binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
				return nil
			}
		}
	}
	return fmt.Errorf("no echo reply from %s after 3 requests", dst)
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// readSysctl reads a sysctl of the namespace at path.
func readSysctl(tb testing.TB, path, key string) string {
	tb.Helper()
	var v string
	err := nettest.InNetns(path, func() error {
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return v
}
