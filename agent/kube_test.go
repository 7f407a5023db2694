package agent

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/kube"
	"twill.dev/twill/datastore/kubetest"
)

// TestRegisterOnKubernetes runs the agent's registration against a real
// kube-apiserver: the default pool comes from CALICO_IPV4POOL_* as on
// etcd, and the node's address (with its prefix), VTEP MAC and tunnel
// address land as annotations on the v1.Node the kubelet registered, next
// to the kubelet's labels.
func TestRegisterOnKubernetes(t *testing.T) {
	c := kubetest.StartWithCRDs(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: "k8s-master1", Labels: map[string]string{"kubernetes.io/hostname": "k8s-master1"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := kube.New(ctx, kube.Config{REST: c.Config})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })

	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.run(store)
	h.waitReady()

	pool, err := datastore.GetObject[api.IPPool](ctx, store, datastore.KindIPPool, api.DefaultPoolName)
	if err != nil {
		t.Fatalf("default pool not created from CALICO_IPV4POOL_*: %v", err)
	}
	if pool.Value.Spec.CIDR != "172.16.0.0/16" || pool.Value.Spec.VXLANMode != api.EncapCrossSubnet || pool.Value.Spec.BlockSize != 26 {
		t.Errorf("default pool = %+v, want 172.16.0.0/16 /26 CrossSubnet from the environment", pool.Value.Spec)
	}
	n, err := client.CoreV1().Nodes().Get(ctx, "k8s-master1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ann := n.Annotations
	if ann[kube.AnnotationIPv4Address] != "192.168.3.241/24" || ann[kube.AnnotationVXLANTunnelMACAddr] != "66:04:84:48:ab:6a" || ann[kube.AnnotationInterface] != "eth0" {
		t.Errorf("v1.Node annotations = %v, want address 192.168.3.241/24 with its prefix, VTEP MAC 66:04:84:48:ab:6a and interface eth0", ann)
	}
	if n.Labels["kubernetes.io/hostname"] != "k8s-master1" {
		t.Errorf("the kubelet's labels were lost: %v", n.Labels)
	}
	tunnel, err := netip.ParseAddr(ann[kube.AnnotationIPv4VXLANTunnelAddr])
	if err != nil || !netip.MustParsePrefix("172.16.0.0/16").Contains(tunnel) {
		t.Fatalf("tunnel address annotation %q is not an address of the pool (%v)", ann[kube.AnnotationIPv4VXLANTunnelAddr], err)
	}
	blocks, _, err := datastore.ListObjects[api.Block](ctx, store, datastore.KindBlock, datastore.ListOptions{Labels: map[string]string{datastore.LabelNode: "k8s-master1"}})
	if err != nil || len(blocks) != 1 {
		t.Fatalf("blocks of k8s-master1: %d, %v; want the one it claimed", len(blocks), err)
	}
	b := blocks[0].Value
	if b.Affinity != "k8s-master1" || len(b.Allocations) != 1 || b.Allocations[0].Handle != "vxlan-tunnel-addr-k8s-master1" ||
		!netip.MustParsePrefix(b.CIDR).Contains(tunnel) {
		t.Errorf("block %+v; want affinity k8s-master1 holding the tunnel address %s", b, tunnel)
	}
}
