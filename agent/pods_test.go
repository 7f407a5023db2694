package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
)

// fakePods is a PodSource over pods given by their UID and annotations,
// read with PodFromAnnotations as a Kubernetes PodSource does.
type fakePods struct {
	mu   sync.Mutex
	pods map[string]fakePod // by namespace/name
	err  error              // returned by every lookup when set
	asks int
}

type fakePod struct {
	uid         string
	annotations map[string]string
}

func (f *fakePods) Pod(ctx context.Context, namespace, name string) (PodInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asks++
	if f.err != nil {
		return PodInfo{}, f.err
	}
	p, ok := f.pods[namespace+"/"+name]
	if !ok {
		return PodInfo{}, fmt.Errorf("pods %q: %w", namespace+"/"+name, ErrPodNotFound)
	}
	return PodFromAnnotations(p.uid, p.annotations)
}

func TestPodFromAnnotations(t *testing.T) {
	info, err := PodFromAnnotations("u1", map[string]string{
		CalicoAnnotationIPAddrs: `["10.0.0.9"]`,
		AnnotationIPAddrs:       `["10.0.0.5"]`,
		CalicoAnnotationPools:   `["blue", "10.1.0.0/16"]`,
		"unrelated":             "x",
	})
	if err != nil {
		t.Fatal(err)
	}
	if info.UID != "u1" || !slices.Equal(info.IPAddrs, []string{"10.0.0.5"}) || info.IPAddrsAnnotation != AnnotationIPAddrs ||
		!slices.Equal(info.Pools, []string{"blue", "10.1.0.0/16"}) || info.PoolsAnnotation != CalicoAnnotationPools {
		t.Errorf("PodFromAnnotations = %+v; want Twill's ipAddrs over Calico's, and Calico's pools", info)
	}
	if info, err := PodFromAnnotations("u2", nil); err != nil || info.UID != "u2" || info.IPAddrs != nil || info.Pools != nil {
		t.Errorf("no annotations: %+v, %v", info, err)
	}
	for key, value := range map[string]string{
		AnnotationPools:         "blue",
		CalicoAnnotationIPAddrs: `[10.0.0.5]`,
		AnnotationIPAddrs:       `{"ip": "10.0.0.5"}`,
	} {
		_, err := PodFromAnnotations("u3", map[string]string{key: value})
		var ae *AnnotationError
		if !errors.As(err, &ae) || ae.Annotation != key || !errors.Is(err, ErrBadAnnotation) || !strings.Contains(err.Error(), key) {
			t.Errorf("%s=%s: %v; want an AnnotationError naming the annotation", key, value, err)
		}
	}
}

// podHarness runs an agent whose Config.Pods is pods, with the seed pool
// (172.16.0.0/16) and a pool "blue" (10.77.0.0/16) for workloads only, so
// that the tunnel address, and the pods' addresses unless they ask
// otherwise, come from the node's block of the seed pool.
func podHarness(t *testing.T, pods *fakePods) *harness {
	t.Helper()
	store := datastore.NewFake()
	blue := testPool("blue", "10.77.0.0/16", api.EncapCrossSubnet)
	blue.Spec.AllowedUses = []api.IPPoolUse{api.UseWorkload}
	put(t, store, datastore.KindIPPool, "blue", blue)
	put(t, store, datastore.KindIPPool, "seed", testPool("seed", "172.16.0.0/16", api.EncapCrossSubnet))
	h := newHarness(t, store, func(c *Config) { c.Pods = pods })
	h.start()
	return h
}

// addPod allocates for pod ns/name, recording its endpoint, as the plugin
// does on ADD.
func addPod(h *harness, id, namespace, name, uid string) (agentapi.AllocateResponse, error) {
	ctx := context.Background()
	res, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: id, IfName: "eth0", Namespace: namespace, Pod: name, PodUID: uid,
		Record: &agentapi.Endpoint{HostIface: "cali" + id}})
	if err != nil {
		return res, err
	}
	_, err = h.client.Sync(ctx, agentapi.HandleID(id, "eth0"))
	return res, err
}

