package manifest_test

// These tests run manifests/twill.yaml against a real kube-apiserver
// (datastore/kubetest): every object passes the apiserver's validation and
// admission, kubectl applies the file, and the RBAC rules let the real
// agent (as the ServiceAccount twill-node) do all of its work, and nothing
// more.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/agent"
	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/crd"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/kube"
	"twill.dev/twill/datastore/kubetest"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/internal/syncbuf"
	"twill.dev/twill/ipam"
	gc "twill.dev/twill/kube"
	"twill.dev/twill/manifest"
)

// serviceAccountUser is the agents' user name in the default namespace.
var serviceAccountUser = "system:serviceaccount:" + manifest.DefaultNamespace + ":" + manifest.Name

// committedObjects decodes manifests/twill.yaml into unstructured objects.
func committedObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(committedPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []*unstructured.Unstructured
	for i, doc := range splitDocs(b) {
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("document %d: %v", i+1, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("document %d: %v", i+1, err)
		}
		out = append(out, u)
	}
	return out
}

// apiClients are an administrator's clients of one apiserver.
type apiClients struct {
	cfg  *rest.Config
	core kubernetes.Interface
	dyn  dynamic.Interface
}

func newClients(t *testing.T, cfg *rest.Config) apiClients {
	t.Helper()
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return apiClients{cfg: cfg, core: core, dyn: dyn}
}

// resourceFor maps obj's kind to its resource, from the apiserver's
// discovery (read afresh, so that new CRDs are known).
func (c apiClients) resourceFor(t *testing.T, obj *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	gvk := obj.GroupVersionKind()
	m, err := restmapper.NewDiscoveryRESTMapper(groups).RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s %s: %v", gvk, obj.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	return c.dyn.Resource(m.Resource)
}

// waitFor polls cond every 100 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	nettest.Eventually(t, d, 100*time.Millisecond, what, cond)
}

