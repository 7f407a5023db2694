package kube_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"twill.dev/twill/api"
	"twill.dev/twill/crd"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/kube"
	"twill.dev/twill/datastore/kubetest"
	"twill.dev/twill/datastore/storetest"
)

// TestKube runs everything that needs an apiserver against one real
// kube-apiserver (started once: it takes seconds): the conformance suite
// and the Kubernetes-specific mappings. The last subtest stops the
// apiserver.
func TestKube(t *testing.T) {
	c := kubetest.StartWithCRDs(t)
	s := c.NewStore(t)
	core, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	k := &kubeEnv{c: c, s: s, core: core, dyn: dyn}

	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, storetest.Harness{
			New:    func(t *testing.T) datastore.Store { return s },
			Expire: expire,
			Kinds:  append(slices.Clone(storetest.DefaultKinds), datastore.KindIPAMConfig),
		})
	})
	t.Run("NameMapping", k.testNameMapping)
	t.Run("NodeAnnotations", k.testNodes)
	t.Run("NodeWatch", k.testNodeWatch)
	t.Run("IPPoolSpecFields", k.testIPPoolSpecFields)
	t.Run("KubectlDescribe", k.testKubectlDescribe)
	t.Run("InvalidIPPool", k.testInvalidIPPool)
	t.Run("ListPages", k.testListPages)
	t.Run("WrongCredentials", k.testWrongCredentials)
	t.Run("ApiserverStops", k.testApiserverStops)
}

// expire returns a revision a watch of k can no longer start from: the
// apiserver keeps a custom resource's watch history from when its CRD was
// established, so resourceVersion 1, written when the apiserver first
// started, is older than any of it and is answered with 410 Gone.
func expire(t *testing.T, s datastore.Store, k datastore.Kind) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, rev, err := s.List(ctx, k, datastore.ListOptions{}); err != nil || rev == "1" {
		t.Fatalf("List(%s) at revision %q, %v; want a revision after 1", k, rev, err)
	}
	return "1"
}

type kubeEnv struct {
	c    *kubetest.Cluster
	s    *kube.Store
	core kubernetes.Interface
	dyn  dynamic.Interface
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustKV(t *testing.T, kind datastore.Kind, name string, labels map[string]string, v any) datastore.KV {
	t.Helper()
	kv, err := datastore.NewKV(kind, name, v)
	if err != nil {
		t.Fatal(err)
	}
	kv.Labels = labels
	return kv
}

func gvr(resource string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: crd.Group, Version: crd.Version, Resource: resource}
}

