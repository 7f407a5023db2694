package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
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
	switch res {
	case "ippools":
		objs, err := listOrGet[api.IPPool](ctx, s, datastore.PoolsPrefix, datastore.PoolKey(name), name, "IPPool")
		if err != nil {
			return err
		}
		items := make([]api.IPPool, len(objs))
		for i, o := range objs {
			items[i] = o.Value
			items[i].Metadata.ResourceVersion = strconv.FormatInt(o.Revision, 10)
		}
		if output == "yaml" || output == "json" {
			return printStructured(w, output, items, name != "")
		}
		tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
		if output == "wide" {
			fmt.Fprintln(tw, "NAME\tCIDR\tBLOCKSIZE\tVXLANMODE\tIPIPMODE\tNATOUTGOING\tDISABLED\tALLOWEDUSES\tSELECTOR")
		} else {
			fmt.Fprintln(tw, "NAME\tCIDR\tVXLANMODE\tNATOUTGOING\tSELECTOR")
		}
		for _, p := range items {
			sp := p.Spec
			if output == "wide" {
				uses := make([]string, len(sp.AllowedUses))
				for i, u := range sp.AllowedUses {
					uses[i] = string(u)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%t\t%t\t%s\t%s\n", p.Metadata.Name, sp.CIDR, sp.BlockSize, sp.VXLANMode, sp.IPIPMode, sp.NATOutgoing, sp.Disabled, strings.Join(uses, ","), sp.NodeSelector)
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\n", p.Metadata.Name, sp.CIDR, sp.VXLANMode, sp.NATOutgoing, sp.NodeSelector)
			}
		}
		return tw.Flush()
	case "nodes":
		objs, err := listOrGet[api.Node](ctx, s, datastore.NodesPrefix, datastore.NodeKey(name), name, "Node")
		if err != nil {
			return err
		}
		items := make([]api.Node, len(objs))
		for i, o := range objs {
			items[i] = o.Value
			items[i].Metadata.ResourceVersion = strconv.FormatInt(o.Revision, 10)
		}
		if output == "yaml" || output == "json" {
			return printStructured(w, output, items, name != "")
		}
		tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
		if output == "wide" {
			fmt.Fprintln(tw, "NAME\tADDRESS\tTUNNEL\tVTEPMAC\tINTERFACE\tMTU\tLABELS")
		} else {
			fmt.Fprintln(tw, "NAME\tADDRESS\tTUNNEL\tVTEPMAC")
		}
		for _, n := range items {
			sp := n.Spec
			if output == "wide" {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", n.Metadata.Name, sp.Address, dash(sp.TunnelAddress), dash(sp.VTEPMAC), dash(sp.Interface), sp.MTU, formatLabels(n.Metadata.Labels))
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Metadata.Name, sp.Address, dash(sp.TunnelAddress), dash(sp.VTEPMAC))
			}
		}
		return tw.Flush()
	case "blocks":
		key := ""
		if name != "" {
			pfx, err := netip.ParsePrefix(name)
			if err != nil {
				return usageErr(fmt.Errorf("block name %q: give the block's CIDR, e.g. 172.16.159.128/26", name))
			}
			key = datastore.BlockKey(pfx.String())
		}
		objs, err := listOrGet[api.Block](ctx, s, datastore.BlocksPrefix, key, name, "block")
		if err != nil {
			return err
		}
		items := make([]api.Block, len(objs))
		for i, o := range objs {
			items[i] = o.Value
		}
		sortBlocks(items)
		if output == "yaml" || output == "json" {
			return printStructured(w, output, items, name != "")
		}
		tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
		if output == "wide" {
			fmt.Fprintln(tw, "CIDR\tAFFINITY\tPINNED\tUSED\tFREE\tHANDLES")
		} else {
			fmt.Fprintln(tw, "CIDR\tAFFINITY\tUSED\tFREE")
		}
		for _, b := range items {
			size := blockSize(b)
			used := len(b.Allocations)
			if output == "wide" {
				var hs []string
				for _, a := range b.Allocations {
					hs = append(hs, a.Handle)
				}
				fmt.Fprintf(tw, "%s\t%s\t%t\t%d\t%d\t%s\n", b.CIDR, dash(b.Affinity), b.Pinned, used, size-used, dash(strings.Join(hs, ",")))
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", b.CIDR, dash(b.Affinity), used, size-used)
			}
		}
		return tw.Flush()
	}
	return fmt.Errorf("unknown resource %q", res)
}

func listOrGet[T any](ctx context.Context, s datastore.Store, prefix, key, name, kind string) ([]datastore.Object[T], error) {
	if name == "" {
		objs, _, err := datastore.ListObjects[T](ctx, s, prefix)
		return objs, err
	}
	o, err := datastore.GetObject[T](ctx, s, key)
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, fmt.Errorf("%s %q not found", kind, name)
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
