// Package agent is Twill's node agent, `twill node run`: it registers the
// node in the datastore, keeps a cache of the objects its plan depends on
// (list, then watch), plans the node's dataplane (package plan) and makes
// the kernel match it (package dataplane), and serves the CNI plugin on a
// unix socket (package agentapi), plus health and metrics over HTTP.
//
// Data flows one way: datastore changes, kernel events and the periodic
// resync only mark the agent dirty; a single reconcile goroutine then
// builds the plan from the cache and applies it in full. Apply is
// idempotent, so a restart leaves a correct kernel untouched, and it prunes
// only what Twill owns, so routes of nodes deleted while the agent was down
// go away on the first reconcile.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/dataplane"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
	"twill.dev/twill/plan"
)

// reason says why the agent must reconcile; several may be pending.
type reason uint8

const (
	// reasonDatastore: the cache changed (watch event or re-list).
	reasonDatastore reason = 1 << iota
	// reasonLocal: the agent itself wrote the cache (registration, the
	// socket API).
	reasonLocal
	// reasonKernel: the dataplane saw the kernel drift from the plan.
	reasonKernel
	// reasonResync: the periodic full resync.
	reasonResync
	// reasonRetry: the previous reconcile failed.
	reasonRetry
)

func (r reason) String() string {
	var parts []string
	for _, x := range []struct {
		r    reason
		name string
	}{{reasonDatastore, "datastore"}, {reasonLocal, "local"}, {reasonKernel, "kernel"}, {reasonResync, "resync"}, {reasonRetry, "retry"}} {
		if r&x.r != 0 {
			parts = append(parts, x.name)
		}
	}
	return strings.Join(parts, "+")
}

// forced are the reasons that apply even when the plan did not change:
// the kernel may have drifted.
const forced = reasonKernel | reasonResync | reasonRetry

// Agent is one node's agent. Create it with New and run it with Run.
type Agent struct {
	cfg   Config
	store datastore.Store
	ipam  *ipam.IPAM
	dp    Dataplane
	log   *slog.Logger
	clock Clock
	m     *metrics

	// wake has room for one pending signal: markDirty never blocks.
	wake chan struct{}

	// planMu is held by reconcile from the moment it snapshots the cache
	// until its Apply returns, and by the endpoint handler while it adds a
	// pod to the cache. So once PUT /v1/endpoints returns, no Apply that
	// planned without that pod can still run and prune the pod's route,
	// which the CNI plugin adds right after. Lock order: planMu, then mu.
	planMu sync.Mutex

	// mu guards everything below.
	mu         sync.Mutex
	cache      *cache
	dirty      reason
	host       HostAddress
	registered bool
	// applied is set once an Apply succeeded.
	applied bool
	// notReady says why the agent is not ready.
	notReady string
	// tunnelMTU is the VXLAN device's MTU in the last plan (0 = none).
	tunnelMTU int
	// applyStart is set while an Apply runs (for liveness).
	applyStart time.Time
	// inflight counts running socket requests per handle; recent records
	// when this agent last allocated or recorded a handle. CNI GC spares
	// both.
	inflight map[string]int
	recent   map[string]time.Time
	// records are the endpoint records that allocate requests write after
	// their answer, by handle, while they run or after they failed (see
	// server.go).
	records map[string]*recordOp
	// tunnelBusy is set while a tunnel-address check runs; tunnelTried is
	// when the last one started.
	tunnelBusy  bool
	tunnelTried time.Time

	// Owned by the reconcile goroutine.
	lastPlan   *plan.Dataplane
	lastStatus []string
	localGone  bool
}

// New checks cfg, fills in its defaults and returns an agent for the
// datastore s. Nothing is touched until Run.
func New(s datastore.Store, cfg Config) (*Agent, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: no datastore", ErrConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("node", cfg.NodeName)
	return &Agent{
		cfg:      cfg,
		store:    s,
		ipam:     ipam.New(s, ipam.WithLogger(log)),
		dp:       cfg.Dataplane,
		log:      log,
		clock:    cfg.Clock,
		m:        newMetrics(),
		wake:     make(chan struct{}, 1),
		cache:    newCache(cfg.NodeName, log),
		notReady: "starting",
		inflight: map[string]int{},
		recent:   map[string]time.Time{},
	}, nil
}

