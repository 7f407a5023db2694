package bench

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"twill.dev/twill/datastore/open"
	"twill.dev/twill/ipam"
	"twill.dev/twill/lab"
)

// kubeRun builds the seed lab again on the Kubernetes datastore, measures
// the KubeFigures that Options select there, each set against its etcd row
// in got (which it extends), and takes the lab down. A lab that cannot be
// built gives error rows; only an interruption is returned as an error.
func (r *runner) kubeRun(ctx context.Context, got map[string][]Row) error {
	figs := []struct {
		name string
		run  func(context.Context, []Row) []Row
	}{{FigConvergence, r.kubeConvergence}, {FigCNIAdd, r.kubeCNIAdd}, {FigIPAM, r.kubeIPAM}}
	fail := func(err error) {
		for _, f := range figs {
			if r.want(f.name) {
				got[f.name] = append(got[f.name], kubeFailRows(got[f.name], f.name, err)...)
			}
		}
	}
	r.progress("building the seed lab again on the Kubernetes datastore (kube-apiserver on the lab's etcd; prefix %s)", LabPrefix)
	start := time.Now()
	r.labOpts.Datastore = open.TypeKubernetes
	defer func() { r.labOpts.Datastore = "" }()
	// A fresh adder: the etcd lab's one remembers CNI files that went
	// with that lab.
	pods, err := lab.NewCNIPodAdder(r.labOpts)
	if err != nil {
		fail(err)
		return nil
	}
	r.pods, r.labOpts.Pods = pods, pods
	if err := r.upMain(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted: %w", ctx.Err())
		}
		fail(fmt.Errorf("build the lab on the Kubernetes datastore: %w", err))
		return r.downMain(ctx)
	}
	kc, err := lab.KubeClient(r.labOpts)
	if err != nil {
		fail(err)
		return r.downMain(ctx)
	}
	r.kube = kc
	r.progress("the Kubernetes lab is up in %s", time.Since(start).Round(100*time.Millisecond))
	for _, f := range figs {
		if !r.want(f.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("interrupted: %w", err)
		}
		start := time.Now()
		r.progress("%s (kubernetes) ...", f.name)
		got[f.name] = append(got[f.name], f.run(ctx, got[f.name])...)
		r.progress("%s (kubernetes) done in %s", f.name, time.Since(start).Round(100*time.Millisecond))
	}
	r.progress("taking the Kubernetes lab down")
	return r.downMain(ctx)
}

// kubeConvergence is figure 2 on the Kubernetes datastore: the same
// peers and writes, each peer's v1.Node registered first (untimed), as its
// kubelet would.
func (r *runner) kubeConvergence(ctx context.Context, etcdRows []Row) []Row {
	cas, paths := r.convergenceCase()
	etcd := etcdRow(etcdRows, cas)
	peers, err := r.convergencePeers(ctx, r.sz.converge+r.sz.warmup)
	if err != nil {
		return []Row{kubeErrorRow(FigConvergence, cas, "ms", err, convergenceGoal)}
	}
	register := func(ctx context.Context, p Peer) error {
		return lab.CreateNodeObject(ctx, r.kube, p.Name, p.Address.Addr())
	}
	r.progress("convergence (kubernetes): %d peers registered one at a time, routes awaited on %d nodes", len(peers), len(paths))
	samples, err := ConvergenceSamplesWith(ctx, r.store, paths, peers, r.sz.warmup, register)
	if err != nil {
		return []Row{kubeErrorRow(FigConvergence, cas, "ms", err, convergenceGoal)}
	}
	row := versusEtcd(etcd, FigConvergence, cas, "ms", true, latencyMeasurement(samples), convergenceGoal)
	row.Note = "the same two writes on the Kubernetes datastore (the Twill node as annotations of the peer's v1.Node, registered untimed beforehand; the block as a custom resource), until the route is in every node's kernel"
	return []Row{row}
}

