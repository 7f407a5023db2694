package kube

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

func TestObjectName(t *testing.T) {
	long := strings.Repeat("a", 300)
	for _, tc := range []struct {
		name   string
		hashed bool
	}{
		{"default-ipv4-ippool", false},
		{"10.244.0.0-26", false},
		{"k8s-pod-network.0123abcd", false},
		{"k8s-pod-network.ABC", true},
		{"ns/pod", true},
		{long, true},
		{"-leading-dash", true},
		{"trailing.", true},
	} {
		got := ObjectName(tc.name)
		if !tc.hashed {
			if got != tc.name {
				t.Errorf("ObjectName(%q) = %q, want the name itself", tc.name, got)
			}
			continue
		}
		if !strings.HasPrefix(got, "x-") || len(got) != 42 {
			t.Errorf("ObjectName(%q) = %q, want x- and 40 hex digits", tc.name, got)
		}
		if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
			t.Errorf("ObjectName(%q) = %q is not a valid object name: %v", tc.name, got, errs)
		}
		if ObjectName(tc.name) != got {
			t.Errorf("ObjectName(%q) is not stable", tc.name)
		}
	}
	if ObjectName("ns/a") == ObjectName("ns/b") {
		t.Error("two names hash to the same object name")
	}
}

// roundTrip stores kv as the apiserver would (JSON of the custom resource,
// with a resourceVersion) and reads it back.
func roundTrip(t *testing.T, kv datastore.KV) datastore.KV {
	t.Helper()
	r := resources[kv.Kind]
	u, err := r.toObject(kv)
	if err != nil {
		t.Fatalf("toObject(%s %q): %v", kv.Kind, kv.Name, err)
	}
	if u.GetName() != ObjectName(kv.Name) {
		t.Errorf("object name %q, want %q", u.GetName(), ObjectName(kv.Name))
	}
	b, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "null") {
		t.Errorf("custom resource carries a null, which the apiserver prunes: %s", b)
	}
	if err := u.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	u.SetResourceVersion("42")
	got, err := r.fromObject(kv.Kind, u)
	if err != nil {
		t.Fatalf("fromObject: %v", err)
	}
	if got.Name != kv.Name || got.Revision != "42" || got.Kind != kv.Kind {
		t.Errorf("read back %s %q at %q, want %s %q at 42", got.Kind, got.Name, got.Revision, kv.Kind, kv.Name)
	}
	return got
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

// decodeInto decodes kv's value into a new value of v's type.
func decodeInto(t *testing.T, kv datastore.KV, v any) any {
	t.Helper()
	p := reflect.New(reflect.TypeOf(v))
	if err := json.Unmarshal(kv.Value, p.Interface()); err != nil {
		t.Fatalf("decode %s: %v", kv.Value, err)
	}
	return p.Elem().Interface()
}

