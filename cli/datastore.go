package cli

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"twill.dev/twill/datastore/etcd"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newDatastoreCmd())
	})
}

func newDatastoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "datastore",
		Short: "Run Twill's embedded etcd datastore",
		Args:  groupArgs,
		RunE:  groupRun,
	}
	cfg := etcd.ServerConfig{}
	run := &cobra.Command{
		Use:   "run [--data-dir DIR] [--listen-client-url URL] [--listen-peer-url URL]",
		Short: "Run an embedded single-member etcd server until interrupted",
		Long: `run serves etcd on one machine, for a single-node cluster or the lab. Real
clusters point every twill client at an external etcd cluster instead
(--etcd-endpoints with --etcd-ca/--etcd-cert/--etcd-key).`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg.Logger = slog.Default()
			srv, err := etcd.StartServer(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "etcd serving clients at %s (data in %s); Ctrl-C to stop\n", srv.Endpoint(), cfg.DataDir)
			select {
			case <-ctx.Done():
			case <-srv.Done():
			}
			return srv.Close()
		},
	}
	f := run.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/twill/etcd", "directory for etcd's data")
	f.StringVar(&cfg.ListenClientURL, "listen-client-url", "http://127.0.0.1:2379", "URL to serve etcd clients on")
	f.StringVar(&cfg.ListenPeerURL, "listen-peer-url", "http://127.0.0.1:2380", "URL for etcd peer traffic")
	cmd.AddCommand(run)
	return cmd
}