// attrsOf returns the allocation attributes of handle on the harness's node.
func attrsOf(t *testing.T, h *harness, handle string) map[string]string {
	t.Helper()
	allocs, err := h.agent.IPAM().Allocations(context.Background(), "k8s-master1")
	if err != nil {
		t.Fatal(err)
	}
	for _, al := range allocs {
		if al.Handle == handle {
			return al.Attrs
		}
	}
	t.Fatalf("no allocation of handle %s", handle)
	return nil
}

func TestPodAnnotationSpecificAddress(t *testing.T) {
	pods := &fakePods{pods: map[string]fakePod{
		"default/web-0": {uid: "uid-web-0", annotations: map[string]string{CalicoAnnotationIPAddrs: `["172.16.200.9"]`}},
		"default/web-1": {uid: "uid-web-1", annotations: map[string]string{AnnotationIPAddrs: `["10.77.3.4/32"]`, AnnotationPools: `["seed"]`}},
	}}
	h := podHarness(t, pods)
	ctx := context.Background()

	res, err := addPod(h, "c1", "default", "web-0", "")
	if err != nil {
		t.Fatalf("ADD of a pod asking for 172.16.200.9: %v", err)
	}
	if !slices.Equal(res.Addresses, []string{"172.16.200.9/32"}) {
		t.Errorf("addresses %v, want the annotated 172.16.200.9/32", res.Addresses)
	}
	rec, err := datastore.GetObject[api.WorkloadEndpoint](ctx, h.store, datastore.KindWorkload, "c1.eth0")
	if err != nil {
		t.Fatal(err)
	}
	if s := rec.Value.Spec; s.Namespace != "default" || s.Pod != "web-0" || s.PodUID != "uid-web-0" || rec.Labels[datastore.LabelNode] != "k8s-master1" {
		t.Errorf("record %+v labels %v; want the pod's namespace, name and UID, labelled with the node", s, rec.Labels)
	}
	if a := attrsOf(t, h, "c1.eth0"); a[api.AttrPodUID] != "uid-web-0" || a[api.AttrNamespace] != "default" || a[api.AttrPod] != "web-0" {
		t.Errorf("allocation attrs %v; want the pod's namespace, name and UID", a)
	}

	// An address annotation wins over a pool annotation; the CNI's own UID
	// is the one recorded.
	res, err = addPod(h, "c2", "default", "web-1", "uid-web-1")
	if err != nil || !slices.Equal(res.Addresses, []string{"10.77.3.4/32"}) {
		t.Fatalf("ADD of a pod asking for 10.77.3.4 = %+v, %v", res, err)
	}
	// A retried ADD gets the same address.
	if again, err := addPod(h, "c2", "default", "web-1", "uid-web-1"); err != nil || !slices.Equal(again.Addresses, res.Addresses) {
		t.Errorf("a retried ADD = %+v, %v; want %v again", again, err, res.Addresses)
	}
	// The address is taken: another pod asking for it fails.
	pods.mu.Lock()
	pods.pods["default/web-2"] = fakePod{uid: "uid-web-2", annotations: map[string]string{AnnotationIPAddrs: `["10.77.3.4"]`}}
	pods.mu.Unlock()
	if _, err := addPod(h, "c3", "default", "web-2", ""); apiCode(err) != agentapi.CodeAddressInUse {
		t.Errorf("a second pod asking for a taken address: %v, want code address-in-use", err)
	}
	// The CNI asking for another address than the annotation is refused.
	_, err = h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c4", IfName: "eth0", Namespace: "default", Pod: "web-0", IP: "172.16.200.10"})
	if apiCode(err) != agentapi.CodeInvalid || !strings.Contains(err.Error(), CalicoAnnotationIPAddrs) {
		t.Errorf("CNI IP and annotation disagree: %v; want code invalid naming the annotation", err)
	}
}

