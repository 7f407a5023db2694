package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/agent"
	"twill.dev/twill/agentapi"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/kube"
	"twill.dev/twill/plan"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newNodeCmd(g))
	})
}

func newNodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run the node agent",
		Args:  groupArgs,
		// Runnable, so that cobra checks Args and an unknown subcommand
		// exits 2 instead of printing help.
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newNodeRunCmd(g))
	return cmd
}

// envOr returns the first non-empty environment variable of names, else def.
func envOr(def string, names ...string) string {
	for _, n := range names {
		if v := strings.TrimSpace(os.Getenv(n)); v != "" {
			return v
		}
	}
	return def
}

// envInt reads an integer default from the environment; a bad value is
// reported when the command runs.
func envInt(def int, bad *[]error, name string) int {
	v := envOr("", name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		*bad = append(*bad, fmt.Errorf("%s=%q is not a whole number", name, v))
		return def
	}
	return n
}

// envDuration reads a duration default from the environment.
func envDuration(def time.Duration, bad *[]error, name string) time.Duration {
	v := envOr("", name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		*bad = append(*bad, fmt.Errorf("%s=%q is not a duration such as 30s", name, v))
		return def
	}
	return d
}

// parseLogLevel parses debug, info, warn or error.
func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return 0, fmt.Errorf("--log-level %q must be debug, info, warn or error", s)
	}
	return l, nil
}

