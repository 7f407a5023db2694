package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"

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
validates all of them against each other and the datastore, and only then
writes them, one object at a time: a document that fails validation means
nothing is applied. A document with metadata.resourceVersion set (as "twill get
-o yaml" prints it) is applied only if the object is still at that version.`,
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
			for _, r := range results {
				fmt.Fprintln(cmd.OutOrStdout(), r)
			}
			return err
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

// applyItem is one document as apply will write it.
type applyItem struct {
	// index is the document's number in the input.
	index int
	// what names the object in results, e.g. ippool.twill.dev/NAME.
	what string
	// kv is the object to write; kv.Revision is the revision an update
	// expects (a compare-and-swap).
	kv datastore.KV
	// create is set when the object does not exist yet.
	create bool
	// pinned is set when the document gave metadata.resourceVersion: a
	// conflict then means the document is stale and is not retried.
	pinned bool
	// unchanged is set when the stored object already equals the document.
	unchanged bool
}

// applyRetries bounds how often one document is planned again after
// another writer changed its object in between.
const applyRetries = 10

// applyDocuments validates every document, against each other and the
// store, and writes nothing when any is invalid. It then writes the
// documents one at a time, in order: a Create for a new object, else an
// Update compare-and-swapped against the revision that was validated (or
// the document's metadata.resourceVersion). When another writer changed an
// object in between, that document is validated and written again; a
// document whose resourceVersion is stale fails. It returns a line per
// document written or found unchanged, also when a later one failed.
func applyDocuments(ctx context.Context, s datastore.Store, docs []api.Document) ([]string, error) {
	items, err := planApply(ctx, s, docs)
	if err != nil {
		return nil, err
	}
	var results []string
	for i := range items {
		it := items[i]
		var err error
		for attempt := 0; ; attempt++ {
			if it.unchanged {
				results = append(results, it.what+" unchanged")
				break
			}
			if err = writeItem(ctx, s, it); err == nil {
				verb := "configured"
				if it.create {
					verb = "created"
				}
				results = append(results, it.what+" "+verb)
				break
			}
			if !errors.Is(err, datastore.ErrConflict) || it.pinned || attempt == applyRetries {
				break
			}
			// Another writer got there first: validate this document
			// again against what is stored now.
			fresh, perr := planApply(ctx, s, docs)
			if perr != nil {
				err = perr
				break
			}
			it = fresh[i]
		}
		if err != nil {
			if len(results) > 0 {
				return results, fmt.Errorf("document %d (%s) was not applied, after %d document(s) that were: %w", it.index, it.what, len(results), err)
			}
			return nil, fmt.Errorf("document %d (%s) was not applied: %w", it.index, it.what, err)
		}
	}
	return results, nil
}

// writeItem writes one planned document.
func writeItem(ctx context.Context, s datastore.Store, it applyItem) error {
	var err error
	if it.create {
		_, err = s.Create(ctx, it.kv)
	} else {
		_, err = s.Update(ctx, it.kv)
	}
	switch {
	case err == nil:
		return nil
	case it.pinned && (errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrNotFound)):
		return fmt.Errorf("metadata.resourceVersion %s is stale (the object changed since): get it again and re-apply: %w", it.kv.Revision, err)
	case !it.create && errors.Is(err, datastore.ErrNotFound):
		// Deleted since it was read: planning again creates it.
		return fmt.Errorf("%s was deleted meanwhile: %w", it.what, datastore.ErrConflict)
	}
	return err
}

// planApply validates the documents and says how each would be written.
// Every error is collected, so that one run lists every bad document.
func planApply(ctx context.Context, s datastore.Store, docs []api.Document) ([]applyItem, error) {
	pools, _, err := datastore.ListObjects[api.IPPool](ctx, s, datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		return nil, err
	}
	existing := map[string]datastore.Object[api.IPPool]{}
	var final []api.IPPool
	for _, p := range pools {
		existing[p.Name] = p
	}
	// The pools as they will be after the apply: existing ones replaced by
	// the documents' versions, for the overlap check.
	replaced := map[string]bool{}
	seen := map[string]int{}
	var errs []error
	var items []applyItem
	// item fills in how to write v as kind/name over old (nil when
	// absent), checking the document's resourceVersion against it.
	item := func(d api.Document, kind datastore.Kind, what, name string, labels map[string]string, rv string, v any, oldRev string, exists bool) (applyItem, error) {
		it := applyItem{index: d.Index, what: what, create: !exists, pinned: rv != ""}
		kv, err := datastore.NewKV(kind, name, v)
		if err != nil {
			return it, err
		}
		kv.Labels = maps.Clone(labels)
		switch {
		case rv != "" && !exists:
			return it, fmt.Errorf("document %d: %s: metadata.resourceVersion %s is set, but the object does not exist (deleted since it was read?): drop resourceVersion to create it", d.Index, what, rv)
		case rv != "" && rv != oldRev:
			return it, fmt.Errorf("document %d: %s: metadata.resourceVersion %s is stale (now %s): get it again and re-apply", d.Index, what, rv, oldRev)
		case exists:
			kv.Revision = oldRev
		}
		it.kv = kv
		return it, nil
	}
	for _, d := range docs {
		switch {
		case d.Pool != nil:
			p := *d.Pool
			name := p.Metadata.Name
			what := "ippool.twill.dev/" + name
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
			rv := p.Metadata.ResourceVersion
			p.Metadata.ResourceVersion = ""
			it, err := item(d, datastore.KindIPPool, what, name, p.Metadata.Labels, rv, p, old.Revision, exists)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if exists {
				stored := old.Value
				stored.Metadata.ResourceVersion = ""
				it.unchanged = reflect.DeepEqual(stored, p) && maps.Equal(old.Labels, it.kv.Labels)
			}
			items = append(items, it)
		case d.Node != nil:
			n := *d.Node
			name := n.Metadata.Name
			what := "node.twill.dev/" + name
			if prev, dup := seen["Node/"+name]; dup {
				errs = append(errs, fmt.Errorf("document %d: Node %q is also defined by document %d", d.Index, name, prev))
				continue
			}
			seen["Node/"+name] = d.Index
			if err := n.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("document %d: %w", d.Index, err))
				continue
			}
			rv := n.Metadata.ResourceVersion
			n.Metadata.ResourceVersion = ""
			old, err := datastore.GetObject[api.Node](ctx, s, datastore.KindNode, name)
			exists := err == nil
			if err != nil && !errors.Is(err, datastore.ErrNotFound) {
				return nil, err
			}
			it, err := item(d, datastore.KindNode, what, name, n.Metadata.Labels, rv, n, old.Revision, exists)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if exists {
				stored := old.Value
				stored.Metadata.ResourceVersion = ""
				it.unchanged = reflect.DeepEqual(stored, n) && maps.Equal(old.Labels, it.kv.Labels)
			}
			items = append(items, it)
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
		return nil, fmt.Errorf("nothing was applied:\n%w", errors.Join(errs...))
	}
	return items, nil
}
