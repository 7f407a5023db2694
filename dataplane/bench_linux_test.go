package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"twill.dev/twill/plan"
)

// percentile returns the p-th percentile (0-100) of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[max(0, min(i, len(sorted))-1)]
}

// BenchmarkHeal measures an owned route deleted by hand until it is back:
// kernel event → Subscribe signal → Apply. Reports p50/p99 in µs.
func BenchmarkHeal(b *testing.B) {
	ns := newTestNS(b)
	ns.addVeth(b, "twcali0", false)
	r := ns.reconciler(b, slog.New(slog.DiscardHandler))
	dp := seedPlan()
	if _, err := r.Apply(dp); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig, err := r.Subscribe(ctx)
	if err != nil {
		b.Fatal(err)
	}
	settle(sig, 100*time.Millisecond)

	_, dst, _ := net.ParseCIDR("172.16.135.192/26")
	victim := &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN, Protocol: plan.RouteProtocol}
	var lat []time.Duration
	for b.Loop() {
		for len(sig) > 0 { // drop a stale signal, if any
			<-sig
		}
		t0 := time.Now()
		if err := ns.h.RouteDel(victim); err != nil {
			b.Fatalf("delete route: %v", err)
		}
		if !waitSignal(sig, 5*time.Second) {
			b.Fatal("no signal within 5s of deleting an owned route")
		}
		res, err := r.Apply(dp)
		if err != nil || res.Routes != (Counts{Added: 1}) {
			b.Fatalf("Apply = %+v, %v; want the route re-added", res, err)
		}
		lat = append(lat, time.Since(t0))
		if _, ok := ns.ownedRoutes(b)["172.16.135.192/26"]; !ok {
			b.Fatal("route not back after Apply")
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(percentile(lat, 50).Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(percentile(lat, 99).Nanoseconds())/1e3, "p99-µs")
}

// bigPlan is a node with n remote VXLAN peers: n /26 routes via the peers'
// tunnel addresses, n neighbour and n FDB entries.
func bigPlan(n int) plan.Dataplane {
	dp := plan.Dataplane{
		Device: &plan.Device{Name: "vxlan.calico", VNI: 4096, Port: 4789, MTU: 1450, Parent: "eth0",
			LocalIP: ma("192.168.3.241"), MAC: "66:04:84:48:ab:6a", Address: mp("10.255.255.0/32")},
	}
	base := ma("10.0.0.0").As4()
	node := ma("100.64.0.0").As4()
	for i := range n {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]) + uint32(i)*64
		tunnel := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		h := uint32(node[1])<<16 | uint32(i+1)
		peer := netip.AddrFrom4([4]byte{node[0], byte(h >> 16), byte(h >> 8), byte(h)})
		mac := fmt.Sprintf("66:00:00:%02x:%02x:%02x", byte(i>>16), byte(i>>8), byte(i))
		dp.Routes = append(dp.Routes, plan.Route{Dst: netip.PrefixFrom(tunnel, 26), Gateway: tunnel,
			Device: "vxlan.calico", OnLink: true, Kind: plan.KindVXLAN})
		dp.Neighbors = append(dp.Neighbors, plan.Neighbor{Device: "vxlan.calico", IP: tunnel, MAC: mac})
		dp.FDB = append(dp.FDB, plan.FDB{Device: "vxlan.calico", MAC: mac, Dst: peer})
	}
	return dp
}

// BenchmarkApply5000 measures a full Apply of 5,000 remote-block routes,
// neighbours and FDB entries into an empty namespace, and a no-op Apply of
// the same plan. Run with a small -benchtime, e.g. -benchtime=3x.
func BenchmarkApply5000(b *testing.B) {
	const n = 5000
	ns := newTestNS(b)
	r := ns.reconciler(b, slog.New(slog.DiscardHandler))
	dp := bigPlan(n)
	var first, noop []time.Duration
	for b.Loop() {
		t0 := time.Now()
		res, err := r.Apply(dp)
		first = append(first, time.Since(t0))
		if err != nil || res.Routes.Added != n || res.Neighbors.Added != n || res.FDB.Added != n || res.Device.Added != 1 {
			b.Fatalf("first Apply = %+v, %v", res, err)
		}
		t1 := time.Now()
		res, err = r.Apply(dp)
		noop = append(noop, time.Since(t1))
		if err != nil || res.Changes() != 0 {
			b.Fatalf("no-op Apply = %+v, %v", res, err)
		}
		// Back to empty: the device (and with it its neighbours, FDB and
		// routes) goes.
		res, err = r.Apply(plan.Dataplane{})
		if err != nil || res.Device.Deleted != 1 || len(ns.ownedRoutes(b)) != 0 {
			b.Fatalf("reset Apply = %+v, %v", res, err)
		}
	}
	slices.Sort(first)
	slices.Sort(noop)
	b.ReportMetric(float64(percentile(first, 50).Microseconds())/1e3, "first-apply-ms")
	b.ReportMetric(float64(percentile(noop, 50).Microseconds())/1e3, "noop-apply-ms")
}
