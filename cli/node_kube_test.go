package cli

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/agent"
	"twill.dev/twill/datastore/kubetest"
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/kube"
)

// TestKubeHooks: with the kubernetes datastore, `node run` gives the agent
// a pod source that reads pods from the same apiserver, and the IPAM
// garbage collector as a background task.
func TestKubeHooks(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	// No controller manager runs to create the namespace's default
	// service account, which the apiserver requires of a pod.
	if _, err := client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Annotations: map[string]string{"cni.projectcalico.org/ipAddrs": `["172.16.159.145"]`}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cfg agent.Config
	if err := kubeHooks(&cfg, open.Config{Type: open.TypeKubernetes, Kubeconfig: c.Kubeconfig}, kube.GCConfig{Namespace: "kube-system"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Pods == nil || len(cfg.Background) != 1 {
		t.Fatalf("kubeHooks set Pods %v and %d background tasks; want a pod source and the GC", cfg.Pods, len(cfg.Background))
	}
	info, err := cfg.Pods.Pod(ctx, "default", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if info.UID != string(pod.UID) || len(info.IPAddrs) != 1 || info.IPAddrs[0] != "172.16.159.145" {
		t.Errorf("Pod(default/web-1) = %+v; want UID %s and address 172.16.159.145", info, pod.UID)
	}
}
