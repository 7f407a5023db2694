package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/api"
	"twill.dev/twill/dataplane"
	"twill.dev/twill/datastore"
	"twill.dev/twill/explain"
	"twill.dev/twill/lab"
	"twill.dev/twill/plan"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newRoutesCmd(g))
	})
}

// routeNHeader is what `route -n` prints above its lines.
const routeNHeader = "Kernel IP routing table\nDestination     Gateway         Genmask         Flags Metric Ref    Use Iface"

// namedNetnsDir is where `ip netns add` (and the lab) mount named namespaces.
const namedNetnsDir = "/var/run/netns"

// planFlags are the settings the planner needs besides the datastore: the
// VXLAN device's, which each agent takes from its own flags.
type planFlags struct {
	envErrs     []error
	vxlan       plan.VXLANConfig
	labStateDir string
}

func (f *planFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.vxlan.Device, "vxlan-device", envOr(plan.DefaultVXLANDevice, "TWILL_VXLAN_DEVICE"), "name of the nodes' VXLAN device, as given to their agents (env TWILL_VXLAN_DEVICE)")
	fs.IntVar(&f.vxlan.VNI, "vxlan-vni", envInt(plan.DefaultVNI, &f.envErrs, "TWILL_VXLAN_VNI"), "VXLAN network identifier (env TWILL_VXLAN_VNI)")
	fs.IntVar(&f.vxlan.Port, "vxlan-port", envInt(plan.DefaultVXLANPort, &f.envErrs, "TWILL_VXLAN_PORT"), "VXLAN UDP port (env TWILL_VXLAN_PORT)")
	fs.IntVar(&f.vxlan.MTU, "vxlan-mtu", envInt(0, &f.envErrs, "TWILL_VXLAN_MTU"), "MTU of the VXLAN device; 0 = host MTU - 50 (env TWILL_VXLAN_MTU)")
	fs.StringVar(&f.labStateDir, "lab-state-dir", lab.DefaultStateDir, "state directory of a running `twill lab`, to find lab nodes' namespaces")
}

func (f *planFlags) check() error {
	if len(f.envErrs) > 0 {
		return usageErr(errors.Join(f.envErrs...))
	}
	return nil
}

// loadCluster reads everything the planner and explain look at.
func loadCluster(ctx context.Context, s datastore.Store, vx plan.VXLANConfig) (explain.Cluster, error) {
	c := explain.Cluster{VXLAN: vx}
	nodes, _, err := datastore.ListObjects[api.Node](ctx, s, datastore.KindNode, datastore.ListOptions{})
	if err != nil {
		return c, fmt.Errorf("list nodes: %w", err)
	}
	pools, _, err := datastore.ListObjects[api.IPPool](ctx, s, datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		return c, fmt.Errorf("list IP pools: %w", err)
	}
	blocks, _, err := datastore.ListObjects[api.Block](ctx, s, datastore.KindBlock, datastore.ListOptions{})
	if err != nil {
		return c, fmt.Errorf("list IPAM blocks: %w", err)
	}
	wls, _, err := datastore.ListObjects[api.WorkloadEndpoint](ctx, s, datastore.KindWorkload, datastore.ListOptions{})
	if err != nil {
		return c, fmt.Errorf("list workload endpoints: %w", err)
	}
	for _, o := range nodes {
		c.Nodes = append(c.Nodes, o.Value)
	}
	for _, o := range pools {
		c.Pools = append(c.Pools, o.Value)
	}
	for _, o := range blocks {
		c.Blocks = append(c.Blocks, o.Value)
	}
	for _, o := range wls {
		c.Workloads = append(c.Workloads, o.Value)
	}
	return c, nil
}

// requireNode fails unless node is registered.
func requireNode(c explain.Cluster, node string) error {
	names := make([]string, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		if n.Metadata.Name == node {
			return nil
		}
		names = append(names, n.Metadata.Name)
	}
	if len(names) == 0 {
		return fmt.Errorf("node %q is not registered: no node is (start `twill node run` on each node)", node)
	}
	return fmt.Errorf("node %q is not registered; registered nodes: %s", node, strings.Join(names, ", "))
}