// testNameMapping stores objects whose names are not valid Kubernetes
// object names and checks they come back under their own names.
func (k *kubeEnv) testNameMapping(t *testing.T) {
	ctx := ctxFor(t)
	handles := []string{"k8s-pod-network.ABC", "ns/pod", strings.Repeat("c", 300), "plain-handle"}
	_, from, err := k.s.List(ctx, datastore.KindHandle, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := k.s.Watch(ctx, datastore.KindHandle, from)
	for _, id := range handles {
		h := api.Handle{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindHandle}, ID: id, Blocks: map[string]int{"10.0.0.0/26": 1}}
		out, err := k.s.Create(ctx, mustKV(t, datastore.KindHandle, id, map[string]string{"twill.dev/test": "names"}, h))
		if err != nil {
			t.Fatalf("Create(handle %q): %v", id, err)
		}
		if out.Name != id {
			t.Errorf("Create returned name %q, want %q", out.Name, id)
		}
		got, err := datastore.GetObject[api.Handle](ctx, k.s, datastore.KindHandle, id)
		if err != nil {
			t.Fatalf("Get(handle %q): %v", id, err)
		}
		if !reflect.DeepEqual(got.Value, h) || got.Name != id {
			t.Errorf("Get(handle %q) = %q %+v, want %+v", id, got.Name, got.Value, h)
		}
		// The object itself: hashed name and the annotation.
		u, err := k.dyn.Resource(gvr(crd.ResourceIPAMHandle)).Get(ctx, kube.ObjectName(id), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get object %s: %v", kube.ObjectName(id), err)
		}
		if kube.ObjectName(id) == id {
			if _, ok := u.GetAnnotations()[kube.AnnotationName]; ok {
				t.Errorf("object %s has a %s annotation it does not need", id, kube.AnnotationName)
			}
		} else if u.GetAnnotations()[kube.AnnotationName] != id {
			t.Errorf("object %s: annotation %s = %q, want %q", u.GetName(), kube.AnnotationName, u.GetAnnotations()[kube.AnnotationName], id)
		}
		// Update and Delete find the object by its logical name too.
		h.Blocks["10.0.0.0/26"] = 2
		kv := mustKV(t, datastore.KindHandle, id, map[string]string{"twill.dev/test": "names"}, h)
		kv.Revision = out.Revision
		if _, err := k.s.Update(ctx, kv); err != nil {
			t.Fatalf("Update(handle %q): %v", id, err)
		}
	}
	kvs, _, err := k.s.List(ctx, datastore.KindHandle, datastore.ListOptions{Labels: map[string]string{"twill.dev/test": "names"}})
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(handles))
	var got []string
	for _, kv := range kvs {
		got = append(got, kv.Name)
	}
	if !slices.Equal(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
	for _, id := range handles {
		if err := k.s.Delete(ctx, datastore.KindHandle, id, ""); err != nil {
			t.Fatalf("Delete(handle %q): %v", id, err)
		}
	}
	// The watch reports every event under the logical name.
	seen := map[string]int{}
	for n := 0; n < 3*len(handles); {
		select {
		case r, ok := <-w:
			if !ok || r.Err != nil {
				t.Fatalf("watch: %v (open %v)", r.Err, ok)
			}
			for _, ev := range r.Events {
				if !slices.Contains(handles, ev.KV.Name) {
					t.Fatalf("watch event for %q, not a logical name", ev.KV.Name)
				}
				seen[ev.KV.Name]++
				n++
			}
		case <-ctx.Done():
			t.Fatalf("watch: %d of %d events: %v", n, 3*len(handles), seen)
		}
	}
	for _, id := range handles {
		if seen[id] != 3 {
			t.Errorf("watch saw %d events for %q, want create, update and delete", seen[id], id)
		}
	}
}

// registerNode creates a v1.Node as kubelet would, and deletes it at the
// end of the test.
func (k *kubeEnv) registerNode(t *testing.T, name string) *corev1.Node {
	t.Helper()
	ctx := ctxFor(t)
	n, err := k.core.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("register node %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = k.core.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return n
}

func twillNode(name, addr string, mtu int) api.Node {
	return api.Node{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: name},
		Spec:     api.NodeSpec{Address: addr, Interface: "eth0", MTU: mtu, VTEPMAC: "66:04:84:48:ab:6a", TunnelAddress: "172.16.159.128"},
	}
}

