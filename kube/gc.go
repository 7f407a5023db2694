package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
)

// Defaults of GCConfig.
const (
	// LeaseName is the name of the coordination.k8s.io/v1 Lease the GC
	// instances elect their leader with.
	LeaseName            = "twill-ipam-gc"
	DefaultNamespace     = "kube-system"
	DefaultInterval      = time.Minute
	DefaultGrace         = time.Minute
	DefaultBlockMinAge   = 5 * time.Minute
	DefaultDebounce      = time.Second
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// listPageSize is the page size of the pod and node lists; maxListPages
// bounds how many pages one list reads.
const (
	listPageSize = 500
	maxListPages = 100000
)

// Clock is the GC's source of the time it compares with Grace and
// BlockMinAge. Tests drive it; the pacing of passes uses real timers.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// GCConfig configures a GC. Client, IPAM, Store and Identity are required.
type GCConfig struct {
	// Client reaches the Kubernetes API: pods, nodes and the Lease.
	Client kubernetes.Interface
	// IPAM releases addresses and reclaims blocks.
	IPAM *ipam.IPAM
	// Store holds the blocks, workload endpoints and node objects.
	Store datastore.Store
	// Identity is this instance's name in the Lease: the node name.
	Identity string
	// Namespace holds the Lease (DefaultNamespace when empty).
	Namespace string
	// Interval is the time between passes (DefaultInterval when zero).
	Interval time.Duration
	// Grace is how long an allocation must look leaked, and a node be
	// missing, over passes spanning at least this long before the GC acts
	// (DefaultGrace when zero). It protects a pod being created.
	Grace time.Duration
	// BlockMinAge is how long an empty block that is not pinned must be
	// seen empty at the same revision before it is reclaimed
	// (DefaultBlockMinAge when zero).
	BlockMinAge time.Duration
	// Debounce is the delay between a Node deletion and the pass it
	// triggers (DefaultDebounce when zero); it is also the shortest time
	// between two passes.
	Debounce time.Duration
	// LeaseDuration, RenewDeadline and RetryPeriod tune the leader
	// election (DefaultLeaseDuration, DefaultRenewDeadline and
	// DefaultRetryPeriod when zero).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Clock is the time source of the grace periods (the real clock when
	// nil).
	Clock Clock
	// Logger receives a line per release and per failed pass
	// (slog.Default when nil).
	Logger *slog.Logger
	// Metrics, when set, registers the GC's metrics.
	Metrics prometheus.Registerer
}

// gcIPAM is what the GC uses of *ipam.IPAM.
type gcIPAM interface {
	AllAllocations(ctx context.Context) ([]ipam.AllocationInfo, error)
	ReleaseIfOwned(ctx context.Context, ip netip.Addr, handle string) (bool, error)
	EmptyBlocks(ctx context.Context) ([]ipam.BlockRef, error)
	ReclaimBlock(ctx context.Context, b ipam.BlockRef) (bool, error)
	RepairHandles(ctx context.Context) (int, error)
	ReleaseNodeAffinities(ctx context.Context, node string) error
}

// GC is the garbage collector of addresses, workload endpoints, node
// affinities and empty blocks. Run it with Run (or RunGC); Pass runs one
// pass by hand.
type GC struct {
	cfg   GCConfig
	ipam  gcIPAM
	log   *slog.Logger
	clock Clock
	m     *gcMetrics

	passMu sync.Mutex // serialises passes and guards state
	state  gcState

	leading atomic.Bool
}

// PassResult counts what one pass did.
type PassResult struct {
	// Released counts addresses released.
	Released int
	// EndpointsDeleted counts workload endpoints of deleted nodes removed.
	EndpointsDeleted int
	// NodesReleased counts deleted nodes whose block affinities were
	// released.
	NodesReleased int
	// NodesDeleted counts datastore node objects of deleted nodes removed.
	NodesDeleted int
	// BlocksReclaimed counts empty blocks reclaimed.
	BlocksReclaimed int
	// HandlesRepaired is what ipam.RepairHandles reported.
	HandlesRepaired int
	// Pending counts garbage seen but not yet past its grace period.
	Pending int
	// NextDue is when the earliest pending garbage becomes due, on the
	// GC's clock; zero when nothing is pending.
	NextDue time.Time
}

// NewGC checks cfg, fills in its defaults and returns a GC.
func NewGC(cfg GCConfig) (*GC, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("kube: GC needs a Kubernetes client")
	case cfg.IPAM == nil:
		return nil, errors.New("kube: GC needs an IPAM")
	case cfg.Store == nil:
		return nil, errors.New("kube: GC needs a datastore")
	case cfg.Identity == "":
		return nil, errors.New("kube: GC needs an identity (the node name)")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	def(&cfg.Interval, DefaultInterval)
	def(&cfg.Grace, DefaultGrace)
	def(&cfg.BlockMinAge, DefaultBlockMinAge)
	def(&cfg.Debounce, DefaultDebounce)
	def(&cfg.LeaseDuration, DefaultLeaseDuration)
	def(&cfg.RenewDeadline, DefaultRenewDeadline)
	def(&cfg.RetryPeriod, DefaultRetryPeriod)
	if cfg.LeaseDuration <= cfg.RenewDeadline || float64(cfg.RenewDeadline) <= leaderelection.JitterFactor*float64(cfg.RetryPeriod) {
		return nil, fmt.Errorf("kube: GC lease timings: need LeaseDuration (%s) > RenewDeadline (%s) > %.1f × RetryPeriod (%s)",
			cfg.LeaseDuration, cfg.RenewDeadline, leaderelection.JitterFactor, cfg.RetryPeriod)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newGCMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	return &GC{
		cfg:   cfg,
		ipam:  cfg.IPAM,
		log:   cfg.Logger.With("component", "ipam-gc"),
		clock: cfg.Clock,
		m:     m,
	}, nil
}

// RunGC runs a GC with cfg until ctx ends; see GC.Run.
func RunGC(ctx context.Context, cfg GCConfig) error {
	g, err := NewGC(cfg)
	if err != nil {
		return err
	}
	return g.Run(ctx)
}

// IsLeader reports whether this GC holds the Lease and runs passes.
func (g *GC) IsLeader() bool { return g.leading.Load() }

// Run takes part in the election of the Lease LeaseName and, while it holds
// it, runs a pass every Interval, sooner when garbage becomes due and
// Debounce after a Node is deleted. When leadership is lost it stops its
// passes and stands for election again. It returns nil when ctx ends, or
// an error when the election cannot be set up.
func (g *GC) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := g.elect(ctx); err != nil {
			return err
		}
		t := time.NewTimer(g.cfg.RetryPeriod)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
	return nil
}

// elect runs one leader election round: it waits for the Lease, leads
// until leadership is lost or ctx ends, and returns when the elector has
// stopped.
func (g *GC) elect(ctx context.Context) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: g.cfg.Namespace},
		Client:     g.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: g.cfg.Identity},
	}
	// The elector calls OnStartedLeading in a goroutine of its own; hand
	// the leader context over so that lead runs here and has ended when
	// elect returns.
	started := make(chan context.Context, 1)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            LeaseName,
		LeaseDuration:   g.cfg.LeaseDuration,
		RenewDeadline:   g.cfg.RenewDeadline,
		RetryPeriod:     g.cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) { started <- lctx },
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return fmt.Errorf("kube: GC leader election: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		le.Run(ctx)
	}()
	select {
	case lctx := <-started:
		g.lead(lctx)
		<-done
	case <-done:
	}
	return nil
}