// Run is New followed by (*Agent).Run.
func Run(ctx context.Context, s datastore.Store, cfg Config) error {
	a, err := New(s, cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// NodeName returns the name the agent registers under.
func (a *Agent) NodeName() string { return a.cfg.NodeName }

// Handler returns the HTTP handler of the CNI socket API, for tests and for
// embedding; Run serves it on the socket.
func (a *Agent) Handler() http.Handler { return a.apiMux() }

// Run opens the dataplane, serves the socket API, health and metrics,
// registers the node, then keeps the kernel in line with the datastore
// until ctx ends. It returns nil after a clean shutdown and an error when
// it cannot start (socket, listeners, namespace). While it runs, the Go
// runtime has the soft memory limit Config.MemoryLimit, if any.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, set := os.LookupEnv("GOMEMLIMIT"); a.cfg.MemoryLimit > 0 && !set {
		prev := debug.SetMemoryLimit(a.cfg.MemoryLimit)
		defer debug.SetMemoryLimit(prev)
	}
	if a.dp == nil {
		r, err := dataplane.New(dataplane.Options{NetnsPath: a.cfg.NetnsPath, Logger: a.log})
		if err != nil {
			return fmt.Errorf("agent: open the dataplane: %w", err)
		}
		a.dp = r
		defer func() {
			a.dp = nil
			if err := r.Close(); err != nil {
				a.log.Warn("close dataplane", "err", err)
			}
		}()
	}
	servers, err := a.startServers()
	if err != nil {
		return err
	}
	defer servers.shutdown(a.log)

	a.log.Info("agent starting", "netns", a.cfg.NetnsPath, "socket", a.cfg.SocketPath,
		"health", a.cfg.HealthAddr, "metrics", a.cfg.MetricsAddr)
	if err := a.register(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){a.syncLoop, a.kernelLoop, a.resyncLoop, a.reconcileLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	<-ctx.Done()
	wg.Wait()
	a.log.Info("agent stopped")
	return nil
}

// markDirty records why a reconcile is needed and wakes the reconciler.
func (a *Agent) markDirty(r reason) {
	a.mu.Lock()
	a.dirty |= r
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *Agent) setNotReady(why string) {
	a.mu.Lock()
	a.notReady = why
	a.mu.Unlock()
}

// readiness reports whether the agent is ready, and why not.
func (a *Agent) readiness() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case !a.registered:
		return false, a.notReady
	case !a.cache.synced:
		return false, "waiting for the first datastore sync"
	case a.localGone:
		return false, a.notReady
	case !a.applied:
		return false, a.notReady
	}
	return true, ""
}

// syncLoop lists the cached objects, then watches the datastore from the
// listed revision; on a compacted or broken watch it lists again, with
// bounded backoff.
func (a *Agent) syncLoop(ctx context.Context) {
	fails := 0
	for ctx.Err() == nil {
		rev, err := a.relist(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fails++
			a.m.datastoreErrors.Inc()
			d := backoff(fails, relistMin, relistMax)
			a.log.Warn("datastore list failed; retrying", "err", err, "in", d)
			sleep(a.clock, d, ctx.Done())
			continue
		}
		a.markDirty(reasonDatastore)
		started := a.clock.Now()
		events, err := a.watch(ctx, rev)
		if ctx.Err() != nil {
			return
		}
		a.m.datastoreErrors.Inc()
		if events > 0 || a.clock.Now().Sub(started) > 10*time.Second {
			fails = 0
		}
		fails++
		d := backoff(fails, relistMin, relistMax)
		if errors.Is(err, datastore.ErrCompacted) {
			a.log.Info("datastore watch compacted; listing again", "err", err)
		} else {
			a.log.Warn("datastore watch ended; listing again", "err", err, "in", d)
		}
		sleep(a.clock, d, ctx.Done())
	}
}

// cachedPrefixes are listed into the cache; watch events elsewhere are
// ignored.
func (a *Agent) cachedPrefixes() []string {
	return []string{datastore.NodesPrefix, datastore.PoolsPrefix, datastore.BlocksPrefix,
		datastore.WorkloadPrefix(a.cfg.NodeName), datastore.IPAMConfigKey}
}

// pageLister is a Store that can hand a list over a page at a time
// (datastore/etcd.Store can): the relist then decodes each page as it comes
// instead of holding every document of a prefix (a large cluster's blocks
// are megabytes of JSON) until the last one arrived.
type pageLister interface {
	ListPages(ctx context.Context, prefix string, page func(kvs []datastore.KV, restart bool) error) (int64, error)
}

// relist reads every cached prefix into a new cache and then replaces the
// agent's with it. It returns the revision to watch from: the oldest of the
// lists (the cache drops events older than what it holds, so nothing is
// applied twice out of order).
func (a *Agent) relist(ctx context.Context) (int64, error) {
	nc := newCache(a.cfg.NodeName, a.log)
	var rev int64
	keys := 0
	for _, p := range a.cachedPrefixes() {
		r, n, err := a.listInto(ctx, nc, p)
		if err != nil {
			return 0, fmt.Errorf("list %s: %w", p, err)
		}
		keys += n
		if rev == 0 || r < rev {
			rev = r
		}
	}
	a.mu.Lock()
	a.cache.replace(nc)
	n := len(a.cache.nodes)
	a.mu.Unlock()
	a.log.Debug("datastore listed", "revision", rev, "keys", keys, "nodes", n)
	return rev, nil
}

