package cni

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"twill.dev/twill/agent"
	"twill.dev/twill/agentapi"
	"twill.dev/twill/internal/nettest"
)

func TestAddCheckDel(t *testing.T) {
	n := newNode(t, nodeOpts{})
	p := n.newPod(t)
	res := n.mustAdd(t, p)
	addr := podAddr(t, res)

	// The result, as the spec wants it.
	if len(res.Interfaces) != 2 {
		t.Fatalf("result interfaces %v; want host veth and pod interface", res.Interfaces)
	}
	host, pod := res.Interfaces[0], res.Interfaces[1]
	if host.Name != p.veth || host.Mac != "ee:ee:ee:ee:ee:ee" || host.Sandbox != "" {
		t.Errorf("host interface %+v; want %s with MAC ee:ee:ee:ee:ee:ee and no sandbox", host, p.veth)
	}
	if pod.Name != "eth0" || pod.Sandbox != p.path || pod.Mac == "" {
		t.Errorf("pod interface %+v; want eth0 in %s with its MAC", pod, p.path)
	}
	ip := res.IPs[0]
	if ip.Interface == nil || *ip.Interface != 1 || ip.Gateway.String() != "169.254.1.1" || ip.Address.Mask.String() != "ffffffff" {
		t.Errorf("result IP %+v; want a /32 on interface 1 with gateway 169.254.1.1", ip)
	}
	if !netip.MustParsePrefix(n.opts.poolCIDR).Contains(addr) {
		t.Errorf("address %s is outside the pool %s", addr, n.opts.poolCIDR)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "169.254.1.1" {
		t.Errorf("result routes %v; want default via 169.254.1.1", res.Routes)
	}

	// The node side.
	hl, err := n.h.LinkByName(p.veth)
	if err != nil {
		t.Fatalf("host veth: %v", err)
	}
	if hl.Type() != "veth" || hl.Attrs().HardwareAddr.String() != "ee:ee:ee:ee:ee:ee" || hl.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host veth %s: type %s MAC %s flags %v", p.veth, hl.Type(), hl.Attrs().HardwareAddr, hl.Attrs().Flags)
	}
	if hl.Attrs().MTU != nodeMTU {
		t.Errorf("host veth MTU %d; want the agent's %d", hl.Attrs().MTU, nodeMTU)
	}
	for key, want := range map[string]string{
		"net.ipv4.conf." + p.veth + ".proxy_arp":    "1",
		"net.ipv4.neigh." + p.veth + ".proxy_delay": "0",
		"net.ipv4.conf." + p.veth + ".forwarding":   "1",
	} {
		if got := readSysctl(t, n.path, key); got != want {
			t.Errorf("%s = %s; want %s", key, got, want)
		}
	}
	rt, ok := n.hostRoute(t, addr)
	if !ok {
		t.Fatalf("no route to %s on the node", addr)
	}
	if rt.LinkIndex != hl.Attrs().Index || rt.Scope != netlink.SCOPE_LINK || int(rt.Protocol) != RouteProtocol {
		t.Errorf("route to %s: %v; want dev %s scope link proto %d", addr, rt, p.veth, RouteProtocol)
	}

	// The pod side.
	ph := podHandle(t, p)
	pl, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatalf("pod eth0: %v", err)
	}
	if pl.Attrs().HardwareAddr.String() != pod.Mac || pl.Attrs().MTU != nodeMTU || pl.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("pod eth0: MAC %s (result %s) MTU %d flags %v", pl.Attrs().HardwareAddr, pod.Mac, pl.Attrs().MTU, pl.Attrs().Flags)
	}
	addrs, err := ph.AddrList(pl, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != addr.String()+"/32" {
		t.Errorf("pod eth0 addresses %v, %v; want %s/32", addrs, err, addr)
	}
	prs, err := ph.RouteList(pl, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range prs {
		got = append(got, fmt.Sprintf("dst=%v gw=%v scope=%v", r.Dst, r.Gw, r.Scope))
	}
	slices.Sort(got)
	want := []string{"dst=0.0.0.0/0 gw=169.254.1.1 scope=universe", "dst=169.254.1.1/32 gw=<nil> scope=link"}
	if !slices.Equal(got, want) {
		// Older netlink reports the default route with a nil Dst.
		alt := []string{"dst=169.254.1.1/32 gw=<nil> scope=link", "dst=<nil> gw=169.254.1.1 scope=universe"}
		if !slices.Equal(got, alt) {
			t.Errorf("pod routes %q; want %q", got, want)
		}
	}

	// The agent recorded the endpoint.
	st, err := n.client.GetEndpoint(context.Background(), p.handle)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Allocated || st.Endpoint == nil || st.Endpoint.HostIface != p.veth || st.Endpoint.MAC != pod.Mac ||
		st.Endpoint.Namespace != podNSNS || st.Endpoint.Pod != p.name || st.Endpoint.PodUID != p.uid || st.Endpoint.Netns != p.path {
		t.Errorf("agent's endpoint %+v (%+v)", st, st.Endpoint)
	}

	// CHECK passes, then finds a removed pod route, and passes again once
	// it is back.
	if err := n.check(p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	def := &netlink.Route{LinkIndex: pl.Attrs().Index, Gw: net.ParseIP("169.254.1.1"), Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	if err := ph.RouteDel(def); err != nil {
		t.Fatal(err)
	}
	err = n.check(p)
	if err == nil || cniCode(t, err) != CodeCheckFailed || !strings.Contains(err.Error(), "default via 169.254.1.1") {
		t.Errorf("CHECK without the default route: %v; want code %d naming the route", err, CodeCheckFailed)
	}
	if err := ph.RouteAdd(def); err != nil {
		t.Fatal(err)
	}
	if err := n.check(p); err != nil {
		t.Errorf("CHECK after restoring the route: %v", err)
	}
	// CHECK notices a released allocation.
	if err := ph.AddrDel(pl, &addrs[0]); err != nil {
		t.Fatal(err)
	}
	err = n.check(p)
	if err == nil || !strings.Contains(err.Error(), "lacks the address "+addr.String()) {
		t.Errorf("CHECK without the pod address: %v; want it named", err)
	}

	// DEL removes everything; DEL again succeeds.
	if err := n.del(p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	n.assertGone(t, p)
	if _, ok := n.hostRoute(t, addr); ok {
		t.Errorf("route to %s left behind", addr)
	}
	st, err = n.client.GetEndpoint(context.Background(), p.handle)
	if err != nil || st.Allocated || st.Endpoint != nil {
		t.Errorf("agent still holds %+v, %v", st, err)
	}
	if err := n.del(p); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	// DEL after the pod's namespace is gone succeeds too.
	p.ns.Delete(t)
	p.rt.NetNS = "/var/run/netns/twcp-gone"
	if err := n.del(p); err != nil {
		t.Errorf("DEL with the namespace gone: %v", err)
	}
}

// TestDelLeavesNewerSandbox: DEL of an old sandbox of a pod must not take
// the veth of the pod's new sandbox, which has the same name.
func TestDelLeavesNewerSandbox(t *testing.T) {
	n := newNode(t, nodeOpts{})
	old := n.newPod(t)
	n.mustAdd(t, old)
	// The new sandbox of the same pod: same Kubernetes name, new container.
	fresh := n.newPod(t)
	fresh.name = old.name
	fresh.rt.Args = [][2]string{{"K8S_POD_NAMESPACE", podNSNS}, {"K8S_POD_NAME", old.name}, {"K8S_POD_INFRA_CONTAINER_ID", fresh.rt.ContainerID}}
	fresh.veth = old.veth
	// The old sandbox's namespace is gone (as after a node reboot).
	// A namespace of the same name, empty, stands in its place.
	old.ns.Delete(t)
	nettest.Named(t, old.nsName)
	res := n.mustAdd(t, fresh)
	if err := n.del(old); err != nil {
		t.Fatalf("DEL of the old sandbox: %v", err)
	}
	if _, err := n.h.LinkByName(fresh.veth); err != nil {
		t.Fatalf("DEL of the old sandbox removed the new sandbox's veth: %v", err)
	}
	if addrs := n.handleAddrs(t, old.handle); len(addrs) != 0 {
		t.Errorf("old sandbox still holds %v", addrs)
	}
	if err := n.check(fresh); err != nil {
		t.Errorf("CHECK of the new sandbox: %v", err)
	}
	if a := podAddr(t, res); !slices.Contains(n.handleAddrs(t, fresh.handle), a) {
		t.Errorf("new sandbox lost %s", a)
	}
}

func TestAddRequestedAddress(t *testing.T) {
	n := newNode(t, nodeOpts{mtu: 1300})
	ctx := context.Background()

	byCap := n.newPod(t)
	byCap.rt.CapabilityArgs = map[string]any{"ips": []string{"10.244.7.9/32"}}
	if a := podAddr(t, n.mustAdd(t, byCap)); a != netip.MustParseAddr("10.244.7.9") {
		t.Errorf("runtimeConfig.ips 10.244.7.9 gave %s", a)
	}
	ph := podHandle(t, byCap)
	if l, err := ph.LinkByName("eth0"); err != nil || l.Attrs().MTU != 1300 {
		t.Errorf("pod eth0 MTU with mtu 1300 in the conflist: %v, %v", l, err)
	}

	byArgs := n.newPod(t)
	byArgs.rt.Args = append(byArgs.rt.Args, [2]string{"IP", "10.244.7.10"})
	if a := podAddr(t, n.mustAdd(t, byArgs)); a != netip.MustParseAddr("10.244.7.10") {
		t.Errorf("CNI_ARGS IP=10.244.7.10 gave %s", a)
	}

	taken := n.newPod(t)
	taken.rt.CapabilityArgs = map[string]any{"ips": []string{"10.244.7.9"}}
	_, err := n.add(taken)
	if err == nil || cniCode(t, err) != CodeAddressInUse {
		t.Errorf("ADD of a taken address: %v; want code %d", err, CodeAddressInUse)
	}
	n.assertGone(t, taken)

	outside := n.newPod(t)
	outside.rt.Args = append(outside.rt.Args, [2]string{"IP", "10.55.0.1"})
	_, err = n.add(outside)
	if err == nil || cniCode(t, err) != CodeAddressNotInPool {
		t.Errorf("ADD of an address outside every pool: %v; want code %d", err, CodeAddressNotInPool)
	}
	n.assertGone(t, outside)

	// The holder keeps its address through all that.
	st, err := n.client.GetEndpoint(ctx, byCap.handle)
	if err != nil || !slices.Contains(st.Addresses, "10.244.7.9/32") {
		t.Errorf("holder of 10.244.7.9: %+v, %v", st, err)
	}
}

func TestAddPoolExhausted(t *testing.T) {
	// A pool of one /30 block: four addresses at most.
	n := newNode(t, nodeOpts{poolCIDR: "10.250.0.0/30", blockSize: 30, vxlan: "Never", cniVersion: "1.1.0"})
	if err := n.status(); err != nil {
		t.Fatalf("STATUS with room: %v", err)
	}
	var added []*testPod
	var failed *testPod
	var failErr error
	for i := 0; i < 8 && failed == nil; i++ {
		p := n.newPod(t)
		if _, err := n.add(p); err != nil {
			failed, failErr = p, err
			break
		}
		added = append(added, p)
	}
	if failed == nil {
		t.Fatalf("8 ADDs fitted into a /30 pool")
	}
	if len(added) == 0 {
		t.Fatalf("the first ADD failed: %v", failErr)
	}
	t.Logf("%d ADDs fitted; then: %v", len(added), failErr)
	if c := cniCode(t, failErr); c != CodePoolExhausted {
		t.Errorf("ADD into a full pool: code %d (%v); want %d", c, failErr, CodePoolExhausted)
	}
	n.assertGone(t, failed)
	if cali := n.cali(t); len(cali) != len(added) {
		t.Errorf("node has veths %v; want the %d of the added pods", cali, len(added))
	}

	// STATUS says there is no room, and recovers when an address is freed.
	err := n.status()
	if err == nil || cniCode(t, err) != CodePluginNotAvailable || !strings.Contains(err.Error(), "free address") {
		t.Errorf("STATUS with a full pool: %v; want code %d", err, CodePluginNotAvailable)
	}
	if err := n.del(added[0]); err != nil {
		t.Fatal(err)
	}
	nettest.Eventually(t, 20*time.Second, 50*time.Millisecond, "STATUS succeeds after a DEL freed an address", func() (bool, string) {
		err := n.status()
		return err == nil, fmt.Sprint(err)
	})
}

func TestAgentDown(t *testing.T) {
	n := newNode(t, nodeOpts{cniVersion: "1.1.0"})
	up := n.newPod(t)
	n.mustAdd(t, up)
	n.stopAgent()

	p := n.newPod(t)
	_, err := n.add(p)
	if err == nil || cniCode(t, err) != CodeTryAgainLater || !strings.Contains(err.Error(), n.sock) {
		t.Errorf("ADD with the agent stopped: %v; want code %d naming %s", err, CodeTryAgainLater, n.sock)
	}
	t.Logf("ADD with the agent stopped: %v", err)
	n.assertGone(t, p)

	err = n.status()
	if err == nil || cniCode(t, err) != CodePluginNotAvailable || !strings.Contains(err.Error(), n.sock) {
		t.Errorf("STATUS with the agent stopped: %v; want code %d naming %s", err, CodePluginNotAvailable, n.sock)
	}
	// DEL cannot release the address: it says to try again, and the
	// address stays allocated for the retry.
	err = n.del(up)
	if err == nil || cniCode(t, err) != CodeTryAgainLater {
		t.Errorf("DEL with the agent stopped: %v; want code %d", err, CodeTryAgainLater)
	}
	if len(n.handleAddrs(t, up.handle)) == 0 {
		t.Errorf("DEL that failed released the address anyway")
	}

	// Back up, the retried DEL finishes the job.
	n.startAgent()
	if err := n.del(up); err != nil {
		t.Fatalf("DEL after the agent is back: %v", err)
	}
	n.assertGone(t, up)
}

func TestGC(t *testing.T) {
	n := newNode(t, nodeOpts{cniVersion: "1.1.0"})
	ctx := context.Background()
	keep, stale := n.newPod(t), n.newPod(t)
	n.mustAdd(t, keep)
	staleAddr := podAddr(t, n.mustAdd(t, stale))
	// An allocation the runtime never heard of (a crashed ADD).
	leak, err := n.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "twtest-leak", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	tunnel := agent.TunnelHandlePrefix + n.name
	tunnelAddrs := n.handleAddrs(t, tunnel)

	// A runtime with no cached attachments, so that every release below is
	// the plugin's GC and not libcni's DEL of cached attachments.
	fresh := libcni.NewCNIConfigWithCacheDir(n.cni.Path, filepath.Join(t.TempDir(), "cache"), nil)
	err = n.do(func(ctx context.Context) error {
		return fresh.GCNetworkList(ctx, n.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.rt.ContainerID, IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if len(n.handleAddrs(t, keep.handle)) != 1 {
		t.Errorf("GC released the valid attachment %s", keep.handle)
	}
	if a := n.handleAddrs(t, stale.handle); len(a) != 0 {
		t.Errorf("GC left the stale attachment %s holding %v", stale.handle, a)
	}
	if a := n.handleAddrs(t, leak.Handle); len(a) != 0 {
		t.Errorf("GC left the leaked allocation %s holding %v", leak.Handle, a)
	}
	if got := n.handleAddrs(t, tunnel); !slices.Equal(got, tunnelAddrs) {
		t.Errorf("GC changed the tunnel address: %v, was %v", got, tunnelAddrs)
	}
	if st, _ := n.client.GetEndpoint(ctx, stale.handle); st.Endpoint != nil {
		t.Errorf("GC left the stale endpoint record %+v", st.Endpoint)
	}
	// The agent stops routing the stale address.
	nettest.Eventually(t, 10*time.Second, 20*time.Millisecond, "the route to the released "+staleAddr.String()+" goes", func() (bool, string) {
		_, ok := n.hostRoute(t, staleAddr)
		return !ok, "the route is still there"
	})
	if err := n.check(keep); err != nil {
		t.Errorf("CHECK of the valid attachment after GC: %v", err)
	}
}

// TestParallelAdds plumbs 50 pods at once, then pings from each pod to the
// next one.
func TestParallelAdds(t *testing.T) {
	const pods = 50
	n := newNode(t, nodeOpts{logLevel: "info"})
	ps := make([]*testPod, pods)
	for i := range ps {
		ps[i] = n.newPod(t)
	}
	addrs := make([]netip.Addr, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := n.add(p)
			if err != nil {
				errs[i] = err
				return
			}
			if len(res.IPs) == 1 {
				addrs[i], _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
			}
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := range ps {
		if errs[i] != nil {
			t.Fatalf("ADD of pod %d: %v", i, errs[i])
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Errorf("pods %d and %d both got %s", j, i, addrs[i])
		}
		seen[addrs[i]] = i
	}
	// Every pod's host route is there. A reconcile of the agent that planned
	// before a pod's endpoint was recorded may prune the route the plugin
	// just added; the agent's next reconcile restores it, so the routes are
	// waited for (bounded) and a transient miss is only logged.
	missing := func() []int {
		var out []int
		for i, p := range ps {
			rt, ok := n.hostRoute(t, addrs[i])
			l, err := n.h.LinkByName(p.veth)
			if !ok || err != nil || rt.LinkIndex != l.Attrs().Index {
				out = append(out, i)
			}
		}
		return out
	}
	// Every ADD returned only after its endpoint was recorded and no stale
	// reconcile could still run, so every host route must be there now:
	// a route that shows up only later is the race the agent's
	// record-then-sync protocol exists to prevent.
	if miss := missing(); len(miss) > 0 {
		t.Errorf("right after the ADDs, the host routes of pods %v are missing", miss)
	}
	if t.Failed() {
		return
	}
	// The ping itself is honest: an address no pod holds does not answer.
	if err := ping(ps[0].path, netip.MustParseAddr("10.244.255.254")); err == nil {
		t.Errorf("ping to an address no pod holds got a reply")
	}
	for i, p := range ps {
		next := addrs[(i+1)%pods]
		if err := ping(p.path, next); err != nil {
			t.Errorf("ping from pod %d (%s) to %s: %v", i, addrs[i], next, err)
		}
	}

	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.del(p)
		}()
	}
	wg.Wait()
	for i := range ps {
		if errs[i] != nil {
			t.Errorf("DEL of pod %d: %v", i, errs[i])
		}
	}
	if left := n.cali(t); len(left) != 0 {
		t.Errorf("veths left after DEL: %v", left)
	}
}

// TestAddFailureCleansUp: an ADD that fails after the address was
// allocated releases it and leaves what it did not create alone.
func TestAddFailureCleansUp(t *testing.T) {
	n := newNode(t, nodeOpts{})
	p := n.newPod(t)
	// Something already holds eth0 in the pod.
	ipCmd(t, "-n", p.nsName, "link", "add", "eth0", "type", "veth", "peer", "name", "tweth0x")
	_, err := n.add(p)
	if err == nil || cniCode(t, err) != CodeInternal || !strings.Contains(err.Error(), "already has an interface eth0") {
		t.Fatalf("ADD into a pod with an eth0: %v; want an internal error naming eth0", err)
	}
	if _, err := podHandle(t, p).LinkByName("eth0"); err != nil {
		t.Errorf("the failed ADD removed the pod's own eth0: %v", err)
	}
	if _, err := n.h.LinkByName(p.veth); err == nil {
		t.Errorf("host veth %s left behind", p.veth)
	}
	if a := n.handleAddrs(t, p.handle); len(a) != 0 {
		t.Errorf("the failed ADD left %v allocated", a)
	}
}