func (k *kubeEnv) testNodes(t *testing.T) {
	ctx := ctxFor(t)
	const name = "k8s-node1"
	n := twillNode(name, "192.168.3.241/24", 1500)

	// Create needs the v1.Node.
	_, err := k.s.Create(ctx, mustKV(t, datastore.KindNode, name, nil, n))
	if !errors.Is(err, datastore.ErrNotFound) || !strings.Contains(err.Error(), "not registered with Kubernetes") {
		t.Fatalf("Create of an unregistered node = %v; want ErrNotFound saying it is not registered", err)
	}
	k.registerNode(t, name)
	k.registerNode(t, "plain-node")
	if _, err := k.s.Get(ctx, datastore.KindNode, name); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("Get of a Node without Twill's annotations = %v; want ErrNotFound", err)
	}
	if _, err := k.s.Update(ctx, mustKV(t, datastore.KindNode, name, nil, n)); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("Update of a Node without Twill's annotations = %v; want ErrNotFound", err)
	}

	created, err := k.s.Create(ctx, mustKV(t, datastore.KindNode, name, nil, n))
	if err != nil {
		t.Fatalf("Create(node %s): %v", name, err)
	}
	kn, err := k.core.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"twill.dev/IPv4Address":         "192.168.3.241/24",
		"twill.dev/IPv4VXLANTunnelAddr": "172.16.159.128",
		"twill.dev/VXLANTunnelMACAddr":  "66:04:84:48:ab:6a",
		"twill.dev/interface":           "eth0",
		"twill.dev/mtu":                 "1500",
	}
	for a, v := range want {
		if kn.Annotations[a] != v {
			t.Errorf("v1.Node annotation %s = %q, want %q (all: %v)", a, kn.Annotations[a], v, kn.Annotations)
		}
	}
	if created.Revision != kn.ResourceVersion {
		t.Errorf("Create revision %q, the Node's resourceVersion %q", created.Revision, kn.ResourceVersion)
	}
	if _, err := k.s.Create(ctx, mustKV(t, datastore.KindNode, name, nil, n)); !errors.Is(err, datastore.ErrExists) || !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("second Create(node) = %v; want ErrExists and ErrConflict", err)
	}
	got, err := datastore.GetObject[api.Node](ctx, k.s, datastore.KindNode, name)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Value, n) || got.Revision != created.Revision {
		t.Errorf("Get(node) = %+v at %s, want %+v at %s", got.Value, got.Revision, n, created.Revision)
	}

	// Compare-and-swap and an unconditional update that clears a field.
	n2 := n
	n2.Spec.MTU = 9000
	kv := mustKV(t, datastore.KindNode, name, map[string]string{"twill.dev/role": "edge"}, n2)
	kv.Revision = created.Revision
	updated, err := k.s.Update(ctx, kv)
	if err != nil {
		t.Fatalf("Update(node) at its revision: %v", err)
	}
	if updated.Revision == created.Revision || updated.Labels["twill.dev/role"] != "edge" {
		t.Errorf("Update returned revision %q labels %v", updated.Revision, updated.Labels)
	}
	kv.Revision = created.Revision
	if _, err := k.s.Update(ctx, kv); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("Update(node) at a stale revision = %v; want ErrConflict", err)
	}
	n3 := n2
	n3.Spec.TunnelAddress = ""
	if _, err := k.s.Update(ctx, mustKV(t, datastore.KindNode, name, nil, n3)); err != nil {
		t.Fatalf("unconditional Update(node): %v", err)
	}
	kn, err = k.core.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := kn.Annotations[kube.AnnotationIPv4VXLANTunnelAddr]; ok || kn.Annotations[kube.AnnotationMTU] != "9000" {
		t.Errorf("after clearing tunnelAddress and setting mtu 9000: annotations %v", kn.Annotations)
	}
	if kn.Labels["twill.dev/role"] != "edge" {
		t.Errorf("an update without labels removed the Node's label: %v", kn.Labels)
	}

	// List shows Twill nodes only, filtered by label.
	kvs, rev, err := k.s.List(ctx, datastore.KindNode, datastore.ListOptions{})
	if err != nil || rev == "" {
		t.Fatalf("List(nodes) at %q: %v", rev, err)
	}
	if len(kvs) != 1 || kvs[0].Name != name {
		t.Errorf("List(nodes) = %v, want only %s", kvs, name)
	}
	kvs, _, err = k.s.List(ctx, datastore.KindNode, datastore.ListOptions{Labels: map[string]string{"twill.dev/role": "core"}})
	if err != nil || len(kvs) != 0 {
		t.Errorf("List(nodes, role=core) = %v, %v; want none", kvs, err)
	}

	// Delete removes the v1.Node, with its precondition.
	if err := k.s.Delete(ctx, datastore.KindNode, name, created.Revision); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("Delete(node) at a stale revision = %v; want ErrConflict", err)
	}
	if err := k.s.Delete(ctx, datastore.KindNode, "plain-node", ""); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("Delete of a Node without Twill's annotations = %v; want ErrNotFound", err)
	}
	if err := k.s.Delete(ctx, datastore.KindNode, name, ""); err != nil {
		t.Fatalf("Delete(node): %v", err)
	}
	if _, err := k.core.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); err == nil {
		t.Error("the v1.Node still exists after Delete")
	}
}