// listInto lists prefix into c, which nobody else uses yet, page by page
// when the store can, and returns the list's revision and how many keys it
// held. Keys the cache does not keep (those that merely share the prefix of
// the IPAM config key) are skipped by c.put.
func (a *Agent) listInto(ctx context.Context, c *cache, prefix string) (int64, int, error) {
	n := 0
	put := func(kvs []datastore.KV) {
		for _, kv := range kvs {
			if c.put(kv, kv.Revision) {
				n++
			}
		}
	}
	if pl, ok := a.store.(pageLister); ok {
		rev, err := pl.ListPages(ctx, prefix, func(kvs []datastore.KV, restart bool) error {
			if restart {
				c.dropPrefix(prefix)
				n = 0
			}
			put(kvs)
			return nil
		})
		return rev, n, err
	}
	kvs, rev, err := a.store.List(ctx, prefix)
	if err != nil {
		return 0, 0, err
	}
	put(kvs)
	return rev, n, nil
}

// watch applies the datastore's changes to the cache until the watch ends
// and returns how many responses it applied and why it ended.
func (a *Agent) watch(ctx context.Context, rev int64) (int, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := 0
	for resp := range a.store.Watch(wctx, datastore.Prefix, rev) {
		if resp.Err != nil {
			return n, resp.Err
		}
		n++
		relevant := false
		a.mu.Lock()
		for _, ev := range resp.Events {
			if a.cache.apply(ev, resp.Revision) {
				relevant = true
			}
		}
		a.mu.Unlock()
		if relevant {
			a.markDirty(reasonDatastore)
		}
	}
	return n, errors.New("watch channel closed")
}

// kernelLoop turns the dataplane's kernel signals into reconciles.
func (a *Agent) kernelLoop(ctx context.Context) {
	fails := 0
	for ctx.Err() == nil {
		ch, err := a.dp.Subscribe(ctx)
		if err != nil {
			fails++
			d := backoff(fails, relistMin, relistMax)
			a.log.Warn("kernel event subscription failed; healing waits for the periodic resync until it works", "err", err, "retry_in", d)
			sleep(a.clock, d, ctx.Done())
			continue
		}
		fails = 0
		for range ch {
			a.markDirty(reasonKernel)
		}
		if ctx.Err() == nil {
			sleep(a.clock, relistMin, ctx.Done())
		}
	}
}

// resyncLoop asks for a full reconcile every ResyncInterval.
func (a *Agent) resyncLoop(ctx context.Context) {
	for sleep(a.clock, a.cfg.ResyncInterval, ctx.Done()) {
		a.markDirty(reasonResync)
	}
}

// reconcileLoop is the single goroutine that plans and applies. A failed
// Apply is retried with exponential backoff (retryMin to retryMax); until
// the retry is due other signals only accumulate.
func (a *Agent) reconcileLoop(ctx context.Context) {
	failures := 0
	var notBefore time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		}
		if failures > 0 && a.clock.Now().Before(notBefore) {
			continue
		}
		a.mu.Lock()
		r := a.dirty
		if !a.cache.synced {
			r = 0
		} else {
			a.dirty = 0
		}
		a.mu.Unlock()
		if r == 0 {
			continue
		}
		if err := a.reconcile(ctx, r); err != nil {
			failures++
			d := backoff(failures, retryMin, retryMax)
			notBefore = a.clock.Now().Add(d)
			a.clock.AfterFunc(d, func() { a.markDirty(reasonRetry) })
			continue
		}
		failures = 0
	}
}

