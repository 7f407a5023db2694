package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/dataplane"
	"twill.dev/twill/datastore"
	"twill.dev/twill/internal/syncbuf"
	"twill.dev/twill/plan"
)

// fakeDP records the plans applied and lets tests send kernel signals and
// inject failures.
type fakeDP struct {
	mu      sync.Mutex
	plans   []plan.Dataplane
	failN   int
	applied chan plan.Dataplane
	signals chan struct{}
	result  dataplane.Result
	closed  bool
}

func newFakeDP() *fakeDP {
	return &fakeDP{applied: make(chan plan.Dataplane, 1000), signals: make(chan struct{}, 10)}
}

func (f *fakeDP) Apply(dp plan.Dataplane) (dataplane.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plans = append(f.plans, dp)
	f.applied <- dp
	if f.failN > 0 {
		f.failN--
		return dataplane.Result{}, &dataplane.OpError{Kind: dataplane.KindRoute, Object: "test", Op: "replace", Err: fmt.Errorf("injected failure")}
	}
	return f.result, nil
}

func (f *fakeDP) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case <-f.signals:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, nil
}

func (f *fakeDP) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeDP) setFail(n int) {
	f.mu.Lock()
	f.failN = n
	f.mu.Unlock()
}

func (f *fakeDP) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.plans)
}

// waitApply waits for an applied plan satisfying ok and returns it.
func (f *fakeDP) waitApply(t *testing.T, what string, ok func(plan.Dataplane) bool) plan.Dataplane {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case dp := <-f.applied:
			if ok(dp) {
				return dp
			}
		case <-deadline:
			t.Fatalf("no applied plan %s within 10s", what)
		}
	}
}

// drain empties the applied channel.
func (f *fakeDP) drain() {
	for {
		select {
		case <-f.applied:
		default:
			return
		}
	}
}

// fakeClock is a manual clock: timers fire when Advance passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock and fires the timers that came due, in order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due, rest []*fakeTimer
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case !t.at.After(c.now):
			due = append(due, t)
		default:
			rest = append(rest, t)
		}
	}
	c.timers = rest
	c.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
	for _, t := range due {
		t.stopped = true
		go t.f()
	}
}

// pending is the number of armed timers.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// harness runs an agent on a Fake store with a fake dataplane.
type harness struct {
	t      *testing.T
	store  *datastore.Fake
	dp     *fakeDP
	clock  *fakeClock
	agent  *Agent
	client *agentapi.Client
	logs   *syncbuf.Buffer
	cancel context.CancelFunc
	done   chan error
	cfg    Config
}

// testPool is the seed's pool.
func testPool(name, cidr string, mode api.EncapMode) api.IPPool {
	p := api.IPPool{Metadata: api.ObjectMeta{Name: name}, Spec: api.IPPoolSpec{CIDR: cidr, BlockSize: 26, VXLANMode: mode, NATOutgoing: true}}
	p.Default()
	return p
}

// objKV encodes v as the object kind/name; a workload endpoint gets the
// node label of its Spec.Node, as the agent writes it.
func objKV(t testing.TB, kind datastore.Kind, name string, v any) datastore.KV {
	t.Helper()
	kv, err := datastore.NewKV(kind, name, v)
	if err != nil {
		t.Fatal(err)
	}
	if w, ok := v.(api.WorkloadEndpoint); ok && kind == datastore.KindWorkload {
		kv.Labels = map[string]string{datastore.LabelNode: w.Spec.Node}
	}
	return kv
}

// put writes v as kind/name, whether or not it exists, and returns the
// revision it was stored at.
func put(t testing.TB, s datastore.Store, kind datastore.Kind, name string, v any) string {
	t.Helper()
	out, err := datastore.Put(context.Background(), s, objKV(t, kind, name, v))
	if err != nil {
		t.Fatalf("put %s %s: %v", kind, name, err)
	}
	return out.Revision
}

// putBlock writes a block under its name.
func putBlock(t testing.TB, s datastore.Store, b api.Block) string {
	t.Helper()
	return put(t, s, datastore.KindBlock, datastore.BlockName(b.CIDR), b)
}

// remove deletes kind/name.
func remove(t testing.TB, s datastore.Store, kind datastore.Kind, name string) {
	t.Helper()
	if err := s.Delete(context.Background(), kind, name, ""); err != nil {
		t.Fatalf("delete %s %s: %v", kind, name, err)
	}
}

// fillCache makes kvs, objects of any cached kind, the content of c, as
// complete lists of every kind would.
func fillCache(c *cache, kvs []datastore.KV) {
	for _, kind := range cachedKinds {
		l := c.newListing(kind)
		var mine []datastore.KV
		for _, kv := range kvs {
			if kv.Kind == kind {
				mine = append(mine, kv)
			}
		}
		l.add(mine)
		c.replace(l, time.Time{})
	}
}

func newHarness(t *testing.T, store *datastore.Fake, mutate func(*Config)) *harness {
	t.Helper()
	if store == nil {
		store = datastore.NewFake()
	}
	h := &harness{t: t, store: store, dp: newFakeDP(), clock: newFakeClock(), logs: &syncbuf.Buffer{}}
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	h.cfg = Config{
		NodeName:   "k8s-master1",
		SocketPath: sock,
		Dataplane:  h.dp,
		Clock:      h.clock,
		Logger:     slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Getenv:     func(string) string { return "" },
		DetectAddress: func(context.Context) (HostAddress, error) {
			return HostAddress{Prefix: netip.MustParsePrefix("192.168.3.241/24"), Interface: "eth0", MTU: 1500}, nil
		},
	}
	if mutate != nil {
		mutate(&h.cfg)
	}
	h.client = agentapi.NewClient(sock, 5*time.Second)
	return h
}

// start runs the agent and waits until it is ready.
func (h *harness) start() {
	h.t.Helper()
	h.run(h.store)
	h.waitReady()
}

// run starts an agent on store without waiting for it to be ready, and
// stops it when the test ends.
func (h *harness) run(store datastore.Store) *Agent {
	h.t.Helper()
	a, err := New(store, h.cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- a.Run(ctx) }()
	h.t.Cleanup(h.stop)
	return a
}

func (h *harness) waitReady() {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := h.client.Status(context.Background())
		if err == nil && st.Ready {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	ok, why := h.agent.readiness()
	h.t.Fatalf("agent not ready within 10s (ready=%v: %s); logs:\n%s", ok, why, h.logs)
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("agent Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		h.t.Errorf("agent did not stop within 10s")
	}
	h.cancel = nil
}

// hasRoute reports whether dp routes dst with the given kind.
func hasRoute(dp plan.Dataplane, dst string, kind plan.RouteKind) bool {
	p := netip.MustParsePrefix(dst)
	for _, r := range dp.Routes {
		if r.Dst == p && r.Kind == kind {
			return true
		}
	}
	return false
}
