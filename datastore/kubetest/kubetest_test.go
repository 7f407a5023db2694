package kubetest_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"twill.dev/twill/crd"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/kube"
	"twill.dev/twill/datastore/kubetest"
)

var v1Namespace = corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubetest"}}

// TestStart starts a real apiserver and checks what the harness promises:
// the kubeconfig authenticates as an administrator, the CRDs install and
// are served, a watch from a revision older than the apiserver's history
// is 410 Gone, and the process is gone after Stop.
func TestStart(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Without the CRDs, the store says how to install them.
	if _, err := kube.New(ctx, kube.Config{Kubeconfig: c.Kubeconfig}); err == nil || !strings.Contains(err.Error(), "kubectl apply -f manifests/crds") {
		t.Fatalf("kube.New before the CRDs are installed = %v; want an error saying to apply manifests/crds", err)
	}
	c.InstallCRDs(t)
	// Installing again (an upgrade) is fine.
	c.InstallCRDs(t)

	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", c.Kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	// Creating a namespace needs write access to the core group.
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &v1Namespace, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create a namespace as the kubeconfig's admin: %v", err)
	}
	if ns.Name != v1Namespace.Name {
		t.Errorf("created namespace %q, want %q", ns.Name, v1Namespace.Name)
	}

	res, err := cs.Discovery().ServerResourcesForGroupVersion(crd.Group + "/" + crd.Version)
	if err != nil {
		t.Fatalf("discovery of %s/%s: %v", crd.Group, crd.Version, err)
	}
	served := map[string]bool{}
	for _, r := range res.APIResources {
		served[r.Name] = r.Namespaced
		if r.Namespaced {
			t.Errorf("resource %s is namespaced, want cluster-scoped", r.Name)
		}
	}
	for _, r := range crd.Resources {
		if _, ok := served[r]; !ok {
			t.Errorf("resource %s.%s is not served", r, crd.Group)
		}
	}

	// A watch from resourceVersion 1 asks for history the apiserver no
	// longer has: 410 Gone, on the request or as the first event. That is
	// how the kube store's watches end with ErrCompacted.
	s := c.NewStore(t)
	wch := s.Watch(ctx, datastore.KindIPPool, "1")
	select {
	case r, ok := <-wch:
		if !ok || !errors.Is(r.Err, datastore.ErrCompacted) {
			t.Errorf("watch from revision 1: %+v (open %v), want ErrCompacted", r, ok)
		}
	case <-ctx.Done():
		t.Fatal("watch from revision 1 did not fail in time")
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: crd.Group, Version: crd.Version, Resource: crd.ResourceIPPool}
	w, err := dyn.Resource(gvr).Watch(ctx, metav1.ListOptions{ResourceVersion: "1"})
	if err == nil {
		ev := <-w.ResultChan()
		w.Stop()
		err = apierrors.FromObject(ev.Object)
	}
	if !apierrors.IsGone(err) && !apierrors.IsResourceExpired(err) {
		t.Errorf("raw watch from resourceVersion 1: %v, want 410 Gone", err)
	}

	if err := c.Server.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	select {
	case <-c.Server.Done():
	default:
		t.Fatal("Stop returned before the process exited")
	}
	if _, err := os.Stat(c.Server.LogPath); err != nil {
		t.Errorf("log file: %v", err)
	}
}
