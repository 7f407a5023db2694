package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"twill.dev/twill/datastore/open"
	"twill.dev/twill/lab"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newLabCmd(g))
	})
}

// labFlags are the flags every lab subcommand shares.
type labFlags struct {
	stateDir string
	prefix   string
}

func (f *labFlags) options(out io.Writer) lab.Options {
	return lab.Options{StateDir: f.stateDir, Prefix: f.prefix, Out: out}
}

func newLabCmd(g *globals) *cobra.Command {
	f := &labFlags{}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Build a Twill cluster out of network namespaces on this machine",
		Long: `lab builds a topology (the seed cluster by default) on one Linux machine:
one network namespace per node and per plain host, a router namespace joining
the subnets (it has no uplink: lab traffic never leaves the machine), the
embedded etcd (with --datastore kubernetes, a kube-apiserver on it too), one
real node agent per node and the pods. Nothing is added to the root network
namespace. Everything created is recorded in the state
directory so that "twill lab down" removes it, even after a crash.

Built-in topologies: ` + strings.Join(lab.Builtin(), ", ") + `.`,
		Args: groupArgs,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.stateDir, "state-dir", lab.DefaultStateDir, "directory for the lab's state file, lock, logs and sockets")
	pf.StringVar(&f.prefix, "prefix", lab.DefaultPrefix, `start of every namespace name ("tw" and up to 6 letters or digits)`)
	_ = pf.MarkHidden("prefix")
	cmd.AddCommand(newLabUpCmd(f, g), newLabDownCmd(f), newLabStatusCmd(f), newLabExecCmd(f), newLabReportCmd(f), newLabValidateCmd(),
		newLabKubeAPIServerCmd())
	return cmd
}

// labDatastore returns the datastore `lab up` builds its lab on: etcd
// (the lab's embedded etcd) unless --datastore (or its environment
// variable) says kubernetes (a kube-apiserver on that etcd). The lab makes
// its own kubeconfig, so an explicit --kubeconfig is refused.
func labDatastore(g *globals) (string, error) {
	if !g.given.typ {
		return open.TypeEtcd, nil
	}
	typ, err := open.ParseType(g.datastore)
	if err != nil {
		return "", usageErr(fmt.Errorf("--datastore: %w", err))
	}
	if typ == open.TypeKubernetes && g.given.kubeconfig {
		return "", usageErr(errors.New("--kubeconfig: the lab runs its own kube-apiserver and writes its own kubeconfig (`twill lab up` prints its path)"))
	}
	return typ, nil
}

func newLabUpCmd(f *labFlags, g *globals) *cobra.Command {
	var topo, until string
	var timeout time.Duration
	var report bool
	cmd := &cobra.Command{
		Use:   "up [-t TOPOLOGY|FILE] [--until network|datastore|agents|pods] [--datastore etcd|kubernetes]",
		Short: "Build the lab and leave it running",
		Long: `up validates the topology, then builds it stage by stage: the network
(namespaces, router, eth0s, routes), the datastore (etcd, pools, pinned
blocks), the agents (one "twill node run" per node, waited for until every
node's kernel routes match the plan) and the pods. When a step fails, or on
Ctrl-C, everything built so far is removed again. With --report (the default)
the lab report follows once agents run.

With --datastore kubernetes the lab also runs a real kube-apiserver on
127.0.0.1, backed by the lab's etcd (the binary scripts/kube-build.sh builds;
TWILL_KUBE_DIR points elsewhere), installs Twill's CRDs, creates a v1.Node per
node and a v1.Pod per pod (before its CNI ADD, as a kubelet would), and runs
the agents with --datastore kubernetes, the IPAM garbage collector included
(3 s grace). up prints the lab's kubeconfig; other twill commands use it by
themselves while the lab runs, and kubectl with KUBECONFIG=<path>.`,
		Example: `  sudo twill lab up
  sudo twill lab up --datastore kubernetes
  sudo KUBECONFIG=/run/twill-lab/kube/kubeconfig kubectl get ippools,nodes`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			typ, err := labDatastore(g)
			if err != nil {
				return err
			}
			stage, err := lab.ParseStage(until)
			if err != nil {
				return usageErr(err)
			}
			t, err := lab.Load(topo)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			opts := f.options(out)
			opts.Until = stage
			opts.ConvergeTimeout = timeout
			opts.Datastore = typ
			if stage == lab.StagePods {
				if opts.Pods, err = lab.NewCNIPodAdder(opts); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			if err := lab.Up(ctx, t, opts); err != nil {
				return err
			}
			if !report || stage == lab.StageNetwork || stage == lab.StageDatastore {
				return nil
			}
			r, err := lab.Report(ctx, opts)
			if err != nil {
				return fmt.Errorf("the lab is up, but the report failed: %w", err)
			}
			fmt.Fprintln(out)
			r.WriteText(out)
			if st, err := lab.LoadState(opts.StateDir); err == nil && st.Kubeconfig != "" {
				fmt.Fprintf(out, "\nThe datastore is Kubernetes: KUBECONFIG=%s kubectl get ippools,nodes\n", st.Kubeconfig)
			}
			if !r.OK() {
				return errors.New("the lab is up, but the report found problems (see above); `twill lab down` removes it")
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&topo, "topology", "t", lab.DefaultTopology, "built-in topology name ("+strings.Join(lab.Builtin(), ", ")+") or a topology file")
	fl.StringVar(&until, "until", string(lab.StagePods), "last stage to build: network, datastore, agents or pods")
	fl.DurationVar(&timeout, "timeout", lab.DefaultConvergeTimeout, "how long to wait for the agents to converge")
	fl.BoolVar(&report, "report", true, "print the lab report once the lab is up")
	return cmd
}

func newLabDownCmd(f *labFlags) *cobra.Command {
	var keepLogs bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove everything the lab created (idempotent)",
		Args:  usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := f.options(cmd.OutOrStdout())
			opts.KeepLogs = keepLogs
			// Pods are deleted through CNI when the plugin is at hand;
			// their namespaces go in any case.
			if pods, err := lab.NewCNIPodAdder(opts); err == nil {
				opts.Pods = pods
			}
			return lab.Down(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&keepLogs, "keep-logs", false, "keep the etcd and agent logs in the state directory")
	return cmd
}

func newLabStatusCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show what runs in the lab and each node's health",
		Args:  usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := lab.Status(cmd.Context(), f.options(io.Discard))
			if err != nil {
				return err
			}
			s.WriteText(cmd.OutOrStdout())
			return nil
		},
	}
}

func newLabExecCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "exec TARGET -- COMMAND [ARG...]",
		Short: "Run a command inside a lab namespace",
		Long: `exec runs COMMAND inside the network namespace of TARGET: a node name
(k8s-master1), a pod name (k8s-master1-pod-1), a plain host name, or "router".
Its exit status becomes twill's.`,
		Example: `  twill lab exec k8s-master1 -- ip route
  twill lab exec k8s-master1-pod-1 -- ping -c1 172.16.36.80`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case len(args) == 0:
				return usageErr(errors.New("name a target and a command: twill lab exec TARGET -- COMMAND"))
			case dash > 1 || (dash < 0 && len(args) < 2) || (dash >= 0 && len(args) == dash):
				return usageErr(errors.New("give one target, then -- and the command: twill lab exec TARGET -- COMMAND"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			target, argv := args[0], args[1:]
			code, err := lab.Exec(cmd.Context(), f.options(io.Discard), target, argv, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code, err: fmt.Errorf("%s in %s exited with status %d", argv[0], target, code)}
			}
			return nil
		},
	}
}

func newLabReportCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "report",
		Short: "Check the running lab: VTEPs, routes, pod connectivity and captured paths",
		Args:  usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := lab.Report(cmd.Context(), f.options(io.Discard))
			if err != nil {
				return err
			}
			r.WriteText(cmd.OutOrStdout())
			if !r.OK() {
				return errors.New("the report found problems (see above)")
			}
			return nil
		},
	}
}

func newLabValidateCmd() *cobra.Command {
	var topo string
	cmd := &cobra.Command{
		Use:   "validate [-t TOPOLOGY|FILE]",
		Short: "Check a topology and show what the lab would build, without building it",
		Args:  usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := lab.Load(topo)
			if err != nil {
				return err
			}
			l, err := t.Layout("")
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "topology %s is valid\n", t.Name)
			fmt.Fprintf(out, "router namespace %s\n", l.Router)
			for _, s := range l.Subnets {
				fmt.Fprintf(out, "  subnet %-10s %-18s router %-15s bridge %s\n", s.Name, s.CIDR, s.Router, s.Bridge)
			}
			for _, m := range l.Members {
				extra := ""
				if m.Block.IsValid() {
					extra = " block " + m.Block.String()
				}
				fmt.Fprintf(out, "%-4s %-14s namespace %-20s eth0 %-18s via %s%s\n", m.Role, m.Name, m.Netns, m.Address, m.Gateway, extra)
			}
			for _, p := range l.Pods {
				ip := "(IPAM picks)"
				if p.IP.IsValid() {
					ip = p.IP.String()
				}
				fmt.Fprintf(out, "pod  %-22s on %-14s namespace %-22s %s\n", p.Name, p.Node, p.Netns, ip)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&topo, "topology", "t", lab.DefaultTopology, "built-in topology name ("+strings.Join(lab.Builtin(), ", ")+") or a topology file")
	return cmd
}

// newLabKubeAPIServerCmd is the process `twill lab up --datastore
// kubernetes` runs kube-apiserver through (lab.RunAPIServer): recorded in
// the lab's state before the apiserver starts, it stops the apiserver on
// SIGTERM and takes it along when it dies. Hidden: the lab runs it.
func newLabKubeAPIServerCmd() *cobra.Command {
	var cfg lab.APIServerConfig
	var servers string
	cmd := &cobra.Command{
		Use:    "kube-apiserver --dir DIR --etcd-servers URL[,URL]",
		Short:  "Run the lab's kube-apiserver until interrupted (the lab runs this)",
		Hidden: true,
		Args:   usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, u := range strings.Split(servers, ",") {
				if u = strings.TrimSpace(u); u != "" {
					cfg.EtcdServers = append(cfg.EtcdServers, u)
				}
			}
			if cfg.Dir == "" || len(cfg.EtcdServers) == 0 {
				return usageErr(errors.New("give --dir and --etcd-servers"))
			}
			return lab.RunAPIServer(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "dir", "", "directory for the certificates, the kubeconfig, the log and ready.json")
	f.StringVar(&servers, "etcd-servers", "", "etcd client URLs, comma-separated")
	f.StringVar(&cfg.Binary, "binary", "", "the kube-apiserver binary (default: the one scripts/kube-build.sh built)")
	return cmd
}
