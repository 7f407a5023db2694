package ipam

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"twill.dev/twill/api"
)

// AllocationRate measures how many workload addresses per second m hands
// out to node: n allocations, one handle each, made by workers goroutines
// (at least one). The addresses are released afterwards, outside the timed
// part. `twill bench` and BenchmarkAllocateVsRawTxn compare the result with
// the store's raw transaction rate.
func AllocationRate(ctx context.Context, m *IPAM, node string, n, workers int) (float64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("ipam: allocation rate: need a positive number of allocations, got %d: %w", n, ErrInvalidRequest)
	}
	workers = max(1, min(workers, n))
	run := fmt.Sprintf("bench-%08x", rand.Uint32())
	handle := func(i int64) string { return fmt.Sprintf("%s-%d", run, i) }
	attrs := map[string]string{"bench": run}

	var next, done atomic.Int64
	var mu sync.Mutex
	var errs []error
	work := func(f func(i int64) error) {
		next.Store(0)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for {
					i := next.Add(1) - 1
					if i >= int64(n) {
						return
					}
					if err := f(i); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
	}

	start := time.Now()
	work(func(i int64) error {
		_, err := m.Allocate(ctx, AllocateRequest{Handle: handle(i), Node: node, Use: api.UseWorkload, Attrs: attrs})
		if err == nil {
			done.Add(1)
		}
		return err
	})
	elapsed := time.Since(start)
	allocErr := errors.Join(errs...)
	errs = nil
	work(func(i int64) error {
		_, err := m.ReleaseHandle(ctx, handle(i))
		return err
	})
	if err := errors.Join(allocErr, errors.Join(errs...)); err != nil {
		return 0, fmt.Errorf("ipam: allocation rate on node %s: %w", node, err)
	}
	return float64(done.Load()) / elapsed.Seconds(), nil
}
