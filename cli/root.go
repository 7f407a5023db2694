// Package cli holds the twill command line: the cobra command tree, its
// flags and its output formats. cmd/twill only calls Main.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/lab"
)

// globals are the flags every command shares.
type globals struct {
	endpoints string
	ca        string
	cert      string
	key       string
	timeout   time.Duration
	// endpointsGiven is set when --etcd-endpoints or its environment
	// variable was given; otherwise a running lab's datastore is used.
	endpointsGiven bool
}

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main runs the twill command line with args (without the program name) and
// returns the process exit code: 0 on success, 1 on error, 2 on bad usage.
func Main(args []string) int {
	return run(args, os.Stdin, os.Stdout, os.Stderr)
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// usageErr marks err as bad usage: exit code 2.
func usageErr(err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: 2, err: err}
}

// usage wraps a positional-argument check so that its failure exits 2.
func usage(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		return usageErr(check(cmd, args))
	}
}

// groupArgs rejects unknown subcommands of a command that only groups others.
func groupArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErr(fmt.Errorf("unknown command %q for %q; see %q", args[0], cmd.CommandPath(), cmd.CommandPath()+" --help"))
	}
	return nil
}

// groupRun prints a group command's help when it is run without a
// subcommand. Commands that only group others set Args: groupArgs and
// RunE: groupRun, so that an unknown subcommand is a usage error (exit 2).
func groupRun(cmd *cobra.Command, _ []string) error {
	return cmd.Help()
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	env := etcd.ConfigFromEnv(os.Getenv)
	root := &cobra.Command{
		Use:   "twill",
		Short: "Twill: Kubernetes pod networking, direct within a subnet, VXLAN across subnets",
		Long: `Twill gives every pod a routable address. Pods on nodes that share a subnet
talk directly; pods on nodes in different subnets talk over VXLAN (Calico's
"CrossSubnet" mode). State lives in etcd.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          groupArgs,
		RunE:          groupRun,
	}
	root.PersistentPreRun = func(cmd *cobra.Command, _ []string) {
		g.endpointsGiven = cmd.Flags().Changed("etcd-endpoints") || os.Getenv(etcd.EnvEndpoints) != ""
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr(err) })
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpoints, "etcd-endpoints", strings.Join(env.Endpoints, ","), "etcd client URLs, comma-separated (env TWILL_ETCD_ENDPOINTS)")
	pf.StringVar(&g.ca, "etcd-ca", env.CAFile, "CA certificate file for etcd TLS (env TWILL_ETCD_CA)")
	pf.StringVar(&g.cert, "etcd-cert", env.CertFile, "client certificate file for etcd TLS (env TWILL_ETCD_CERT)")
	pf.StringVar(&g.key, "etcd-key", env.KeyFile, "client key file for etcd TLS (env TWILL_ETCD_KEY)")
	pf.DurationVar(&g.timeout, "etcd-timeout", 5*time.Second, "how long to wait for etcd before giving up")

	root.AddCommand(newVersionCmd())
	for _, add := range commandAdders {
		add(root, g)
	}
	return root
}

// commandAdders lets each file of this package register its commands.
var commandAdders []func(root *cobra.Command, g *globals)

// store connects to etcd with the global flags. When no endpoint was given
// and a `twill lab` is running, it connects to the lab's datastore, so that
// `twill lab up` followed by `twill explain A B` just works.
func (g *globals) store(ctx context.Context) (datastore.Store, error) {
	endpoints := g.endpoints
	if !g.endpointsGiven {
		if st, err := lab.LoadState(lab.DefaultStateDir); err == nil && st.Etcd != "" {
			endpoints = st.Etcd
		}
	}
	var eps []string
	for _, e := range strings.Split(endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("--etcd-endpoints is empty: give at least one etcd URL, e.g. http://127.0.0.1:2379")
	}
	return etcd.New(ctx, etcd.Config{Endpoints: eps, CAFile: g.ca, CertFile: g.cert, KeyFile: g.key, DialTimeout: g.timeout})
}
