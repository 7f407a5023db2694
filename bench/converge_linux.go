package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
)

// convergeTimeout bounds the wait for one peer's routes on every node.
const convergeTimeout = 10 * time.Second

// Peer is a node that a convergence sample registers: it exists only in
// the datastore (no namespace), which is all its peers' agents see.
type Peer struct {
	Name    string
	Address netip.Prefix
	Block   netip.Prefix
}

// Node returns the peer's Node object, as an agent would register it: its
// VTEP MAC derived from its name, its tunnel address the block's first.
func (p Peer) Node() api.Node {
	return api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: p.Name},
		Spec: api.NodeSpec{Address: p.Address.String(), Interface: "eth0", MTU: 1500,
			VTEPMAC: api.VTEPMAC(p.Name), TunnelAddress: p.Block.Addr().String()}}
}

// awaitAll waits on every watcher at once for want and returns the latest
// arrival.
func awaitAll(ctx context.Context, ws []*Watcher, want []Key, timeout time.Duration) (time.Time, error) {
	var (
		mu   sync.Mutex
		last time.Time
		errs []error
		wg   sync.WaitGroup
	)
	for _, w := range ws {
		wg.Go(func() {
			at, err := w.Await(ctx, nil, want, timeout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			} else if at.After(last) {
				last = at
			}
		})
	}
	wg.Wait()
	return last, errors.Join(errs...)
}

// ConvergenceSamples registers the peers one at a time, each as a Node
// create followed by its block pinned through IPAM (two writes), and
// returns for each the time from just before the Node write until the
// route to its block was seen in every namespace of nsPaths. After each
// sample (untimed) the peer is removed again (Node deleted, block unpinned
// and released) and its routes awaited gone, so every sample starts from
// the same cluster. The first warmup peers are not timed.
func ConvergenceSamples(ctx context.Context, store datastore.Store, nsPaths []string, peers []Peer, warmup int) ([]time.Duration, error) {
	return ConvergenceSamplesWith(ctx, store, nsPaths, peers, warmup, nil)
}

// ConvergenceSamplesWith is ConvergenceSamples with register, when not
// nil, called for each peer before its sample starts (untimed): on the
// Kubernetes datastore it registers the peer's v1.Node, as the peer's
// kubelet would before its agent writes the Twill node (the timed Node
// create annotates that v1.Node, and the untimed removal deletes it).
func ConvergenceSamplesWith(ctx context.Context, store datastore.Store, nsPaths []string, peers []Peer, warmup int, register func(context.Context, Peer) error) ([]time.Duration, error) {
	ws := make([]*Watcher, 0, len(nsPaths))
	defer func() {
		for _, w := range ws {
			w.Close()
		}
	}()
	for _, p := range nsPaths {
		w, err := Watch(p)
		if err != nil {
			return nil, err
		}
		ws = append(ws, w)
	}
	m := ipam.New(store)
	samples := make([]time.Duration, 0, len(peers))
	for i, p := range peers {
		nkv, err := datastore.NewKV(datastore.KindNode, p.Name, p.Node())
		if err != nil {
			return nil, err
		}
		if register != nil {
			if err := register(ctx, p); err != nil {
				return nil, fmt.Errorf("register peer %s: %w", p.Name, err)
			}
		}
		for _, w := range ws {
			w.Settle(settleQuiet, settleMax)
		}
		t0 := time.Now()
		if _, err := store.Create(ctx, nkv); err != nil {
			return nil, fmt.Errorf("register peer %s: %w", p.Name, err)
		}
		if err := m.PinBlock(ctx, p.Block, p.Name); err != nil {
			return nil, fmt.Errorf("pin block %s to peer %s: %w", p.Block, p.Name, err)
		}
		at, err := awaitAll(ctx, ws, []Key{RouteKey(p.Block.String(), true)}, convergeTimeout)
		if err != nil {
			return nil, fmt.Errorf("route to peer %s's block %s: %w", p.Name, p.Block, err)
		}
		if i >= warmup {
			samples = append(samples, at.Sub(t0))
		}
		if err := removePeer(ctx, store, m, p); err != nil {
			return nil, err
		}
		if _, err := awaitAll(ctx, ws, []Key{RouteKey(p.Block.String(), false)}, convergeTimeout); err != nil {
			return nil, fmt.Errorf("route to removed peer %s's block %s: %w", p.Name, p.Block, err)
		}
	}
	return samples, nil
}

// removePeer deletes the peer's Node and releases its block.
func removePeer(ctx context.Context, store datastore.Store, m *ipam.IPAM, p Peer) error {
	if err := store.Delete(ctx, datastore.KindNode, p.Name, ""); err != nil {
		return fmt.Errorf("remove peer %s: %w", p.Name, err)
	}
	if err := m.UnpinBlock(ctx, p.Block); err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return fmt.Errorf("unpin peer %s's block %s: %w", p.Name, p.Block, err)
	}
	if err := m.ReleaseNodeAffinities(ctx, p.Name); err != nil {
		return fmt.Errorf("release peer %s's block %s: %w", p.Name, p.Block, err)
	}
	return nil
}

// PutWatchKind is the kind PutWatchSamples writes: none of Twill's, so
// that no agent watches it. The store must accept any kind (etcd does: the
// objects live under /twill/v1/twill-bench-putwatch/).
const PutWatchKind datastore.Kind = "twill-bench-putwatch"

// PutWatchSamples is the convergence baseline: it creates warmup+n
// objects of PutWatchKind, one write each, and returns for the last n the
// time from just before the write until a watch of the kind on the same
// store delivered it. The objects are deleted afterwards.
func PutWatchSamples(ctx context.Context, store datastore.Store, n, warmup int) ([]time.Duration, error) {
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("random run id: %w", err)
	}
	run := hex.EncodeToString(id[:])
	_, rev, err := store.List(ctx, PutWatchKind, datastore.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("put→watch baseline: %w", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := store.Watch(wctx, PutWatchKind, rev)
	value := []byte(`{"apiVersion":"twill.dev/v1","kind":"Bench"}`)
	var written []string
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, name := range written {
			if cctx.Err() != nil {
				return
			}
			_ = store.Delete(cctx, PutWatchKind, name, "")
		}
	}()
	samples := make([]time.Duration, 0, n)
	for i := range warmup + n {
		name := fmt.Sprintf("%s-%06d", run, i)
		t0 := time.Now()
		if _, err := store.Create(ctx, datastore.KV{Kind: PutWatchKind, Name: name, Value: value}); err != nil {
			return nil, fmt.Errorf("put→watch baseline: create %s: %w", name, err)
		}
		written = append(written, name)
		seen := false
		timeout := time.After(convergeTimeout)
		for !seen {
			select {
			case resp, ok := <-ch:
				if !ok || resp.Err != nil {
					return nil, fmt.Errorf("put→watch baseline: the watch ended: %v", resp.Err)
				}
				for _, ev := range resp.Events {
					seen = seen || (ev.Type == datastore.EventPut && ev.KV.Name == name)
				}
			case <-timeout:
				return nil, fmt.Errorf("put→watch baseline: %s not delivered within %s", name, convergeTimeout)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if i >= warmup {
			samples = append(samples, time.Since(t0))
		}
	}
	return samples, nil
}
