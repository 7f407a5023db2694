package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"twill.dev/twill/cni"
	"twill.dev/twill/manifest"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, _ *globals) {
		root.AddCommand(newManifestCmd())
	})
}

func newManifestCmd() *cobra.Command {
	o := manifest.Default()
	o.Tag = Version
	cmd := &cobra.Command{
		Use:   "manifest",
		Short: "Print the manifest that installs Twill on a cluster (kubectl apply -f -)",
		Long: `manifest prints, as YAML, everything Twill needs on a cluster with the
kubernetes datastore, in apply order: Twill's CRDs; the Namespace (unless
kube-system); the ServiceAccount twill-node with the least privilege its
agents need (a ClusterRole, and a Role for the IPAM GC's Lease in the
namespace); the ConfigMap twill-config; and the DaemonSet twill-node, whose
init container installs the CNI plugin and its configuration on each node
(twill install-cni) and whose container runs the agent (twill node run) in
the host's network namespace, with the capabilities NET_ADMIN and SYS_ADMIN
only.

The ConfigMap holds the settings calico.yaml users know: CALICO_IPV4POOL_CIDR,
CALICO_IPV4POOL_BLOCK_SIZE, CALICO_IPV4POOL_VXLAN and
CALICO_IPV4POOL_NAT_OUTGOING (the default pool, created by the first agent
when no pool exists), DATASTORE_TYPE=kubernetes, IP_AUTODETECTION_METHOD, and,
with --kubernetes-service-host, KUBERNETES_SERVICE_HOST and _PORT: the
apiserver address the agents use instead of the kubernetes Service, which
works only once kube-proxy runs.

The image must hold the twill and twill-cni binaries, statically linked, in one
directory on PATH. The output does not depend on the environment.
manifests/twill.yaml is this command's output with the defaults; regenerate
it with: go run ./cmd/twill manifest > manifests/twill.yaml`,
		Example: `  twill manifest | kubectl apply -f -
  twill manifest --pool-cidr 10.244.0.0/16 --image registry.example/twill --tag v1.2.3 > twill.yaml
  twill manifest --kubernetes-service-host 192.168.3.10 --kubernetes-service-port 6443`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// A reference with its own tag or digest needs no --tag.
			if !cmd.Flags().Changed("tag") {
				if _, err := (manifest.Options{Image: o.Image}).ImageRef(); err == nil {
					o.Tag = ""
				}
			}
			b, err := manifest.Generate(o)
			if errors.Is(err, manifest.ErrOptions) {
				return usageErr(err)
			}
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Image, "image", o.Image, "image repository, or a whole reference REPO:TAG or REPO@DIGEST")
	f.StringVar(&o.Tag, "tag", o.Tag, "image tag (default this twill's version)")
	f.StringVar(&o.Namespace, "namespace", o.Namespace, "namespace of the agents, their ConfigMap and the IPAM GC's Lease; created unless kube-system")
	f.StringVar(&o.PoolCIDR, "pool-cidr", o.PoolCIDR, "CALICO_IPV4POOL_CIDR: the default pool's CIDR")
	f.IntVar(&o.BlockSize, "block-size", o.BlockSize, "CALICO_IPV4POOL_BLOCK_SIZE: the default pool's block size (prefix length)")
	f.StringVar(&o.VXLANMode, "vxlan-mode", o.VXLANMode, "CALICO_IPV4POOL_VXLAN: Never, CrossSubnet or Always")
	f.BoolVar(&o.NATOutgoing, "nat-outgoing", o.NATOutgoing, "CALICO_IPV4POOL_NAT_OUTGOING: masquerade pod traffic leaving the pools")
	f.StringVar(&o.IPAutodetectionMethod, "ip-autodetection-method", o.IPAutodetectionMethod, "IP_AUTODETECTION_METHOD: first-found, interface=REGEX, skip-interface=REGEX, cidr=CIDR[,CIDR] or can-reach=IP")
	f.StringVar(&o.CNIVersion, "cni-version", o.CNIVersion, "cniVersion of the CNI configuration (install-cni --cni-version): "+cni.DefaultCNIVersion+" for containerd 1.6/1.7, 1.1.0 for runtimes with libcni 1.2+")
	f.StringVar(&o.KubernetesServiceHost, "kubernetes-service-host", "", "KUBERNETES_SERVICE_HOST: the apiserver's address, for clusters where the agents must reach it before kube-proxy runs (or without kube-proxy)")
	f.StringVar(&o.KubernetesServicePort, "kubernetes-service-port", "", "KUBERNETES_SERVICE_PORT, with --kubernetes-service-host (default "+manifest.DefaultKubernetesServicePort+")")
	return cmd
}
