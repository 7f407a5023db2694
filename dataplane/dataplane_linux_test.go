package dataplane

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/plan"
)

// testNS is a fresh named network namespace with a veth eth0 holding
// 192.168.3.241/24 (peer tweth0p). Everything a test does happens inside it.
type testNS struct {
	name string
	path string
	// h is a netlink handle inside the namespace, for checks.
	h  *netlink.Handle
	ns *nettest.NS
}

// newTestNS creates the namespace (removed when the test ends, even on
// failure) with its eth0.
func newTestNS(tb testing.TB) *testNS {
	tb.Helper()
	t := newBareNS(tb, "dp")
	if err := t.ns.Veth("eth0", t.ns, "tweth0p"); err != nil {
		tb.Fatal(err)
	}
	if err := t.ns.AddrAdd("eth0", "192.168.3.241/24"); err != nil {
		tb.Fatal(err)
	}
	return t
}

// newBareNS creates a namespace "tw<role>-<random>" with only its loopback,
// up, and removes it when the test ends, even on failure.
func newBareNS(tb testing.TB, role string) *testNS {
	tb.Helper()
	nettest.RequireRoot(tb, "ip", "bridge")
	ns := nettest.New(tb, role)
	return &testNS{name: ns.Name, path: ns.Path, h: ns.H, ns: ns}
}

// ip runs `ip -n <ns> args` and fails the test on error.
func (t *testNS) ip(tb testing.TB, args string) string {
	tb.Helper()
	return t.run(tb, "ip", args)
}

// bridge runs `bridge -n <ns> args`.
func (t *testNS) bridge(tb testing.TB, args string) string {
	tb.Helper()
	return t.run(tb, "bridge", args)
}

