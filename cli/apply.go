package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"

	"github.com/spf13/cobra"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, g *globals) {
		root.AddCommand(newApplyCmd(g))
	})
}

func newApplyCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE|-",
		Short: "Create or update IPPools and Nodes from YAML or JSON documents",
		Long: `apply reads one or more documents (YAML separated by "---", or JSON) of
apiVersion twill.dev/v1 (IPPool, Node) or projectcalico.org/v3 (IPPool, converted),
validates all of them, and writes them in one transaction: either every document
is applied or none is.`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageErr(errors.New("apply needs -f FILE (or -f - for standard input)"))
			}
			data, err := readInput(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			docs, err := api.DecodeDocuments(data)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if len(docs) == 0 {
				return fmt.Errorf("%s: no documents found", file)
			}
			for _, d := range docs {
				for _, w := range d.Warnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "Warning: document %d: %s\n", d.Index, w)
				}
			}
			ctx := cmd.Context()
			s, err := g.store(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			results, err := applyDocuments(ctx, s, docs)
			if err != nil {
				return err
			}
			for _, r := range results {
				fmt.Fprintln(cmd.OutOrStdout(), r)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "file to apply, or - for standard input")
	return cmd
}

func readInput(stdin io.Reader, file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(stdin)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	return data, nil
}

// applyDocuments validates every document against each other and the store,
// then writes them all in one transaction. It retries when another writer
// raced it, and writes nothing when any document is invalid.
func applyDocuments(ctx context.Context, s datastore.Store, docs []api.Document) ([]string, error) {
	const attempts = 10
	var lastErr error
	for i := 0; i < attempts; i++ {
		ops, results, err := planApply(ctx, s, docs)
		if err != nil {
			return nil, err
		}
		if len(ops) == 0 {
			return results, nil
		}
		if _, err := s.Txn(ctx, ops...); err != nil {
			if errors.Is(err, datastore.ErrConflict) {
				lastErr = err
				continue
			}
			return nil, fmt.Errorf("apply: %w", err)
		}
		return results, nil
	}
	return nil, fmt.Errorf("apply: the datastore kept changing underneath (%d attempts): %w", attempts, lastErr)
}

func planApply(ctx context.Context, s datastore.Store, docs []api.Document) ([]datastore.Op, []string, error) {
	pools, _, err := datastore.ListObjects[api.IPPool](ctx, s, datastore.PoolsPrefix)
	if err != nil {
		return nil, nil, err
	}
	existing := map[string]datastore.Object[api.IPPool]{}
	var final []api.IPPool
	for _, p := range pools {
		existing[p.Value.Metadata.Name] = p
	}
	// The pools as they will be after the apply: existing ones replaced by
	// the documents' versions, for the overlap check.
	replaced := map[string]bool{}
	seen := map[string]int{}
	var errs []error
	var ops []datastore.Op
	var results []string
	for _, d := range docs {
		switch {
		case d.Pool != nil:
			p := *d.Pool
			name := p.Metadata.Name
			if prev, dup := seen["IPPool/"+name]; dup {
				errs = append(errs, fmt.Errorf("document %d: IPPool %q is also defined by document %d", d.Index, name, prev))
				continue
			}
			seen["IPPool/"+name] = d.Index
			if err := p.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("document %d: %w", d.Index, err))
				continue
			}
			old, exists := existing[name]
			if exists {
				if err := api.ValidatePoolUpdate(old.Value, p); err != nil {
					errs = append(errs, fmt.Errorf("document %d: %w", d.Index, err))
					continue
				}
			}
			replaced[name] = true
			final = append(final, p)
			expect := datastore.MustNotExist
			verb := "created"
			if exists {
				expect = old.Revision
				verb = "configured"
				if rv := p.Metadata.ResourceVersion; rv != "" {
					n, err := strconv.ParseInt(rv, 10, 64)
					if err != nil || n != old.Revision {
						errs = append(errs, fmt.Errorf("document %d: IPPool %q: metadata.resourceVersion %s is stale (now %d): get it again and re-apply", d.Index, name, rv, old.Revision))
						continue
					}
				}
				stored := old.Value
				stored.Metadata.ResourceVersion = ""
				p.Metadata.ResourceVersion = ""
				if reflect.DeepEqual(stored, p) {
					results = append(results, fmt.Sprintf("ippool.twill.dev/%s unchanged", name))
					continue
				}
			}
			p.Metadata.ResourceVersion = ""
			b, err := datastore.Encode(p)
			if err != nil {
				return nil, nil, err
			}
			ops = append(ops, datastore.Put(datastore.PoolKey(name), b, expect))
			results = append(results, fmt.Sprintf("ippool.twill.dev/%s %s", name, verb))
		case d.Node != nil:
			n := *d.Node
			name := n.Metadata.Name
			if prev, dup := seen["Node/"+name]; dup {
				errs = append(errs, fmt.Errorf("document %d: Node %q is also defined by document %d", d.Index, name, prev))
				continue
			}
			seen["Node/"+name] = d.Index
			if err := n.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("document %d: %w", d.Index, err))
				continue
			}
			n.Metadata.ResourceVersion = ""
			old, err := datastore.GetObject[api.Node](ctx, s, datastore.NodeKey(name))
			expect, verb := datastore.MustNotExist, "created"
			switch {
			case err == nil:
				expect, verb = old.Revision, "configured"
				if reflect.DeepEqual(old.Value, n) {
					results = append(results, fmt.Sprintf("node.twill.dev/%s unchanged", name))
					continue
				}
			case !errors.Is(err, datastore.ErrNotFound):
				return nil, nil, err
			}
			b, err := datastore.Encode(n)
			if err != nil {
				return nil, nil, err
			}
			ops = append(ops, datastore.Put(datastore.NodeKey(name), b, expect))
			results = append(results, fmt.Sprintf("node.twill.dev/%s %s", name, verb))
		default:
			errs = append(errs, fmt.Errorf("document %d: kind %q cannot be applied", d.Index, d.Kind))
		}
	}
	for name, p := range existing {
		if !replaced[name] {
			final = append(final, p.Value)
		}
	}
	for _, d := range docs {
		if d.Pool == nil {
			continue
		}
		if err := api.CheckPoolOverlap(*d.Pool, final); err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", d.Index, err))
		}
	}
	if len(errs) > 0 {
		return nil, nil, fmt.Errorf("nothing was applied:\n%w", errors.Join(errs...))
	}
	return ops, results, nil
}