// lead runs passes until ctx (the leader context) ends. It forgets what
// passes of an earlier term saw, so that garbage is released only after a
// grace observed within this term.
func (g *GC) lead(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// What an earlier term saw may be stale: every grace starts afresh.
	g.passMu.Lock()
	g.state = gcState{}
	g.passMu.Unlock()
	g.leading.Store(true)
	g.m.leader.Set(1)
	g.log.Info("ipam gc: leading", "identity", g.cfg.Identity, "lease", g.cfg.Namespace+"/"+LeaseName)
	defer func() {
		g.leading.Store(false)
		g.m.leader.Set(0)
		g.log.Info("ipam gc: stopped leading", "identity", g.cfg.Identity)
	}()

	kick := make(chan struct{}, 1)
	stopWatch := g.watchNodeDeletes(ctx, kick)
	defer stopWatch()

	timer := time.NewTimer(0)
	defer timer.Stop()
	next := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			if at := time.Now().Add(g.cfg.Debounce); at.Before(next) {
				timer.Reset(g.cfg.Debounce)
				next = at
			}
		case <-timer.C:
			wait := g.cfg.Interval
			pctx, pcancel := context.WithTimeout(ctx, max(g.cfg.Interval, 30*time.Second))
			res, err := g.Pass(pctx)
			pcancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				g.log.Warn("ipam gc: pass failed", "err", err)
			}
			if !res.NextDue.IsZero() {
				wait = min(wait, res.NextDue.Sub(g.clock.Now()))
			}
			wait = max(wait, g.cfg.Debounce)
			timer.Reset(wait)
			next = time.Now().Add(wait)
		}
	}
}

// watchNodeDeletes sends on kick whenever a Node is deleted, until the
// returned stop is called.
func (g *GC) watchNodeDeletes(ctx context.Context, kick chan<- struct{}) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	factory := informers.NewSharedInformerFactory(g.cfg.Client, 0)
	inf := factory.Core().V1().Nodes().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			select {
			case kick <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		g.log.Warn("ipam gc: cannot watch node deletions; deleted nodes are cleaned up by the periodic pass", "err", err)
	}
	factory.Start(ctx.Done())
	return func() {
		cancel()
		factory.Shutdown()
	}
}

