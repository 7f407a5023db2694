package lab

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

// snapshot is the datastore's content the planner reads.
type snapshot struct {
	nodes     []api.Node
	pools     []api.IPPool
	blocks    []api.Block
	workloads []api.WorkloadEndpoint
}

func listValues[T any](ctx context.Context, s datastore.Store, kind datastore.Kind) ([]T, error) {
	objs, _, err := datastore.ListObjects[T](ctx, s, kind, datastore.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", kind, err)
	}
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.Value)
	}
	return out, nil
}

func readSnapshot(ctx context.Context, s datastore.Store) (*snapshot, error) {
	var sn snapshot
	var err error
	if sn.nodes, err = listValues[api.Node](ctx, s, datastore.KindNode); err != nil {
		return nil, err
	}
	if sn.pools, err = listValues[api.IPPool](ctx, s, datastore.KindIPPool); err != nil {
		return nil, err
	}
	if sn.blocks, err = listValues[api.Block](ctx, s, datastore.KindBlock); err != nil {
		return nil, err
	}
	if sn.workloads, err = listValues[api.WorkloadEndpoint](ctx, s, datastore.KindWorkload); err != nil {
		return nil, err
	}
	for i := range sn.pools {
		sn.pools[i].Default()
	}
	return &sn, nil
}

// node returns the registered node called name.
func (sn *snapshot) node(name string) (api.Node, bool) {
	i := slices.IndexFunc(sn.nodes, func(n api.Node) bool { return n.Metadata.Name == name })
	if i < 0 {
		return api.Node{}, false
	}
	return sn.nodes[i], true
}

// input is the planner's input for node, as its agent would build it.
func (sn *snapshot) input(node string, vx plan.VXLANConfig) plan.Input {
	in := plan.Input{LocalNode: node, Nodes: sn.nodes, Pools: sn.pools, Blocks: sn.blocks, VXLAN: vx}
	for _, w := range sn.workloads {
		if w.Spec.Node == node {
			in.Workloads = append(in.Workloads, w)
		}
	}
	return in
}

// kernelRoutes returns the IPv4 main-table routes of protocol
// plan.RouteProtocol in the named namespace, as plan routes.
func kernelRoutes(nsName string) ([]plan.Route, error) {
	return mainRoutes(nsName, func(r netlink.Route, _ plan.Route) bool {
		return int(r.Protocol) == plan.RouteProtocol
	})
}

// mainRoutes returns the IPv4 main-table routes with a destination in the
// named namespace that keep accepts, as plan routes.
func mainRoutes(nsName string, keep func(r netlink.Route, pr plan.Route) bool) ([]plan.Route, error) {
	var out []plan.Route
	err := withHandle(nsName, func(h *netlink.Handle, _ netns.NsHandle) error {
		links, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		names := map[int]string{}
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			if r.Dst == nil {
				continue
			}
			if pr := planRoute(r, names); keep(r, pr) {
				out = append(out, pr)
			}
		}
		return nil
	})
	return out, err
}

// planRoute converts a kernel route to the planner's form.
func planRoute(r netlink.Route, names map[int]string) plan.Route {
	dst, _ := netip.AddrFromSlice(r.Dst.IP)
	ones, _ := r.Dst.Mask.Size()
	pr := plan.Route{Dst: netip.PrefixFrom(dst.Unmap(), ones), ScopeLink: r.Scope == netlink.SCOPE_LINK, OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
	if r.Type == unix.RTN_BLACKHOLE {
		pr.Type = plan.RouteBlackhole
		return pr
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		pr.Gateway = gw.Unmap()
	}
	pr.Device = names[r.LinkIndex]
	return pr
}

// routeKey identifies a route by what decides the path: destination, type,
// gateway and device.
func routeKey(r plan.Route) string {
	gw := ""
	if r.Gateway.IsValid() && r.Type != plan.RouteBlackhole {
		gw = r.Gateway.String()
	}
	dev := r.Device
	if r.Type == plan.RouteBlackhole {
		dev = ""
	}
	return fmt.Sprintf("%s|%d|%s|%s", r.Dst.Masked(), r.Type, gw, dev)
}

// kernelVTEP reads the VXLAN device dev in the named namespace.
func kernelVTEP(nsName, node, dev string) (VTEP, error) {
	v := VTEP{Node: node, Device: dev}
	err := withHandle(nsName, func(h *netlink.Handle, _ netns.NsHandle) error {
		link, err := h.LinkByName(dev)
		if err != nil {
			if _, ok := err.(netlink.LinkNotFoundError); ok {
				return nil
			}
			return fmt.Errorf("find %s: %w", dev, err)
		}
		v.Present = true
		v.MAC = link.Attrs().HardwareAddr.String()
		v.MTU = link.Attrs().MTU
		if vx, ok := link.(*netlink.Vxlan); ok {
			v.VNI, v.Port = vx.VxlanId, vx.Port
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", dev, err)
		}
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			ones, _ := a.Mask.Size()
			v.Address = netip.PrefixFrom(ip.Unmap(), ones)
			break
		}
		return nil
	})
	return v, err
}

// nodeCheck is how far one node is from its plan.
type nodeCheck struct {
	node       string
	registered bool
	missing    []plan.Route
	extra      []plan.Route
	device     string // what is wrong with the VTEP; "" when fine
	err        error
}