// TestManifestAPIServer applies the committed manifest to a real apiserver
// and checks its RBAC with the real agent.
func TestManifestAPIServer(t *testing.T) {
	cl := kubetest.Start(t)
	admin := newClients(t, cl.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	objs := committedObjects(t)
	// The apiserver creates kube-system shortly after it starts.
	waitFor(t, 30*time.Second, "namespace kube-system", func() (bool, string) {
		_, err := admin.core.CoreV1().Namespaces().Get(ctx, manifest.DefaultNamespace, metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	})

	ok := t.Run("dry-run", func(t *testing.T) {
		// The CRDs for real (the rest does not depend on them being
		// served, but a real apply creates them first).
		for _, o := range objs {
			if o.GetKind() != "CustomResourceDefinition" {
				continue
			}
			if _, err := admin.resourceFor(t, o).Create(ctx, o, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create CRD %s: %v", o.GetName(), err)
			}
			waitFor(t, 30*time.Second, "CRD "+o.GetName()+" established", func() (bool, string) {
				got, err := admin.resourceFor(t, o).Get(ctx, o.GetName(), metav1.GetOptions{})
				if err != nil {
					return false, err.Error()
				}
				conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
				for _, c := range conds {
					if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
						return true, ""
					}
				}
				return false, fmt.Sprint(conds)
			})
		}
		for _, o := range objs {
			if o.GetKind() == "CustomResourceDefinition" {
				continue
			}
			if _, err := admin.resourceFor(t, o).Create(ctx, o, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("server-side dry run of %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
		// A dry run creates nothing.
		if _, err := admin.core.AppsV1().DaemonSets(manifest.DefaultNamespace).Get(ctx, manifest.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after the dry run, get the DaemonSet: %v, want not found", err)
		}
	})
	if !ok {
		return
	}

	t.Run("kubectl apply", func(t *testing.T) {
		kubectl := kubetest.Kubectl(t)
		apply := func() string {
			t.Helper()
			cctx, ccancel := context.WithTimeout(ctx, time.Minute)
			defer ccancel()
			cmd := exec.CommandContext(cctx, kubectl, "--kubeconfig", cl.Kubeconfig, "apply", "-f", committedPath)
			var out, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("kubectl apply -f manifests/twill.yaml: %v\n%s%s", err, out.String(), stderr.String())
			}
			return out.String()
		}
		out := apply()
		for _, want := range []string{"serviceaccount/twill-node created", "clusterrole.rbac.authorization.k8s.io/twill-node created",
			"configmap/twill-config created", "daemonset.apps/twill-node created"} {
			if !strings.Contains(out, want) {
				t.Errorf("kubectl apply output lacks %q:\n%s", want, out)
			}
		}
		// Applying again changes nothing.
		out = apply()
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.HasSuffix(line, " unchanged") {
				t.Errorf("second apply: %q, want unchanged", line)
			}
		}
		// The pod the DaemonSet controller would create passes admission
		// (service account, priority class, pod security).
		ds, err := admin.core.AppsV1().DaemonSets(manifest.DefaultNamespace).Get(ctx, manifest.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "twill-node-dryrun", Namespace: ds.Namespace, Labels: ds.Spec.Template.Labels},
			Spec: *ds.Spec.Template.Spec.DeepCopy()}
		pod.Spec.NodeName = "some-node"
		got, err := admin.core.CoreV1().Pods(ds.Namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			t.Fatalf("dry run of the DaemonSet's pod: %v", err)
		}
		if got.Spec.Priority == nil || *got.Spec.Priority < 2000000000 {
			t.Errorf("the pod's priority is %v, want system-node-critical's", got.Spec.Priority)
		}
	})

	t.Run("rbac", func(t *testing.T) {
		testRBAC(t, ctx, admin, objs)
	})
}

// testRBAC creates the manifest's ServiceAccount and RBAC objects (if
// kubectl did not), then runs the real agent as that ServiceAccount and
// checks what it may not do.
func testRBAC(t *testing.T, ctx context.Context, admin apiClients, objs []*unstructured.Unstructured) {
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			if _, err := admin.resourceFor(t, o).Create(ctx, o, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
	}
	saCfg := rest.CopyConfig(admin.cfg)
	saCfg.Impersonate = rest.ImpersonationConfig{UserName: serviceAccountUser}
	sa := newClients(t, saCfg)
	// The authorizer learns of new roles through its informers.
	waitFor(t, 15*time.Second, "the RBAC rules take effect", func() (bool, string) {
		_, err := sa.core.CoreV1().Pods("").List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, fmt.Sprint(err)
	})

	const node, goneNode = "twm-node-a", "twm-node-gone"
	// The kubelet registers Nodes; the agent only annotates its own.
	if _, err := admin.core.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	livePod := createPod(t, ctx, admin, "live-pod", node)

	adminStore, err := kube.New(ctx, kube.Config{REST: admin.cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer adminStore.Close()
	saStore, err := kube.New(ctx, kube.Config{REST: saCfg})
	if err != nil {
		t.Fatalf("open the store as %s: %v", serviceAccountUser, err)
	}
	defer saStore.Close()

	// Watch every kind the agent caches, as the ServiceAccount, from now.
	watched := watchKinds(t, ctx, saStore, datastore.KindIPPool, datastore.KindNode, datastore.KindBlock, datastore.KindIPAMConfig, datastore.KindWorkload)

	// The real agent, in a throw-away network namespace, as the
	// ServiceAccount: its pod lookups, its store, and the IPAM GC with a
	// short grace.
	nettest.RequireRoot(t)
	ns := nettest.New(t, "mrbac")
	if err := ns.H.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "twpeer0"}); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddrAdd("eth0", "10.99.0.1/24"); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"eth0", "twpeer0"} {
		if err := ns.LinkUp(l); err != nil {
			t.Fatal(err)
		}
	}
	data, err := manifest.Default().ConfigData()
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	leader := make(chan *gc.GC, 1)
	sock := t.TempDir() + "/agent.sock"
	cfg := agent.Config{
		NodeName: node, NetnsPath: ns.Path, SocketPath: sock, AutodetectMethod: data["IP_AUTODETECTION_METHOD"],
		Getenv: func(k string) string { return data[k] }, Logger: log,
		Pods: gc.NewPodSource(sa.core),
		Background: []func(context.Context, *agent.Agent){func(ctx context.Context, a *agent.Agent) {
			g, err := gc.NewGC(gc.GCConfig{Client: sa.core, IPAM: a.IPAM(), Store: a.Store(), Identity: a.NodeName(),
				Namespace: manifest.DefaultNamespace, Grace: time.Second, Interval: time.Second, BlockMinAge: time.Second,
				LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond, Logger: a.Logger()})
			if err != nil {
				log.Error("gc", "err", err)
				return
			}
			select {
			case leader <- g:
			default:
			}
			if err := g.Run(ctx); err != nil {
				log.Error("gc stopped", "err", err)
			}
		}},
	}
	actx, acancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- agent.Run(actx, saStore, cfg) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		acancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("the agent did not stop within 15s")
		}
	}
	defer func() {
		stop()
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs)
		}
	}()
	client := agentapi.NewClient(sock, 5*time.Second)
	waitFor(t, 30*time.Second, "the agent is ready", func() (bool, string) {
		st, err := client.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.Ready, st.Reason
	})

	// A CNI ADD of a live pod (the pod is read for its UID and
	// annotations), its record, and its DEL.
	res, err := client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c-live", IfName: "eth0", Namespace: "default", Pod: "live-pod", PodUID: string(livePod.UID)})
	if err != nil {
		t.Fatalf("ADD of default/live-pod: %v", err)
	}
	if _, err := client.PutEndpoint(ctx, res.Handle, agentapi.Endpoint{ContainerID: "c-live", IfName: "eth0", Namespace: "default", Pod: "live-pod",
		PodUID: string(livePod.UID), HostIface: "calitwm0000001", Addresses: res.Addresses}); err != nil {
		t.Fatalf("record default/live-pod: %v", err)
	}
	if _, err := client.DeleteEndpoint(ctx, res.Handle); err != nil {
		t.Fatalf("DEL of default/live-pod: %v", err)
	}
	// An ADD for a pod the API does not have: its address leaks until the
	// GC releases it.
	leak, err := client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c-gone", IfName: "eth0", Namespace: "default", Pod: "gone-pod", PodUID: "0000"})
	if err != nil {
		t.Fatalf("ADD of default/gone-pod: %v", err)
	}
	// What a deleted node left (written by an administrator): a block and
	// a workload endpoint. The GC releases and deletes them.
	adminIPAM := ipam.New(adminStore)
	goneBlock, err := adminIPAM.ClaimBlock(ctx, goneNode, api.UseWorkload)
	if err != nil {
		t.Fatal(err)
	}
	ep := api.WorkloadEndpoint{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint}, Metadata: api.ObjectMeta{Name: "gone-ep"},
		Spec: api.WorkloadEndpointSpec{Node: goneNode, ContainerID: "c-x", IfName: "eth0", Handle: "c-x.eth0", HostIface: "calitwm0000002"}}
	kv, err := datastore.NewKV(datastore.KindWorkload, "gone-ep", ep)
	if err != nil {
		t.Fatal(err)
	}
	kv.Labels = map[string]string{datastore.LabelNode: goneNode}
	if _, err := adminStore.Create(ctx, kv); err != nil {
		t.Fatal(err)
	}
	cfgKV, err := datastore.NewKV(datastore.KindIPAMConfig, datastore.IPAMConfigName, api.IPAMConfig{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: crd.KindIPAMConfig}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := datastore.Put(ctx, adminStore, cfgKV); err != nil {
		t.Fatal(err)
	}

	var g *gc.GC
	select {
	case g = <-leader:
	case <-time.After(10 * time.Second):
		t.Fatal("the IPAM GC did not start")
	}
	waitFor(t, 20*time.Second, "the GC leads", func() (bool, string) { return g.IsLeader(), "not leader" })
	lease, err := admin.core.CoordinationV1().Leases(manifest.DefaultNamespace).Get(ctx, gc.LeaseName, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != node {
		t.Errorf("lease %s: %+v, %v; want held by %s", gc.LeaseName, lease, err, node)
	}
	leakIP := netip.MustParsePrefix(leak.Addresses[0]).Addr()
	waitFor(t, 30*time.Second, "the GC releases the deleted pod's address and what the deleted node left", func() (bool, string) {
		var why []string
		if h, err := adminIPAM.HandleAddrs(ctx, leak.Handle); err != nil || len(h) > 0 {
			why = append(why, fmt.Sprintf("handle %s holds %v (%v)", leak.Handle, h, err))
		}
		if _, err := adminStore.Get(ctx, datastore.KindWorkload, "gone-ep"); !errors.Is(err, datastore.ErrNotFound) {
			why = append(why, fmt.Sprintf("endpoint gone-ep: %v", err))
		}
		if o, err := datastore.GetObject[api.Block](ctx, adminStore, datastore.KindBlock, datastore.BlockName(goneBlock.CIDR)); err == nil && o.Value.Affinity != "" {
			why = append(why, fmt.Sprintf("block %s is still affine to %s", goneBlock.CIDR, o.Value.Affinity))
		}
		return len(why) == 0, strings.Join(why, "; ")
	})
	if strings.Contains(logs.String(), "forbidden") {
		t.Errorf("the agent or its GC was refused something:\n%s", grepLines(logs.String(), "forbidden"))
	}
	t.Logf("the GC released %s of default/gone-pod and cleaned up after %s", leakIP, goneNode)

	// Every watched kind delivered the agent's (or the admin's) writes.
	for kind, w := range watched {
		if err := w.result(); err != nil {
			t.Errorf("watch %s as %s: %v", kind, serviceAccountUser, err)
		}
	}

	// On stop the agent releases the Lease (an update).
	stop()
	lease, err = admin.core.CoordinationV1().Leases(manifest.DefaultNamespace).Get(ctx, gc.LeaseName, metav1.GetOptions{})
	if err != nil || (lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "") {
		t.Errorf("after the agent stopped, lease %s: holder %v, %v; want released", gc.LeaseName, lease.Spec.HolderIdentity, err)
	}
	if strings.Contains(logs.String(), "forbidden") {
		t.Errorf("the agent was refused something while stopping:\n%s", grepLines(logs.String(), "forbidden"))
	}

	t.Run("forbidden", func(t *testing.T) {
		testForbidden(t, ctx, sa, saStore, node)
	})
}

// testForbidden checks that the ServiceAccount may not do what the agent
// never does.
func testForbidden(t *testing.T, ctx context.Context, sa apiClients, saStore *kube.Store, node string) {
	twill := func(r string) schema.GroupVersionResource {
		return schema.GroupVersionResource{Group: crd.Group, Version: crd.Version, Resource: r}
	}
	obj := func(kind, name string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion(crd.Group + "/" + crd.Version)
		u.SetKind(kind)
		u.SetName(name)
		u.Object["spec"] = map[string]any{}
		return u
	}
	patch := []byte(`{"metadata":{"labels":{"x":"y"}}}`)
	ns := manifest.DefaultNamespace
	for _, tc := range []struct {
		what string
		do   func() error
	}{
		{"list secrets", func() error { _, err := sa.core.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); return err }},
		{"get a secret", func() error { _, err := sa.core.CoreV1().Secrets(ns).Get(ctx, "any", metav1.GetOptions{}); return err }},
		{"delete a secret", func() error { return sa.core.CoreV1().Secrets("default").Delete(ctx, "any", metav1.DeleteOptions{}) }},
		{"list configmaps", func() error { _, err := sa.core.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{}); return err }},
		{"create a node", func() error {
			_, err := sa.core.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "twm-new"}}, metav1.CreateOptions{})
			return err
		}},
		{"patch a node", func() error {
			_, err := sa.core.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}},
		{"delete a node", func() error { return sa.core.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{}) }},
		{"delete a pod", func() error { return sa.core.CoreV1().Pods("default").Delete(ctx, "live-pod", metav1.DeleteOptions{}) }},
		{"watch pods", func() error {
			w, err := sa.core.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"create an event", func() error {
			_, err := sa.core.CoreV1().Events(ns).Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "twm-ev"},
				InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: node}, Reason: "X", Message: "x", Type: "Normal"}, metav1.CreateOptions{})
			return err
		}},
		{"get a lease in another namespace", func() error {
			_, err := sa.core.CoordinationV1().Leases("default").Get(ctx, gc.LeaseName, metav1.GetOptions{})
			return err
		}},
		{"create a lease in another namespace", func() error {
			_, err := sa.core.CoordinationV1().Leases("default").Create(ctx, &coordv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "twm"}}, metav1.CreateOptions{})
			return err
		}},
		{"delete the lease", func() error {
			return sa.core.CoordinationV1().Leases(ns).Delete(ctx, gc.LeaseName, metav1.DeleteOptions{})
		}},
		{"update (PUT) a block", func() error {
			_, err := sa.dyn.Resource(twill(crd.ResourceIPAMBlock)).Update(ctx, obj("IPAMBlock", "any"), metav1.UpdateOptions{})
			return err
		}},
		{"delete every block", func() error {
			return sa.dyn.Resource(twill(crd.ResourceIPAMBlock)).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		}},
		{"watch handles", func() error {
			w, err := sa.dyn.Resource(twill(crd.ResourceIPAMHandle)).Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"patch a pool", func() error {
			_, err := sa.dyn.Resource(twill(crd.ResourceIPPool)).Patch(ctx, api.DefaultPoolName, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}},
		{"delete a pool", func() error {
			return sa.dyn.Resource(twill(crd.ResourceIPPool)).Delete(ctx, api.DefaultPoolName, metav1.DeleteOptions{})
		}},
		{"create the IPAM config", func() error {
			_, err := sa.dyn.Resource(twill(crd.ResourceIPAMConfig)).Create(ctx, obj("IPAMConfig", "other"), metav1.CreateOptions{})
			return err
		}},
		{"delete the IPAM config through the store", func() error {
			return saStore.Delete(ctx, datastore.KindIPAMConfig, datastore.IPAMConfigName, "")
		}},
	} {
		if err := tc.do(); !apierrors.IsForbidden(err) {
			t.Errorf("as %s, %s: %v; want Forbidden", serviceAccountUser, tc.what, err)
		}
	}
}

