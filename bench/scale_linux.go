package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"twill.dev/twill/dataplane"
	"twill.dev/twill/datastore"
	"twill.dev/twill/lab"
	"twill.dev/twill/plan"
)

// ScaleNode prepares the namespace at nsPath as a scale cluster's local
// node: eth0 (one end of a veth pair kept inside it) up with
// ScaleLocalAddress.
func ScaleNode(nsPath string) error {
	h, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "twbpeer0"}); err != nil {
		return fmt.Errorf("add eth0: %w", err)
	}
	for _, name := range []string{"lo", "eth0", "twbpeer0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if name == "eth0" {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(ScaleLocalAddress)}); err != nil {
				return fmt.Errorf("address eth0: %w", err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return nil
}

// ReconcileOnce plans in and applies the plan in full to the namespace at
// nsPath with a fresh reconciler, and returns how long the plan and the
// apply took together, and what the apply changed.
func ReconcileOnce(nsPath string, in plan.Input) (time.Duration, dataplane.Result, error) {
	r, err := dataplane.New(dataplane.Options{NetnsPath: nsPath, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, dataplane.Result{}, err
	}
	defer r.Close()
	start := time.Now()
	dp := plan.Plan(in)
	res, err := r.Apply(dp)
	d := time.Since(start)
	if err != nil {
		return d, res, fmt.Errorf("apply the plan: %w", err)
	}
	return d, res, nil
}

// DumpRoutes is the reconcile's baseline: one plain netlink dump of the
// namespace's IPv4 main table. It returns how long it took and how many
// routes of the agent's protocol it held.
func DumpRoutes(nsPath string) (time.Duration, int, error) {
	h, err := handleAt(nsPath)
	if err != nil {
		return 0, 0, err
	}
	defer h.Close()
	start := time.Now()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	d := time.Since(start)
	if err != nil {
		return d, 0, fmt.Errorf("dump the routes: %w", err)
	}
	n := 0
	for _, r := range rs {
		if int(r.Protocol) == plan.RouteProtocol {
			n++
		}
	}
	return d, n, nil
}

// ProcStatus reads a kB field (VmRSS, VmHWM) of /proc/PID/status, in MiB.
func ProcStatus(pid int, field string) (float64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status %s: %w", pid, field, err)
			}
			return float64(kb) / 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// scaleTopology is the scale lab: one node, alone in its /16, whose peers
// exist only in the datastore.
func scaleTopology() string {
	return fmt.Sprintf(`subnets:
  - name: scale
    cidr: 192.168.0.0/16
    router: 192.168.255.254
pools:
  - name: scale
    cidr: %s
    blockSize: %d
    ipipMode: Never
    vxlanMode: CrossSubnet
    natOutgoing: true
    nodeSelector: all()
vxlan:
  device: vxlan.calico
  vni: 4096
  port: 4789
  mtu: 1450
nodes:
  - name: %s
    address: %s
    block: %s
`, ScalePool, ScaleBlockSize, scaleLocal, ScaleLocalAddress, ScaleBlock(0))
}

// scaleLocal is the scale lab's node.
const scaleLocal = "scale-local"

// scale is figure 6.
func (r *runner) scale(ctx context.Context) []Row {
	return []Row{r.scaleReconcile(ctx), r.scaleRSS(ctx)}
}

func (r *runner) scaleReconcile(ctx context.Context) Row {
	peers := r.sz.scalePeers
	goal := Goal{Stat: StatValue, AtMost: true, Limit: 1}
	cas := fmt.Sprintf("plan + full reconcile, %d nodes", peers)
	c := ScaleCluster("local", peers, 0)
	in := c.Input(plan.VXLANConfig{})
	var worst, worstDump time.Duration
	for i := range r.sz.scaleRounds {
		if err := ctx.Err(); err != nil {
			return errorRow(FigScale, cas, "s", err, goal)
		}
		name := fmt.Sprintf("twbr-%d", i)
		if err := r.newNetns(name); err != nil {
			return errorRow(FigScale, cas, "s", err, goal)
		}
		path := lab.NetnsPath(name)
		if err := ScaleNode(path); err != nil {
			return errorRow(FigScale, cas, "s", err, goal)
		}
		r.progress("scale: round %d of %d: plan + apply of %d peers into a fresh namespace", i+1, r.sz.scaleRounds, peers)
		d, res, err := ReconcileOnce(path, in)
		if err == nil && (res.Routes.Added != peers+1 || res.Neighbors.Added != peers || res.FDB.Added != peers) {
			err = fmt.Errorf("the reconcile added %d routes, %d neighbours and %d FDB entries; want %d, %d and %d",
				res.Routes.Added, res.Neighbors.Added, res.FDB.Added, peers+1, peers, peers)
		}
		if err != nil {
			return errorRow(FigScale, cas, "s", err, goal)
		}
		dd, n, err := DumpRoutes(path)
		if err == nil && n != peers+1 {
			err = fmt.Errorf("the dump found %d of the agent's routes; want %d", n, peers+1)
		}
		if err != nil {
			return errorRow(FigScale, cas, "s", err, goal)
		}
		worst, worstDump = max(worst, d), max(worstDump, dd)
		if err := lab.DeleteNetns(name); err != nil {
			return errorRow(FigScale, cas, "s", err, goal)
		}
	}
	row := valueRow(FigScale, cas, "s", Measurement{Samples: r.sz.scaleRounds, Value: worst.Seconds()},
		Measurement{Samples: r.sz.scaleRounds, Value: worstDump.Seconds()}, "(netlink dump of the same routes)", goal)
	row.Note = fmt.Sprintf("in-process plan.Plan + dataplane Apply into an empty namespace: %d routes (half direct, half VXLAN), %d neighbours, %d FDB entries and the firewall; slowest of %d round(s)",
		peers+1, peers, peers, r.sz.scaleRounds)
	return row
}

func (r *runner) scaleRSS(ctx context.Context) Row {
	peers, perPeer := r.sz.scalePeers, r.sz.scalePodsPerPeer
	goal := Goal{Stat: StatValue, AtMost: true, Limit: 64}
	cas := fmt.Sprintf("agent RSS, %d nodes + %d pods", peers, peers*perPeer)
	fail := func(err error) Row { return errorRow(FigScale, cas, "MiB", err, goal) }
	opts := r.scaleLabOptions()
	t, err := lab.Parse("bench-scale", []byte(scaleTopology()))
	if err != nil {
		return fail(err)
	}
	r.progress("scale: building a one-node lab (prefix %s) for the agent's memory", ScalePrefix)
	if err := lab.Up(ctx, t, opts); err != nil {
		return fail(err)
	}
	defer func() {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
		defer cancel()
		_ = lab.Down(tctx, opts)
	}()
	st, err := lab.LoadState(opts.StateDir)
	if err != nil {
		return fail(err)
	}
	pid := 0
	for _, p := range st.Processes {
		if p.Name == "agent/"+scaleLocal {
			pid = p.PID
		}
	}
	if pid == 0 {
		return fail(errors.New("the scale lab has no agent process"))
	}
	store, err := openLabStore(ctx, st)
	if err != nil {
		return fail(err)
	}
	defer store.Close()
	if err := sleep(ctx, 2*time.Second); err != nil {
		return fail(err)
	}
	idle, err := ProcStatus(pid, "VmRSS")
	if err != nil {
		return fail(err)
	}
	c := ScaleCluster(scaleLocal, peers, perPeer)
	r.progress("scale: writing %d nodes, %d blocks and %d pods (endpoints, handles, allocations) to the lab's %s, %d creates at a time", peers, peers, peers*perPeer, st.DatastoreType(), writeWorkers)
	start := time.Now()
	// The lab wrote the pool, the local node registered itself and its
	// block is pinned.
	type object struct {
		kind datastore.Kind
		name string
	}
	local := map[object]bool{{datastore.KindIPPool, c.Pool.Metadata.Name}: true, {datastore.KindNode, scaleLocal}: true,
		{datastore.KindBlock, datastore.BlockName(ScaleBlock(0).String())}: true}
	if err := c.Write(ctx, store, func(kind datastore.Kind, name string) bool { return local[object{kind, name}] }); err != nil {
		return fail(err)
	}
	written := time.Since(start)
	path := lab.NetnsPath(st.Prefix + "-" + scaleLocal)
	deadline := time.Now().Add(r.sz.rssTimeout)
	for {
		_, n, err := DumpRoutes(path)
		if err != nil {
			return fail(err)
		}
		if n >= peers+1 {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the agent programmed %d of %d routes within %s", n, peers+1, r.sz.rssTimeout))
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return fail(err)
		}
	}
	converged := time.Since(start)
	if err := sleep(ctx, 3*time.Second); err != nil {
		return fail(err)
	}
	rss, err := ProcStatus(pid, "VmRSS")
	if err != nil {
		return fail(err)
	}
	hwm, _ := ProcStatus(pid, "VmHWM")
	row := valueRow(FigScale, cas, "MiB", Measurement{Samples: 1, Value: rss}, Measurement{Samples: 1, Value: idle},
		"(same agent before the writes, 0 peers)", goal)
	row.Note = fmt.Sprintf("VmRSS of the real `twill node run` process (pid %d) 3 s after it programmed all %d routes; peak VmHWM %s MiB; writes took %s, routes all in place %s after the writes began",
		pid, peers+1, num(hwm), written.Round(10*time.Millisecond), converged.Round(10*time.Millisecond))
	return row
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
