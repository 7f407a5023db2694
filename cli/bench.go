package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"twill.dev/twill/bench"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newBenchCmd(g))
	})
}

func newBenchCmd(g *globals) *cobra.Command {
	var opts bench.Options
	var output string
	cmd := &cobra.Command{
		Use:   "bench [--quick] [--only NAME] [-o table|json]",
		Short: "Measure Twill's figures against same-run baselines and their goals",
		Long: `bench builds the seed lab itself (network namespaces, the embedded etcd, one
real node agent per node, pods through libcni and the twill-cni plugin), runs
each measurement, tears everything down and prints one table: the figure
(p50/p99 of the samples, or a value), its baseline measured in the same run,
their ratio (figure ÷ baseline), the goal and whether it is met.

Figures: ` + strings.Join(bench.Figures, ", ") + `.
Then (unless --kubernetes=false) it builds the seed lab again on the Kubernetes
datastore (a real kube-apiserver on the lab's etcd) and measures
` + strings.Join(bench.KubeFigures, ", ") + ` there too: those rows say "(kubernetes)", and their
baseline is the same figure's etcd row, so their ratio is kubernetes ÷ etcd.
The bench's namespaces start with "twb"; its state lives in ` + bench.DefaultStateDir + `,
apart from "twill lab"'s. It needs root, and iperf3 for the throughput figure.
Ctrl-C tears down everything built so far. See docs/benchmarks.md for the
method and the baselines.`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The bench builds its labs on both datastores itself.
			if g.given.typ {
				return usageErr(errors.New("--datastore: twill bench measures its own labs on etcd and, unless --kubernetes=false, on kubernetes; it takes no datastore"))
			}
			if output != "table" && output != "json" {
				return usageErr(fmt.Errorf("-o %q: use table or json", output))
			}
			if err := bench.CheckFigure(opts.Only); err != nil {
				return usageErr(err)
			}
			opts.Progress = cmd.ErrOrStderr()
			rows, err := bench.Run(cmd.Context(), opts)
			if len(rows) > 0 || errors.Is(err, bench.ErrFigures) {
				var werr error
				if output == "json" {
					werr = bench.WriteJSON(cmd.OutOrStdout(), rows)
				} else {
					werr = bench.WriteTable(cmd.OutOrStdout(), rows)
				}
				if werr != nil {
					return errors.Join(err, werr)
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.Quick, "quick", false, "a reduced run of every figure (fewer samples, 500 nodes instead of 5,000, 1 s iperf3 runs)")
	f.BoolVar(&opts.Kubernetes, "kubernetes", true, "also build the seed lab on the Kubernetes datastore (kube-apiserver from scripts/kube-build.sh) and measure "+strings.Join(bench.KubeFigures, ", ")+" there, beside etcd")
	f.StringVar(&opts.Only, "only", "", "run one figure: "+strings.Join(bench.Figures, ", "))
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	f.StringVar(&opts.StateDir, "state-dir", bench.DefaultStateDir, "directory for the bench labs' state, logs and sockets")
	f.StringVar(&opts.CNIPlugin, "cni-plugin", "", "the twill-cni plugin binary (default: twill-cni next to twill)")
	_ = f.MarkHidden("state-dir")
	return cmd
}
