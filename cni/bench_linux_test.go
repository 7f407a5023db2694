package cni

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// Figures for pod start-up, through libcni as containerd runs the plugin,
// against a real agent and an embedded etcd. Goals: ADD p50 ≤ 10 ms and
// p99 ≤ 40 ms; a 100-pod burst on one node done within 3 s.
//
//	go test -run '^$' -bench . -benchtime 200x ./cni

// BenchmarkAdd measures ADD latency, one at a time and 16 at once. Namespace
// creation and DEL are outside the timer.
func BenchmarkAdd(b *testing.B) {
	for _, bc := range []struct {
		name    string
		workers int
	}{{"serial", 1}, {"parallel16", 16}} {
		b.Run(bc.name, func(b *testing.B) {
			n := newNode(b, nodeOpts{logLevel: "warn"})
			// Warm up: the node's first ADD claims a block.
			warm := n.newPod(b)
			n.mustAdd(b, warm)
			if err := n.del(warm); err != nil {
				b.Fatal(err)
			}

			lat := make([]time.Duration, 0, b.N)
			var mu sync.Mutex
			left := b.N
			b.ResetTimer()
			for left > 0 {
				batch := min(left, bc.workers)
				left -= batch
				b.StopTimer()
				ps := make([]*testPod, batch)
				for i := range ps {
					ps[i] = n.newPod(b)
				}
				b.StartTimer()
				var wg sync.WaitGroup
				errs := make([]error, batch)
				for i, p := range ps {
					wg.Add(1)
					go func() {
						defer wg.Done()
						start := time.Now()
						_, errs[i] = n.add(p)
						d := time.Since(start)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}()
				}
				wg.Wait()
				b.StopTimer()
				for i, p := range ps {
					if errs[i] != nil {
						b.Fatalf("ADD: %v", errs[i])
					}
					if err := n.del(p); err != nil {
						b.Fatalf("DEL: %v", err)
					}
				}
				b.StartTimer()
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}

// BenchmarkBurst100 adds 100 pods to one node at once and reports the time
// until the last ADD returned.
func BenchmarkBurst100(b *testing.B) {
	const pods = 100
	n := newNode(b, nodeOpts{logLevel: "warn"})
	warm := n.newPod(b)
	n.mustAdd(b, warm)
	if err := n.del(warm); err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		ps := make([]*testPod, pods)
		for i := range ps {
			ps[i] = n.newPod(b)
		}
		errs := make([]error, pods)
		durs := make([]time.Duration, pods)
		var wg sync.WaitGroup
		b.StartTimer()
		start := time.Now()
		for i, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				_, errs[i] = n.add(p)
				durs[i] = time.Since(t0)
			}()
		}
		wg.Wait()
		total += time.Since(start)
		b.StopTimer()
		lat = append(lat, durs...)
		for i, err := range errs {
			if err != nil {
				b.Fatalf("ADD %d: %v", i, err)
			}
		}
		for _, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := n.del(p); err != nil {
					b.Errorf("DEL: %v", err)
				}
			}()
		}
		wg.Wait()
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(total.Seconds()/float64(b.N), "burst-s")
	reportLatency(b, lat)
}

// reportLatency reports the p50 and p99 of lat in milliseconds.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		i := int(p * float64(len(lat)-1))
		return float64(lat[i].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
