package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newGetCmd(g))
	})
}

// resourceAliases maps what users type to the resource names get knows.
var resourceAliases = map[string]string{
	"ippool": "ippools", "ippools": "ippools", "pool": "ippools", "pools": "ippools",
	"node": "nodes", "nodes": "nodes",
	"block": "blocks", "blocks": "blocks", "ipamblock": "blocks", "ipamblocks": "blocks",
}

func resolveResource(s string) (string, error) {
	r, ok := resourceAliases[strings.ToLower(s)]
	if !ok {
		return "", usageErr(fmt.Errorf("unknown resource %q: use ippools, nodes or blocks", s))
	}
	return r, nil
}

func newGetCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "get ippools|nodes|blocks [NAME]",
		Short: "List resources, or show one",
		Args:  usage(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := resolveResource(args[0])
			if err != nil {
				return err
			}
			switch output {
			case "", "wide", "yaml", "json":
			default:
				return usageErr(fmt.Errorf("unknown output format %q: use wide, yaml or json", output))
			}
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			ctx := cmd.Context()
			s, err := g.store(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			return getResources(ctx, s, cmd.OutOrStdout(), res, name, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: wide, yaml or json")
	return cmd
}

func getResources(ctx context.Context, s datastore.Store, w io.Writer, res, name, output string) error {
	single := name != ""
	switch res {
	case "ippools":
		objs, err := listOrGet[api.IPPool](ctx, s, datastore.KindIPPool, name, name, "IPPool")
		if err != nil {
			return err
		}
		items := objectValues(objs, func(p *api.IPPool, rv string) { p.Metadata.ResourceVersion = rv })
		return printResources(w, output, items, single, table[api.IPPool]{
			header: "NAME\tCIDR\tVXLANMODE\tNATOUTGOING\tSELECTOR",
			row: func(p api.IPPool) string {
				sp := p.Spec
				return fmt.Sprintf("%s\t%s\t%s\t%t\t%s", p.Metadata.Name, sp.CIDR, sp.VXLANMode, sp.NATOutgoing, sp.NodeSelector)
			},
			wideHeader: "NAME\tCIDR\tBLOCKSIZE\tVXLANMODE\tIPIPMODE\tNATOUTGOING\tDISABLED\tALLOWEDUSES\tSELECTOR",
			wideRow: func(p api.IPPool) string {
				sp := p.Spec
				uses := make([]string, len(sp.AllowedUses))
				for i, u := range sp.AllowedUses {
					uses[i] = string(u)
				}
				return fmt.Sprintf("%s\t%s\t%d\t%s\t%s\t%t\t%t\t%s\t%s", p.Metadata.Name, sp.CIDR, sp.BlockSize, sp.VXLANMode, sp.IPIPMode, sp.NATOutgoing, sp.Disabled, strings.Join(uses, ","), sp.NodeSelector)
			},
		})
	case "nodes":
		objs, err := listOrGet[api.Node](ctx, s, datastore.KindNode, name, name, "Node")
		if err != nil {
			return err
		}
		items := objectValues(objs, func(n *api.Node, rv string) { n.Metadata.ResourceVersion = rv })
		return printResources(w, output, items, single, table[api.Node]{
			header: "NAME\tADDRESS\tTUNNEL\tVTEPMAC",
			row: func(n api.Node) string {
				sp := n.Spec
				return fmt.Sprintf("%s\t%s\t%s\t%s", n.Metadata.Name, sp.Address, dash(sp.TunnelAddress), dash(sp.VTEPMAC))
			},
			wideHeader: "NAME\tADDRESS\tTUNNEL\tVTEPMAC\tINTERFACE\tMTU\tLABELS",
			wideRow: func(n api.Node) string {
				sp := n.Spec
				return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%d\t%s", n.Metadata.Name, sp.Address, dash(sp.TunnelAddress), dash(sp.VTEPMAC), dash(sp.Interface), sp.MTU, formatLabels(n.Metadata.Labels))
			},
		})
	case "blocks":
		objName := ""
		if name != "" {
			pfx, err := netip.ParsePrefix(name)
			if err != nil {
				return usageErr(fmt.Errorf("block name %q: give the block's CIDR, e.g. 172.16.159.128/26", name))
			}
			objName = datastore.BlockName(pfx.String())
		}
		objs, err := listOrGet[api.Block](ctx, s, datastore.KindBlock, objName, name, "block")
		if err != nil {
			return err
		}
		items := objectValues(objs, nil)
		sortBlocks(items)
		return printResources(w, output, items, single, table[api.Block]{
			header: "CIDR\tAFFINITY\tUSED\tFREE",
			row: func(b api.Block) string {
				used := len(b.Allocations)
				return fmt.Sprintf("%s\t%s\t%d\t%d", b.CIDR, dash(b.Affinity), used, blockSize(b)-used)
			},
			wideHeader: "CIDR\tAFFINITY\tPINNED\tUSED\tFREE\tHANDLES",
			wideRow: func(b api.Block) string {
				used := len(b.Allocations)
				var hs []string
				for _, a := range b.Allocations {
					hs = append(hs, a.Handle)
				}
				return fmt.Sprintf("%s\t%s\t%t\t%d\t%d\t%s", b.CIDR, dash(b.Affinity), b.Pinned, used, blockSize(b)-used, dash(strings.Join(hs, ",")))
			},
		})
	}
	return fmt.Errorf("unknown resource %q", res)
}

// objectValues returns the objects' values; setRV, when not nil, records
// each object's revision as its resourceVersion.
func objectValues[T any](objs []datastore.Object[T], setRV func(*T, string)) []T {
	items := make([]T, len(objs))
	for i, o := range objs {
		items[i] = o.Value
		if setRV != nil {
			setRV(&items[i], o.Revision)
		}
	}
	return items
}

// table is how `get` prints one kind of resource as a table: a header and
// a row for each item, narrow by default and wide for -o wide. Cells are
// separated by tabs.
type table[T any] struct {
	header, wideHeader string
	row, wideRow       func(T) string
}

// printResources prints items as YAML or JSON (output "yaml" or "json";
// single prints one item bare instead of a List) or as t's table.
func printResources[T any](w io.Writer, output string, items []T, single bool, t table[T]) error {
	if output == "yaml" || output == "json" {
		return printStructured(w, output, items, single)
	}
	header, row := t.header, t.row
	if output == "wide" {
		header, row = t.wideHeader, t.wideRow
	}
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		fmt.Fprintln(tw, row(it))
	}
	return tw.Flush()
}

// listOrGet lists every object of kind, or, when name (as the user gave
// it) is set, gets the one stored as objName; what names the resource in
// the not-found error.
func listOrGet[T any](ctx context.Context, s datastore.Store, kind datastore.Kind, objName, name, what string) ([]datastore.Object[T], error) {
	if name == "" {
		objs, _, err := datastore.ListObjects[T](ctx, s, kind, datastore.ListOptions{})
		return objs, err
	}
	o, err := datastore.GetObject[T](ctx, s, kind, objName)
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, fmt.Errorf("%s %q not found", what, name)
	}
	if err != nil {
		return nil, err
	}
	return []datastore.Object[T]{o}, nil
}

func printStructured[T any](w io.Writer, format string, items []T, single bool) error {
	var v any = items
	if single && len(items) == 1 {
		v = items[0]
	} else {
		v = map[string]any{"apiVersion": api.Version, "kind": "List", "items": items}
	}
	if format == "json" {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatLabels(m map[string]string) string {
	if len(m) == 0 {
		return "<none>"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func blockSize(b api.Block) int {
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil || p.Bits() < p.Addr().BitLen()-30 {
		return 0
	}
	return 1 << (p.Addr().BitLen() - p.Bits())
}

func sortBlocks(bs []api.Block) {
	sort.Slice(bs, func(i, j int) bool {
		a, errA := netip.ParsePrefix(bs[i].CIDR)
		b, errB := netip.ParsePrefix(bs[j].CIDR)
		if errA != nil || errB != nil {
			return bs[i].CIDR < bs[j].CIDR
		}
		return a.Addr().Less(b.Addr())
	})
}
