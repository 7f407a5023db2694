package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newIPAMCmd(g))
	})
}

func newIPAMCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ipam",
		Short: "Inspect and repair IP address management",
		Args:  groupArgs,
		RunE:  groupRun,
	}
	var showBlocks bool
	show := &cobra.Command{
		Use:   "show [--show-blocks]",
		Short: "Show used and free addresses per pool, and per block with its affinity",
		Args:  usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			s, err := g.store(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			return ipamShow(ctx, s, cmd.OutOrStdout(), showBlocks)
		},
	}
	show.Flags().BoolVar(&showBlocks, "show-blocks", false, "also list every block with its affinity")
	var ip, handle string
	release := &cobra.Command{
		Use:   "release --ip IP | --handle HANDLE",
		Short: "Release an address, or every address of a handle",
		Args:  usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (ip == "") == (handle == "") {
				return usageErr(errors.New("give exactly one of --ip or --handle"))
			}
			var addr netip.Addr
			if ip != "" {
				a, err := netip.ParseAddr(ip)
				if err != nil {
					return usageErr(fmt.Errorf("--ip %q is not an IP address", ip))
				}
				addr = a
			}
			ctx := cmd.Context()
			s, err := g.store(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			m := ipam.New(s)
			out := cmd.OutOrStdout()
			if ip != "" {
				h, err := m.ReleaseIP(ctx, addr)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "released %s (handle %s)\n", addr, h)
				return nil
			}
			addrs, err := m.ReleaseHandle(ctx, handle)
			if err != nil {
				return err
			}
			if len(addrs) == 0 {
				fmt.Fprintf(out, "handle %s holds no addresses; nothing released\n", handle)
				return nil
			}
			for _, a := range addrs {
				fmt.Fprintf(out, "released %s (handle %s)\n", a, handle)
			}
			return nil
		},
	}
	release.Flags().StringVar(&ip, "ip", "", "the address to release")
	release.Flags().StringVar(&handle, "handle", "", "the handle whose addresses to release (e.g. a container ID)")
	cmd.AddCommand(show, release)
	return cmd
}

func ipamShow(ctx context.Context, s datastore.Store, w io.Writer, showBlocks bool) error {
	usage, err := ipam.New(s).Usage(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "GROUPING\tCIDR\tAFFINITY\tIPS TOTAL\tIPS IN USE\tIPS FREE")
	for _, u := range usage {
		fmt.Fprintf(tw, "IP Pool\t%s\t\t%d\t%d (%s)\t%d (%s)\n", u.CIDR, u.Size, u.Used, percent(u.Used, u.Size), u.Free, percent(u.Free, u.Size))
		if !showBlocks {
			continue
		}
		for _, b := range u.Blocks {
			used, free := uint64(b.Used), uint64(b.Free)
			total := used + free
			aff := dash(b.Affinity)
			if b.Pinned {
				aff += " (pinned)"
			}
			fmt.Fprintf(tw, "Block\t%s\t%s\t%d\t%d (%s)\t%d (%s)\n", b.CIDR, aff, total, used, percent(used, total), free, percent(free, total))
		}
	}
	return tw.Flush()
}

func percent(n, total uint64) string {
	if total == 0 {
		return "0%"
	}
	return fmt.Sprintf("%d%%", (n*100+total/2)/total)
}