func (c nodeCheck) ok() bool {
	return c.registered && c.err == nil && len(c.missing) == 0 && len(c.extra) == 0 && c.device == ""
}

func (c nodeCheck) String() string {
	switch {
	case c.err != nil:
		return c.node + ": " + c.err.Error()
	case !c.registered:
		return c.node + ": not registered yet"
	}
	var parts []string
	if c.device != "" {
		parts = append(parts, c.device)
	}
	if len(c.missing) > 0 {
		parts = append(parts, fmt.Sprintf("%d routes missing (%s)", len(c.missing), routeList(c.missing)))
	}
	if len(c.extra) > 0 {
		parts = append(parts, fmt.Sprintf("%d routes not in the plan (%s)", len(c.extra), routeList(c.extra)))
	}
	if len(parts) == 0 {
		return c.node + ": converged"
	}
	return c.node + ": " + strings.Join(parts, "; ")
}

func routeList(rs []plan.Route) string {
	var s []string
	for i, r := range rs {
		if i == 3 {
			s = append(s, fmt.Sprintf("and %d more", len(rs)-3))
			break
		}
		s = append(s, r.String())
	}
	return strings.Join(s, ", ")
}

// checkNode compares node m's kernel with the plan the datastore implies.
func checkNode(sn *snapshot, l *Layout, m Member) nodeCheck {
	c := nodeCheck{node: m.Name}
	n, ok := sn.node(m.Name)
	if !ok {
		return c
	}
	dp := plan.Plan(sn.input(m.Name, l.VXLAN))
	if dp.Device != nil && n.Spec.TunnelAddress == "" {
		return c // registered, tunnel address not yet allocated
	}
	c.registered = true
	got, err := kernelRoutes(m.Netns)
	if err != nil {
		c.err = err
		return c
	}
	want := map[string]plan.Route{}
	for _, r := range dp.Routes {
		want[routeKey(r)] = r
	}
	have := map[string]bool{}
	for _, r := range got {
		k := routeKey(r)
		have[k] = true
		if _, ok := want[k]; !ok {
			c.extra = append(c.extra, r)
		}
	}
	for k, r := range want {
		if !have[k] {
			c.missing = append(c.missing, r)
		}
	}
	byDst := func(a, b plan.Route) int { return strings.Compare(routeKey(a), routeKey(b)) }
	slices.SortFunc(c.missing, byDst)
	slices.SortFunc(c.extra, byDst)
	if dp.Device != nil {
		v, err := kernelVTEP(m.Netns, m.Name, dp.Device.Name)
		switch {
		case err != nil:
			c.err = err
		case !v.Present:
			c.device = "no " + dp.Device.Name + " device"
		case v.MAC != dp.Device.MAC:
			c.device = fmt.Sprintf("%s has MAC %s, plan says %s", dp.Device.Name, v.MAC, dp.Device.MAC)
		case v.Address != dp.Device.Address:
			c.device = fmt.Sprintf("%s has address %s, plan says %s", dp.Device.Name, v.Address, dp.Device.Address)
		}
	}
	return c
}

// waitConverged waits until every node registered and its kernel matches
// its plan, printing progress; agents that exit fail it at once.
func (r *run) waitConverged(ctx context.Context, what string) error {
	start := time.Now()
	deadline := start.Add(r.opts.ConvergeTimeout)
	lastReport := time.Time{}
	nodes := r.layout.Nodes()
	var checks []nodeCheck
	for {
		for _, m := range nodes {
			if c, ok := r.children[agentProcess(m.Name)]; ok {
				if done, err := c.exited(); done {
					return fmt.Errorf("the agent of %s exited (%v); its log %s ends:\n%s", m.Name, err, c.rec.Log, logTail(c.rec.Log, 15))
				}
			}
		}
		sn, err := readSnapshot(ctx, r.store)
		if err != nil {
			return err
		}
		checks = checks[:0]
		registered, converged := 0, 0
		for _, m := range nodes {
			c := checkNode(sn, r.layout, m)
			checks = append(checks, c)
			if c.registered {
				registered++
			}
			if c.ok() {
				converged++
			}
		}
		if converged == len(nodes) {
			r.opts.progress("%s: all %d nodes converged in %s (kernel routes match the plan)", what, len(nodes), time.Since(start).Round(100*time.Millisecond))
			return nil
		}
		if time.Now().After(deadline) {
			var lines []string
			for _, c := range checks {
				if !c.ok() {
					lines = append(lines, "  "+c.String())
				}
			}
			return fmt.Errorf("%w: %s: after %s, %d/%d nodes registered and %d/%d converged:\n%s\n(agent logs are in %s)",
				ErrNotConverged, what, r.opts.ConvergeTimeout, registered, len(nodes), converged, len(nodes), strings.Join(lines, "\n"), r.opts.StateDir)
		}
		if time.Since(lastReport) >= 3*time.Second {
			lastReport = time.Now()
			var behind []string
			for _, c := range checks {
				if !c.ok() {
					behind = append(behind, c.String())
				}
			}
			r.opts.progress("%s: waiting (%s): %d/%d registered, %d/%d converged; %s", what, time.Since(start).Round(time.Second),
				registered, len(nodes), converged, len(nodes), strings.Join(behind, "; "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
