package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/cni"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, _ *globals) {
		root.AddCommand(newInstallCNICmd())
	})
}

// cniVersionEnv are the environment variables that set --cni-version,
// first found wins.
var cniVersionEnv = []string{"TWILL_CNI_VERSION", "CNI_VERSION"}

func newInstallCNICmd() *cobra.Command {
	var o cni.InstallOptions
	supported := strings.Join(cni.SupportedVersions(), ", ")
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install the CNI plugin binary and its network configuration on this node",
		Long: `install-cni copies the plugin binary (twill-cni, next to this binary unless
--plugin-binary says otherwise) into the CNI bin directory under the name
"twill", and writes a network configuration list into the CNI config
directory. Both files are written to a temporary file and renamed into place,
so a container runtime never reads a partial file.

--cni-version sets the cniVersion of the configuration list. The runtime
passes it to the plugin, which answers in that version, so it must be one the
runtime's CNI library understands: a runtime refuses a result of a newer
version, and only after the plugin has attached the pod, so pods never start.
The default, ` + cni.DefaultCNIVersion + `, is the newest containerd 1.6 and 1.7 accept (Debian 12
ships containerd 1.6); Calico writes an older version for the same reason.
1.1.0 adds the STATUS and GC commands and needs a runtime built with libcni
1.2 or later, such as containerd 2.0. Supported: ` + supported + `.
The flag's default comes from TWILL_CNI_VERSION, else CNI_VERSION.`,
		Example: `  twill install-cni --cni-bin-dir /opt/cni/bin --cni-conf-dir /etc/cni/net.d
  twill install-cni --cni-bin-dir /opt/cni/bin --cni-conf-dir /etc/cni/net.d --cni-version 1.1.0`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.BinDir == "" || o.ConfDir == "" {
				return usageErr(fmt.Errorf("--cni-bin-dir and --cni-conf-dir are required, e.g. --cni-bin-dir /opt/cni/bin --cni-conf-dir /etc/cni/net.d"))
			}
			if err := cni.CheckVersion(o.CNIVersion); err != nil {
				from := "--cni-version"
				if !cmd.Flags().Changed("cni-version") {
					for _, name := range cniVersionEnv {
						if strings.TrimSpace(os.Getenv(name)) != "" {
							from = name
							break
						}
					}
				}
				return usageErr(fmt.Errorf("%s: %w (pick the newest the node's container runtime accepts; %s suits containerd 1.6 and 1.7)", from, err, cni.DefaultCNIVersion))
			}
			if o.MTU != 0 && (o.MTU < cni.MinMTU || o.MTU > cni.MaxMTU) {
				return usageErr(fmt.Errorf("--mtu %d is outside %d-%d (0 takes the agent's MTU)", o.MTU, cni.MinMTU, cni.MaxMTU))
			}
			res, err := cni.Install(o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed %s\nwrote %s\n", res.Binary, res.Conflist)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.BinDir, "cni-bin-dir", "", "CNI plugin directory, e.g. /opt/cni/bin (required)")
	f.StringVar(&o.ConfDir, "cni-conf-dir", "", "CNI network configuration directory, e.g. /etc/cni/net.d (required)")
	f.StringVar(&o.AgentSocket, "agent-socket", agentapi.DefaultSocket, "the node agent's socket, as given to `twill node run --socket`")
	f.IntVar(&o.MTU, "mtu", 0, "pod interface MTU; 0 takes the agent's (the host interface's MTU)")
	f.StringVar(&o.ConfName, "conf-name", cni.DefaultConfName, "file name of the network configuration list")
	f.StringVar(&o.NetworkName, "network-name", cni.DefaultNetworkName, "network name in the configuration list")
	f.StringVar(&o.CNIVersion, "cni-version", envOr(cni.DefaultCNIVersion, cniVersionEnv...),
		"cniVersion of the configuration list, which the plugin answers in: the newest the container runtime accepts ("+
			cni.DefaultCNIVersion+" for containerd 1.6/1.7, which refuse 1.1.0 results; 1.1.0 adds STATUS and GC); one of "+supported+" (env TWILL_CNI_VERSION or CNI_VERSION)")
	f.StringVar(&o.PluginBinary, "plugin-binary", "", "the plugin binary to install (default: twill-cni next to this binary)")
	f.StringVar(&o.LogLevel, "log-level", "", "plugin log level: debug, info, warn or error (default info)")
	f.StringVar(&o.LogFile, "log-file", "", "plugin log file (default: the runtime's stderr)")
	return cmd
}