// Pass runs one garbage collection pass: it reads the allocations, the
// empty blocks, the stored blocks, endpoints and nodes, then the live pods
// and nodes from Kubernetes, decides what is garbage and due, and releases
// it. Passes are serialised. A failure to read aborts the pass before any
// change; a failed action is reported in the error and retried by the next
// pass, the others go ahead.
func (g *GC) Pass(ctx context.Context) (PassResult, error) {
	g.passMu.Lock()
	defer g.passMu.Unlock()
	in, err := g.observe(ctx)
	if err != nil {
		g.m.passErrors.Inc()
		return PassResult{}, err
	}
	plan := decide(in, g.state)
	g.state = plan.State
	res, err := g.apply(ctx, plan)
	g.m.passes.Inc()
	if err != nil {
		g.m.passErrors.Inc()
	}
	return res, err
}

// observe reads one pass's inputs. Allocations are read first: see
// gcInput.
func (g *GC) observe(ctx context.Context) (gcInput, error) {
	in := gcInput{
		Grace:       g.cfg.Grace,
		BlockMinAge: g.cfg.BlockMinAge,
		AffineNodes: map[string]bool{},
		StoreNodes:  map[string]string{},
		Pods:        map[podKey]string{},
		Nodes:       map[string]bool{},
	}
	var err error
	if in.Allocations, err = g.ipam.AllAllocations(ctx); err != nil {
		return in, fmt.Errorf("kube: gc: read allocations: %w", err)
	}
	if in.EmptyBlocks, err = g.ipam.EmptyBlocks(ctx); err != nil {
		return in, fmt.Errorf("kube: gc: read empty blocks: %w", err)
	}
	blocks, _, err := g.cfg.Store.List(ctx, datastore.KindBlock, datastore.ListOptions{})
	if err != nil {
		return in, fmt.Errorf("kube: gc: list blocks: %w", err)
	}
	for _, kv := range blocks {
		b, err := datastore.Decode[api.Block](kv)
		if err != nil {
			g.log.Debug("ipam gc: skipping malformed block", "block", kv.Name, "err", err)
			continue
		}
		if b.Value.Affinity != "" {
			in.AffineNodes[b.Value.Affinity] = true
		}
	}
	eps, _, err := g.cfg.Store.List(ctx, datastore.KindWorkload, datastore.ListOptions{})
	if err != nil {
		return in, fmt.Errorf("kube: gc: list workload endpoints: %w", err)
	}
	for _, kv := range eps {
		ref := endpointRef{Name: kv.Name, Node: kv.Labels[datastore.LabelNode], Revision: kv.Revision}
		if e, err := datastore.Decode[api.WorkloadEndpoint](kv); err == nil {
			if e.Value.Spec.Node != "" {
				ref.Node = e.Value.Spec.Node
			}
			ref.Handle = e.Value.Spec.Handle
		}
		if ref.Node != "" {
			in.Endpoints = append(in.Endpoints, ref)
		}
	}
	nodes, _, err := g.cfg.Store.List(ctx, datastore.KindNode, datastore.ListOptions{})
	if err != nil {
		return in, fmt.Errorf("kube: gc: list datastore nodes: %w", err)
	}
	for _, kv := range nodes {
		in.StoreNodes[kv.Name] = kv.Revision
	}
	if err := g.listPods(ctx, in.Pods); err != nil {
		return in, err
	}
	if err := g.listNodes(ctx, in.Nodes); err != nil {
		return in, err
	}
	in.TrustNodes = in.Nodes[g.cfg.Identity]
	if !in.TrustNodes {
		g.log.Warn("ipam gc: the Kubernetes node list lacks this node; not acting on missing nodes", "identity", g.cfg.Identity, "nodes", len(in.Nodes))
	}
	in.Now = g.clock.Now()
	return in, nil
}

// listPods reads every pod of every namespace, page by page, into pods.
func (g *GC) listPods(ctx context.Context, pods map[podKey]string) error {
	opts := metav1.ListOptions{Limit: listPageSize}
	for range maxListPages {
		l, err := g.cfg.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return fmt.Errorf("kube: gc: list pods: %w", err)
		}
		for i := range l.Items {
			p := &l.Items[i]
			pods[podKey{p.Namespace, p.Name}] = string(p.UID)
		}
		if l.Continue == "" {
			return nil
		}
		opts.Continue = l.Continue
	}
	return fmt.Errorf("kube: gc: list pods: more than %d pages", maxListPages)
}

