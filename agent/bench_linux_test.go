package agent

// Benchmarks of the agent against real namespaces (root only). Run them as
//
//	go test -run '^$' -bench . -benchtime 200x ./agent        (heal, convergence)
//	go test -run '^$' -bench Reconcile5000 -benchtime 3x ./agent
//
// Figures come from these benchmarks, never from timed test assertions.
// Goals: self-heal p99 ≤ 50 ms; plan + full reconcile of 5,000 remote nodes
// ≤ 1 s and ≤ 64 MiB.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/bench"
	"twill.dev/twill/dataplane"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/plan"
)

// benchNode creates a namespace whose eth0 (one end of a veth pair kept
// inside it) holds addr.
func benchNode(b *testing.B, addr string) *nettest.NS {
	b.Helper()
	ns := nettest.New(b, "bn")
	if err := ns.Veth("eth0", ns, "twpeer0"); err != nil {
		b.Fatal(err)
	}
	if err := ns.AddrAdd("eth0", addr); err != nil {
		b.Fatal(err)
	}
	return ns
}

// reportPercentiles reports the nearest-rank p50 and p99 of ds in
// milliseconds (bench.Summarize, as `twill bench` computes them).
func reportPercentiles(b *testing.B, ds []time.Duration) {
	b.Helper()
	st := bench.Summarize(ds)
	if st.N == 0 {
		return
	}
	b.ReportMetric(float64(st.P50)/float64(time.Millisecond), "p50-ms")
	b.ReportMetric(float64(st.P99)/float64(time.Millisecond), "p99-ms")
	b.ReportMetric(float64(st.N), "samples")
}

// benchAgent runs one agent in ns against a fresh embedded etcd holding a
// CrossSubnet pool, and waits until it is ready.
func benchAgent(b *testing.B, ns *nettest.NS, name string) datastore.Store {
	b.Helper()
	nettest.RequireRoot(b)
	store := etcdtest.NewStore(b)
	// The local node's block comes from "bench"; peers' blocks (blockN)
	// from "peers", which no node's IPAM may use.
	for name, cidr := range map[string]string{"bench": "172.16.0.0/14", "peers": "172.20.0.0/14"} {
		pool := api.IPPool{Metadata: api.ObjectMeta{Name: name},
			Spec: api.IPPoolSpec{CIDR: cidr, BlockSize: 26, VXLANMode: api.EncapCrossSubnet}}
		if name == "peers" {
			pool.Spec.NodeSelector = "has(twill-bench-peer)"
		}
		pool.Default()
		put(b, store, datastore.KindIPPool, name, pool)
	}
	sock := filepath.Join(b.TempDir(), "agent.sock")
	cfg := Config{NodeName: name, NetnsPath: ns.Path, SocketPath: sock,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Getenv: func(string) string { return "" }}
	a, err := New(store, cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ok, _ := a.readiness(); ok {
			return store
		}
		if time.Now().After(deadline) {
			_, why := a.readiness()
			b.Fatalf("agent not ready within 30s: %s", why)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// remoteNode registers a peer with one block.
func remoteNode(b *testing.B, s datastore.Store, name, addr string, block netip.Prefix) {
	b.Helper()
	n := api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: name},
		Spec:     api.NodeSpec{Address: addr, Interface: "eth0", MTU: 1500, VTEPMAC: api.VTEPMAC(name), TunnelAddress: block.Addr().String()}}
	put(b, s, datastore.KindNode, name, n)
	putBlock(b, s, api.Block{CIDR: block.String(), Affinity: name})
}

// blockN returns the n-th /26 of 172.20.0.0/14.
func blockN(n int) netip.Prefix {
	base := netip.MustParseAddr("172.20.0.0").As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(n) * 64
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 26)
}

// BenchmarkSelfHeal deletes an owned route and times until the agent has
// put it back, as seen by a route subscription in the namespace.
func BenchmarkSelfHeal(b *testing.B) {
	nettest.RequireRoot(b)
	ns := benchNode(b, "192.168.3.241/24")
	store := benchAgent(b, ns, "bench-local")
	block := blockN(0)
	done := make(chan struct{})
	defer close(done)
	updates, err := ns.SubscribeRoutes(done)
	if err != nil {
		b.Fatal(err)
	}
	remoteNode(b, store, "bench-peer", "192.168.3.242/24", block)
	if err := nettest.WaitRoute(updates, block, false, 10*time.Second); err != nil {
		b.Fatal(err)
	}
	// The core `twill bench` runs against a lab node: delete, then time
	// until a route subscription in the namespace sees it back.
	b.ResetTimer()
	samples, err := bench.HealSamples(context.Background(), ns.Path, bench.RouteVictim(block), b.N, 0)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	reportPercentiles(b, samples)
}

