package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/ipam"
	"twill.dev/twill/lab"
)

// teardownTimeout bounds the teardown after a run, a failure or Ctrl-C.
const teardownTimeout = 2 * time.Minute

// extraPrefixes start the names of the namespaces the bench creates
// outside its labs; leftovers of a killed run are removed before a run.
var extraPrefixes = []string{"twbh-", "twbp-", "twbr-"}

// runner is one bench run.
type runner struct {
	opts    Options
	sz      sizes
	exe     string
	labOpts lab.Options
	pods    lab.PodAdder
	state   *lab.State
	layout  *lab.Layout
	store   datastore.Store
	// kube is the Kubernetes client of the lab on the Kubernetes
	// datastore while it runs; nil on the etcd lab.
	kube kubernetes.Interface

	mu    sync.Mutex
	extra []string // namespaces this run created outside the labs
}

func (r *runner) progress(format string, args ...any) {
	if r.opts.Progress != nil {
		fmt.Fprintf(r.opts.Progress, "bench: "+format+"\n", args...)
	}
}

// want reports whether the run includes figure f.
func (r *runner) want(f string) bool { return r.opts.Only == "" || r.opts.Only == f }

// Run builds the labs, measures the figures Options select and tears
// everything down. It returns the rows in table order; when some figures
// failed, their rows carry the error and Run returns an error matching
// ErrFigures as well.
func Run(ctx context.Context, opts Options) (rows []Row, err error) {
	if err := CheckFigure(opts.Only); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	r := &runner{opts: opts, sz: sizesFor(opts.Quick), exe: opts.Exe}
	if r.exe == "" {
		if r.exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the twill binary: %w", err)
		}
	}
	r.labOpts = lab.Options{StateDir: opts.StateDir, Prefix: LabPrefix, Exe: r.exe, CNIPlugin: opts.CNIPlugin,
		Until: lab.StagePods, Out: io.Discard}
	mainFigs := []string{FigSelfHeal, FigConvergence, FigIPAM, FigCNIAdd, FigPodBurst, FigThroughput}
	needMain := slices.ContainsFunc(mainFigs, r.want)
	if needMain {
		if r.pods, err = lab.NewCNIPodAdder(r.labOpts); err != nil {
			return nil, err
		}
		r.labOpts.Pods = r.pods
	}
	unlock, err := lockRun(opts.StateDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r.progress("%s run; state in %s", map[bool]string{true: "quick", false: "full"}[opts.Quick], opts.StateDir)
	if err := r.clearLeftovers(ctx); err != nil {
		return nil, err
	}
	defer func() {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
		defer cancel()
		if terr := r.teardown(tctx); terr != nil {
			err = errors.Join(err, terr)
		}
	}()

	got := map[string][]Row{}
	if needMain {
		r.progress("building the seed lab (prefix %s)", LabPrefix)
		if err := r.upMain(ctx); err != nil {
			return nil, err
		}
		figs := []struct {
			name string
			run  func(context.Context) []Row
		}{
			{FigSelfHeal, r.selfHeal}, {FigConvergence, r.convergence}, {FigIPAM, r.ipamFigure},
			{FigCNIAdd, r.cniAdd}, {FigPodBurst, r.podBurst}, {FigThroughput, r.throughput},
		}
		for _, f := range figs {
			if !r.want(f.name) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return collect(got), fmt.Errorf("interrupted: %w", err)
			}
			start := time.Now()
			r.progress("%s ...", f.name)
			got[f.name] = f.run(ctx)
			r.progress("%s done in %s", f.name, time.Since(start).Round(100*time.Millisecond))
		}
		r.progress("taking the seed lab down")
		if err := r.downMain(ctx); err != nil {
			return collect(got), err
		}
	}
	if r.opts.Kubernetes && slices.ContainsFunc(KubeFigures, r.want) {
		if err := ctx.Err(); err != nil {
			return collect(got), fmt.Errorf("interrupted: %w", err)
		}
		if err := r.kubeRun(ctx, got); err != nil {
			return collect(got), err
		}
	}
	if r.want(FigScale) {
		if err := ctx.Err(); err != nil {
			return collect(got), fmt.Errorf("interrupted: %w", err)
		}
		start := time.Now()
		r.progress("%s ...", FigScale)
		got[FigScale] = r.scale(ctx)
		r.progress("%s done in %s", FigScale, time.Since(start).Round(100*time.Millisecond))
	}
	rows = collect(got)
	if err := ctx.Err(); err != nil {
		return rows, fmt.Errorf("interrupted: %w", err)
	}
	var failed []string
	for _, row := range rows {
		if row.Error != "" {
			failed = append(failed, row.Title())
		}
	}
	if len(failed) > 0 {
		return rows, fmt.Errorf("%w: %s", ErrFigures, strings.Join(failed, ", "))
	}
	return rows, nil
}