func (t *testNS) run(tb testing.TB, cmd, args string) string {
	tb.Helper()
	argv := append([]string{"-n", t.name}, strings.Fields(args)...)
	out, err := exec.Command(cmd, argv...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v: %s", cmd, strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// addVeth adds a veth pair inside the namespace, up unless down is set.
func (t *testNS) addVeth(tb testing.TB, name string, down bool) {
	tb.Helper()
	t.ip(tb, "link add "+name+" type veth peer name "+name+"p")
	if !down {
		t.ip(tb, "link set "+name+" up")
		t.ip(tb, "link set "+name+"p up")
	}
}

func (t *testNS) reconciler(tb testing.TB, log *slog.Logger) *Reconciler {
	tb.Helper()
	r, err := New(Options{NetnsPath: t.path, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return r
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// seedPlan is k8s-master1's dataplane in the seed cluster, with one pod
// whose host-side veth is twcali0.
func seedPlan() plan.Dataplane {
	return plan.Dataplane{
		Device: &plan.Device{Name: "vxlan.calico", VNI: 4096, Port: 4789, MTU: 1450, Parent: "eth0",
			LocalIP: ma("192.168.3.241"), MAC: "66:04:84:48:ab:6a", Address: mp("172.16.159.128/32")},
		Routes: []plan.Route{
			{Dst: mp("172.16.36.64/26"), Gateway: ma("172.16.36.64"), Device: "vxlan.calico", OnLink: true, Kind: plan.KindVXLAN, Peer: "k8s-node1"},
			{Dst: mp("172.16.135.192/26"), Gateway: ma("192.168.3.243"), Device: "eth0", OnLink: true, Kind: plan.KindDirect, Peer: "k8s-master3"},
			{Dst: mp("172.16.159.128/26"), Type: plan.RouteBlackhole, Kind: plan.KindLocalBlock},
			{Dst: mp("172.16.159.145/32"), Device: "twcali0", ScopeLink: true, Kind: plan.KindWorkload},
			{Dst: mp("172.16.224.0/26"), Gateway: ma("192.168.3.242"), Device: "eth0", OnLink: true, Kind: plan.KindDirect, Peer: "k8s-master2"},
		},
		Neighbors: []plan.Neighbor{{Device: "vxlan.calico", IP: ma("172.16.36.64"), MAC: "66:8c:73:5a:90:99"}},
		FDB:       []plan.FDB{{Device: "vxlan.calico", MAC: "66:8c:73:5a:90:99", Dst: ma("192.168.32.105")}},
	}
}

// seedNS is a namespace with the seed's pod veth, and a reconciler for it.
func seedNS(t *testing.T) (*testNS, *Reconciler) {
	t.Helper()
	ns := newTestNS(t)
	ns.addVeth(t, "twcali0", false)
	return ns, ns.reconciler(t, testLogger(t))
}

func mustApply(t *testing.T, r *Reconciler, dp plan.Dataplane) Result {
	t.Helper()
	res, err := r.Apply(dp)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return res
}

// assertNoop applies dp again and fails if anything changed.
func assertNoop(t *testing.T, r *Reconciler, dp plan.Dataplane) {
	t.Helper()
	res := mustApply(t, r, dp)
	if !reflect.DeepEqual(res, Result{}) {
		t.Fatalf("second Apply was not a no-op: %+v", res)
	}
}

// assertConverged checks, through Observe, that the kernel holds exactly dp.
func assertConverged(t *testing.T, r *Reconciler, dp plan.Dataplane) {
	t.Helper()
	obs, err := r.Observe()
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	d := dp.Device
	if obs.Device == nil {
		t.Fatalf("Observe: no device, want %s", d.Name)
	}
	od := obs.Device
	if od.Type != "vxlan" || !od.Up || od.Learning || od.Name != d.Name || od.VNI != d.VNI || od.Port != d.Port ||
		od.MTU != d.MTU || od.MAC != d.MAC || od.Parent != d.Parent || od.LocalIP != d.LocalIP ||
		!reflect.DeepEqual(od.Addresses, []netip.Prefix{d.Address}) {
		t.Fatalf("observed device %+v, want %+v", *od, *d)
	}
	var want []plan.Route
	for _, rt := range dp.Routes {
		rt.Kind, rt.Peer = "", ""
		want = append(want, rt)
	}
	sortRoutes(want)
	if !reflect.DeepEqual(obs.Routes, want) {
		t.Fatalf("observed routes\n%v\nwant\n%v", obs.Routes, want)
	}
	if len(obs.Odd) != 0 {
		t.Fatalf("odd owned routes: %v", obs.Odd)
	}
	if !reflect.DeepEqual(obs.Neighbors, dp.Neighbors) {
		t.Fatalf("observed neighbors %v, want %v", obs.Neighbors, dp.Neighbors)
	}
	if !reflect.DeepEqual(obs.FDB, dp.FDB) {
		t.Fatalf("observed fdb %v, want %v", obs.FDB, dp.FDB)
	}
}

// ownedRoutes lists the namespace's protocol-80 routes by destination,
// straight from netlink.
func (t *testNS) ownedRoutes(tb testing.TB) map[string]netlink.Route {
	tb.Helper()
	rts, err := t.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: 80},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		tb.Fatal(err)
	}
	m := make(map[string]netlink.Route, len(rts))
	for _, rt := range rts {
		m[rt.Dst.String()] = rt
	}
	return m
}

func (t *testNS) ifindex(tb testing.TB, name string) int {
	tb.Helper()
	l, err := t.h.LinkByName(name)
	if err != nil {
		tb.Fatalf("link %s: %v", name, err)
	}
	return l.Attrs().Index
}

func TestApplySeed(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	res := mustApply(t, r, dp)
	want := Result{Device: Counts{Added: 1}, Addresses: Counts{Added: 1}, Neighbors: Counts{Added: 1},
		FDB: Counts{Added: 1}, Routes: Counts{Added: 5}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("first Apply = %+v, want %+v", res, want)
	}

	// The device, read straight from the kernel.
	l, err := ns.h.LinkByName("vxlan.calico")
	if err != nil {
		t.Fatal(err)
	}
	v, ok := l.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("vxlan.calico is a %s", l.Type())
	}
	eth0 := ns.ifindex(t, "eth0")
	if v.VxlanId != 4096 || v.Port != 4789 || v.Learning || v.MTU != 1450 || v.HardwareAddr.String() != "66:04:84:48:ab:6a" ||
		v.VtepDevIndex != eth0 || !v.SrcAddr.Equal(net.ParseIP("192.168.3.241")) || v.Flags&net.FlagUp == 0 {
		t.Fatalf("device = vni %d port %d learning %v mtu %d mac %s parent %d (eth0 %d) local %s flags %v",
			v.VxlanId, v.Port, v.Learning, v.MTU, v.HardwareAddr, v.VtepDevIndex, eth0, v.SrcAddr, v.Flags)
	}
	addrs, err := ns.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "172.16.159.128/32" {
		t.Fatalf("device addresses = %v, %v; want 172.16.159.128/32", addrs, err)
	}

	// The routes, read straight from the kernel.
	rts := ns.ownedRoutes(t)
	if len(rts) != 5 {
		t.Fatalf("got %d owned routes, want 5: %v", len(rts), rts)
	}
	if bh := rts["172.16.159.128/26"]; bh.Type != unix.RTN_BLACKHOLE {
		t.Errorf("local block route type %d, want blackhole", bh.Type)
	}
	for dst, want := range map[string]struct {
		gw  string
		dev string
	}{
		"172.16.36.64/26":   {"172.16.36.64", "vxlan.calico"},
		"172.16.135.192/26": {"192.168.3.243", "eth0"},
		"172.16.224.0/26":   {"192.168.3.242", "eth0"},
	} {
		rt := rts[dst]
		if !rt.Gw.Equal(net.ParseIP(want.gw)) || rt.LinkIndex != ns.ifindex(t, want.dev) || rt.Flags&int(netlink.FLAG_ONLINK) == 0 {
			t.Errorf("route %s = gw %s ifindex %d flags %#x; want via %s dev %s onlink", dst, rt.Gw, rt.LinkIndex, rt.Flags, want.gw, want.dev)
		}
	}
	if pod := rts["172.16.159.145/32"]; pod.Scope != netlink.SCOPE_LINK || pod.Gw != nil || pod.LinkIndex != ns.ifindex(t, "twcali0") {
		t.Errorf("pod route = scope %v gw %v ifindex %d; want scope link dev twcali0", pod.Scope, pod.Gw, pod.LinkIndex)
	}

	// Neighbour and FDB entries, as iproute2 shows them.
	if out := ns.ip(t, "neigh show dev vxlan.calico"); !strings.Contains(out, "172.16.36.64 lladdr 66:8c:73:5a:90:99 PERMANENT") {
		t.Errorf("neighbours on vxlan.calico:\n%s", out)
	}
	if out := ns.bridge(t, "fdb show dev vxlan.calico"); !strings.Contains(out, "66:8c:73:5a:90:99 dst 192.168.32.105 self permanent") {
		t.Errorf("fdb on vxlan.calico:\n%s", out)
	}

	assertConverged(t, r, dp)
	assertNoop(t, r, dp)
}

func TestDriftFixed(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	mustApply(t, r, dp)
	idx := ns.ifindex(t, "vxlan.calico")

	t.Run("mtu in place", func(t *testing.T) {
		ns.ip(t, "link set vxlan.calico mtu 1400")
		res := mustApply(t, r, dp)
		if res.Device != (Counts{Updated: 1}) || ns.ifindex(t, "vxlan.calico") != idx {
			t.Fatalf("Apply = %+v, ifindex %d (was %d); want one in-place update", res, ns.ifindex(t, "vxlan.calico"), idx)
		}
		assertConverged(t, r, dp)
	})
	t.Run("mac in place", func(t *testing.T) {
		ns.ip(t, "link set vxlan.calico address 66:00:00:00:00:01")
		res := mustApply(t, r, dp)
		if res.Device != (Counts{Updated: 1}) || ns.ifindex(t, "vxlan.calico") != idx {
			t.Fatalf("Apply = %+v; want one in-place update", res)
		}
		assertConverged(t, r, dp)
	})
	t.Run("down to up", func(t *testing.T) {
		ns.ip(t, "link set vxlan.calico down")
		res := mustApply(t, r, dp)
		if res.Device != (Counts{Updated: 1}) || ns.ifindex(t, "vxlan.calico") != idx {
			t.Fatalf("Apply = %+v; want one in-place update", res)
		}
		// Down flushed the route via the device; it must be back.
		assertConverged(t, r, dp)
		assertNoop(t, r, dp)
	})
	t.Run("vni changed by hand", func(t *testing.T) {
		ns.ip(t, "link del vxlan.calico")
		ns.ip(t, "link add vxlan.calico type vxlan id 4097 dstport 4789 dev eth0 local 192.168.3.241 nolearning")
		hand := ns.ifindex(t, "vxlan.calico")
		res := mustApply(t, r, dp)
		if res.Device != (Counts{Added: 1, Deleted: 1}) || ns.ifindex(t, "vxlan.calico") == hand {
			t.Fatalf("Apply = %+v; want the device recreated", res)
		}
		assertConverged(t, r, dp)
		assertNoop(t, r, dp)
	})
	t.Run("vni changed in the plan", func(t *testing.T) {
		before := ns.ifindex(t, "vxlan.calico")
		dp2 := seedPlan()
		dp2.Device.VNI = 4097
		res := mustApply(t, r, dp2)
		if res.Device != (Counts{Added: 1, Deleted: 1}) || ns.ifindex(t, "vxlan.calico") == before {
			t.Fatalf("Apply = %+v; want the device recreated", res)
		}
		assertConverged(t, r, dp2)
		assertNoop(t, r, dp2)
	})
}

func TestDeletedByHandRestored(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	mustApply(t, r, dp)
	cases := []struct {
		name    string
		breakIt func(t *testing.T)
		want    func(Result) bool
	}{
		{"route", func(t *testing.T) { ns.ip(t, "route del 172.16.224.0/26") },
			func(r Result) bool { return r.Routes == Counts{Added: 1} && r.Changes() == 1 }},
		{"neighbour", func(t *testing.T) { ns.ip(t, "neigh del 172.16.36.64 dev vxlan.calico") },
			func(r Result) bool { return r.Neighbors == Counts{Added: 1} && r.Changes() == 1 }},
		{"fdb", func(t *testing.T) { ns.bridge(t, "fdb del 66:8c:73:5a:90:99 dev vxlan.calico dst 192.168.32.105 self") },
			func(r Result) bool { return r.FDB == Counts{Added: 1} && r.Changes() == 1 }},
		// Losing its last IPv4 address, a device also loses its routes and
		// neighbour entries (the kernel's fib_disable_ip): all come back.
		{"address", func(t *testing.T) { ns.ip(t, "addr del 172.16.159.128/32 dev vxlan.calico") },
			func(r Result) bool {
				return r.Addresses == Counts{Added: 1} && r.Neighbors == Counts{Added: 1} && r.Routes == Counts{Added: 1} && r.Changes() == 3
			}},
		{"device", func(t *testing.T) { ns.ip(t, "link del vxlan.calico") },
			func(r Result) bool {
				return r.Device == Counts{Added: 1} && r.Addresses == Counts{Added: 1} && r.Neighbors == Counts{Added: 1} &&
					r.FDB == Counts{Added: 1} && r.Routes == Counts{Added: 1}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.breakIt(t)
			res := mustApply(t, r, dp)
			if !c.want(res) {
				t.Fatalf("Apply after deleting the %s by hand = %+v", c.name, res)
			}
			assertConverged(t, r, dp)
		})
	}
}

func TestPruneLeavesForeignAlone(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	mustApply(t, r, dp)

	// Stale things Twill owns.
	ns.ip(t, "route add 10.99.0.0/24 via 192.168.3.5 dev eth0 proto 80")
	ns.ip(t, "route add blackhole 10.99.1.0/24 proto 80 metric 7")
	ns.ip(t, "neigh add 172.16.99.1 lladdr 66:00:00:00:99:01 dev vxlan.calico nud permanent")
	ns.bridge(t, "fdb append 66:00:00:00:99:01 dev vxlan.calico dst 192.168.32.99 self permanent")
	ns.ip(t, "addr add 10.200.0.1/32 dev vxlan.calico")
	// Foreign things.
	ns.ip(t, "route add 10.98.0.0/24 via 192.168.3.5 dev eth0 proto static")
	ns.ip(t, "route add 10.97.0.0/24 via 192.168.3.6 dev eth0 proto boot")
	ns.ip(t, "neigh add 192.168.3.77 lladdr 00:15:5d:03:0b:77 dev eth0 nud permanent")
	ns.ip(t, "addr add 10.201.0.1/32 dev eth0")

	res := mustApply(t, r, dp)
	want := Result{Addresses: Counts{Deleted: 1}, Neighbors: Counts{Deleted: 1}, FDB: Counts{Deleted: 1}, Routes: Counts{Deleted: 2}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("Apply = %+v, want %+v", res, want)
	}
	assertConverged(t, r, dp)

	for proto, line := range map[string]string{"static": "10.98.0.0/24 via 192.168.3.5 dev eth0", "boot": "10.97.0.0/24 via 192.168.3.6 dev eth0"} {
		if routes := ns.ip(t, "route show proto "+proto); !strings.Contains(routes, line) {
			t.Errorf("foreign route %q (proto %s) is gone:\n%s", line, proto, routes)
		}
	}
	if out := ns.ip(t, "neigh show dev eth0"); !strings.Contains(out, "192.168.3.77 lladdr 00:15:5d:03:0b:77 PERMANENT") {
		t.Errorf("foreign neighbour on eth0 is gone:\n%s", out)
	}
	if out := ns.ip(t, "-4 addr show dev eth0"); !strings.Contains(out, "10.201.0.1/32") || !strings.Contains(out, "192.168.3.241/24") {
		t.Errorf("eth0's addresses changed:\n%s", out)
	}

	// A wanted destination held by a foreign route is a conflict, not a change.
	ns.ip(t, "route add 172.16.1.0/26 via 192.168.3.5 dev eth0 proto static")
	dp2 := seedPlan()
	clash := plan.Route{Dst: mp("172.16.1.0/26"), Gateway: ma("192.168.3.9"), Device: "eth0", OnLink: true}
	dp2.Routes = append(dp2.Routes, clash)
	res, err := r.Apply(dp2)
	if err != nil || res.Changes() != 0 || !reflect.DeepEqual(res.Conflicts, []plan.Route{clash}) {
		t.Fatalf("Apply with a conflicting route = %+v, %v; want only a conflict", res, err)
	}
	if out := ns.ip(t, "route show 172.16.1.0/26"); !strings.Contains(out, "via 192.168.3.5 dev eth0 proto static") {
		t.Errorf("conflicting foreign route changed: %s", out)
	}
}

func TestPendingRoute(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	pod := plan.Route{Dst: mp("172.16.159.146/32"), Device: "twcali1", ScopeLink: true, Kind: plan.KindWorkload}
	dp.Routes = append(dp.Routes, pod)

	res, err := r.Apply(dp)
	if err != nil || !reflect.DeepEqual(res.Pending, []plan.Route{pod}) || res.Routes.Added != 5 {
		t.Fatalf("Apply without the pod's veth = %+v, %v; want the pod route pending", res, err)
	}
	ns.addVeth(t, "twcali1", true) // exists, but down
	res, err = r.Apply(dp)
	if err != nil || !reflect.DeepEqual(res.Pending, []plan.Route{pod}) || res.Changes() != 0 {
		t.Fatalf("Apply with the veth down = %+v, %v; want the pod route pending", res, err)
	}
	ns.ip(t, "link set twcali1 up")
	res, err = r.Apply(dp)
	if err != nil || len(res.Pending) != 0 || res.Routes != (Counts{Added: 1}) {
		t.Fatalf("Apply with the veth up = %+v, %v; want the pod route added", res, err)
	}
	assertConverged(t, r, dp)
}

func TestDeviceRemovedWhenUnwanted(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	dp.Device.Name = "twvx0"
	for i := range dp.Routes {
		if dp.Routes[i].Device == "vxlan.calico" {
			dp.Routes[i].Device = "twvx0"
		}
	}
	dp.Neighbors[0].Device, dp.FDB[0].Device = "twvx0", "twvx0"
	mustApply(t, r, dp)
	assertConverged(t, r, dp)

	// A link of another type with the default name is not ours.
	ns.ip(t, "link add vxlan.calico type veth peer name twvxp")
	none := plan.Dataplane{Routes: []plan.Route{{Dst: mp("172.16.159.128/26"), Type: plan.RouteBlackhole}}}
	res := mustApply(t, r, none)
	// The route via twvx0 goes with the device; Twill deletes the other three.
	if res.Device != (Counts{Deleted: 1}) || res.Routes.Deleted != 3 {
		t.Fatalf("Apply without a device = %+v; want twvx0 and the other routes deleted", res)
	}
	if _, err := ns.h.LinkByName("twvx0"); err == nil {
		t.Fatal("twvx0 still exists")
	}
	if _, err := ns.h.LinkByName("vxlan.calico"); err != nil {
		t.Fatalf("the foreign veth vxlan.calico is gone: %v", err)
	}
	if len(ns.ownedRoutes(t)) != 1 {
		t.Fatalf("owned routes = %v, want only the blackhole", ns.ownedRoutes(t))
	}

	// Wanting a device whose name a foreign link holds is an error that
	// names the problem; routes still converge.
	res, err := r.Apply(seedPlan())
	if !errors.Is(err, ErrForeignLink) {
		t.Fatalf("Apply over a veth vxlan.calico: err = %v, want ErrForeignLink", err)
	}
	if res.Device.Total() != 0 || res.Routes.Added != 3 || len(res.Pending) != 1 {
		t.Fatalf("Apply over a veth vxlan.calico = %+v; want 3 routes added and the VXLAN one pending", res)
	}
}

func TestPartialFailure(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	dp.Routes = append(dp.Routes,
		plan.Route{Dst: mp("10.1.0.1/24"), Type: plan.RouteBlackhole},               // host bits set
		plan.Route{Dst: mp("10.2.0.0/24"), Gateway: ma("10.3.0.1"), Device: "eth0"}, // gateway not reachable, no onlink
	)
	dp.Neighbors = append(dp.Neighbors, plan.Neighbor{IP: ma("172.16.9.9"), MAC: "nope"})
	res, err := r.Apply(dp)
	if err == nil {
		t.Fatal("Apply with bad objects returned no error")
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %v does not wrap ErrInvalid", err)
	}
	var kinds []Kind
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var oe *OpError
		if !errors.As(e, &oe) {
			t.Fatalf("error %v is not an *OpError", e)
		}
		kinds = append(kinds, oe.Kind)
	}
	if len(kinds) != 3 {
		t.Fatalf("got %d errors (%v), want 3: %v", len(kinds), kinds, err)
	}
	// Everything else converged.
	if res.Routes.Added != 5 || res.Device.Added != 1 || res.Neighbors.Added != 1 || res.FDB.Added != 1 {
		t.Fatalf("Apply = %+v; want the valid objects applied", res)
	}
	if _, ok := ns.ownedRoutes(t)["10.2.0.0/24"]; ok {
		t.Fatal("unreachable-gateway route was installed")
	}
}

// waitSignal waits up to d for a signal.
func waitSignal(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case _, ok := <-ch:
		return ok
	case <-t.C:
		return false
	}
}