// kubeCNIAdd is figure 3 on the Kubernetes datastore: each pod's v1.Pod is
// created (untimed) before its ADD, which reads it.
func (r *runner) kubeCNIAdd(ctx context.Context, etcdRows []Row) []Row {
	node := r.cniNode(false)
	n := r.sz.cni
	var rows []Row
	for _, c := range cniCases {
		etcd := etcdRow(etcdRows, c.name)
		rounds := (n + c.width - 1) / c.width
		r.progress("cni-add (kubernetes): %s on %s, %d ADDs", c.name, node.Name, rounds*c.width)
		lat, err := r.addBatches(ctx, node.Name, fmt.Sprintf("bench-kadd%d", c.width), c.width, rounds, r.sz.warmup)
		if err != nil {
			rows = append(rows, kubeErrorRow(FigCNIAdd, c.name, "ms", err, cniGoals...))
			continue
		}
		row := versusEtcd(etcd, FigCNIAdd, c.name, "ms", true, latencyMeasurement(lat), cniGoals...)
		if c.width == 1 {
			row.Note = "the same ADDs on the Kubernetes datastore: the agent reads the pod's v1.Pod (created untimed before the ADD) and allocates through the apiserver"
		}
		rows = append(rows, row)
	}
	return rows
}

// kubeIPAM is figure 7 on the Kubernetes datastore, for a node registered
// as a v1.Node for the while (so that the garbage collector leaves its
// block alone). It has no goal: the etcd figure's goal is a ratio to raw
// etcd transactions; this row shows the Kubernetes datastore beside it.
func (r *runner) kubeIPAM(ctx context.Context, etcdRows []Row) []Row {
	fail := func(err error) []Row {
		var rows []Row
		for _, c := range ipamCases {
			rows = append(rows, kubeErrorRow(FigIPAM, c.name, "alloc/s", err))
		}
		return rows
	}
	if err := lab.CreateNodeObject(ctx, r.kube, ipamNode, netip.Addr{}); err != nil {
		return fail(err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := lab.DeleteNodeObject(dctx, r.kube, ipamNode); err != nil {
			r.progress("warning: %v", err)
		}
	}()
	m := ipam.New(r.store)
	n := r.sz.ipamN
	// Warm-up: the connections, the node's first block claim, the caches.
	if _, err := ipam.AllocationRate(ctx, m, ipamNode, 20, 1); err != nil {
		return fail(err)
	}
	r.progress("ipam (kubernetes): %d allocations with 1 and with 8 workers", n)
	var rows []Row
	for _, c := range ipamCases {
		rate, err := ipam.AllocationRate(ctx, m, ipamNode, n, c.workers)
		if err != nil {
			rows = append(rows, kubeErrorRow(FigIPAM, c.name, "alloc/s", err))
			continue
		}
		rows = append(rows, versusEtcd(etcdRow(etcdRows, c.name), FigIPAM, c.name, "alloc/s", false, Measurement{Samples: n, Value: rate}))
	}
	if len(rows) > 0 && rows[0].Error == "" {
		rows[0].Note = fmt.Sprintf("ipam.AllocationRate against the lab's kube-apiserver over loopback, %d each (every block write a custom resource update); ratio = kubernetes ÷ etcd", n)
	}
	return rows
}

// createPodObjects creates the v1.Pods of extra pods before their ADDs, on
// the Kubernetes datastore (nothing on etcd), and records their UIDs in
// specs.
func (r *runner) createPodObjects(ctx context.Context, specs []lab.PodSpec) error {
	if r.kube == nil {
		return nil
	}
	for i := range specs {
		if err := lab.CreatePodObject(ctx, r.kube, &specs[i]); err != nil {
			return err
		}
	}
	return nil
}

// deletePodObjects deletes the v1.Pods createPodObjects created.
func (r *runner) deletePodObjects(ctx context.Context, specs []lab.PodSpec) error {
	if r.kube == nil {
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	for _, s := range specs {
		if err := lab.DeletePodObject(ctx, r.kube, s.Namespace, s.Name); err != nil {
			return err
		}
	}
	return nil
}