func TestValuesRoundTrip(t *testing.T) {
	tm := func(kind string) api.TypeMeta { return api.TypeMeta{APIVersion: api.Version, Kind: kind} }
	nodeLabels := map[string]string{datastore.LabelNode: "node-1"}
	handle := "k8s-pod-network.ABCdef0123"
	for _, tc := range []struct {
		kind   datastore.Kind
		name   string
		labels map[string]string
		value  any
	}{
		{datastore.KindIPPool, "default-ipv4-ippool", nil, api.IPPool{
			TypeMeta: tm(api.KindIPPool),
			Metadata: api.ObjectMeta{Name: "default-ipv4-ippool"},
			Spec: api.IPPoolSpec{CIDR: "172.16.0.0/16", BlockSize: 26, VXLANMode: api.EncapCrossSubnet, IPIPMode: api.EncapNever,
				NATOutgoing: true, NodeSelector: "all()", AllowedUses: []api.IPPoolUse{api.UseWorkload, api.UseTunnel}},
		}},
		{datastore.KindIPPool, "labelled", map[string]string{"team": "a"}, api.IPPool{
			TypeMeta: tm(api.KindIPPool),
			Metadata: api.ObjectMeta{Name: "labelled", Labels: map[string]string{"team": "a"}},
			Spec:     api.IPPoolSpec{CIDR: "fd00::/48", BlockSize: 122, Disabled: true},
		}},
		{datastore.KindBlock, datastore.BlockName("172.16.159.128/26"), nodeLabels, api.Block{
			TypeMeta: tm(api.KindBlock), CIDR: "172.16.159.128/26", Affinity: "node-1", Pinned: true,
			Allocations: []api.Allocation{
				{Ordinal: 0, Handle: "vxlan-tunnel-addr-node-1", Use: api.UseTunnel},
				{Ordinal: 5, Handle: handle, Use: api.UseWorkload, Attrs: map[string]string{api.AttrNamespace: "default", api.AttrPod: "web-0"}},
			},
		}},
		{datastore.KindBlock, datastore.BlockName("10.0.0.0/26"), nil, api.Block{TypeMeta: tm(api.KindBlock), CIDR: "10.0.0.0/26"}},
		{datastore.KindHandle, handle, nil, api.Handle{TypeMeta: tm(api.KindHandle), ID: handle, Blocks: map[string]int{"172.16.159.128/26": 1}}},
		{datastore.KindHandle, "empty", nil, api.Handle{TypeMeta: tm(api.KindHandle), ID: "empty"}},
		{datastore.KindIPAMConfig, datastore.IPAMConfigName, nil, api.IPAMConfig{TypeMeta: tm("IPAMConfig"), StrictAffinity: true, MaxBlocksPerNode: 4}},
		{datastore.KindWorkload, "node-1/default/web-0/eth0", nodeLabels, api.WorkloadEndpoint{
			TypeMeta: tm(api.KindWorkloadEndpoint),
			Metadata: api.ObjectMeta{Name: "node-1/default/web-0/eth0", Labels: nodeLabels},
			Spec: api.WorkloadEndpointSpec{Node: "node-1", Namespace: "default", Pod: "web-0", ContainerID: strings.Repeat("c", 64),
				IfName: "eth0", Handle: handle, HostIface: "cali0123456789a", Addresses: []string{"172.16.159.133/32"}, MAC: "02:00:00:00:00:01", Netns: "/var/run/netns/x"},
		}},
		{datastore.KindWorkload, "no-addresses", nil, api.WorkloadEndpoint{
			TypeMeta: tm(api.KindWorkloadEndpoint),
			Metadata: api.ObjectMeta{Name: "no-addresses"},
			Spec:     api.WorkloadEndpointSpec{Node: "n", ContainerID: "c", IfName: "eth0", Handle: "h", HostIface: "cali1"},
		}},
	} {
		t.Run(string(tc.kind)+"/"+tc.name, func(t *testing.T) {
			kv := mustKV(t, tc.kind, tc.name, tc.labels, tc.value)
			got := roundTrip(t, kv)
			if !reflect.DeepEqual(got.Labels, tc.labels) {
				t.Errorf("labels %v, want %v", got.Labels, tc.labels)
			}
			if v := decodeInto(t, got, tc.value); !reflect.DeepEqual(v, tc.value) {
				t.Errorf("value changed in the round trip:\n got  %+v\n want %+v\n stored %s", v, tc.value, got.Value)
			}
		})
	}
}

// TestValueLabelsMerge: the resource carries the document's labels and
// kv.Labels, and reads return them as both.
func TestValueLabelsMerge(t *testing.T) {
	p := api.IPPool{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
		Metadata: api.ObjectMeta{Name: "p", Labels: map[string]string{"a": "1"}}, Spec: api.IPPoolSpec{CIDR: "10.0.0.0/16"}}
	got := roundTrip(t, mustKV(t, datastore.KindIPPool, "p", map[string]string{"b": "2"}, p))
	want := map[string]string{"a": "1", "b": "2"}
	if !reflect.DeepEqual(got.Labels, want) {
		t.Errorf("labels %v, want %v", got.Labels, want)
	}
	v := decodeInto(t, got, api.IPPool{}).(api.IPPool)
	if !reflect.DeepEqual(v.Metadata.Labels, want) {
		t.Errorf("metadata.labels %v, want %v", v.Metadata.Labels, want)
	}
}

func TestValueNotAnObject(t *testing.T) {
	for _, v := range []string{`[1]`, `"x"`, `null`, `{`} {
		_, err := resources[datastore.KindBlock].toObject(datastore.KV{Kind: datastore.KindBlock, Name: "b", Value: []byte(v)})
		if !errors.Is(err, datastore.ErrInvalid) {
			t.Errorf("value %s: error %v, want ErrInvalid", v, err)
		}
	}
}