// settle drains signals until none came for quiet, within 5 s.
func settle(ch <-chan struct{}, quiet time.Duration) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && waitSignal(ch, quiet) {
	}
}

// subscribe subscribes to r's signals until ctx is done, waits for the
// initial signal and lets the signals settle for quiet.
func subscribe(t *testing.T, ctx context.Context, r *Reconciler, quiet time.Duration) <-chan struct{} {
	t.Helper()
	sig, err := r.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !waitSignal(sig, 5*time.Second) {
		t.Fatal("no initial signal")
	}
	settle(sig, quiet)
	return sig
}

// awaitClosed drains sig and fails the test unless it is closed within 5 s
// (of cancelling its subscription).
func awaitClosed(t *testing.T, sig <-chan struct{}) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-sig:
		case <-deadline:
			t.Fatal("signal channel not closed within 5s of cancelling")
		}
	}
}

func TestSubscribeSignals(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	mustApply(t, r, dp)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sig := subscribe(t, ctx, r, 200*time.Millisecond)

	heal := func(t *testing.T, what string, breakIt func()) {
		t.Helper()
		breakIt()
		if !waitSignal(sig, 5*time.Second) {
			t.Fatalf("no signal within 5s after %s", what)
		}
		mustApply(t, r, dp)
		assertConverged(t, r, dp)
		settle(sig, 200*time.Millisecond)
	}
	heal(t, "deleting an owned route", func() { ns.ip(t, "route del 172.16.135.192/26") })
	heal(t, "deleting the device", func() { ns.ip(t, "link del vxlan.calico") })
	heal(t, "deleting a neighbour", func() { ns.ip(t, "neigh del 172.16.36.64 dev vxlan.calico") })
	heal(t, "deleting an FDB entry", func() { ns.bridge(t, "fdb del 66:8c:73:5a:90:99 dev vxlan.calico dst 192.168.32.105 self") })
	heal(t, "changing the MTU", func() { ns.ip(t, "link set vxlan.calico mtu 1400") })
	heal(t, "adding a stray owned route", func() { ns.ip(t, "route add 10.9.0.0/24 dev eth0 proto 80") })
	heal(t, "a pod veth appearing", func() {
		dp.Routes = append(dp.Routes, plan.Route{Dst: mp("172.16.159.147/32"), Device: "twcali2", ScopeLink: true})
		if res, err := r.Apply(dp); err != nil || len(res.Pending) != 1 {
			t.Fatalf("Apply = %+v, %v; want one pending route", res, err)
		}
		settle(sig, 200*time.Millisecond)
		ns.addVeth(t, "twcali2", false)
	})

	cancel()
	awaitClosed(t, sig)
}

