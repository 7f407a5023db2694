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
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/lab"
)

// globals are the flags every command shares.
type globals struct {
	datastore   string
	kubeconfig  string
	kubeTimeout time.Duration
	endpoints   string
	ca          string
	cert        string
	key         string
	timeout     time.Duration
	// given records which datastore settings were given on purpose (a flag
	// or its environment variable); without any, a running lab's
	// datastore is used.
	given datastoreGiven
}

// datastoreGiven says which datastore settings were given explicitly.
type datastoreGiven struct {
	// typ: --datastore, TWILL_DATASTORE_TYPE or DATASTORE_TYPE.
	typ bool
	// endpoints: --etcd-endpoints or TWILL_ETCD_ENDPOINTS.
	endpoints bool
	// kubeconfig: the --kubeconfig flag (the KUBECONFIG variable is often
	// set for other tools, so it does not count).
	kubeconfig bool
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
	env := open.ConfigFromEnv(os.Getenv)
	root := &cobra.Command{
		Use:   "twill",
		Short: "Twill: Kubernetes pod networking, direct within a subnet, VXLAN across subnets",
		Long: `Twill gives every pod a routable address. Pods on nodes that share a subnet
talk directly; pods on nodes in different subnets talk over VXLAN (Calico's
"CrossSubnet" mode). State lives in etcd or in the Kubernetes API server
(--datastore).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          groupArgs,
		RunE:          groupRun,
	}
	root.PersistentPreRun = func(cmd *cobra.Command, _ []string) {
		_, typeFromEnv := open.TypeFromEnv(os.Getenv)
		g.given = datastoreGiven{
			typ:        cmd.Flags().Changed("datastore") || typeFromEnv,
			endpoints:  cmd.Flags().Changed("etcd-endpoints") || strings.TrimSpace(os.Getenv(etcd.EnvEndpoints)) != "",
			kubeconfig: cmd.Flags().Changed("kubeconfig"),
		}
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr(err) })
	pf := root.PersistentFlags()
	pf.StringVar(&g.datastore, "datastore", env.Type, "where Twill's state lives: etcd or kubernetes (env TWILL_DATASTORE_TYPE, or Calico's DATASTORE_TYPE; default kubernetes inside a pod, else etcd)")
	pf.StringVar(&g.kubeconfig, "kubeconfig", env.Kubeconfig, "kubeconfig file of the kubernetes datastore; empty inside a pod uses its service account (env KUBECONFIG)")
	pf.DurationVar(&g.kubeTimeout, "kube-timeout", open.DefaultKubeTimeout, "how long to wait for each request to the Kubernetes API server")
	pf.StringVar(&g.endpoints, "etcd-endpoints", strings.Join(env.Etcd.Endpoints, ","), "etcd client URLs, comma-separated (env TWILL_ETCD_ENDPOINTS)")
	pf.StringVar(&g.ca, "etcd-ca", env.Etcd.CAFile, "CA certificate file for etcd TLS (env TWILL_ETCD_CA)")
	pf.StringVar(&g.cert, "etcd-cert", env.Etcd.CertFile, "client certificate file for etcd TLS (env TWILL_ETCD_CERT)")
	pf.StringVar(&g.key, "etcd-key", env.Etcd.KeyFile, "client key file for etcd TLS (env TWILL_ETCD_KEY)")
	pf.DurationVar(&g.timeout, "etcd-timeout", 5*time.Second, "how long to wait for etcd before giving up")

	root.AddCommand(newVersionCmd())
	for _, add := range commandAdders {
		add(root, g)
	}
	return root
}

// commandAdders lets each file of this package register its commands.
var commandAdders []func(root *cobra.Command, g *globals)

// storeConfig says which datastore the global flags select. When none of
// the datastore type, etcd endpoints or --kubeconfig was given and a
// `twill lab` is running, it is the lab's datastore, so that `twill lab up`
// followed by `twill explain A B` just works. Without an explicit type,
// --etcd-endpoints selects etcd and --kubeconfig kubernetes; giving both
// is ambiguous.
func (g *globals) storeConfig() (open.Config, error) {
	if !g.given.typ && !g.given.endpoints && !g.given.kubeconfig {
		if st, err := lab.LoadState(lab.DefaultStateDir); err == nil {
			if cfg, ok := st.StoreConfig(); ok {
				cfg.Etcd.DialTimeout = g.timeout
				cfg.KubeTimeout = g.kubeTimeout
				return cfg, nil
			}
		}
	}
	typ := g.datastore
	if !g.given.typ {
		switch {
		case g.given.endpoints && g.given.kubeconfig:
			return open.Config{}, usageErr(errors.New("both --etcd-endpoints and --kubeconfig are given: say which datastore to use with --datastore etcd or --datastore kubernetes"))
		case g.given.endpoints:
			typ = open.TypeEtcd
		case g.given.kubeconfig:
			typ = open.TypeKubernetes
		}
	}
	typ, err := open.ParseType(typ)
	if err != nil {
		return open.Config{}, usageErr(fmt.Errorf("--datastore: %w", err))
	}
	cfg := open.Config{Type: typ, Kubeconfig: g.kubeconfig, KubeTimeout: g.kubeTimeout,
		Etcd: etcd.Config{CAFile: g.ca, CertFile: g.cert, KeyFile: g.key, DialTimeout: g.timeout}}
	if typ == open.TypeEtcd {
		for _, e := range strings.Split(g.endpoints, ",") {
			if e = strings.TrimSpace(e); e != "" {
				cfg.Etcd.Endpoints = append(cfg.Etcd.Endpoints, e)
			}
		}
		if len(cfg.Etcd.Endpoints) == 0 {
			return open.Config{}, errors.New("--etcd-endpoints is empty: give at least one etcd URL, e.g. http://127.0.0.1:2379")
		}
	}
	return cfg, nil
}

// store opens the datastore the global flags select (see storeConfig).
func (g *globals) store(ctx context.Context) (datastore.Store, error) {
	cfg, err := g.storeConfig()
	if err != nil {
		return nil, err
	}
	return open.Open(ctx, cfg)
}