// testNodeWatch: a watch of nodes reports Twill nodes only; a status update
// only moves the revision on; losing the annotations or the Node is a
// delete.
func (k *kubeEnv) testNodeWatch(t *testing.T) {
	ctx := ctxFor(t)
	k.registerNode(t, "watched")
	k.registerNode(t, "other")
	_, from, err := k.s.List(ctx, datastore.KindNode, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := k.s.Watch(ctx, datastore.KindNode, from)
	next := func(what string) datastore.WatchResponse {
		t.Helper()
		for i := 0; i < 100; i++ {
			select {
			case r, ok := <-w:
				if !ok || r.Err != nil {
					t.Fatalf("node watch ended waiting for %s: %v", what, r.Err)
				}
				if len(r.Events) > 0 {
					return r
				}
			case <-ctx.Done():
				t.Fatalf("node watch: no %s in time", what)
			}
		}
		t.Fatalf("node watch: 100 responses without %s", what)
		return datastore.WatchResponse{}
	}

	n := twillNode("watched", "10.1.0.5/16", 1450)
	created, err := k.s.Create(ctx, mustKV(t, datastore.KindNode, "watched", nil, n))
	if err != nil {
		t.Fatal(err)
	}
	r := next("the create")
	if ev := r.Events[0]; ev.Type != datastore.EventPut || ev.KV.Name != "watched" || ev.KV.Revision != created.Revision {
		t.Fatalf("first event %+v, want put of watched at %s", ev, created.Revision)
	}

	// kubelet's status updates and untouched Nodes bring no event.
	kn, err := k.core.CoreV1().Nodes().Get(ctx, "watched", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kn.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if _, err := k.core.CoreV1().Nodes().UpdateStatus(ctx, kn, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	other, err := k.core.CoreV1().Nodes().Get(ctx, "other", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other.Labels = map[string]string{"x": "y"}
	if _, err := k.core.CoreV1().Nodes().Update(ctx, other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Then a real change, which must be the next event.
	n.Spec.MTU = 1400
	if _, err := k.s.Update(ctx, mustKV(t, datastore.KindNode, "watched", nil, n)); err != nil {
		t.Fatal(err)
	}
	r = next("the update")
	if ev := r.Events[0]; ev.Type != datastore.EventPut || ev.KV.Name != "watched" || !strings.Contains(string(ev.KV.Value), `"mtu":1400`) {
		t.Fatalf("event after a status update and another Node's update: %+v %s; want the mtu update", ev, ev.KV.Value)
	}

	// Losing the annotations is a delete.
	kn, err = k.core.CoreV1().Nodes().Get(ctx, "watched", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kn.Annotations = nil
	if _, err := k.core.CoreV1().Nodes().Update(ctx, kn, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = next("the delete")
	if ev := r.Events[0]; ev.Type != datastore.EventDelete || ev.KV.Name != "watched" {
		t.Fatalf("event after removing the annotations: %+v; want delete of watched", ev)
	}

	// Annotated again, then the Node is deleted: put, then delete.
	if _, err := k.s.Create(ctx, mustKV(t, datastore.KindNode, "watched", nil, n)); err != nil {
		t.Fatal(err)
	}
	if r = next("the second create"); r.Events[0].Type != datastore.EventPut {
		t.Fatalf("event %+v; want a put", r.Events[0])
	}
	if err := k.core.CoreV1().Nodes().Delete(ctx, "watched", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if r = next("the Node's deletion"); r.Events[0].Type != datastore.EventDelete || r.Events[0].KV.Name != "watched" {
		t.Fatalf("event %+v; want delete of watched", r.Events[0])
	}
}

// seedPool is the seed cluster's default pool, as kubectl describe shows
// it.
func seedPool() api.IPPool {
	return api.IPPool{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
		Metadata: api.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: api.IPPoolSpec{CIDR: "172.16.0.0/16", BlockSize: 26, VXLANMode: api.EncapCrossSubnet, IPIPMode: api.EncapNever,
			NATOutgoing: true, NodeSelector: "all()", AllowedUses: []api.IPPoolUse{api.UseWorkload, api.UseTunnel}},
	}
}

// testIPPoolSpecFields: the IPPool resource's spec has exactly the fields
// of api.IPPoolSpec, under their JSON names, so kubectl describe shows
// Allowed Uses, Block Size, Cidr, Ipip Mode, Nat Outgoing, Node Selector
// and Vxlan Mode.
func (k *kubeEnv) testIPPoolSpecFields(t *testing.T) {
	ctx := ctxFor(t)
	p := seedPool()
	if _, err := datastore.Put(ctx, k.s, mustKV(t, datastore.KindIPPool, p.Metadata.Name, nil, p)); err != nil {
		t.Fatal(err)
	}
	u, err := k.dyn.Resource(gvr(crd.ResourceIPPool)).Get(ctx, p.Metadata.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := u.Object["spec"].(map[string]any)
	var keys []string
	for key := range spec {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	want := []string{"allowedUses", "blockSize", "cidr", "ipipMode", "natOutgoing", "nodeSelector", "vxlanMode"}
	if !slices.Equal(keys, want) {
		t.Errorf("IPPool spec fields %v, want %v", keys, want)
	}
	if spec["cidr"] != "172.16.0.0/16" || spec["vxlanMode"] != "CrossSubnet" || fmt.Sprint(spec["blockSize"]) != "26" {
		t.Errorf("IPPool spec %v", spec)
	}
	got, err := datastore.GetObject[api.IPPool](ctx, k.s, datastore.KindIPPool, p.Metadata.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Value, p) {
		t.Errorf("read back %+v, want %+v", got.Value, p)
	}
}

// testKubectlDescribe runs the real kubectl describe on the seed's pool.
func (k *kubeEnv) testKubectlDescribe(t *testing.T) {
	ctx := ctxFor(t)
	kubectl := kubetest.Kubectl(t)
	p := seedPool()
	if _, err := datastore.Put(ctx, k.s, mustKV(t, datastore.KindIPPool, p.Metadata.Name, nil, p)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", k.c.Kubeconfig, "describe", "ippool", p.Metadata.Name).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl describe ippool: %v\n%s", err, out)
	}
	text := string(out)
	for _, line := range []string{"Allowed Uses:", "Workload", "Tunnel", "Block Size:     26", "Cidr:           172.16.0.0/16",
		"Ipip Mode:      Never", "Nat Outgoing:   true", "Node Selector:  all()", "Vxlan Mode:     CrossSubnet"} {
		if !strings.Contains(text, line) {
			t.Errorf("kubectl describe lacks %q:\n%s", line, text)
		}
	}
	out, err = exec.CommandContext(ctx, kubectl, "--kubeconfig", k.c.Kubeconfig, "get", "ippools").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get ippools: %v\n%s", err, out)
	}
	for _, col := range []string{"CIDR", "BLOCKSIZE", "VXLANMODE", "NATOUTGOING", "DISABLED", "AGE", "172.16.0.0/16", "CrossSubnet"} {
		if !strings.Contains(string(out), col) {
			t.Errorf("kubectl get ippools lacks %q:\n%s", col, out)
		}
	}
}

// testInvalidIPPool: the CRD's schema refuses what api.IPPool.Validate
// refuses, with its message, as ErrInvalid.
func (k *kubeEnv) testInvalidIPPool(t *testing.T) {
	ctx := ctxFor(t)
	for _, tc := range []struct {
		name string
		edit func(*api.IPPoolSpec)
		msg  string
		// same: twill apply (api.IPPool.Validate) says the same words. The
		// others are the apiserver's own enum, format and set messages.
		same bool
	}{
		{"block-33", func(s *api.IPPoolSpec) { s.BlockSize = 33 }, "between 20 and 32 for IPv4", true},
		{"block-v6-100", func(s *api.IPPoolSpec) { s.CIDR, s.BlockSize = "fd00::/48", 100 }, "between 116 and 128 for IPv6", true},
		{"not-cidr", func(s *api.IPPoolSpec) { s.CIDR = "10.0.0.1" }, "must be a network in CIDR notation", false},
		{"host-bits", func(s *api.IPPoolSpec) { s.CIDR = "10.0.0.1/16" }, "has host bits set", true},
		{"link-local", func(s *api.IPPoolSpec) { s.CIDR = "169.254.0.0/16" }, "link-local", true},
		{"small", func(s *api.IPPoolSpec) { s.CIDR = "10.0.0.0/28" }, "smaller than one", true},
		{"mode", func(s *api.IPPoolSpec) { s.VXLANMode = "always" }, "Unsupported value", false},
		{"both", func(s *api.IPPoolSpec) { s.IPIPMode = api.EncapAlways }, "cannot both be enabled", true},
		{"use", func(s *api.IPPoolSpec) { s.AllowedUses = []api.IPPoolUse{"LoadBalancer"} }, "Unsupported value", false},
		{"dup-use", func(s *api.IPPoolSpec) { s.AllowedUses = []api.IPPoolUse{api.UseWorkload, api.UseWorkload} }, "Duplicate value", false},
	} {
		p := seedPool()
		p.Metadata.Name = "invalid-" + tc.name
		tc.edit(&p.Spec)
		if verr := p.Validate(); verr == nil || (tc.same && !strings.Contains(verr.Error(), tc.msg)) {
			t.Errorf("%s: api validation = %v; want it refused (saying %q: %v)", tc.name, verr, tc.msg, tc.same)
		}
		_, err := k.s.Create(ctx, mustKV(t, datastore.KindIPPool, p.Metadata.Name, nil, p))
		if !errors.Is(err, datastore.ErrInvalid) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: Create = %v; want ErrInvalid saying %q", tc.name, err, tc.msg)
		}
	}
	// An update to an invalid spec is refused too, and changes nothing.
	p := seedPool()
	p.Metadata.Name = "valid-then-invalid"
	created, err := k.s.Create(ctx, mustKV(t, datastore.KindIPPool, p.Metadata.Name, nil, p))
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.BlockSize = 33
	kv := mustKV(t, datastore.KindIPPool, p.Metadata.Name, nil, p)
	kv.Revision = created.Revision
	if _, err := k.s.Update(ctx, kv); !errors.Is(err, datastore.ErrInvalid) || !strings.Contains(err.Error(), "between 20 and 32") {
		t.Errorf("Update to blockSize 33 = %v; want ErrInvalid", err)
	}
	if got, err := k.s.Get(ctx, datastore.KindIPPool, p.Metadata.Name); err != nil || got.Revision != created.Revision {
		t.Errorf("after a refused update: %v at %q, want revision %q", err, got.Revision, created.Revision)
	}
}

// testListPages lists in pages of 3 and checks the pages add up to List.
func (k *kubeEnv) testListPages(t *testing.T) {
	ctx := ctxFor(t)
	defer kube.SetPageSize(3)()
	labels := map[string]string{"twill.dev/test": "pages"}
	for i := 0; i < 7; i++ {
		cidr := fmt.Sprintf("10.200.%d.0/26", i)
		b := api.Block{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock}, CIDR: cidr}
		if _, err := k.s.Create(ctx, mustKV(t, datastore.KindBlock, datastore.BlockName(cidr), labels, b)); err != nil {
			t.Fatal(err)
		}
	}
	all, _, err := k.s.List(ctx, datastore.KindBlock, datastore.ListOptions{Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	var paged []datastore.KV
	var sizes []int
	rev, err := k.s.ListPages(ctx, datastore.KindBlock, datastore.ListOptions{Labels: labels}, func(kvs []datastore.KV, restart bool) error {
		if restart {
			paged, sizes = nil, nil
		}
		paged = append(paged, kvs...)
		sizes = append(sizes, len(kvs))
		return nil
	})
	if err != nil || rev == "" {
		t.Fatalf("ListPages at %q: %v", rev, err)
	}
	if !slices.Equal(sizes, []int{3, 3, 1}) {
		t.Errorf("page sizes %v, want [3 3 1]", sizes)
	}
	if !reflect.DeepEqual(paged, all) {
		t.Errorf("pages add up to %v, List gives %v", paged, all)
	}
}

// testWrongCredentials: New explains a CA that does not match and a
// missing client certificate.
func (k *kubeEnv) testWrongCredentials(t *testing.T) {
	ctx := ctxFor(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other-ca"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	rc := rest.CopyConfig(k.c.Config)
	rc.CAData = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	_, err = kube.New(ctx, kube.Config{REST: rc})
	if err == nil || errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), "check the certificate authority") {
		t.Errorf("New with another CA = %v; want an error about the certificate authority", err)
	}
	t.Logf("another CA: %v", err)

	rc = rest.CopyConfig(k.c.Config)
	rc.CertData, rc.KeyData = nil, nil
	_, err = kube.New(ctx, kube.Config{REST: rc})
	if err == nil || errors.Is(err, datastore.ErrUnavailable) || !(strings.Contains(err.Error(), "credentials") || strings.Contains(err.Error(), "RBAC")) {
		t.Errorf("New without a client certificate = %v; want an error about the credentials", err)
	}
	t.Logf("no client certificate: %v", err)
}

// testApiserverStops stops the apiserver: an open watch ends with
// ErrUnavailable, and requests fail with ErrUnavailable naming the
// apiserver.
func (k *kubeEnv) testApiserverStops(t *testing.T) {
	ctx := ctxFor(t)
	_, from, err := k.s.List(ctx, datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := k.s.Watch(ctx, datastore.KindIPPool, from)
	if err := k.c.Server.Stop(); err != nil {
		t.Fatalf("stop the apiserver: %v", err)
	}
	select {
	case r, ok := <-w:
		if !ok || !errors.Is(r.Err, datastore.ErrUnavailable) {
			t.Errorf("watch after the apiserver stopped: %+v (open %v); want ErrUnavailable", r, ok)
		}
	case <-ctx.Done():
		t.Fatal("the watch did not end after the apiserver stopped")
	}
	_, err = k.s.Get(ctx, datastore.KindIPPool, "default-ipv4-ippool")
	if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), k.c.Server.URL) {
		t.Errorf("Get with the apiserver stopped = %v; want ErrUnavailable naming %s", err, k.c.Server.URL)
	}
	_, err = kube.New(ctx, kube.Config{Kubeconfig: k.c.Kubeconfig, RequestTimeout: 5 * time.Second})
	if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), k.c.Server.URL) || !strings.Contains(err.Error(), k.c.Kubeconfig) {
		t.Errorf("New with the apiserver stopped = %v; want ErrUnavailable naming %s and %s", err, k.c.Server.URL, k.c.Kubeconfig)
	}
	t.Logf("apiserver stopped: %v", err)
}

// TestNewUnreachable needs no apiserver: nothing listens on the port.
func TestNewUnreachable(t *testing.T) {
	ctx := ctxFor(t)
	start := time.Now()
	_, err := kube.New(ctx, kube.Config{REST: &rest.Config{Host: "https://127.0.0.1:1", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}, RequestTimeout: 3 * time.Second})
	if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("New = %v; want ErrUnavailable naming the apiserver", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("New took %s to fail", d)
	}
}