// listNodes reads the names of every Node into nodes.
func (g *GC) listNodes(ctx context.Context, nodes map[string]bool) error {
	opts := metav1.ListOptions{Limit: listPageSize}
	for range maxListPages {
		l, err := g.cfg.Client.CoreV1().Nodes().List(ctx, opts)
		if err != nil {
			return fmt.Errorf("kube: gc: list nodes: %w", err)
		}
		for i := range l.Items {
			nodes[l.Items[i].Name] = true
		}
		if l.Continue == "" {
			return nil
		}
		opts.Continue = l.Continue
	}
	return fmt.Errorf("kube: gc: list nodes: more than %d pages", maxListPages)
}

// apply performs plan's actions in order: releases, endpoint deletions,
// node affinities, node objects, block reclaims, handle repair.
func (g *GC) apply(ctx context.Context, plan gcPlan) (PassResult, error) {
	res := PassResult{Pending: plan.Pending, NextDue: plan.NextDue}
	var errs []error
	fail := func(err error) bool {
		errs = append(errs, err)
		return ctx.Err() != nil
	}
	for _, r := range plan.Releases {
		ok, err := g.ipam.ReleaseIfOwned(ctx, r.IP, r.Handle)
		if err != nil {
			if fail(fmt.Errorf("kube: gc: release %s (handle %q): %w", r.IP, r.Handle, err)) {
				return res, errors.Join(errs...)
			}
			continue
		}
		pod := ""
		if r.Namespace != "" {
			pod = r.Namespace + "/" + r.Pod
		}
		if !ok {
			g.log.Debug("ipam gc: address already released or re-assigned", "address", r.IP, "handle", r.Handle, "pod", pod, "reason", r.Reason)
			continue
		}
		res.Released++
		g.m.released.WithLabelValues(r.Reason).Inc()
		g.log.Info("ipam gc: released address", "address", r.IP, "handle", r.Handle, "pod", pod, "node", r.Node, "reason", r.Reason)
	}
	for _, e := range plan.DeleteEndpoints {
		err := g.cfg.Store.Delete(ctx, datastore.KindWorkload, e.Name, e.Revision)
		switch {
		case errors.Is(err, datastore.ErrNotFound), errors.Is(err, datastore.ErrConflict):
			g.log.Debug("ipam gc: workload endpoint changed or gone; left alone", "endpoint", e.Name, "err", err)
		case err != nil:
			if fail(fmt.Errorf("kube: gc: delete workload endpoint %s: %w", e.Name, err)) {
				return res, errors.Join(errs...)
			}
		default:
			res.EndpointsDeleted++
			g.log.Info("ipam gc: deleted workload endpoint of a deleted node", "endpoint", e.Name, "node", e.Node, "handle", e.Handle, "reason", ReasonNodeDeleted)
		}
	}
	for _, n := range plan.ReleaseNodes {
		if err := g.ipam.ReleaseNodeAffinities(ctx, n); err != nil {
			if fail(fmt.Errorf("kube: gc: release block affinities of node %s: %w", n, err)) {
				return res, errors.Join(errs...)
			}
			continue
		}
		res.NodesReleased++
		g.log.Info("ipam gc: released block affinities of a deleted node", "node", n, "reason", ReasonNodeDeleted)
	}
	for _, n := range plan.DeleteNodes {
		err := g.cfg.Store.Delete(ctx, datastore.KindNode, n.Name, n.Revision)
		switch {
		case errors.Is(err, datastore.ErrNotFound), errors.Is(err, datastore.ErrConflict):
			g.log.Debug("ipam gc: node object changed or gone; left alone", "node", n.Name, "err", err)
		case err != nil:
			if fail(fmt.Errorf("kube: gc: delete node object %s: %w", n.Name, err)) {
				return res, errors.Join(errs...)
			}
		default:
			res.NodesDeleted++
			g.log.Info("ipam gc: deleted node object of a deleted node", "node", n.Name, "reason", ReasonNodeDeleted)
		}
	}
	for _, b := range plan.Reclaim {
		ok, err := g.ipam.ReclaimBlock(ctx, b)
		if err != nil {
			if fail(fmt.Errorf("kube: gc: reclaim block %s: %w", b.CIDR, err)) {
				return res, errors.Join(errs...)
			}
			continue
		}
		if !ok {
			g.log.Debug("ipam gc: block changed since it was seen empty; kept", "block", b.CIDR)
			continue
		}
		res.BlocksReclaimed++
		g.m.reclaimed.Inc()
		g.log.Info("ipam gc: reclaimed empty block", "block", b.CIDR, "affinity", b.Affinity)
	}
	n, err := g.ipam.RepairHandles(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("kube: gc: repair handles: %w", err))
	} else if n > 0 {
		res.HandlesRepaired = n
		g.log.Info("ipam gc: repaired handles", "count", n)
	}
	return res, errors.Join(errs...)
}
