package cli_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore/kubetest"
)

// TestKubernetesDatastore runs apply, get, describe, ipam show and delete
// against a real kube-apiserver, selected with TWILL_DATASTORE_TYPE and
// KUBECONFIG as in a pod's environment, and with the flags.
func TestKubernetesDatastore(t *testing.T) {
	c := kubetest.StartWithCRDs(t)
	env := []string{"TWILL_DATASTORE_TYPE=kubernetes", "KUBECONFIG=" + c.Kubeconfig}
	kube := func(stdin string, args ...string) result {
		t.Helper()
		return twillEnv(t, env, stdin, args...)
	}
	node := `apiVersion: twill.dev/v1
kind: Node
metadata:
  name: k8s-node1
spec:
  address: 192.168.32.105/24
`
	// On Kubernetes a Twill node is the annotations of the v1.Node that
	// its kubelet registered: without that Node the document fails, and
	// says so, after the pool before it was applied.
	r := kube(seedPool+"---\n"+node, "apply", "-f", "-")
	mustFail(t, r, "document 2", "k8s-node1", "kubelet")
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool created" {
		t.Fatalf("apply output %q", r.stdout)
	}
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "k8s-node1",
		Labels: map[string]string{"kubernetes.io/hostname": "k8s-node1"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = mustSucceed(t, kube(seedPool+"---\n"+node, "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool unchanged\nnode.twill.dev/k8s-node1 created" {
		t.Fatalf("apply output %q", r.stdout)
	}
	r = mustSucceed(t, kube(seedPool, "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool unchanged" {
		t.Fatalf("re-apply output %q", r.stdout)
	}
	// The flags select the same datastore.
	r = mustSucceed(t, twillEnv(t, nil, "", "get", "ippools", "--datastore", "kubernetes", "--kubeconfig", c.Kubeconfig))
	if !strings.Contains(r.stdout, "default-ipv4-ippool") || !strings.Contains(r.stdout, "172.16.0.0/16") {
		t.Errorf("get ippools:\n%s", r.stdout)
	}
	r = mustSucceed(t, kube("", "get", "nodes"))
	if !strings.Contains(r.stdout, "k8s-node1") || !strings.Contains(r.stdout, "192.168.32.105/24") {
		t.Errorf("get nodes:\n%s", r.stdout)
	}
	// The kubelet's labels stay on the Node.
	n, err := client.CoreV1().Nodes().Get(ctx, "k8s-node1", metav1.GetOptions{})
	if err != nil || n.Labels["kubernetes.io/hostname"] != "k8s-node1" {
		t.Errorf("v1.Node after apply: labels %v, %v", n.Labels, err)
	}
	// A read-modify-write with the apiserver's resourceVersion.
	got := mustSucceed(t, kube("", "get", "ippool", "default-ipv4-ippool", "-o", "yaml")).stdout
	docs, err := api.DecodeDocuments([]byte(got))
	if err != nil || len(docs) != 1 || docs[0].Pool == nil || docs[0].Pool.Metadata.ResourceVersion == "" {
		t.Fatalf("get -o yaml: %v\n%s", err, got)
	}
	edited := strings.Replace(got, "natOutgoing: true", "natOutgoing: false", 1)
	r = mustSucceed(t, kube(edited, "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool configured" {
		t.Fatalf("apply with resourceVersion: %q", r.stdout)
	}
	mustFail(t, kube(edited, "apply", "-f", "-"), "stale")
	r = mustSucceed(t, kube("", "describe", "ippool", "default-ipv4-ippool"))
	if !strings.Contains(r.stdout, "Nat Outgoing:   false") || !strings.Contains(r.stdout, "Addresses:") {
		t.Errorf("describe:\n%s", r.stdout)
	}
	r = mustSucceed(t, kube("", "ipam", "show"))
	if !strings.Contains(r.stdout, "172.16.0.0/16") || !strings.Contains(r.stdout, "65536") {
		t.Errorf("ipam show:\n%s", r.stdout)
	}
	mustSucceed(t, kube("", "delete", "ippool", "default-ipv4-ippool"))
	r = mustSucceed(t, kube("", "get", "ippools"))
	if strings.Contains(r.stdout, "default-ipv4-ippool") {
		t.Errorf("pool still listed after delete:\n%s", r.stdout)
	}
	// Calico's projectcalico.org/v3 IPPool, as `calicoctl get ippool -o
	// yaml` prints it, is stored as a twill.dev/v1 IPPool on this backend
	// too, and the apiserver's schema accepts the converted spec.
	calico := `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: calico-pool
  creationTimestamp: "2023-11-09T01:00:00Z"
  uid: 0b7b7c6e-1b4e-4f0a-9d5e-6a1c2c6f2f00
spec:
  allowedUses:
  - Workload
  - Tunnel
  blockSize: 26
  cidr: 10.244.0.0/16
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: CrossSubnet
`
	r = mustSucceed(t, kube(calico, "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/calico-pool created" {
		t.Fatalf("apply of a Calico v3 IPPool: %q", r.stdout)
	}
	r = mustSucceed(t, kube("", "get", "ippool", "calico-pool", "-o", "yaml"))
	for _, want := range []string{"apiVersion: twill.dev/v1", "cidr: 10.244.0.0/16", "vxlanMode: CrossSubnet", "natOutgoing: true"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("get ippool calico-pool -o yaml lacks %q:\n%s", want, r.stdout)
		}
	}
}