func newNodeRunCmd(g *globals) *cobra.Command {
	var envErrs []error
	// The soft memory limit is the agent's (docs/benchmarks.md, scale);
	// GOMEMLIMIT overrides it.
	cfg := agent.Config{MemoryLimit: agent.DefaultMemoryLimit}
	var logLevel, gcNamespace string
	var gcGrace, gcInterval time.Duration
	run := &cobra.Command{
		Use:   "run [--name NAME] [--ip ADDR[/LEN] | --ip-autodetection-method METHOD] [--netns PATH] [--socket PATH]",
		Short: "Register this node and keep its routes, VXLAN device, neighbours and FDB in line with the datastore",
		Long: `run is Twill's node agent. It registers the node in the datastore (its host
address with prefix length, interface, MTU, VTEP MAC and a VXLAN tunnel address
from its own block), creates the default IP pool from CALICO_IPV4POOL_* /
TWILL_IPV4POOL_* when no pool exists, then watches the datastore and makes the
kernel match the plan: routes to every peer's blocks (direct within the node's
subnet, over VXLAN across subnets), the VXLAN device, its neighbour and FDB
entries. Kernel changes to what Twill owns are undone within milliseconds.

The CNI plugin reaches the agent on a unix socket (--socket). Health checks are
served on --health-addr (/healthz, /readyz), Prometheus metrics on
--metrics-addr (/metrics).

The node address is --ip (a bare address gets the prefix length of the
interface that holds it), else detected by --ip-autodetection-method:
  first-found             first up interface that is not virtual (default)
  interface=REGEX[,...]   first interface whose name matches
  skip-interface=REGEX    first-found, skipping matching interfaces
  cidr=CIDR[,CIDR]        first address inside the networks
  can-reach=IP            the address the kernel would send from to reach IP
With --netns every lookup and change happens in that network namespace.

The datastore is etcd or the Kubernetes API server (--datastore, default
kubernetes inside a pod). With kubernetes the CNI ADD also reads the pod (its
UID and its address and pool annotations), and the one agent that holds a
Lease in --gc-lease-namespace runs the cluster's IPAM garbage collector: every
--ipam-gc-interval it releases the addresses of pods and nodes that have been
gone from the Kubernetes API for --ipam-gc-grace (sooner after a Node is
deleted). The lab runs it with a 3 s grace and a 2 s interval.

Environment: NODENAME, IP, IP_AUTODETECTION_METHOD, TWILL_NETNS,
TWILL_AGENT_SOCKET, TWILL_VXLAN_DEVICE, TWILL_VXLAN_VNI, TWILL_VXLAN_PORT,
TWILL_VXLAN_MTU, TWILL_VTEP_MAC, TWILL_RESYNC_INTERVAL, TWILL_HEALTH_ADDR,
TWILL_METRICS_ADDR, TWILL_LOG_LEVEL, TWILL_GC_LEASE_NAMESPACE (or
POD_NAMESPACE), TWILL_IPAM_GC_GRACE, TWILL_IPAM_GC_INTERVAL, and the datastore's (see twill --help); flags win. The agent sets a soft Go
memory limit of 36 MiB (enough for 5,000 nodes and 100,000 pods); set
GOMEMLIMIT (e.g. 128MiB, or off) to change it for larger clusters.`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(envErrs) > 0 {
				return usageErr(errors.Join(envErrs...))
			}
			level, err := parseLogLevel(logLevel)
			if err != nil {
				return usageErr(err)
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			slog.SetDefault(log)
			cfg.Logger = log
			ctx := cmd.Context()
			if err := cfg.Check(); err != nil {
				return usageErr(err)
			}
			storeCfg, err := g.storeConfig()
			if err != nil {
				return err
			}
			// Wait for the datastore: an agent started before etcd (or the
			// apiserver) keeps trying.
			var s datastore.Store
			for attempt := 1; ; attempt++ {
				s, err = open.Open(ctx, storeCfg)
				if err == nil {
					break
				}
				if ctx.Err() != nil || !errors.Is(err, datastore.ErrUnavailable) {
					return err
				}
				d := time.Duration(min(attempt, 5)) * time.Second
				log.Warn("datastore unreachable; retrying", "datastore", storeCfg.Describe(), "err", err, "in", d)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(d):
				}
			}
			defer s.Close()
			if storeCfg.Type == open.TypeKubernetes {
				if gcGrace <= 0 || gcInterval <= 0 {
					return usageErr(fmt.Errorf("--ipam-gc-grace (%s) and --ipam-gc-interval (%s) must be positive", gcGrace, gcInterval))
				}
				gc := kube.GCConfig{Namespace: gcNamespace, Grace: gcGrace, Interval: gcInterval}
				if err := kubeHooks(&cfg, storeCfg, gc); err != nil {
					return err
				}
			}
			log.Info("datastore", "datastore", storeCfg.Describe())
			return agent.Run(ctx, s, cfg)
		},
	}
	f := run.Flags()
	f.StringVar(&cfg.NodeName, "name", envOr("", "NODENAME", "TWILL_NODENAME"), "node name (env NODENAME; default the host name)")
	f.StringVar(&cfg.IP, "ip", envOr("", "IP", "TWILL_IP"), "node address, ADDR or ADDR/LEN; \"\" or autodetect to detect it (env IP)")
	f.StringVar(&cfg.AutodetectMethod, "ip-autodetection-method", envOr(agent.MethodFirstFound, "IP_AUTODETECTION_METHOD", "TWILL_IP_AUTODETECTION_METHOD"),
		"how to find the node address without --ip: first-found, interface=REGEX, skip-interface=REGEX, cidr=CIDR[,CIDR], can-reach=IP (env IP_AUTODETECTION_METHOD)")
	f.StringVar(&cfg.NetnsPath, "netns", envOr("", "TWILL_NETNS"), "run against the network namespace at PATH, e.g. /var/run/netns/node1 (env TWILL_NETNS)")
	f.StringVar(&cfg.SocketPath, "socket", envOr(agentapi.DefaultSocket, "TWILL_AGENT_SOCKET"), "unix socket for the CNI plugin (env TWILL_AGENT_SOCKET)")
	f.StringVar(&cfg.VXLAN.Device, "vxlan-device", envOr(plan.DefaultVXLANDevice, "TWILL_VXLAN_DEVICE"), "name of the VXLAN device (env TWILL_VXLAN_DEVICE)")
	f.IntVar(&cfg.VXLAN.VNI, "vxlan-vni", envInt(plan.DefaultVNI, &envErrs, "TWILL_VXLAN_VNI"), "VXLAN network identifier (env TWILL_VXLAN_VNI)")
	f.IntVar(&cfg.VXLAN.Port, "vxlan-port", envInt(plan.DefaultVXLANPort, &envErrs, "TWILL_VXLAN_PORT"), "VXLAN UDP port (env TWILL_VXLAN_PORT)")
	f.IntVar(&cfg.VXLAN.MTU, "vxlan-mtu", envInt(0, &envErrs, "TWILL_VXLAN_MTU"), "MTU of the VXLAN device; 0 = host MTU - 50 (env TWILL_VXLAN_MTU)")
	f.StringVar(&cfg.VTEPMAC, "vtep-mac", envOr("", "TWILL_VTEP_MAC"), "MAC of the VXLAN device; default derived from the node name as Calico does (env TWILL_VTEP_MAC)")
	f.DurationVar(&cfg.ResyncInterval, "resync-interval", envDuration(agent.DefaultResyncInterval, &envErrs, "TWILL_RESYNC_INTERVAL"), "period of full reconciles (env TWILL_RESYNC_INTERVAL)")
	f.StringVar(&cfg.HealthAddr, "health-addr", envOr(agent.DefaultHealthAddr, "TWILL_HEALTH_ADDR"), "loopback HOST:PORT for /healthz and /readyz; \"\" disables (env TWILL_HEALTH_ADDR)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", envOr("", "TWILL_METRICS_ADDR"), "HOST:PORT for Prometheus /metrics, e.g. 127.0.0.1:9091; \"\" disables (env TWILL_METRICS_ADDR)")
	f.DurationVar(&cfg.GCGrace, "gc-grace", envDuration(agent.DefaultGCGrace, &envErrs, "TWILL_GC_GRACE"), "CNI GC spares addresses this agent handed out more recently than this (env TWILL_GC_GRACE)")
	f.StringVar(&gcNamespace, "gc-lease-namespace", envOr(kube.DefaultNamespace, "TWILL_GC_LEASE_NAMESPACE", "POD_NAMESPACE"), "with --datastore kubernetes: namespace of the Lease that elects the one agent running the IPAM garbage collector (env TWILL_GC_LEASE_NAMESPACE, POD_NAMESPACE)")
	f.DurationVar(&gcGrace, "ipam-gc-grace", envDuration(kube.DefaultGrace, &envErrs, "TWILL_IPAM_GC_GRACE"), "with --datastore kubernetes: how long a pod or node must have been gone from the Kubernetes API before the IPAM garbage collector releases its addresses (env TWILL_IPAM_GC_GRACE)")
	f.DurationVar(&gcInterval, "ipam-gc-interval", envDuration(kube.DefaultInterval, &envErrs, "TWILL_IPAM_GC_INTERVAL"), "with --datastore kubernetes: time between the IPAM garbage collector's passes (env TWILL_IPAM_GC_INTERVAL)")
	f.StringVar(&logLevel, "log-level", envOr("info", "TWILL_LOG_LEVEL"), "debug, info, warn or error (env TWILL_LOG_LEVEL)")
	return run
}