// reconcile plans from the cache and applies the plan when it changed or
// when r forces it.
func (a *Agent) reconcile(ctx context.Context, r reason) error {
	start := a.clock.Now()
	a.planMu.Lock()
	defer a.planMu.Unlock()
	a.mu.Lock()
	in := planInput(a.cache, a.cfg.VXLAN)
	local, hasLocal := a.cache.localNode()
	a.mu.Unlock()

	if !hasLocal {
		// The Node was deleted under a running agent. Applying an empty plan
		// would tear down every route; keep the kernel as it is instead.
		if !a.localGone {
			a.log.Error("the local Node was deleted from the datastore; keeping the kernel as it is. Restart the agent to register again, or stop it to decommission the node",
				"key", datastore.NodeKey(a.cfg.NodeName))
		}
		a.mu.Lock()
		a.localGone = true
		a.notReady = fmt.Sprintf("Node %s is missing from the datastore; restart the agent to register it again", a.cfg.NodeName)
		a.mu.Unlock()
		return nil
	}
	if a.localGone {
		a.log.Info("the local Node is back in the datastore")
		a.mu.Lock()
		a.localGone = false
		a.mu.Unlock()
	}
	a.maybeEnsureTunnel(ctx, local, in.Pools)

	dp := plan.Plan(in)
	a.noteStatus(dp.Status)
	if r&forced == 0 && a.lastPlan != nil && reflect.DeepEqual(*a.lastPlan, dp) {
		return nil
	}
	a.mu.Lock()
	a.applyStart = start
	a.tunnelMTU = 0
	if dp.Device != nil {
		a.tunnelMTU = dp.Device.MTU
	}
	a.mu.Unlock()
	// The previous plan is replaced whatever Apply returns (by dp, or by
	// nil on failure); dropping it now keeps it out of Apply's peak
	// memory, which holds the kernel's tables besides dp.
	a.lastPlan = nil
	res, err := a.dp.Apply(dp)
	dur := a.clock.Now().Sub(start)
	a.mu.Lock()
	a.applyStart = time.Time{}
	a.mu.Unlock()
	a.m.reconcileTime.Observe(dur.Seconds())
	healed := 0
	if r&reasonKernel != 0 {
		for k, n := range heals(res) {
			if n > 0 {
				a.m.heals.WithLabelValues(k).Add(float64(n))
				healed += n
			}
		}
	}
	attrs := []any{"trigger", r.String(), "duration", dur,
		"routes", res.Routes, "neighbors", res.Neighbors, "fdb", res.FDB, "device", res.Device, "addresses", res.Addresses}
	if len(res.Pending) > 0 {
		attrs = append(attrs, "pending", len(res.Pending))
	}
	if len(res.Conflicts) > 0 {
		attrs = append(attrs, "conflicts", routeDsts(res.Conflicts))
	}
	if err != nil {
		a.m.reconciles.WithLabelValues("error").Inc()
		a.lastPlan = nil
		a.log.Error("reconcile failed; retrying", append(attrs, "err", err)...)
		a.mu.Lock()
		if !a.applied {
			a.notReady = "first reconcile failed: " + err.Error()
		}
		a.mu.Unlock()
		return err
	}
	a.m.reconciles.WithLabelValues("ok").Inc()
	a.lastPlan = &dp
	switch {
	case healed > 0:
		a.log.Info("healed kernel drift", attrs...)
	case len(res.Conflicts) > 0:
		a.log.Warn("reconciled; some wanted routes are held by routes of another protocol, which Twill never changes", attrs...)
	default:
		a.log.Debug("reconciled", attrs...)
	}
	a.mu.Lock()
	first := !a.applied
	a.applied = true
	a.notReady = ""
	a.mu.Unlock()
	if first {
		a.log.Info("dataplane in line with the datastore: ready", "routes", len(dp.Routes), "duration", dur)
	}
	return nil
}

func routeDsts(rs []plan.Route) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Dst.String())
	}
	return out
}

// noteStatus logs the plan's status notes when they change.
func (a *Agent) noteStatus(status []string) {
	if slices.Equal(status, a.lastStatus) {
		return
	}
	old := map[string]bool{}
	for _, s := range a.lastStatus {
		old[s] = true
	}
	for _, s := range status {
		if !old[s] {
			a.log.Warn("plan: " + s)
		}
		delete(old, s)
	}
	for s := range old {
		a.log.Info("plan note cleared: " + s)
	}
	a.lastStatus = slices.Clone(status)
}

// vxlanPools returns, sorted, the names of the enabled pools that use
// VXLAN and allow tunnel addresses.
func vxlanPools(pools []api.IPPool) []string {
	var out []string
	for _, p := range pools {
		if p.Spec.Disabled || p.Spec.VXLANMode == "" || p.Spec.VXLANMode == api.EncapNever || !p.Allows(api.UseTunnel) {
			continue
		}
		out = append(out, p.Metadata.Name)
	}
	slices.Sort(out)
	return out
}

// maybeEnsureTunnel starts a tunnel-address check in the background when
// the local node has none but a VXLAN pool exists (a pool added after
// registration, or the address cleared); at most one runs at a time, and
// at most one starts every retryMax.
func (a *Agent) maybeEnsureTunnel(ctx context.Context, local api.Node, pools []api.IPPool) {
	if local.Spec.TunnelAddress != "" || len(vxlanPools(pools)) == 0 {
		return
	}
	a.mu.Lock()
	if a.tunnelBusy || a.clock.Now().Sub(a.tunnelTried) < retryMax {
		a.mu.Unlock()
		return
	}
	a.tunnelBusy = true
	a.tunnelTried = a.clock.Now()
	a.mu.Unlock()
	go func() {
		defer func() {
			a.mu.Lock()
			a.tunnelBusy = false
			a.mu.Unlock()
		}()
		if err := a.ensureTunnel(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("no VXLAN tunnel address yet; peers in other subnets cannot reach this node's pods", "err", err)
		}
	}()
}
