package kube

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/agent"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/kubetest"
	"twill.dev/twill/ipam"
)

// TestGCOnRealAPIServer runs two GCs against a real kube-apiserver: exactly
// one holds the Lease at any time, a pod deleted from the API has its
// address released once the grace has passed (and not before), the other
// pod's address is kept, and when the leader stops the other one takes
// over. PodSource reads the same pods.
func TestGCOnRealAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	newClient := func() kubernetes.Interface {
		cs, err := kubernetes.NewForConfig(c.Config)
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	admin := newClient()

	// kube-system is made by the apiserver shortly after it is ready.
	_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The ServiceAccount admission plugin wants the default account.
	_, err = admin.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The GCs run on a and b; the pods run on c.
	for _, n := range []string{"a", "b", "c"} {
		if _, err := admin.CoreV1().Nodes().Create(ctx, k8sNode(n), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	no := false
	newPod := func(name string) *corev1.Pod {
		p, err := admin.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{agent.AnnotationPools: `["default"]`}},
			Spec: corev1.PodSpec{
				NodeName:                     "c",
				AutomountServiceAccountToken: &no,
				Containers:                   []corev1.Container{{Name: "c", Image: "example.invalid/pause"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s: %v", name, err)
		}
		return p
	}
	web, keep := newPod("web"), newPod("keep")

	info, err := NewPodSource(newClient()).Pod(ctx, "default", "web")
	if err != nil || info.UID != string(web.UID) || len(info.Pools) != 1 || info.Pools[0] != "default" {
		t.Fatalf("PodSource on the real apiserver: %+v, %v", info, err)
	}

	store := datastore.NewFake()
	putPool(t, store, "default", "10.244.0.0/16")
	m := ipam.New(store, ipam.WithCacheTTL(0))
	webIP := allocPod(t, m, "cweb.eth0", "c", "default", "web", string(web.UID))
	tunnels := map[string]netip.Addr{"a": allocTunnel(t, m, "a"), "b": allocTunnel(t, m, "b")}
	keepIP := allocPod(t, m, "ckeep.eth0", "c", "default", "keep", string(keep.UID))

	const grace = time.Second
	type instance struct {
		gc     *GC
		cancel context.CancelFunc
		done   chan error
	}
	start := func(id string) *instance {
		g, err := NewGC(GCConfig{
			Client:        newClient(),
			IPAM:          ipam.New(store, ipam.WithCacheTTL(0)),
			Store:         store,
			Identity:      id,
			Interval:      200 * time.Millisecond,
			Grace:         grace,
			BlockMinAge:   time.Hour,
			Debounce:      50 * time.Millisecond,
			LeaseDuration: 3 * time.Second,
			RenewDeadline: 2 * time.Second,
			RetryPeriod:   200 * time.Millisecond,
			Logger:        slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("gc", id),
		})
		if err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithCancel(ctx)
		in := &instance{gc: g, cancel: rcancel, done: make(chan error, 1)}
		go func() { in.done <- g.Run(rctx) }()
		return in
	}
	stop := func(in *instance) {
		in.cancel()
		select {
		case err := <-in.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	}
	ga, gb := start("a"), start("b")
	stopped := map[*instance]bool{}
	defer func() {
		for _, in := range []*instance{ga, gb} {
			if !stopped[in] {
				stop(in)
			}
		}
	}()

	holder := func() string {
		l, err := admin.CoordinationV1().Leases(DefaultNamespace).Get(ctx, LeaseName, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	waitFor(t, 20*time.Second, "a leader", func() bool { return ga.gc.IsLeader() || gb.gc.IsLeader() })
	// For a while, exactly one leads, and it is the Lease's holder.
	for range 100 {
		a, b := ga.gc.IsLeader(), gb.gc.IsLeader()
		if a == b {
			t.Fatalf("leaders: a=%v b=%v, want exactly one", a, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	leader, follower := ga, gb
	if gb.gc.IsLeader() {
		leader, follower = gb, ga
	}
	if h := holder(); h != leader.gc.cfg.Identity {
		t.Fatalf("Lease holder %q, leader %q", h, leader.gc.cfg.Identity)
	}

	// Delete web: its address goes once the grace has passed; keep's stays.
	zero := int64(0)
	deleted := time.Now()
	if err := admin.CoreV1().Pods("default").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	allocated := func(ip netip.Addr) bool { _, ok := handlesOf(t, m)[ip]; return ok }
	waitFor(t, 20*time.Second, "the deleted pod's address to be released", func() bool { return !allocated(webIP) })
	if took := time.Since(deleted); took < grace {
		t.Fatalf("released %v after the pod was deleted, within the grace of %v", took, grace)
	}
	if !allocated(keepIP) {
		t.Fatal("the live pod's address was released")
	}

	// The leader stops (releasing the Lease): the follower takes over.
	stop(leader)
	stopped[leader] = true
	waitFor(t, 20*time.Second, "the follower to take over", func() bool {
		return follower.gc.IsLeader() && holder() == follower.gc.cfg.Identity
	})

	// The stopped leader's node is deleted: its tunnel address goes too.
	gone := leader.gc.cfg.Identity
	tun := tunnels[gone]
	if err := admin.CoreV1().Nodes().Delete(ctx, gone, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the deleted node's tunnel address to be released", func() bool { return !allocated(tun) })
	if !allocated(keepIP) || !allocated(tunnels[follower.gc.cfg.Identity]) {
		t.Fatal("a live pod's or node's address was released")
	}
}

// testWriter sends log output to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
