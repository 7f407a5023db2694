package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"twill.dev/twill/explain"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newExplainCmd(g))
	})
}

func newExplainCmd(g *globals) *cobra.Command {
	var (
		pf       planFlags
		output   string
		live     bool
		srcNetns string
		dstNetns string
	)
	cmd := &cobra.Command{
		Use:   "explain SRC DST [-o text|json] [--live]",
		Short: "Explain the path a packet takes between two pods or nodes, and what is wrong with it",
		Long: `explain works out, from the datastore, what the seed's author had to work out by
hand with ip addr, route -n and tcpdump: which nodes hold SRC and DST; whether
they share a subnet and why (each node judges by its own prefix, so both
directions are shown); the pool and its vxlanMode; the route each node uses, in
ip route and route -n form; for VXLAN the VNI, UDP port, outer addresses, inner
VTEP MACs, a default ping's length on the wire and the MTU; for direct paths
the next hop. It flags what is wrong: a missing route and the planner's
reason, a node address recorded as /32, a peer without a VTEP, an address in
no pool.

SRC and DST are pod addresses, pod names (namespace/pod, or pod for namespace
default) or node names (a node stands for its tunnel address).

The kernel state of the two nodes is compared with the plan when it can be
read: the node is this host's node (NODENAME or the host name), or a node of
a running twill lab (reading its namespace needs root), or its namespace is
given with --src-netns/--dst-netns. --live insists on it (an error when no
kernel can be read), --live=false skips it.`,
		Args: usage(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			switch output {
			case "text", "json":
			default:
				return usageErr(fmt.Errorf("unknown output format %q: use text or json", output))
			}
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
			p, err := explain.Explain(c, args[0], args[1])
			if err != nil {
				return err
			}
			forced := cmd.Flags().Changed("live") && live
			if live || !cmd.Flags().Changed("live") {
				if err := explainLive(&p, forced, srcNetns, dstNetns, pf.labStateDir); err != nil {
					return err
				}
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				b, err := json.MarshalIndent(p, "", "  ")
				if err != nil {
					return fmt.Errorf("encode json: %w", err)
				}
				_, err = fmt.Fprintf(w, "%s\n", b)
				return err
			}
			_, err = fmt.Fprint(w, p.Text())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	f.BoolVar(&live, "live", false, "compare with the nodes' kernels (default: whenever they can be read)")
	f.StringVar(&srcNetns, "src-netns", "", "network namespace of the source's node, e.g. /var/run/netns/node1")
	f.StringVar(&dstNetns, "dst-netns", "", "network namespace of the destination's node")
	pf.add(f)
	return cmd
}

// explainLive reads the kernels of the path's nodes that can be read and
// compares them with the plan. With forced, a kernel that cannot be read is
// an error; otherwise it is a note.
func explainLive(p *explain.Path, forced bool, srcNetns, dstNetns, labStateDir string) error {
	kernels := map[string]*explain.Kernel{}
	var skipped []string
	for _, side := range []struct {
		node, netns, flag string
	}{
		{p.Src.Node, srcNetns, "--src-netns"},
		{p.Dst.Node, dstNetns, "--dst-netns"},
	} {
		if side.node == "" || kernels[side.node] != nil {
			continue
		}
		if side.netns == "" && side.node == p.Src.Node && side.node == p.Dst.Node {
			side.netns = dstNetns
		}
		src := nodeNetns(side.node, side.netns, labStateDir)
		if !src.Known {
			skipped = append(skipped, fmt.Sprintf("the kernel of %s was not read: %s; give its namespace with %s", side.node, src.Why, side.flag))
			continue
		}
		if src.Path != "" && os.Geteuid() != 0 && !forced {
			skipped = append(skipped, fmt.Sprintf("the kernel of %s was not read: entering %s needs root", side.node, src.Path))
			continue
		}
		k, err := readKernel(src.Path)
		if err != nil {
			if forced {
				return fmt.Errorf("--live: node %s: %w", side.node, err)
			}
			skipped = append(skipped, fmt.Sprintf("the kernel of %s was not read: %v", side.node, err))
			continue
		}
		kernels[side.node] = k
		where := "the current network namespace"
		if src.Path != "" {
			where = src.Path
		}
		p.Notes = append(p.Notes, fmt.Sprintf("compared with the kernel of %s in %s (%s)", side.node, where, src.Why))
	}
	if forced && len(kernels) == 0 {
		return fmt.Errorf("--live: no node's kernel could be read: %s", strings.Join(skipped, "; "))
	}
	if len(kernels) == 0 {
		return nil // nothing to compare: the explanation stands on the plan alone
	}
	p.Notes = append(p.Notes, skipped...)
	p.CheckLive(kernels)
	return nil
}