func TestPodAnnotationPools(t *testing.T) {
	pods := &fakePods{pods: map[string]fakePod{
		"default/by-name": {uid: "u1", annotations: map[string]string{CalicoAnnotationPools: `["blue"]`}},
		"default/by-cidr": {uid: "u2", annotations: map[string]string{AnnotationPools: `["10.77.0.0/16"]`}},
		"default/plain":   {uid: "u3"},
	}}
	h := podHarness(t, pods)
	blue, seed := netip.MustParsePrefix("10.77.0.0/16"), netip.MustParsePrefix("172.16.0.0/16")
	// Without a pool annotation, and for a pod that does not exist, the
	// address comes from the node's block (of the seed pool, which holds
	// the tunnel address); with one, from the pool named, by name or CIDR.
	for i, tc := range []struct {
		pod  string
		want netip.Prefix
	}{{"plain", seed}, {"gone", seed}, {"by-name", blue}, {"by-cidr", blue}} {
		res, err := addPod(h, fmt.Sprintf("c%d", i), "default", tc.pod, "")
		if err != nil {
			t.Fatalf("ADD of %s: %v", tc.pod, err)
		}
		if len(res.Addresses) != 1 || !tc.want.Contains(netip.MustParsePrefix(res.Addresses[0]).Addr()) {
			t.Errorf("%s got %v, want an address of %s", tc.pod, res.Addresses, tc.want)
		}
	}
}

func TestPodAnnotationRefused(t *testing.T) {
	pods := &fakePods{pods: map[string]fakePod{
		"default/unknown-pool": {annotations: map[string]string{CalicoAnnotationPools: `["green"]`}},
		"default/malformed":    {annotations: map[string]string{AnnotationIPAddrs: `10.77.0.5`}},
		"default/ipv6":         {annotations: map[string]string{CalicoAnnotationIPAddrs: `["fd00::5"]`}},
		"default/not-an-ip":    {annotations: map[string]string{AnnotationIPAddrs: `["10.77.0.300"]`}},
		"default/replaced":     {uid: "new-uid"},
	}}
	h := podHarness(t, pods)
	ctx := context.Background()
	for i, tc := range []struct{ pod, uid, code, mention string }{
		{"unknown-pool", "", agentapi.CodeInvalid, CalicoAnnotationPools},
		{"malformed", "", agentapi.CodeInvalid, AnnotationIPAddrs},
		{"ipv6", "", agentapi.CodeInvalid, CalicoAnnotationIPAddrs},
		{"not-an-ip", "", agentapi.CodeInvalid, AnnotationIPAddrs},
		{"replaced", "old-uid", agentapi.CodeInvalid, "replaced"},
	} {
		id := fmt.Sprintf("r%d", i)
		_, err := addPod(h, id, "default", tc.pod, tc.uid)
		if apiCode(err) != tc.code || !strings.Contains(err.Error(), tc.mention) || !strings.Contains(err.Error(), "default/"+tc.pod) {
			t.Errorf("ADD of %s: %v; want code %s naming the pod and %q", tc.pod, err, tc.code, tc.mention)
		}
		if held, err := ipam.New(h.store).HandleAddrs(ctx, agentapi.HandleID(id, "eth0")); err != nil || len(held) != 0 {
			t.Errorf("the refused ADD of %s left %v allocated (%v)", tc.pod, held, err)
		}
	}
	// A lookup that fails is retryable, and nothing is allocated.
	pods.mu.Lock()
	pods.err = errors.New("the apiserver is unreachable")
	pods.mu.Unlock()
	if _, err := addPod(h, "u1", "default", "web-0", ""); apiCode(err) != agentapi.CodeUnavailable || !strings.Contains(err.Error(), "apiserver is unreachable") {
		t.Errorf("ADD while the pod lookup fails: %v; want code unavailable with the cause", err)
	}
	// A request without a pod does not look one up.
	pods.mu.Lock()
	asks := pods.asks
	pods.mu.Unlock()
	if _, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "nopod", IfName: "eth0"}); err != nil {
		t.Errorf("ADD without a pod: %v", err)
	}
	pods.mu.Lock()
	defer pods.mu.Unlock()
	if pods.asks != asks {
		t.Errorf("an ADD without a pod looked one up")
	}
}
