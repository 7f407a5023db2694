package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

// errInjected is the list failure relistStore injects.
var errInjected = errors.New("injected list failure")

// relistStore is a breakableStore whose next List of a prefix a test can
// make fail, or hold until released.
type relistStore struct {
	*breakableStore
	mu   sync.Mutex
	fail map[string]chan struct{} // closed when the failure happened
	hold map[string]chan struct{} // closed when the List is held
	// release ends every held List.
	release chan struct{}
}

func newRelistStore() *relistStore {
	return &relistStore{breakableStore: &breakableStore{Fake: datastore.NewFake()},
		fail: map[string]chan struct{}{}, hold: map[string]chan struct{}{}, release: make(chan struct{})}
}

func (s *relistStore) List(ctx context.Context, prefix string) ([]datastore.KV, int64, error) {
	s.mu.Lock()
	failed, held := s.fail[prefix], s.hold[prefix]
	delete(s.fail, prefix)
	delete(s.hold, prefix)
	s.mu.Unlock()
	if failed != nil {
		close(failed)
		return nil, 0, errInjected
	}
	if held != nil {
		close(held)
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
	return s.breakableStore.List(ctx, prefix)
}

// failNext makes the next List of prefix fail; the channel closes when it did.
func (s *relistStore) failNext(prefix string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan struct{})
	s.fail[prefix] = c
	return c
}

// holdNext makes the next List of prefix wait for release; the channel
// closes when it started waiting.
func (s *relistStore) holdNext(prefix string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan struct{})
	s.hold[prefix] = c
	return c
}

// TestRelistNeverPlansAPartialCache checks the agent's side of the
// firewall's empty-list rule: while the cache is listed again after a
// compacted watch (a list that fails half-way, then one held between the
// node list and the pool list, while a pool is added), every plan the
// agent applies still names every peer and pool, so neither real peers'
// VXLAN nor masquerade is ever cut; the new pool arrives once the list
// completes.
func TestRelistNeverPlansAPartialCache(t *testing.T) {
	rs := newRelistStore()
	for _, p := range []struct{ name, addr, tunnel, block string }{
		{"k8s-master2", "192.168.3.242/24", "172.16.224.0", "172.16.224.0/26"},
		{"k8s-node1", "192.168.32.105/24", "172.16.36.64", "172.16.36.64/26"},
	} {
		put(t, rs.Fake, datastore.NodeKey(p.name), api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
			Metadata: api.ObjectMeta{Name: p.name},
			Spec:     api.NodeSpec{Address: p.addr, Interface: "eth0", VTEPMAC: api.VTEPMAC(p.name), TunnelAddress: p.tunnel}})
		put(t, rs.Fake, datastore.BlockKey(p.block), api.Block{CIDR: p.block, Affinity: p.name})
	}
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.run(rs)
	t.Cleanup(func() {
		// A List still held would keep Run from returning; this runs
		// before run's own cleanup, which then finds the agent stopped.
		rs.mu.Lock()
		select {
		case <-rs.release:
		default:
			close(rs.release)
		}
		rs.mu.Unlock()
		h.stop()
	})
	h.waitReady()

	peers := []netip.Addr{netip.MustParseAddr("192.168.3.242"), netip.MustParseAddr("192.168.32.105")}
	seedPool, extra := netip.MustParsePrefix("172.16.0.0/16"), netip.MustParsePrefix("10.50.0.0/16")
	// intact: every peer and the seed pool, in a complete firewall.
	intact := func(dp plan.Dataplane) bool {
		return dp.Firewall.Complete && slices.Equal(dp.Firewall.VXLANPeers, peers) &&
			slices.Contains(dp.Firewall.AllPools, seedPool) && slices.Contains(dp.Firewall.NATPools, seedPool)
	}
	h.dp.waitApply(t, "with both peers and the pool", intact)
	first := h.dp.count()

	// advanceUntil moves the fake clock (the re-list backoff runs on it)
	// until c closes.
	advanceUntil := func(what string, c <-chan struct{}) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			select {
			case <-c:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s; logs:\n%s", what, h.logs)
			}
			h.clock.Advance(relistMin)
		}
	}
	// forcedApply sends a kernel signal and returns the plan it applies.
	forcedApply := func(what string) plan.Dataplane {
		t.Helper()
		h.dp.drain()
		h.dp.signals <- struct{}{}
		return h.dp.waitApply(t, what, func(plan.Dataplane) bool { return true })
	}

	// The watch is compacted; the first re-list fails after listing the
	// nodes and pools. The cache keeps what it had.
	failed := rs.failNext(datastore.BlocksPrefix)
	rs.breakWatch(datastore.ErrCompacted)
	advanceUntil("the failing re-list", failed)
	if dp := forcedApply("after a failed re-list"); !intact(dp) {
		t.Fatalf("after a failed re-list the plan's firewall is %+v, want peers %v and pool %s", dp.Firewall, peers, seedPool)
	}

	// The next re-list has listed the nodes and waits for the pools; a
	// pool is added meanwhile.
	held := rs.holdNext(datastore.PoolsPrefix)
	advanceUntil("the held re-list", held)
	pool := testPool("extra", extra.String(), api.EncapCrossSubnet)
	put(t, rs.Fake, datastore.PoolKey("extra"), pool)
	dp := forcedApply("during the held re-list")
	if !intact(dp) {
		t.Fatalf("during a re-list the plan's firewall is %+v, want peers %v and pool %s", dp.Firewall, peers, seedPool)
	}
	if slices.Contains(dp.Firewall.AllPools, extra) {
		t.Fatalf("the pool added during the held re-list is planned before the list completed: the test is not in the window it means to be")
	}
	rs.mu.Lock()
	close(rs.release)
	rs.mu.Unlock()
	h.dp.waitApply(t, "with the new pool", func(dp plan.Dataplane) bool {
		return slices.Contains(dp.Firewall.AllPools, extra) && slices.Contains(dp.Firewall.NATPools, extra)
	})

	h.dp.mu.Lock()
	defer h.dp.mu.Unlock()
	for i, dp := range h.dp.plans[first-1:] {
		if !intact(dp) {
			t.Errorf("plan %d applied around the re-lists has firewall %+v, want peers %v and pool %s", first+i, dp.Firewall, peers, seedPool)
		}
	}
}