// createPod creates a pod bound to node, with the ServiceAccount that
// admission wants to exist.
func createPod(t *testing.T, ctx context.Context, admin apiClients, name, node string) *corev1.Pod {
	t.Helper()
	_, err := admin.core.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	p, err := admin.core.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "example.invalid/c"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return p
}

// kindWatch is one watch of a kind, collecting its first event or error.
type kindWatch struct {
	mu     sync.Mutex
	events int
	err    error
}

// result is nil once the watch delivered an event without error.
func (w *kindWatch) result() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		return w.err
	case w.events == 0:
		return errors.New("no event")
	}
	return nil
}

// watchKinds lists each kind and watches it from the list's revision
// until ctx ends.
func watchKinds(t *testing.T, ctx context.Context, s datastore.Store, kinds ...datastore.Kind) map[datastore.Kind]*kindWatch {
	t.Helper()
	out := map[datastore.Kind]*kindWatch{}
	for _, k := range kinds {
		_, rev, err := s.List(ctx, k, datastore.ListOptions{})
		if err != nil {
			t.Fatalf("list %s as %s: %v", k, serviceAccountUser, err)
		}
		w := &kindWatch{}
		out[k] = w
		ch := s.Watch(ctx, k, rev)
		go func() {
			for r := range ch {
				w.mu.Lock()
				if r.Err != nil && w.err == nil && w.events == 0 {
					w.err = r.Err
				}
				w.events += len(r.Events)
				w.mu.Unlock()
			}
		}()
	}
	return out
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