// BenchmarkConvergence registers a new peer (a Node write, then its block
// pinned through IPAM) and times until its route appears in the agent's
// namespace; each peer is removed again before the next (untimed). It runs
// the core `twill bench` runs against the lab's nodes.
func BenchmarkConvergence(b *testing.B) {
	nettest.RequireRoot(b)
	ns := benchNode(b, "192.168.3.241/24")
	store := benchAgent(b, ns, "bench-local")
	peers := make([]bench.Peer, b.N)
	for i := range peers {
		// Alternate same-subnet (direct) and other-subnet (VXLAN) peers.
		addr := fmt.Sprintf("192.168.3.%d/24", 2+i%200)
		if i%2 == 1 {
			addr = fmt.Sprintf("10.%d.%d.%d/16", 1+i/60000, (i/250)%250, 1+i%250)
		}
		peers[i] = bench.Peer{Name: fmt.Sprintf("peer-%d", i), Address: netip.MustParsePrefix(addr), Block: blockN(i + 1)}
	}
	b.ResetTimer()
	samples, err := bench.ConvergenceSamples(context.Background(), store, []string{ns.Path}, peers, 0)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	reportPercentiles(b, samples)
}

// rssMiB reads the process's resident set size.
func rssMiB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

// bigCache is the scale cluster of `twill bench` (bench.ScaleCluster):
// peers remote nodes, half in the local /16 and half outside it, each with
// one block.
func bigCache(b *testing.B, peers int) *cache {
	b.Helper()
	c := newCache("local", nil)
	fillCache(c, clusterKVs(b, bench.ScaleCluster("local", peers, 0)))
	return c
}

// BenchmarkReconcile5000 plans a 5,000-peer cluster from the cache and
// applies it in full to a fresh namespace: 5,001 routes (2,500 direct,
// 2,500 over VXLAN, one blackhole), 5,000 neighbours and 5,000 FDB entries. It reports the resident-set growth of the process
// and the live heap after the reconcile, and the time of a second,
// steady-state reconcile (the periodic resync).
func BenchmarkReconcile5000(b *testing.B) {
	nettest.RequireRoot(b)
	const peers = 5000
	c := bigCache(b, peers)
	runtime.GC()
	rssBefore := rssMiB()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapBefore := ms.HeapAlloc
	var resync []time.Duration
	fwChanges := 0
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		ns := benchNode(b, "192.168.0.1/16")
		r, err := dataplane.New(dataplane.Options{NetnsPath: ns.Path, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		dp := plan.Plan(planInput(c, plan.VXLANConfig{}))
		res, err := r.Apply(dp)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		kinds := map[plan.RouteKind]int{}
		for _, rt := range dp.Routes {
			kinds[rt.Kind]++
		}
		if kinds[plan.KindDirect] != peers/2 || kinds[plan.KindVXLAN] != peers/2 {
			b.Fatalf("plan has %d direct and %d VXLAN routes; want %d of each", kinds[plan.KindDirect], kinds[plan.KindVXLAN], peers/2)
		}
		// Every peer is a VTEP: one neighbour and one FDB entry each.
		if res.Routes.Added != peers+1 || res.Neighbors.Added != peers || res.FDB.Added != peers {
			b.Fatalf("reconcile added %d routes, %d neighbours, %d FDB entries; want %d, %d, %d",
				res.Routes.Added, res.Neighbors.Added, res.FDB.Added, peers+1, peers, peers)
		}
		start := time.Now()
		dp = plan.Plan(planInput(c, plan.VXLANConfig{}))
		res, err = r.Apply(dp)
		resync = append(resync, time.Since(start))
		// Routes, neighbours, FDB and the device must be left alone; the
		// firewall's count is reported (it may rewrite its table).
		if kernel := res.Changes() - res.Firewall.Total(); err != nil || kernel != 0 {
			b.Fatalf("steady-state reconcile changed %d kernel objects: %+v: %v", kernel, res, err)
		}
		fwChanges = res.Firewall.Total()
		runtime.ReadMemStats(&ms)
		r.Close()
		ns.Delete(b)
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(rssMiB()-rssBefore, "rss-delta-MiB")
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(int64(ms.HeapAlloc)-int64(heapBefore))/(1<<20), "heap-delta-MiB")
	slices.Sort(resync)
	b.ReportMetric(float64(resync[len(resync)/2])/float64(time.Millisecond), "resync-ms")
	b.ReportMetric(float64(fwChanges), "resync-fw-changes")
}