// localNodeName is the node name an agent on this host registers under.
func localNodeName() string {
	if n := envOr("", "NODENAME", "TWILL_NODENAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

// netnsSource says where a node's kernel state was looked for.
type netnsSource struct {
	// Path is the namespace path; "" means the current namespace.
	Path string
	// Known is set when Path is known to be the node's.
	Known bool
	// Why says how Path was found, or why it was not.
	Why string
}

// nodeNetns finds node's network namespace: an explicit path wins; then the
// namespace of a node of the running lab; then the current namespace when
// node is this host's node.
func nodeNetns(node, explicit, labStateDir string) netnsSource {
	if explicit != "" {
		return netnsSource{Path: explicit, Known: true, Why: "given with a flag"}
	}
	why := ""
	if st, err := lab.LoadState(labStateDir); err == nil {
		if l, err := st.Layout(); err != nil {
			why = fmt.Sprintf("the lab's state is unreadable (%v)", err)
		} else if ns, role, ok := l.Target(node); ok && role == lab.RoleNode {
			p := filepath.Join(namedNetnsDir, ns)
			if _, err := os.Stat(p); err == nil {
				return netnsSource{Path: p, Known: true, Why: "lab node " + node}
			}
			why = fmt.Sprintf("lab node %s's namespace %s is gone", node, p)
		}
	} else if !errors.Is(err, lab.ErrNotUp) && !errors.Is(err, fs.ErrPermission) {
		why = fmt.Sprintf("the lab's state is unreadable (%v)", err)
	}
	if node == localNodeName() {
		return netnsSource{Known: true, Why: "this host's node"}
	}
	if why == "" {
		why = fmt.Sprintf("%s is neither this host's node (%s) nor a node of a running lab", node, localNodeName())
	}
	return netnsSource{Why: why}
}

// readKernel reads what the kernel of the namespace at path ("" = current)
// holds for Twill.
func readKernel(path string) (*explain.Kernel, error) {
	r, err := dataplane.New(dataplane.Options{NetnsPath: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	obs, err := r.Observe()
	if err != nil {
		return nil, fmt.Errorf("read the kernel's Twill state%s: %w", inNetns(path), err)
	}
	k := &explain.Kernel{Routes: obs.Routes, Odd: obs.Odd, Neighbors: obs.Neighbors, FDB: obs.FDB}
	if d := obs.Device; d != nil {
		dev := d.Device
		if d.Type != "vxlan" {
			dev = plan.Device{Name: d.Name, MTU: d.MTU, MAC: d.MAC}
		}
		k.Device, k.DeviceUp = &dev, d.Up
	}
	return k, nil
}

func inNetns(path string) string {
	if path == "" {
		return " in the current network namespace"
	}
	return " in network namespace " + path
}

func newRoutesCmd(g *globals) *cobra.Command {
	var (
		pf     planFlags
		output string
		live   bool
		netns  string
	)
	cmd := &cobra.Command{
		Use:   "routes NODE [-o route-n|ip|yaml] [--live] [--netns PATH]",
		Short: "Show the Twill routes a node should have, and with --live how its kernel differs",
		Long: `routes plans NODE's dataplane from the datastore, exactly as its agent does, and
prints the routes: as route -n prints them (default), as ip route prints them
(-o ip), or the whole plan with VXLAN device, neighbours, FDB and firewall
sets (-o yaml). The planner's notes (peers without a route and why) follow.

With --live it also reads the node's kernel (a lab node's namespace, the
namespace given with --netns, else the current one) and marks every
difference: "-" for a line only in the plan (missing from the kernel), "+" for
one only in the kernel (extra), "!" for a destination both have but
differently. The VXLAN device, neighbour and FDB entries are compared too,
and so is the host firewall: the nftables table inet twill, its chains,
sets and counter, each set's elements (pools merged as the dataplane writes
them), and the vxlan-dropped counter's packets and bytes.
Reading another namespace needs root.`,
		Args: usage(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			switch output {
			case "route-n", "ip", "yaml":
			default:
				return usageErr(fmt.Errorf("unknown output format %q: use route-n, ip or yaml", output))
			}
			if netns != "" && !live {
				return usageErr(errors.New("--netns needs --live: it says whose kernel to compare with"))
			}
			node := args[0]
			ctx := cmd.Context()
			s, err := g.store(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			c, err := loadCluster(ctx, s, pf.vxlan)
			if err != nil {
				return err
			}
			if err := requireNode(c, node); err != nil {
				return err
			}
			dp := explain.PlanNode(c, node)
			w := cmd.OutOrStdout()
			if !live {
				return printRoutes(w, output, dp)
			}
			src := nodeNetns(node, netns, pf.labStateDir)
			if !src.Known {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: comparing with the current network namespace: %s; give --netns PATH for another\n", src.Why)
			}
			k, err := readKernel(src.Path)
			if err != nil {
				return err
			}
			fw := readLiveFirewall(src.Path)
			if fw.Err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: the host firewall is not compared: %v\n", fw.Err)
			}
			return printLiveRoutes(w, output, node, src, dp, k, fw)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "route-n", "output format: route-n, ip or yaml")
	f.BoolVar(&live, "live", false, "compare with the node's kernel and mark every difference")
	f.StringVar(&netns, "netns", "", "with --live: the node's network namespace, e.g. /var/run/netns/node1")
	pf.add(f)
	return cmd
}

// printRoutes prints the planned routes and the planner's notes.
func printRoutes(w io.Writer, output string, dp plan.Dataplane) error {
	switch output {
	case "yaml":
		return writeYAML(w, dp)
	case "ip":
		for _, r := range dp.Routes {
			fmt.Fprintln(w, r.String())
		}
	default:
		fmt.Fprintln(w, routeNHeader)
		for _, l := range plan.RouteN(dp.Routes) {
			fmt.Fprintln(w, l)
		}
	}
	printStatus(w, dp.Status)
	return nil
}

func writeYAML(w io.Writer, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	_, err = w.Write(b)
	return err
}

func printStatus(w io.Writer, status []string) {
	if len(status) == 0 {
		return
	}
	fmt.Fprintln(w, "\nStatus:")
	for _, s := range status {
		fmt.Fprintf(w, "  - %s\n", s)
	}
}

// Difference markers, in the first column of --live output.
var diffMark = map[explain.DiffState]string{
	explain.Same:      "  ",
	explain.Missing:   "- ",
	explain.Extra:     "+ ",
	explain.Different: "! ",
}

// liveSection is one part of the --live comparison, rendered as marked
// lines; counts tallies the differences.
type liveSection struct {
	title string
	lines []string
}

// liveTally counts differences by state.
type liveTally map[explain.DiffState]int

func (t liveTally) String() string {
	return fmt.Sprintf("%d missing, %d extra, %d different", t[explain.Missing], t[explain.Extra], t[explain.Different])
}

// routeLine renders a route in the chosen form.
func routeLine(output string, r plan.Route) string {
	if output == "ip" {
		return r.String()
	}
	return plan.RouteN([]plan.Route{r})[0]
}

// routesSection compares the routes.
func routesSection(output string, dp plan.Dataplane, k *explain.Kernel, tally liveTally) liveSection {
	var sec liveSection
	if output != "ip" {
		for _, h := range strings.Split(routeNHeader, "\n") {
			sec.lines = append(sec.lines, "  "+h)
		}
	}
	for _, d := range explain.DiffRoutes(dp.Routes, k.Routes) {
		tally[d.State]++
		switch d.State {
		case explain.Same:
			sec.lines = append(sec.lines, diffMark[d.State]+routeLine(output, *d.Planned))
		case explain.Missing:
			sec.lines = append(sec.lines, diffMark[d.State]+routeLine(output, *d.Planned)+"  # missing")
		case explain.Extra:
			sec.lines = append(sec.lines, diffMark[d.State]+routeLine(output, *d.Kernel)+"  # extra")
		case explain.Different:
			sec.lines = append(sec.lines,
				diffMark[d.State]+routeLine(output, *d.Planned)+"  # different: planned",
				diffMark[d.State]+routeLine(output, *d.Kernel)+"  # different: in the kernel")
		}
	}
	for _, o := range k.Odd {
		tally[explain.Extra]++
		sec.lines = append(sec.lines, diffMark[explain.Extra]+o+"  # extra: a Twill route the planner never makes")
	}
	return sec
}

// linesSection compares two sets of lines under a title.
func linesSection(title string, planned, kernel []string, tally liveTally) liveSection {
	sec := liveSection{title: title}
	for _, d := range explain.DiffLines(planned, kernel) {
		tally[d.State]++
		line := diffMark[d.State] + d.Line
		if d.State != explain.Same {
			line += "  # " + string(d.State)
		}
		sec.lines = append(sec.lines, line)
	}
	if len(sec.lines) == 0 {
		sec.lines = []string{"  (none planned, none in the kernel)"}
	}
	return sec
}

// vxlanSections compares the VXLAN device, neighbours and FDB.
func vxlanSections(dp plan.Dataplane, k *explain.Kernel, tally liveTally) []liveSection {
	var pd, kd []string
	if dp.Device != nil {
		pd = []string{explain.DeviceString(*dp.Device, true)}
	}
	if k.Device != nil {
		kd = []string{explain.DeviceString(*k.Device, k.DeviceUp)}
	}
	var pn, kn, pf, kf []string
	for _, n := range dp.Neighbors {
		pn = append(pn, explain.NeighborString(n))
	}
	for _, n := range k.Neighbors {
		kn = append(kn, explain.NeighborString(n))
	}
	for _, f := range dp.FDB {
		pf = append(pf, explain.FDBString(f))
	}
	for _, f := range k.FDB {
		kf = append(kf, explain.FDBString(f))
	}
	return []liveSection{
		linesSection("VXLAN device:", pd, kd, tally),
		linesSection("Neighbours (ip neigh):", pn, kn, tally),
		linesSection("FDB (bridge fdb):", pf, kf, tally),
	}
}

// liveFirewall is the node's host firewall as read for --live: the table
// inet twill, or why it could not be read.
type liveFirewall struct {
	Observed *dataplane.ObservedFirewall
	Err      error
}

// readLiveFirewall reads the table inet twill of the namespace at path
// ("" = current). A failure is returned inside, not as an error: the
// routes are still worth showing.
func readLiveFirewall(path string) liveFirewall {
	r, err := dataplane.New(dataplane.Options{NetnsPath: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return liveFirewall{Err: err}
	}
	defer r.Close()
	o, err := r.ObserveFirewall()
	if err != nil {
		return liveFirewall{Err: fmt.Errorf("read the nftables table inet %s%s (needs CAP_NET_ADMIN and a kernel with nf_tables): %w",
			dataplane.FirewallTable, inNetns(path), err)}
	}
	return liveFirewall{Observed: &o}
}

// firewallSections compares the node's nftables table inet twill with the
// plan's firewall: the table, its chains, sets and counter, then each
// set's elements, followed by the vxlan-dropped counter's values. Pools are
// compared as the dataplane writes them (merged, as the fewest CIDRs).
func firewallSections(dp plan.Dataplane, fw liveFirewall, tally liveTally) []liveSection {
	head := "Firewall (nft table inet " + dataplane.FirewallTable + "):"
	if fw.Err != nil {
		return []liveSection{{title: head, lines: []string{"  (not read: " + fw.Err.Error() + ")"}}}
	}
	want := dataplane.PlannedFirewall(dp.Firewall)
	got := fw.Observed
	objects := func(o *dataplane.ObservedFirewall) []string {
		if !o.Table {
			return nil
		}
		var out []string
		for _, c := range o.Chains {
			out = append(out, "chain "+c)
		}
		for _, s := range o.Sets {
			out = append(out, "set "+s)
		}
		// The counter cannot be observed apart from the table: it is
		// listed whenever the table is there.
		return append(out, "counter "+dataplane.CounterVXLANDropped)
	}
	tableLine := func(o *dataplane.ObservedFirewall) []string {
		if !o.Table {
			return nil
		}
		return []string{"table inet " + dataplane.FirewallTable}
	}
	table := linesSection(head, tableLine(&want), tableLine(got), tally)
	table.lines = append(table.lines, linesSection("", objects(&want), objects(got), tally).lines...)
	for _, d := range got.Drift {
		tally[explain.Different]++
		table.lines = append(table.lines, diffMark[explain.Different]+d+"  # different")
	}
	if got.Table {
		table.lines = append(table.lines, fmt.Sprintf("  counter %s: %d packets, %d bytes (VXLAN from addresses that are not nodes, dropped)",
			dataplane.CounterVXLANDropped, got.Dropped.Packets, got.Dropped.Bytes))
	}
	strs := func(v []netip.Prefix) []string {
		out := make([]string, len(v))
		for i, p := range v {
			out[i] = p.String()
		}
		return out
	}
	addrs := func(v []netip.Addr) []string {
		out := make([]string, len(v))
		for i, a := range v {
			out[i] = a.String()
		}
		return out
	}
	set := func(name string) string { return "Firewall set " + name + ":" }
	return []liveSection{
		table,
		linesSection(set(dataplane.SetNATPools), strs(want.NATPools), strs(got.NATPools), tally),
		linesSection(set(dataplane.SetAllPools), strs(want.AllPools), strs(got.AllPools), tally),
		linesSection(set(dataplane.SetVXLANPeers), addrs(want.VXLANPeers), addrs(got.VXLANPeers), tally),
	}
}

// liveSections lists every comparison of --live, in output order.
func liveSections(output string, dp plan.Dataplane, k *explain.Kernel, fw liveFirewall, tally liveTally) []liveSection {
	secs := []liveSection{routesSection(output, dp, k, tally)}
	secs = append(secs, vxlanSections(dp, k, tally)...)
	secs = append(secs, firewallSections(dp, fw, tally)...)
	return secs
}

// liveReport is `routes --live -o yaml`.
type liveReport struct {
	Node  string         `json:"node"`
	Netns string         `json:"netns"`
	Plan  plan.Dataplane `json:"plan"`
	// Kernel is what the kernel holds for Twill.
	Kernel explain.Kernel `json:"kernel"`
	// Firewall is the table inet twill as read; FirewallError says why it
	// could not be.
	Firewall      *dataplane.ObservedFirewall `json:"firewall,omitempty"`
	FirewallError string                      `json:"firewallError,omitempty"`
	// Differences lists every marked line of the text output.
	Differences []string `json:"differences"`
}

func printLiveRoutes(w io.Writer, output, node string, src netnsSource, dp plan.Dataplane, k *explain.Kernel, fw liveFirewall) error {
	where := "the current network namespace"
	if src.Path != "" {
		where = src.Path
	}
	tally := liveTally{}
	secs := liveSections(output, dp, k, fw, tally)
	if output == "yaml" {
		rep := liveReport{Node: node, Netns: where, Plan: dp, Kernel: *k, Firewall: fw.Observed, Differences: []string{}}
		if fw.Err != nil {
			rep.FirewallError = fw.Err.Error()
		}
		for _, s := range secs {
			for _, l := range s.lines {
				if !strings.HasPrefix(l, diffMark[explain.Same]) {
					rep.Differences = append(rep.Differences, l)
				}
			}
		}
		return writeYAML(w, rep)
	}
	fmt.Fprintf(w, "Planned routes of %s compared with the kernel of %s (%s)\n", node, where, src.Why)
	for i, s := range secs {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if s.title != "" {
			fmt.Fprintln(w, s.title)
		}
		for _, l := range s.lines {
			fmt.Fprintln(w, l)
		}
	}
	fmt.Fprintf(w, "\nlive: %s\n", tally)
	printStatus(w, dp.Status)
	return nil
}
