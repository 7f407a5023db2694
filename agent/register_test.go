package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/ipam"
)

// kubeNodes is a store that, as the Kubernetes backend does, only updates
// nodes: creating a Node whose v1.Node the kubelet has not registered
// fails with a wrapped ErrNotFound.
type kubeNodes struct {
	*datastore.Fake
	creates atomic.Int32
}

func (s *kubeNodes) Create(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	if kv.Kind == datastore.KindNode {
		s.creates.Add(1)
		return datastore.KV{}, fmt.Errorf("create nodes %q: the v1.Node does not exist: %w", kv.Name, datastore.ErrNotFound)
	}
	return s.Fake.Create(ctx, kv)
}

// TestRegisterWaitsForTheKubelet: on Kubernetes the agent cannot create
// its Node; it waits, saying so, until the kubelet has registered it, then
// writes its fields into it, keeping the kubelet's labels.
func TestRegisterWaitsForTheKubelet(t *testing.T) {
	store := &kubeNodes{Fake: datastore.NewFake()}
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	a := h.run(store)
	nettest.Eventually(t, 10*time.Second, time.Millisecond, "the agent says it waits for the kubelet", func() (bool, string) {
		_, why := a.readiness()
		return strings.Contains(why, "waiting for kubelet to register node k8s-master1"), why
	})
	h.advanceUntil("a second attempt", func() bool { return store.creates.Load() >= 2 })
	if !strings.Contains(h.logs.String(), "waiting for kubelet to register node k8s-master1") {
		t.Errorf("the wait is not logged:\n%s", h.logs)
	}

	// The kubelet registers the node.
	kubelet := api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
		Metadata: api.ObjectMeta{Name: "k8s-master1", Labels: map[string]string{"kubernetes.io/hostname": "k8s-master1"}}}
	kv := objKV(t, datastore.KindNode, "k8s-master1", kubelet)
	kv.Labels = map[string]string{"kubernetes.io/hostname": "k8s-master1"}
	if _, err := store.Fake.Create(context.Background(), kv); err != nil {
		t.Fatal(err)
	}
	h.advanceUntil("the agent is registered", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.registered
	})
	h.waitReady()
	n := getNode(t, store, "k8s-master1")
	if n.Value.Spec.Address != "192.168.3.241/24" || n.Value.Spec.TunnelAddress == "" || n.Value.Metadata.Labels["kubernetes.io/hostname"] != "k8s-master1" ||
		n.Labels["kubernetes.io/hostname"] != "k8s-master1" {
		t.Errorf("node after registration = %+v (labels %v); want the agent's fields and the kubelet's labels", n.Value, n.Labels)
	}
}

// TestBackgroundTasks: Config.Background tasks run once the node is
// registered, with the agent's store and IPAM, are started again when they
// return early, and end with the agent.
func TestBackgroundTasks(t *testing.T) {
	var mu sync.Mutex
	runs := 0
	var sawStore datastore.Store
	var sawIPAM *ipam.IPAM
	ended := make(chan struct{})
	h := newHarness(t, nil, func(c *Config) {
		c.Getenv = seedEnv
		c.Background = []func(context.Context, *Agent){func(ctx context.Context, a *Agent) {
			mu.Lock()
			runs++
			n := runs
			sawStore, sawIPAM = a.Store(), a.IPAM()
			mu.Unlock()
			if n == 1 {
				return // ends early: started again
			}
			<-ctx.Done()
			close(ended)
		}}
	})
	h.start()
	h.advanceUntil("the task is started again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return runs >= 2
	})
	mu.Lock()
	if sawStore != h.store || sawIPAM != h.agent.IPAM() || sawIPAM == nil {
		t.Errorf("the task got store %v and IPAM %p; want the agent's (%p)", sawStore, sawIPAM, h.agent.IPAM())
	}
	mu.Unlock()
	if !strings.Contains(h.logs.String(), "background task returned") {
		t.Errorf("the early return is not logged:\n%s", h.logs)
	}
	h.stop()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the task did not see the agent's context end")
	}

	// A shared IPAM is the one the agent allocates with.
	h2 := newHarness(t, nil, nil)
	shared := ipam.New(h2.store)
	h2.cfg.IPAM = shared
	a, err := New(h2.store, h2.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.IPAM() != shared {
		t.Errorf("Config.IPAM was not used")
	}
	if err := (Config{NodeName: "n1", PodTimeout: -time.Second}).Check(); !errors.Is(err, ErrConfig) {
		t.Errorf("a negative pod timeout: %v, want ErrConfig", err)
	}
}
