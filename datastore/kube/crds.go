package kube

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"time"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/manifests/crds"
)

// crdEstablishTimeout bounds the wait for installed CRDs to be served.
const crdEstablishTimeout = 60 * time.Second

// CRDs returns Twill's CustomResourceDefinitions, as embedded from
// manifests/crds.
func CRDs() ([]*apiextv1.CustomResourceDefinition, error) {
	names, err := fs.Glob(crds.FS, "*.yaml")
	if err != nil {
		return nil, fmt.Errorf("list embedded CRD manifests: %w", err)
	}
	slices.Sort(names)
	out := make([]*apiextv1.CustomResourceDefinition, 0, len(names))
	for _, name := range names {
		b, err := fs.ReadFile(crds.FS, name)
		if err != nil {
			return nil, fmt.Errorf("read embedded CRD manifest %s: %w", name, err)
		}
		c := &apiextv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(b, c); err != nil {
			return nil, fmt.Errorf("decode CRD manifest %s: %w", name, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// InstallCRDs creates (or updates) Twill's CustomResourceDefinitions on the
// apiserver cfg points at, and waits until each is established and served
// (bounded by 60 s and ctx). It is what `kubectl apply -f manifests/crds`
// does, for programs and tests.
func InstallCRDs(ctx context.Context, cfg *rest.Config) error {
	want, err := CRDs()
	if err != nil {
		return err
	}
	client, err := apiextclient.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("install CRDs on %s: %w", cfg.Host, err)
	}
	api := client.ApiextensionsV1().CustomResourceDefinitions()
	ctx, cancel := context.WithTimeout(ctx, crdEstablishTimeout)
	defer cancel()
	for _, c := range want {
		_, err := api.Create(ctx, c, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			err = updateCRD(ctx, client, c)
		}
		if err != nil {
			return fmt.Errorf("install CRD %s on %s: %w", c.Name, cfg.Host, err)
		}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for _, c := range want {
		for {
			got, err := api.Get(ctx, c.Name, metav1.GetOptions{})
			if err == nil && established(got) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s on %s was not established in time (last error: %v): %w", c.Name, cfg.Host, err, ctx.Err())
			case <-tick.C:
			}
		}
	}
	// Established is set before the apiserver's discovery document lists
	// the resource; clients that check discovery (as New does) must find it.
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("install CRDs on %s: %w", cfg.Host, err)
	}
	for {
		missing, err := undiscovered(dc, want)
		if err == nil && len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRDs on %s were established but discovery does not list %v in time (last error: %v): %w", cfg.Host, missing, err, ctx.Err())
		case <-tick.C:
		}
	}
}

// undiscovered lists the plural names of the CRDs in want that the
// apiserver's discovery does not serve yet.
func undiscovered(dc discovery.DiscoveryInterface, want []*apiextv1.CustomResourceDefinition) ([]string, error) {
	var missing []string
	served := map[string]map[string]bool{}
	for _, c := range want {
		for _, v := range c.Spec.Versions {
			if !v.Served {
				continue
			}
			gv := c.Spec.Group + "/" + v.Name
			if served[gv] == nil {
				served[gv] = map[string]bool{}
				list, err := dc.ServerResourcesForGroupVersion(gv)
				if err != nil && !apierrors.IsNotFound(err) {
					return nil, err
				}
				if list != nil {
					for _, r := range list.APIResources {
						served[gv][r.Name] = true
					}
				}
			}
			if !served[gv][c.Spec.Names.Plural] {
				missing = append(missing, gv+"/"+c.Spec.Names.Plural)
			}
		}
	}
	return missing, nil
}

// updateCRD replaces the spec of an existing CRD with c's.
func updateCRD(ctx context.Context, client apiextclient.Interface, c *apiextv1.CustomResourceDefinition) error {
	api := client.ApiextensionsV1().CustomResourceDefinitions()
	var err error
	for attempt := 0; attempt < writeAttempts; attempt++ {
		var cur *apiextv1.CustomResourceDefinition
		if cur, err = api.Get(ctx, c.Name, metav1.GetOptions{}); err != nil {
			return err
		}
		cur.Spec = c.Spec
		cur.Annotations = c.Annotations
		if _, err = api.Update(ctx, cur, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			return err
		}
	}
	return err
}

// established reports whether the CRD's names are accepted and it is served.
func established(c *apiextv1.CustomResourceDefinition) bool {
	var ok, names bool
	for _, cond := range c.Status.Conditions {
		switch cond.Type {
		case apiextv1.Established:
			ok = cond.Status == apiextv1.ConditionTrue
		case apiextv1.NamesAccepted:
			names = cond.Status == apiextv1.ConditionTrue
		}
	}
	return ok && names
}