// kubeHooks wires the agent's Kubernetes side into cfg, for the kubernetes
// datastore: the pod source (the CNI ADD reads the pod's UID and its
// address and pool annotations) and, as a background task, the cluster's
// IPAM garbage collector, which runs in the one agent holding the Lease in
// gc.Namespace, with gc's grace and interval (the client, IPAM, store,
// identity and logger are filled in here).
func kubeHooks(cfg *agent.Config, storeCfg open.Config, gc kube.GCConfig) error {
	rc, err := open.RESTConfig(storeCfg)
	if err != nil {
		return err
	}
	if rc.QPS == 0 {
		// No client-side limiter (client-go's default is 5 requests per
		// second): every CNI ADD reads its pod, and a burst of ADDs would
		// queue behind it; the apiserver's priority and fairness paces
		// the requests instead, as for the datastore's own client.
		rc.QPS = -1
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	cfg.Pods = kube.NewPodSource(client)
	cfg.Background = append(cfg.Background, func(ctx context.Context, a *agent.Agent) {
		gc := gc
		gc.Client, gc.IPAM, gc.Store, gc.Identity, gc.Logger, gc.Metrics = client, a.IPAM(), a.Store(), a.NodeName(), a.Logger(), a.Metrics()
		err := kube.RunGC(ctx, gc)
		if err != nil && ctx.Err() == nil {
			a.Logger().Error("the IPAM garbage collector stopped", "err", err)
		}
	})
	return nil
}
