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

	"github.com/prometheus/client_golang/prometheus"

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
	m := cfg.IPAM
	if m == nil {
		m = ipam.New(s, ipam.WithLogger(log))
	}
	return &Agent{
		cfg:      cfg,
		store:    s,
		ipam:     m,
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

// Store returns the datastore the agent runs against.
func (a *Agent) Store() datastore.Store { return a.store }

// IPAM returns the agent's IPAM (Config.IPAM when it was set): background
// tasks that allocate or release should use it, so that its per-node queues
// and block cache are shared with the agent's.
func (a *Agent) IPAM() *ipam.IPAM { return a.ipam }

// Logger returns the agent's logger (it names the node).
func (a *Agent) Logger() *slog.Logger { return a.log }

// Metrics returns the registry the agent serves on its /metrics endpoint,
// so that background tasks can add their own metrics to it.
func (a *Agent) Metrics() prometheus.Registerer { return a.m.reg }

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
	loops := []func(context.Context){a.kernelLoop, a.resyncLoop, a.reconcileLoop}
	for _, kind := range cachedKinds {
		loops = append(loops, func(ctx context.Context) { a.syncLoop(ctx, kind) })
	}
	for _, f := range a.cfg.Background {
		if f != nil {
			loops = append(loops, func(ctx context.Context) { a.runBackground(ctx, f) })
		}
	}
	for _, loop := range loops {
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

// runBackground runs f, one of Config.Background, until ctx ends: when f
// returns early it is logged and started again after a bounded backoff.
func (a *Agent) runBackground(ctx context.Context, f func(context.Context, *Agent)) {
	for attempt := 1; ctx.Err() == nil; attempt++ {
		started := a.clock.Now()
		f(ctx, a)
		if ctx.Err() != nil {
			return
		}
		if a.clock.Now().Sub(started) > time.Minute {
			attempt = 1
		}
		d := backoff(attempt, relistMin, relistMax)
		a.log.Warn("a background task returned before the agent stopped; starting it again", "in", d)
		sleep(a.clock, d, ctx.Done())
	}
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
	case !a.cache.synced():
		return false, "waiting for the first datastore sync (not listed yet: " + strings.Join(a.cache.unsynced(), ", ") + ")"
	case a.localGone:
		return false, a.notReady
	case !a.applied:
		return false, a.notReady
	}
	return true, ""
}

// syncLoop keeps kind in the cache: it lists the kind, replaces the kind's
// cached content with the list, then watches the kind from the listed
// revision; when the watch ends (compacted, datastore unavailable, closed)
// it lists the kind again, with bounded backoff. Each kind has its own
// loop, list and revision: revisions of different kinds are not related.
func (a *Agent) syncLoop(ctx context.Context, kind datastore.Kind) {
	fails := 0
	for ctx.Err() == nil {
		rev, err := a.relist(ctx, kind)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fails++
			a.m.datastoreErrors.Inc()
			d := backoff(fails, relistMin, relistMax)
			a.log.Warn("datastore list failed; retrying", "kind", kind, "err", err, "in", d)
			sleep(a.clock, d, ctx.Done())
			continue
		}
		a.markDirty(reasonDatastore)
		started := a.clock.Now()
		events, err := a.watch(ctx, kind, rev)
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
			a.log.Info("datastore watch compacted; listing again", "kind", kind, "err", err)
		} else {
			a.log.Warn("datastore watch ended; listing again", "kind", kind, "err", err, "in", d)
		}
		sleep(a.clock, d, ctx.Done())
	}
}

// listOptions narrows the list of kind: workload endpoints of the local
// node only.
func (a *Agent) listOptions(kind datastore.Kind) datastore.ListOptions {
	if kind == datastore.KindWorkload {
		return datastore.ListOptions{Labels: map[string]string{datastore.LabelNode: a.cfg.NodeName}}
	}
	return datastore.ListOptions{}
}

// relist lists kind into a new map and then, in one step, makes it the
// kind's cached content: a list that fails half-way changes nothing, and
// the planner never sees a kind partly listed. It lists page by page when
// the store can (datastore.Pager), decoding each page as it comes instead
// of holding every document of the kind (a large cluster's blocks are
// megabytes of JSON) until the last one arrived. It returns the revision
// to watch the kind from.
func (a *Agent) relist(ctx context.Context, kind datastore.Kind) (string, error) {
	a.m.relists.WithLabelValues(string(kind)).Inc()
	a.mu.Lock()
	l := a.cache.newListing(kind)
	a.mu.Unlock()
	opts := a.listOptions(kind)
	var rev string
	var err error
	if pl, ok := a.store.(datastore.Pager); ok {
		rev, err = pl.ListPages(ctx, kind, opts, func(kvs []datastore.KV, restart bool) error {
			if restart {
				l.restart()
			}
			l.add(kvs)
			return nil
		})
	} else {
		var kvs []datastore.KV
		kvs, rev, err = a.store.List(ctx, kind, opts)
		l.add(kvs)
	}
	if err != nil {
		return "", fmt.Errorf("list %s: %w", kind, err)
	}
	a.mu.Lock()
	a.cache.replace(l, a.clock.Now())
	a.mu.Unlock()
	a.log.Debug("datastore listed", "kind", kind, "revision", rev, "objects", l.n)
	return rev, nil
}

// watch applies the changes of kind to the cache until the watch ends and
// returns how many responses it applied and why it ended.
func (a *Agent) watch(ctx context.Context, kind datastore.Kind, rev string) (int, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := 0
	for resp := range a.store.Watch(wctx, kind, rev) {
		if resp.Err != nil {
			return n, resp.Err
		}
		n++
		relevant := false
		now := a.clock.Now()
		a.mu.Lock()
		for _, ev := range resp.Events {
			if ev.KV.Kind == "" {
				ev.KV.Kind = kind
			}
			if ev.KV.Kind == kind && a.cache.apply(ev, now) {
				relevant = true
			}
		}
		a.mu.Unlock()
		if relevant {
			a.markDirty(reasonDatastore)
		}
	}
	return n, fmt.Errorf("watch %s: channel closed: %w", kind, datastore.ErrUnavailable)
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
		if !a.cache.synced() {
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
				"node", a.cfg.NodeName)
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