func TestNodeAnnotationsRoundTrip(t *testing.T) {
	for _, n := range []api.Node{
		{Metadata: api.ObjectMeta{Name: "k8s-node1"},
			Spec: api.NodeSpec{Address: "192.168.3.241/24", Interface: "eth0", MTU: 1500, VTEPMAC: "66:04:84:48:ab:6a", TunnelAddress: "172.16.159.128"}},
		{Metadata: api.ObjectMeta{Name: "minimal"}, Spec: api.NodeSpec{Address: "10.0.0.1/8"}},
		{Metadata: api.ObjectMeta{Name: "v6", Labels: map[string]string{"zone": "a"}},
			Spec: api.NodeSpec{Address: "fd00::1/64", TunnelAddress: "fd01::1"}},
	} {
		n.TypeMeta = api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode}
		kv := mustKV(t, datastore.KindNode, n.Metadata.Name, nil, n)
		ann, labels, err := nodeAnnotations(kv)
		if err != nil {
			t.Fatalf("nodeAnnotations(%s): %v", n.Metadata.Name, err)
		}
		kn := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Metadata.Name, ResourceVersion: "7",
			Annotations: map[string]string{"node.alpha.kubernetes.io/ttl": "0"}}}
		setNodeAnnotations(kn, ann, labels)
		if !isTwillNode(kn) {
			t.Fatalf("node %s: annotations %v do not mark a Twill node", n.Metadata.Name, kn.Annotations)
		}
		got, err := nodeKV(kn)
		if err != nil {
			t.Fatal(err)
		}
		if v := decodeInto(t, got, api.Node{}); !reflect.DeepEqual(v, n) {
			t.Errorf("node changed in the round trip:\n got  %+v\n want %+v\n annotations %v", v, n, kn.Annotations)
		}
		if kn.Annotations["node.alpha.kubernetes.io/ttl"] != "0" {
			t.Error("setNodeAnnotations removed an annotation that is not Twill's")
		}
	}
}

func TestNodeAnnotationNames(t *testing.T) {
	n := api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode}, Metadata: api.ObjectMeta{Name: "n"},
		Spec: api.NodeSpec{Address: "192.168.3.241/24", Interface: "eth0", MTU: 1450, VTEPMAC: "66:04:84:48:ab:6a", TunnelAddress: "172.16.159.128"}}
	ann, _, err := nodeAnnotations(mustKV(t, datastore.KindNode, "n", nil, n))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"twill.dev/IPv4Address":         "192.168.3.241/24",
		"twill.dev/IPv4VXLANTunnelAddr": "172.16.159.128",
		"twill.dev/VXLANTunnelMACAddr":  "66:04:84:48:ab:6a",
		"twill.dev/interface":           "eth0",
		"twill.dev/mtu":                 "1450",
	}
	if !reflect.DeepEqual(ann, want) {
		t.Errorf("annotations %v, want %v", ann, want)
	}

	// Clearing a field removes its annotation.
	n.Spec.TunnelAddress, n.Spec.MTU = "", 0
	ann, _, err = nodeAnnotations(mustKV(t, datastore.KindNode, "n", nil, n))
	if err != nil {
		t.Fatal(err)
	}
	kn := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: want}}
	setNodeAnnotations(kn, ann, nil)
	if _, ok := kn.Annotations[AnnotationIPv4VXLANTunnelAddr]; ok {
		t.Errorf("cleared tunnelAddress left its annotation: %v", kn.Annotations)
	}
	if _, ok := kn.Annotations[AnnotationMTU]; ok {
		t.Errorf("cleared mtu left its annotation: %v", kn.Annotations)
	}

	// A node without an address is refused.
	n.Spec.Address = ""
	if _, _, err := nodeAnnotations(mustKV(t, datastore.KindNode, "n", nil, n)); !errors.Is(err, datastore.ErrInvalid) {
		t.Errorf("node without address: %v, want ErrInvalid", err)
	}
}

// TestNodeUnknownSpecField keeps spec fields without a dedicated annotation
// in twill.dev/spec.<field>.
func TestNodeUnknownSpecField(t *testing.T) {
	kv := datastore.KV{Kind: datastore.KindNode, Name: "n",
		Value: []byte(`{"apiVersion":"twill.dev/v1","kind":"Node","metadata":{"name":"n"},"spec":{"address":"10.0.0.1/8","future":{"x":[1,2]}}}`)}
	ann, _, err := nodeAnnotations(kv)
	if err != nil {
		t.Fatal(err)
	}
	if got := ann[AnnotationSpecPrefix+"future"]; got != `{"x":[1,2]}` {
		t.Fatalf("annotation %s = %q", AnnotationSpecPrefix+"future", got)
	}
	got, err := nodeKV(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: ann}})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Spec map[string]any `json:"spec"`
	}
	if err := json.Unmarshal(got.Value, &doc); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(doc.Spec["future"], map[string]any{"x": []any{1.0, 2.0}}) {
		t.Errorf("spec.future read back as %v", doc.Spec["future"])
	}
}
