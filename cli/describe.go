package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newDescribeCmd(g), newDeleteCmd(g))
	})
}

func newDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "describe ippool NAME",
		Short: "Show an IPPool in detail, as kubectl describe does, with its usage",
		Args:  usage(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := resolveResource(args[0])
			if err != nil {
				return err
			}
			if res != "ippools" {
				return usageErr(fmt.Errorf("describe supports ippool only; use \"twill get %s %s -o yaml\"", res, args[1]))
			}
			ctx := cmd.Context()
			s, err := g.store(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			return describePool(ctx, s, cmd.OutOrStdout(), args[1])
		},
	}
}

func describePool(ctx context.Context, s datastore.Store, w io.Writer, name string) error {
	o, err := datastore.GetObject[api.IPPool](ctx, s, datastore.KindIPPool, name)
	if errors.Is(err, datastore.ErrNotFound) {
		return fmt.Errorf("IPPool %q not found", name)
	}
	if err != nil {
		return err
	}
	p, sp := o.Value, o.Value.Spec
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", p.Metadata.Name)
	fmt.Fprintf(tw, "Labels:\t%s\n", formatLabels(p.Metadata.Labels))
	fmt.Fprintf(tw, "API Version:\t%s\n", api.Version)
	fmt.Fprintf(tw, "Kind:\t%s\n", api.KindIPPool)
	fmt.Fprintf(tw, "Metadata:\t\n")
	fmt.Fprintf(tw, "  Resource Version:\t%s\n", o.Revision)
	if err := tw.Flush(); err != nil {
		return err
	}
	// The Spec section reads like the seed's `kubectl describe ippool`.
	fmt.Fprintln(w, "Spec:")
	fmt.Fprintln(w, "  Allowed Uses:")
	for _, u := range sp.AllowedUses {
		fmt.Fprintf(w, "    %s\n", u)
	}
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "  Block Size:\t%d\n", sp.BlockSize)
	fmt.Fprintf(tw, "  Cidr:\t%s\n", sp.CIDR)
	if sp.Disabled {
		fmt.Fprintf(tw, "  Disabled:\t%t\n", sp.Disabled)
	}
	fmt.Fprintf(tw, "  Ipip Mode:\t%s\n", sp.IPIPMode)
	fmt.Fprintf(tw, "  Nat Outgoing:\t%t\n", sp.NATOutgoing)
	fmt.Fprintf(tw, "  Node Selector:\t%s\n", sp.NodeSelector)
	fmt.Fprintf(tw, "  Vxlan Mode:\t%s\n", sp.VXLANMode)
	if err := tw.Flush(); err != nil {
		return err
	}
	usage, err := ipam.New(s).Usage(ctx)
	if err != nil {
		return err
	}
	for _, u := range usage {
		if u.Pool != name {
			continue
		}
		fmt.Fprintln(w, "Status:")
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintf(tw, "  Addresses:\t%d\n", u.Size)
		fmt.Fprintf(tw, "  Used:\t%d\n", u.Used)
		fmt.Fprintf(tw, "  Free:\t%d\n", u.Free)
		fmt.Fprintf(tw, "  Blocks:\t%d\n", len(u.Blocks))
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "Events:           <none>")
	return nil
}

func newDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete ippool NAME",
		Short: "Delete an IPPool; refused while any of its addresses is allocated",
		Args:  usage(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := resolveResource(args[0])
			if err != nil {
				return err
			}
			if res != "ippools" {
				return usageErr(fmt.Errorf("delete supports ippool only"))
			}
			ctx := cmd.Context()
			s, err := g.store(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := deletePool(ctx, s, args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ippool.twill.dev/%s deleted\n", args[1])
			return nil
		},
	}
}

// deletePool removes a pool with a CAS on its revision, after checking that
// none of its addresses is allocated.
func deletePool(ctx context.Context, s datastore.Store, name string) error {
	o, err := datastore.GetObject[api.IPPool](ctx, s, datastore.KindIPPool, name)
	if errors.Is(err, datastore.ErrNotFound) {
		return fmt.Errorf("IPPool %q not found", name)
	}
	if err != nil {
		return err
	}
	held, err := ipam.New(s).PoolAllocations(ctx, name)
	if err != nil {
		return err
	}
	if len(held) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "IPPool %q still has %d allocated address(es); release them first (twill ipam release --handle H), or disable the pool with disabled: true:", name, len(held))
		const show = 20
		for i, a := range held {
			if i == show {
				fmt.Fprintf(&b, "\n  ... and %d more", len(held)-show)
				break
			}
			fmt.Fprintf(&b, "\n  %s  handle %s  use %s  node %s", a.IP, a.Handle, a.Use, dash(a.Attrs[api.AttrNode]))
			if pod := a.Attrs[api.AttrPod]; pod != "" {
				fmt.Fprintf(&b, "  pod %s/%s", a.Attrs[api.AttrNamespace], pod)
			}
		}
		return errors.New(b.String())
	}
	if err := s.Delete(ctx, datastore.KindIPPool, name, o.Revision); err != nil {
		if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("IPPool %q changed while deleting it; try again: %w", name, err)
		}
		return err
	}
	return nil
}
