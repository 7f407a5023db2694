package kube

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"twill.dev/twill/agent"
)

func testPod(ns, name, uid string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid), Annotations: ann}}
}

func TestPodSource(t *testing.T) {
	client := fake.NewClientset(
		testPod("default", "plain", "u-plain", nil),
		testPod("default", "calico", "u-calico", map[string]string{
			agent.CalicoAnnotationIPAddrs: `["10.0.0.7"]`,
			agent.CalicoAnnotationPools:   `["pool-a","pool-b"]`,
		}),
		testPod("default", "both", "u-both", map[string]string{
			agent.CalicoAnnotationIPAddrs: `["10.0.0.7"]`,
			agent.AnnotationIPAddrs:       `["10.0.0.8"]`,
			agent.CalicoAnnotationPools:   `["pool-a"]`,
			agent.AnnotationPools:         `["pool-t"]`,
		}),
		testPod("kube-system", "bad-addrs", "u-bad", map[string]string{agent.AnnotationIPAddrs: `10.0.0.7`}),
		testPod("kube-system", "bad-pools", "u-bad2", map[string]string{agent.CalicoAnnotationPools: `[1]`}),
	)
	src := NewPodSource(client)
	ctx := context.Background()

	for _, tc := range []struct {
		ns, name string
		want     agent.PodInfo
	}{
		{"default", "plain", agent.PodInfo{UID: "u-plain"}},
		{"default", "calico", agent.PodInfo{
			UID: "u-calico", IPAddrs: []string{"10.0.0.7"}, Pools: []string{"pool-a", "pool-b"},
			IPAddrsAnnotation: agent.CalicoAnnotationIPAddrs, PoolsAnnotation: agent.CalicoAnnotationPools,
		}},
		{"default", "both", agent.PodInfo{
			UID: "u-both", IPAddrs: []string{"10.0.0.8"}, Pools: []string{"pool-t"},
			IPAddrsAnnotation: agent.AnnotationIPAddrs, PoolsAnnotation: agent.AnnotationPools,
		}},
	} {
		got, err := src.Pod(ctx, tc.ns, tc.name)
		if err != nil {
			t.Fatalf("Pod(%s/%s): %v", tc.ns, tc.name, err)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Pod(%s/%s) = %+v, want %+v", tc.ns, tc.name, got, tc.want)
		}
	}

	for _, tc := range []struct{ name, annotation string }{
		{"bad-addrs", agent.AnnotationIPAddrs},
		{"bad-pools", agent.CalicoAnnotationPools},
	} {
		_, err := src.Pod(ctx, "kube-system", tc.name)
		if !errors.Is(err, agent.ErrBadAnnotation) {
			t.Fatalf("Pod(kube-system/%s) error = %v, want agent.ErrBadAnnotation", tc.name, err)
		}
		if msg := err.Error(); !strings.Contains(msg, tc.annotation) || !strings.Contains(msg, "kube-system/"+tc.name) {
			t.Errorf("error %q does not name annotation %s and pod kube-system/%s", msg, tc.annotation, tc.name)
		}
	}

	_, err := src.Pod(ctx, "default", "missing")
	if !errors.Is(err, agent.ErrPodNotFound) {
		t.Fatalf("missing pod: error = %v, want agent.ErrPodNotFound", err)
	}

	// One GET per call, nothing else.
	client.ClearActions()
	if _, err := src.Pod(ctx, "default", "calico"); err != nil {
		t.Fatal(err)
	}
	acts := client.Actions()
	if len(acts) != 1 || acts[0].GetVerb() != "get" || acts[0].GetResource().Resource != "pods" {
		t.Fatalf("actions = %v, want one get of pods", acts)
	}
}

func TestPodSourceAPIError(t *testing.T) {
	client := fake.NewClientset()
	boom := errors.New("apiserver on fire")
	client.PrependReactor("get", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, boom
	})
	_, err := NewPodSource(client).Pod(context.Background(), "default", "x")
	if !errors.Is(err, boom) {
		t.Fatalf("error = %v, want it to wrap the API error", err)
	}
	if errors.Is(err, agent.ErrPodNotFound) {
		t.Fatalf("API failure reported as pod not found: %v", err)
	}
}

// TestPodSourceTimeout points a real clientset at an apiserver that never
// answers: Pod gives up after its Timeout.
func TestPodSourceTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	src := NewPodSource(client)
	src.Timeout = 100 * time.Millisecond
	start := time.Now()
	_, err = src.Pod(context.Background(), "default", "x")
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Pod succeeded against a silent apiserver")
	}
	if errors.Is(err, agent.ErrPodNotFound) {
		t.Fatalf("timeout reported as pod not found: %v", err)
	}
	if elapsed > 5*time.Second {
		t.Fatalf("Pod took %v with a 100ms timeout", elapsed)
	}
}