// lockRun takes the bench lock in dir for the whole run, without waiting:
// the lab's own lock covers only its up and down, and a second bench
// would otherwise take the first one's lab down as a leftover.
func lockRun(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench state directory: %w", err)
	}
	p := filepath.Join(dir, "bench.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("bench lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (it holds %s): wait for it to finish", ErrBusy, p)
		}
		return nil, fmt.Errorf("bench lock %s: %w", p, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// collect orders rows as Figures lists them.
func collect(got map[string][]Row) []Row {
	var rows []Row
	for _, f := range Figures {
		rows = append(rows, got[f]...)
	}
	return rows
}

func (r *runner) scaleLabOptions() lab.Options {
	return lab.Options{StateDir: r.opts.StateDir + "/scale", Prefix: ScalePrefix, Exe: r.exe, Until: lab.StageAgents, Out: io.Discard}
}

// clearLeftovers removes what a killed earlier run left: its labs (from
// their state files) and its own namespaces.
func (r *runner) clearLeftovers(ctx context.Context) error {
	if err := lab.Down(ctx, r.labOpts); err != nil {
		return fmt.Errorf("remove the bench lab an earlier run left in %s: %w", r.labOpts.StateDir, err)
	}
	if err := lab.Down(ctx, r.scaleLabOptions()); err != nil {
		return fmt.Errorf("remove the scale lab an earlier run left: %w", err)
	}
	ents, err := os.ReadDir(lab.NetnsDir)
	if err != nil {
		return nil // no namespaces at all
	}
	for _, e := range ents {
		for _, p := range extraPrefixes {
			if strings.HasPrefix(e.Name(), p) {
				r.progress("removing namespace %s left by an earlier run", e.Name())
				if err := lab.DeleteNetns(e.Name()); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// newNetns creates a namespace of this run's own, removed by teardown.
func (r *runner) newNetns(name string) error {
	r.mu.Lock()
	r.extra = append(r.extra, name)
	r.mu.Unlock()
	return lab.CreateNetns(name)
}

func (r *runner) deleteExtra() error {
	r.mu.Lock()
	names := r.extra
	r.extra = nil
	r.mu.Unlock()
	var errs []error
	for _, n := range slices.Backward(names) {
		if err := lab.DeleteNetns(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *runner) teardown(ctx context.Context) error {
	errs := []error{r.deleteExtra()}
	if r.store != nil {
		r.store.Close()
		r.store = nil
	}
	if err := lab.Down(ctx, r.labOpts); err != nil {
		errs = append(errs, fmt.Errorf("take the bench lab down (run `twill lab down --state-dir %s`): %w", r.labOpts.StateDir, err))
	}
	if err := lab.Down(ctx, r.scaleLabOptions()); err != nil {
		errs = append(errs, fmt.Errorf("take the scale lab down (run `twill lab down --state-dir %s`): %w", r.scaleLabOptions().StateDir, err))
	}
	return errors.Join(errs...)
}

// upMain builds the seed lab and connects to its etcd.
func (r *runner) upMain(ctx context.Context) error {
	t, err := lab.Load(lab.DefaultTopology)
	if err != nil {
		return err
	}
	if err := lab.Up(ctx, t, r.labOpts); err != nil {
		return err
	}
	if r.state, err = lab.LoadState(r.labOpts.StateDir); err != nil {
		return err
	}
	if r.layout, err = r.state.Layout(); err != nil {
		return err
	}
	if len(r.layout.Nodes()) < 2 || len(r.layout.Subnets) < 2 {
		return errors.New("the bench needs a topology with at least two nodes in two subnets")
	}
	r.store, err = openLabStore(ctx, r.state)
	return err
}

// openLabStore opens the datastore of the lab recorded in st.
func openLabStore(ctx context.Context, st *lab.State) (datastore.Store, error) {
	cfg, ok := st.StoreConfig()
	if !ok {
		return nil, fmt.Errorf("the lab (prefix %s) records no datastore", st.Prefix)
	}
	cfg.Etcd.DialTimeout, cfg.KubeTimeout = 5*time.Second, 5*time.Second
	s, err := open.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the lab's datastore, %s: %w", cfg.Describe(), err)
	}
	return s, nil
}

func (r *runner) downMain(ctx context.Context) error {
	r.kube = nil
	if err := r.deleteExtra(); err != nil {
		return err
	}
	if r.store != nil {
		r.store.Close()
		r.store = nil
	}
	return lab.Down(ctx, r.labOpts)
}

// nodes returns the lab's nodes: local (the first), a peer in its subnet
// (direct) and one in another subnet (VXLAN), with their registered Node
// objects.
func (r *runner) nodes(ctx context.Context) (local, direct, vxlan lab.Member, objs map[string]api.Node, err error) {
	ns := r.layout.Nodes()
	local = ns[0]
	for _, m := range ns[1:] {
		if m.Subnet == local.Subnet && direct.Name == "" {
			direct = m
		}
		if m.Subnet != local.Subnet && vxlan.Name == "" {
			vxlan = m
		}
	}
	if direct.Name == "" || vxlan.Name == "" {
		return local, direct, vxlan, nil, fmt.Errorf("the bench needs a node sharing %s's subnet and one in another subnet", local.Name)
	}
	list, _, err := datastore.ListObjects[api.Node](ctx, r.store, datastore.KindNode, datastore.ListOptions{})
	if err != nil {
		return local, direct, vxlan, nil, fmt.Errorf("read the lab's nodes: %w", err)
	}
	objs = map[string]api.Node{}
	for _, o := range list {
		objs[o.Value.Metadata.Name] = o.Value
	}
	return local, direct, vxlan, objs, nil
}

// selfHeal is figure 1.
func (r *runner) selfHeal(ctx context.Context) []Row {
	goal := Goal{Stat: StatP99, AtMost: true, Limit: 50}
	cases := []string{"route", "neighbour", "fdb", "device"}
	fail := func(err error) []Row {
		var rows []Row
		for _, c := range cases {
			rows = append(rows, errorRow(FigSelfHeal, c, "ms", err, goal))
		}
		return rows
	}
	local, direct, vxlan, objs, err := r.nodes(ctx)
	if err != nil {
		return fail(err)
	}
	nsPath := lab.NetnsPath(local.Netns)
	dev := r.layout.VXLAN.Device
	peer := objs[vxlan.Name]
	tunnel, err := netip.ParseAddr(peer.Spec.TunnelAddress)
	if err != nil {
		return fail(fmt.Errorf("%s's tunnel address %q: %w", vxlan.Name, peer.Spec.TunnelAddress, err))
	}
	mac, err := net.ParseMAC(peer.Spec.VTEPMAC)
	if err != nil {
		return fail(fmt.Errorf("%s's VTEP MAC %q: %w", vxlan.Name, peer.Spec.VTEPMAC, err))
	}
	victims := map[string]func() (Victim, error){
		"route":     func() (Victim, error) { return RouteVictim(direct.Block), nil },
		"neighbour": func() (Victim, error) { return NeighVictim(dev, tunnel), nil },
		"fdb":       func() (Victim, error) { return FDBVictim(dev, mac), nil },
		"device": func() (Victim, error) {
			h, err := handleAt(nsPath)
			if err != nil {
				return Victim{}, err
			}
			defer h.Close()
			return DeviceVictim(h, dev)
		},
	}
	what := map[string]string{
		"route":     "(netlink route add→event)",
		"neighbour": "(netlink neighbour add→event)",
		"fdb":       "(netlink FDB add→event)",
		"device":    "(VXLAN dev+route+neigh+FDB by hand)",
	}
	base, cleanup, err := healBaselines(nsPath, local.Address.Addr())
	if err != nil {
		return fail(fmt.Errorf("baseline: %w", err))
	}
	defer cleanup()
	var rows []Row
	for _, c := range cases {
		v, err := victims[c]()
		if err == nil {
			var samples, bs []time.Duration
			r.progress("self-heal: %s on %s, %d samples", v.Name, local.Name, r.sz.heal)
			if samples, err = HealSamples(ctx, nsPath, v, r.sz.heal, r.sz.warmup); err == nil {
				bs, err = AddSamples(ctx, nsPath, base[c], r.sz.heal, r.sz.warmup)
			}
			if err == nil {
				row := latencyRow(FigSelfHeal, c, samples, bs, what[c], goal)
				row.Note = fmt.Sprintf("%s deleted in %s until the agent restored it, seen by a netlink subscription there", v.Name, local.Name)
				if c == "device" {
					row.Note = fmt.Sprintf("%s deleted in %s until it is up with all %d of its routes, neighbours and FDB entries back", dev, local.Name, len(v.Restored)-1)
				}
				if slow := countOver(samples, healTimeout); slow > 0 {
					row.Note += fmt.Sprintf("; %d of %d samples were not healed from kernel events within %s (restored later, by the agent's resync, as the kernel's tables showed; counted whole)", slow, len(samples), healTimeout)
				}
				rows = append(rows, row)
				continue
			}
		}
		rows = append(rows, errorRow(FigSelfHeal, c, "ms", err, goal))
	}
	return rows
}

// countOver counts the samples longer than d.
func countOver(samples []time.Duration, d time.Duration) int {
	n := 0
	for _, s := range samples {
		if s > d {
			n++
		}
	}
	return n
}

// convergencePeers returns n peers that exist nowhere yet: addresses
// unused in the lab's subnets, alternating between them, and free blocks
// from the top of the first pool.
func (r *runner) convergencePeers(ctx context.Context, n int) ([]Peer, error) {
	used := map[netip.Addr]bool{}
	for _, m := range r.layout.Members {
		used[m.Address.Addr()] = true
	}
	for _, s := range r.layout.Subnets {
		used[s.Router] = true
	}
	taken := map[netip.Prefix]bool{}
	blocks, _, err := datastore.ListObjects[api.Block](ctx, r.store, datastore.KindBlock, datastore.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("read the lab's blocks: %w", err)
	}
	for _, b := range blocks {
		if p, err := netip.ParsePrefix(b.Value.CIDR); err == nil {
			taken[p] = true
		}
	}
	pool := r.layout.Pools[0]
	cidr, err := netip.ParsePrefix(pool.Spec.CIDR)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", pool.Metadata.Name, err)
	}
	bs := pool.Spec.BlockSize
	blockCount := 1 << (bs - cidr.Bits())
	next := make([]netip.Addr, len(r.layout.Subnets))
	for i, s := range r.layout.Subnets {
		next[i] = s.CIDR.Addr()
		for range 20 {
			next[i] = next[i].Next()
		}
	}
	bi := blockCount - 1
	nextBlock := func() (netip.Prefix, bool) {
		for ; bi >= 0; bi-- {
			if b := nthBlock(cidr, bs, bi); !taken[b] {
				bi--
				return b, true
			}
		}
		return netip.Prefix{}, false
	}
	var peers []Peer
	for i := range n {
		si := i % len(r.layout.Subnets)
		s := r.layout.Subnets[si]
		for used[next[si]] {
			next[si] = next[si].Next()
		}
		a := next[si]
		next[si] = a.Next()
		if !s.CIDR.Contains(a) || !s.CIDR.Contains(a.Next()) {
			return nil, fmt.Errorf("subnet %s has no room for %d convergence peers", s.CIDR, n)
		}
		block, ok := nextBlock()
		if !ok {
			return nil, fmt.Errorf("pool %s has no room for %d convergence peers' blocks", cidr, n)
		}
		peers = append(peers, Peer{Name: fmt.Sprintf("twb-peer-%d", i), Address: netip.PrefixFrom(a, s.CIDR.Bits()), Block: block})
	}
	return peers, nil
}

// convergenceGoal is figure 2's goal.
var convergenceGoal = Goal{Stat: StatP99, AtMost: true, Limit: 250}

// convergenceCase is figure 2's case name, and the paths of the nodes
// whose kernels it watches.
func (r *runner) convergenceCase() (cas string, paths []string) {
	nodes := r.layout.Nodes()
	for _, m := range nodes {
		paths = append(paths, lab.NetnsPath(m.Netns))
	}
	return fmt.Sprintf("new node → route on all %d nodes", len(nodes)), paths
}

// convergence is figure 2.
func (r *runner) convergence(ctx context.Context) []Row {
	goal := convergenceGoal
	cas, paths := r.convergenceCase()
	peers, err := r.convergencePeers(ctx, r.sz.converge+r.sz.warmup)
	if err != nil {
		return []Row{errorRow(FigConvergence, cas, "ms", err, goal)}
	}
	r.progress("convergence: %d peers registered one at a time, routes awaited on %d nodes", len(peers), len(paths))
	samples, err := ConvergenceSamples(ctx, r.store, paths, peers, r.sz.warmup)
	if err != nil {
		return []Row{errorRow(FigConvergence, cas, "ms", err, goal)}
	}
	base, err := PutWatchSamples(ctx, r.store, r.sz.converge, r.sz.warmup)
	if err != nil {
		return []Row{errorRow(FigConvergence, cas, "ms", err, goal)}
	}
	row := latencyRow(FigConvergence, cas, samples, base, "(etcd put→watch event)", goal)
	row.Note = "Node create + block pin (2 writes) until the block's route is in every node's kernel; the peers alternate between the subnets (direct and VXLAN routes)"
	return []Row{row}
}

// ipamCases are figure 7's cases.
var ipamCases = []struct {
	name    string
	workers int
}{{"allocations, 1 worker", 1}, {"allocations, 8 workers", 8}}

// ipamNode is the node figure 7 allocates for.
const ipamNode = "twb-ipam-bench"

// ipamFigure is figure 7.
func (r *runner) ipamFigure(ctx context.Context) []Row {
	goal := Goal{Stat: StatRatio, AtMost: false, Limit: 0.5}
	cases := ipamCases
	m := ipam.New(r.store)
	n := r.sz.ipamN
	fail := func(err error) []Row {
		var rows []Row
		for _, c := range cases {
			rows = append(rows, errorRow(FigIPAM, c.name, "alloc/s", err, goal))
		}
		return rows
	}
	// Warm-up: the connection, the node's first block claim, the caches.
	if _, err := etcd.RawTxnRate(ctx, r.store, 20); err != nil {
		return fail(err)
	}
	if _, err := ipam.AllocationRate(ctx, m, ipamNode, 20, 1); err != nil {
		return fail(err)
	}
	r.progress("ipam: %d raw transactions, then %d allocations with 1 and with 8 workers", n, n)
	raw, err := etcd.RawTxnRate(ctx, r.store, n)
	if err != nil {
		return fail(err)
	}
	var rows []Row
	for _, c := range cases {
		rate, err := ipam.AllocationRate(ctx, m, ipamNode, n, c.workers)
		if err != nil {
			rows = append(rows, errorRow(FigIPAM, c.name, "alloc/s", err, goal))
			continue
		}
		row := valueRow(FigIPAM, c.name, "alloc/s", Measurement{Samples: n, Value: rate}, Measurement{Samples: n, Value: raw},
			"(raw etcd single-key txn/s, sequential)", goal)
		row.BaselineUnit = "txn/s"
		rows = append(rows, row)
	}
	if len(rows) > 0 && rows[0].Error == "" {
		rows[0].Note = fmt.Sprintf("ipam.AllocationRate vs etcd.RawTxnRate against the lab's etcd process over loopback, %d each; the lab's 4 agents watch the blocks meanwhile", n)
	}
	return rows
}

// extraPodNetns returns the name of extra pod namespace k, creating it on
// first use.
func (r *runner) extraPodNetns(k int) (string, error) {
	name := fmt.Sprintf("twbp-%d", k)
	r.mu.Lock()
	exists := slices.Contains(r.extra, name)
	r.mu.Unlock()
	if exists {
		return name, nil
	}
	return name, r.newNetns(name)
}

// podSpecs returns specs of count extra pods on node named prefix-i, in
// the extra namespaces 0..count-1.
func (r *runner) podSpecs(node, prefix string, count int) ([]lab.PodSpec, error) {
	specs := make([]lab.PodSpec, count)
	for k := range count {
		ns, err := r.extraPodNetns(k)
		if err != nil {
			return nil, err
		}
		if specs[k], err = lab.ExtraPodSpec(r.labOpts, node, fmt.Sprintf("%s-%d", prefix, k), ns); err != nil {
			return nil, err
		}
	}
	return specs, nil
}

// addPods runs CNI ADD for every spec at once and returns each one's
// latency and the time until the last one returned.
func (r *runner) addPods(ctx context.Context, specs []lab.PodSpec) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	start := time.Now()
	for i, s := range specs {
		wg.Go(func() {
			t0 := time.Now()
			_, errs[i] = r.pods.AddPod(ctx, s)
			lat[i] = time.Since(t0)
		})
	}
	wg.Wait()
	total := time.Since(start)
	return lat, total, errors.Join(errs...)
}

// delPods runs CNI DEL for every spec at once.
func (r *runner) delPods(ctx context.Context, specs []lab.PodSpec) error {
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		wg.Go(func() { errs[i] = r.pods.DelPod(context.WithoutCancel(ctx), s) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// plumbings returns count baseline plumbings on node, in the extra
// namespaces 0..count-1.
func (r *runner) plumbings(node lab.Member, count int) ([]Plumbing, error) {
	ps := make([]Plumbing, count)
	for k := range count {
		ns, err := r.extraPodNetns(k)
		if err != nil {
			return nil, err
		}
		ps[k] = Plumbing{NodeNetns: lab.NetnsPath(node.Netns), PodNetns: lab.NetnsPath(ns), HostIface: fmt.Sprintf("twbv%d", k),
			Addr: netip.AddrFrom4([4]byte{198, 18, byte(2 + k/250), byte(1 + k%250)}), MTU: 1500}
	}
	return ps, nil
}

// plumbAll runs every plumbing at once and returns each one's latency and
// the time until the last one finished; then it removes them (untimed).
func plumbAll(ps []Plumbing) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, len(ps))
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	start := time.Now()
	for i, p := range ps {
		wg.Go(func() {
			t0 := time.Now()
			errs[i] = p.Plumb()
			lat[i] = time.Since(t0)
		})
	}
	wg.Wait()
	total := time.Since(start)
	for _, p := range ps {
		errs = append(errs, p.Unplumb())
	}
	return lat, total, errors.Join(errs...)
}

// cniNode is the node of the CNI figures: the one before the last.
func (r *runner) cniNode(burst bool) lab.Member {
	ns := r.layout.Nodes()
	if burst {
		return ns[len(ns)-1]
	}
	return ns[len(ns)-2]
}

// addBatches runs rounds of parallel ADDs (then DELs) of width pods and
// returns the ADD latencies of the rounds after warmup.
func (r *runner) addBatches(ctx context.Context, node, prefix string, width, rounds, warmup int) ([]time.Duration, error) {
	var lat []time.Duration
	for i := range warmup + rounds {
		specs, err := r.podSpecs(node, fmt.Sprintf("%s-%d", prefix, i), width)
		if err != nil {
			return nil, err
		}
		if err := r.createPodObjects(ctx, specs); err != nil {
			return nil, err
		}
		l, _, err := r.addPods(ctx, specs)
		derr := r.delPods(ctx, specs)
		if err = errors.Join(err, derr, r.deletePodObjects(ctx, specs)); err != nil {
			return nil, err
		}
		if i >= warmup {
			lat = append(lat, l...)
		}
	}
	return lat, nil
}

// plumbBatches is addBatches' baseline.
func (r *runner) plumbBatches(node lab.Member, width, rounds, warmup int) ([]time.Duration, error) {
	ps, err := r.plumbings(node, width)
	if err != nil {
		return nil, err
	}
	var lat []time.Duration
	for i := range warmup + rounds {
		l, _, err := plumbAll(ps)
		if err != nil {
			return nil, err
		}
		if i >= warmup {
			lat = append(lat, l...)
		}
	}
	return lat, nil
}

// cniGoals are figure 3's goals, cniCases its cases.
var (
	cniGoals = []Goal{{Stat: StatP50, AtMost: true, Limit: 10}, {Stat: StatP99, AtMost: true, Limit: 40}}
	cniCases = []struct {
		name  string
		width int
	}{{"serial", 1}, {"16 in parallel", 16}}
)

// cniAdd is figure 3.
func (r *runner) cniAdd(ctx context.Context) []Row {
	goals := cniGoals
	node := r.cniNode(false)
	n := r.sz.cni
	var rows []Row
	for _, c := range cniCases {
		rounds := (n + c.width - 1) / c.width
		r.progress("cni-add: %s on %s, %d ADDs", c.name, node.Name, rounds*c.width)
		lat, err := r.addBatches(ctx, node.Name, fmt.Sprintf("bench-add%d", c.width), c.width, rounds, r.sz.warmup)
		var base []time.Duration
		if err == nil {
			base, err = r.plumbBatches(node, c.width, rounds, r.sz.warmup)
		}
		if err != nil {
			rows = append(rows, errorRow(FigCNIAdd, c.name, "ms", err, goals...))
			continue
		}
		what := "(same veth+addr+routes by netlink, in-process)"
		if c.width > 1 {
			what = "(same, 16 at once)"
		}
		row := latencyRow(FigCNIAdd, c.name, lat, base, what, goals...)
		if c.width == 1 {
			row.Note = fmt.Sprintf("libcni AddNetworkList of the twill-cni plugin on %s, through its agent; DEL and namespace creation untimed", node.Name)
		}
		rows = append(rows, row)
	}
	return rows
}

// burstPods is the size of the pod burst.
const burstPods = 100

// podBurst is figure 4.
func (r *runner) podBurst(ctx context.Context) []Row {
	goal := Goal{Stat: StatValue, AtMost: true, Limit: 3}
	cas := fmt.Sprintf("%d ADDs at once on one node", burstPods)
	node := r.cniNode(true)
	var worst, worstBase time.Duration
	var all []time.Duration
	for i := range r.sz.burstRounds {
		specs, err := r.podSpecs(node.Name, fmt.Sprintf("bench-burst-%d", i), burstPods)
		if err != nil {
			return []Row{errorRow(FigPodBurst, cas, "s", err, goal)}
		}
		if err := r.createPodObjects(ctx, specs); err != nil {
			return []Row{errorRow(FigPodBurst, cas, "s", err, goal)}
		}
		r.progress("pod-burst: round %d of %d: %d ADDs at once on %s", i+1, r.sz.burstRounds, burstPods, node.Name)
		lat, total, err := r.addPods(ctx, specs)
		derr := r.delPods(ctx, specs)
		if err = errors.Join(err, derr, r.deletePodObjects(ctx, specs)); err != nil {
			return []Row{errorRow(FigPodBurst, cas, "s", err, goal)}
		}
		all = append(all, lat...)
		worst = max(worst, total)
		ps, err := r.plumbings(node, burstPods)
		if err != nil {
			return []Row{errorRow(FigPodBurst, cas, "s", err, goal)}
		}
		_, btotal, err := plumbAll(ps)
		if err != nil {
			return []Row{errorRow(FigPodBurst, cas, "s", err, goal)}
		}
		worstBase = max(worstBase, btotal)
	}
	row := valueRow(FigPodBurst, cas, "s", Measurement{Samples: r.sz.burstRounds, Value: worst.Seconds()},
		Measurement{Samples: r.sz.burstRounds, Value: worstBase.Seconds()}, "(100 in-process plumbings at once)", goal)
	st := Summarize(all)
	row.Note = fmt.Sprintf("on %s, slowest of %d round(s); each ADD within the burst: p50 %s ms, p99 %s ms", node.Name, r.sz.burstRounds, num(ms(st.P50)), num(ms(st.P99)))
	return []Row{row}
}