func TestPerKindMethods(t *testing.T) {
	ns, r := seedNS(t)
	dp := seedPlan()
	step := func(what string, res Result, err error, want Result) {
		t.Helper()
		if err != nil || !reflect.DeepEqual(res, want) {
			t.Fatalf("%s = %+v, %v; want %+v", what, res, err, want)
		}
	}
	res, err := r.ApplyDevice(dp.Device)
	step("ApplyDevice", res, err, Result{Device: Counts{Added: 1}, Addresses: Counts{Added: 1}})
	res, err = r.ApplyNeighbors(dp.Neighbors)
	step("ApplyNeighbors", res, err, Result{Neighbors: Counts{Added: 1}})
	res, err = r.ApplyFDB(dp.FDB)
	step("ApplyFDB", res, err, Result{FDB: Counts{Added: 1}})
	res, err = r.ApplyRoutes(dp.Routes)
	step("ApplyRoutes", res, err, Result{Routes: Counts{Added: 5}})
	assertConverged(t, r, dp)
	assertNoop(t, r, dp)

	ns.addVeth(t, "twcali1", false)
	pod := plan.Route{Dst: mp("172.16.159.146/32"), Device: "twcali1", ScopeLink: true}
	res, err = r.UpdateRoutes([]plan.Route{pod})
	step("UpdateRoutes", res, err, Result{Routes: Counts{Added: 1}})
	if n := len(ns.ownedRoutes(t)); n != 6 {
		t.Fatalf("UpdateRoutes pruned: %d owned routes, want 6", n)
	}
	// A changed route is replaced in place.
	pod.Device = "twcali0"
	res, err = r.UpdateRoutes([]plan.Route{pod})
	step("UpdateRoutes (changed)", res, err, Result{Routes: Counts{Updated: 1}})
	res, err = r.DeleteRoutes([]netip.Prefix{pod.Dst, mp("10.123.0.0/24")})
	step("DeleteRoutes", res, err, Result{Routes: Counts{Deleted: 1}})
	assertConverged(t, r, dp)

	res, err = r.ApplyRoutes(dp.Routes[:2])
	step("ApplyRoutes (fewer)", res, err, Result{Routes: Counts{Deleted: 3}})
	res, err = r.ApplyNeighbors(nil)
	step("ApplyNeighbors (none)", res, err, Result{Neighbors: Counts{Deleted: 1}})
	res, err = r.ApplyFDB(nil)
	step("ApplyFDB (none)", res, err, Result{FDB: Counts{Deleted: 1}})
	res, err = r.ApplyDevice(nil)
	step("ApplyDevice (none)", res, err, Result{Device: Counts{Deleted: 1}})
	if _, err := r.ApplyNeighbors(dp.Neighbors); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("ApplyNeighbors without a device: err = %v, want ErrNoDevice", err)
	}
}
