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

// relistStore is a breakableStore whose next list of a kind a test can
// make fail, or hold until released.
type relistStore struct {
	*breakableStore
	mu   sync.Mutex
	fail map[datastore.Kind]chan struct{} // closed when the failure happened
	hold map[datastore.Kind]chan struct{} // closed when the list is held
	// release ends every held list.
	release chan struct{}
}

func newRelistStore() *relistStore {
	return &relistStore{breakableStore: newBreakableStore(),
		fail: map[datastore.Kind]chan struct{}{}, hold: map[datastore.Kind]chan struct{}{}, release: make(chan struct{})}
}

// gate fails or holds a list of kind as the test asked.
func (s *relistStore) gate(ctx context.Context, kind datastore.Kind) error {
	s.mu.Lock()
	failed, held := s.fail[kind], s.hold[kind]
	delete(s.fail, kind)
	delete(s.hold, kind)
	s.mu.Unlock()
	if failed != nil {
		close(failed)
		return errInjected
	}
	if held != nil {
		close(held)
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *relistStore) List(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions) ([]datastore.KV, string, error) {
	if err := s.gate(ctx, kind); err != nil {
		return nil, "", err
	}
	return s.Fake.List(ctx, kind, opts)
}

// ListPages hands the first page over before it fails or holds, so that a
// failed list has partly filled the agent's new map.
func (s *relistStore) ListPages(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions, page func([]datastore.KV, bool) error) (string, error) {
	kvs, _, err := s.Fake.List(ctx, kind, opts)
	if err != nil {
		return "", err
	}
	if len(kvs) > 0 {
		if err := page(kvs[:1], false); err != nil {
			return "", err
		}
	}
	if err := s.gate(ctx, kind); err != nil {
		return "", err
	}
	if err := page(nil, true); err != nil {
		return "", err
	}
	return s.Fake.ListPages(ctx, kind, opts, page)
}

// failNext makes the next list of kind fail; the channel closes when it did.
func (s *relistStore) failNext(kind datastore.Kind) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan struct{})
	s.fail[kind] = c
	return c
}

// holdNext makes the next list of kind wait for release; the channel
// closes when it started waiting.
func (s *relistStore) holdNext(kind datastore.Kind) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan struct{})
	s.hold[kind] = c
	return c
}

// TestRelistNeverPlansAPartialCache checks the agent's side of the
// firewall's empty-list rule: while a kind is listed again after a
// compacted watch (a node list that fails half-way, then a pool list held
// half-way while a pool is added), every plan the agent applies still names
// every peer and pool, so neither real peers' VXLAN nor masquerade is ever
// cut; the new pool arrives once its list completes.
func TestRelistNeverPlansAPartialCache(t *testing.T) {
	rs := newRelistStore()
	for _, p := range []struct{ name, addr, tunnel, block string }{
		{"k8s-master2", "192.168.3.242/24", "172.16.224.0", "172.16.224.0/26"},
		{"k8s-node1", "192.168.32.105/24", "172.16.36.64", "172.16.36.64/26"},
	} {
		put(t, rs.Fake, datastore.KindNode, p.name, api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
			Metadata: api.ObjectMeta{Name: p.name},
			Spec:     api.NodeSpec{Address: p.addr, Interface: "eth0", VTEPMAC: api.VTEPMAC(p.name), TunnelAddress: p.tunnel}})
		putBlock(t, rs.Fake, api.Block{CIDR: p.block, Affinity: p.name})
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

	// The node watch is compacted; the first re-list of the nodes fails
	// after its first page. The cache keeps the nodes it had.
	failed := rs.failNext(datastore.KindNode)
	rs.breakWatch(datastore.KindNode, datastore.ErrCompacted)
	advanceUntil("the failing re-list", failed)
	if dp := forcedApply("after a failed re-list"); !intact(dp) {
		t.Fatalf("after a failed re-list the plan's firewall is %+v, want peers %v and pool %s", dp.Firewall, peers, seedPool)
	}

	// The pool watch is compacted too, and the re-list of the pools waits
	// after its first page; a pool is added meanwhile.
	held := rs.holdNext(datastore.KindIPPool)
	rs.breakWatch(datastore.KindIPPool, datastore.ErrCompacted)
	advanceUntil("the held re-list", held)
	pool := testPool("extra", extra.String(), api.EncapCrossSubnet)
	put(t, rs.Fake, datastore.KindIPPool, "extra", pool)
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
