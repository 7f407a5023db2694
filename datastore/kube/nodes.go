package kube

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// Annotations on v1.Node objects that hold a Twill node's spec (api.NodeSpec);
// the names mirror Calico's projectcalico.org/IPv4Address and friends. A
// Node is a Twill node (KindNode) when it has an address annotation.
const (
	// AnnotationIPv4Address holds spec.address when it is IPv4, with its
	// prefix length, for example 192.168.3.241/24.
	AnnotationIPv4Address = "twill.dev/IPv4Address"
	// AnnotationIPv6Address holds spec.address when it is IPv6.
	AnnotationIPv6Address = "twill.dev/IPv6Address"
	// AnnotationIPv4VXLANTunnelAddr holds spec.tunnelAddress (IPv4).
	AnnotationIPv4VXLANTunnelAddr = "twill.dev/IPv4VXLANTunnelAddr"
	// AnnotationIPv6VXLANTunnelAddr holds spec.tunnelAddress (IPv6).
	AnnotationIPv6VXLANTunnelAddr = "twill.dev/IPv6VXLANTunnelAddr"
	// AnnotationVXLANTunnelMACAddr holds spec.vtepMAC.
	AnnotationVXLANTunnelMACAddr = "twill.dev/VXLANTunnelMACAddr"
	// AnnotationInterface holds spec.interface.
	AnnotationInterface = "twill.dev/interface"
	// AnnotationMTU holds spec.mtu in decimal.
	AnnotationMTU = "twill.dev/mtu"
	// AnnotationSpecPrefix starts the annotations that hold spec fields
	// without a dedicated annotation, as JSON: twill.dev/spec.<field>.
	AnnotationSpecPrefix = "twill.dev/spec."
)

// nodeField maps one api.NodeSpec JSON field to its annotation(s).
type nodeField struct {
	json     string
	v4, v6   string // annotation by address family; v6 "" = same as v4
	isNumber bool
}

var nodeFields = []nodeField{
	{json: "address", v4: AnnotationIPv4Address, v6: AnnotationIPv6Address},
	{json: "tunnelAddress", v4: AnnotationIPv4VXLANTunnelAddr, v6: AnnotationIPv6VXLANTunnelAddr},
	{json: "vtepMAC", v4: AnnotationVXLANTunnelMACAddr},
	{json: "interface", v4: AnnotationInterface},
	{json: "mtu", v4: AnnotationMTU, isNumber: true},
}

// isTwillNode reports whether a v1.Node carries a Twill node.
func isTwillNode(n *corev1.Node) bool {
	a := n.Annotations
	return a[AnnotationIPv4Address] != "" || a[AnnotationIPv6Address] != ""
}

// isNodeAnnotation reports whether key is one of the annotations Twill
// writes on Nodes.
func isNodeAnnotation(key string) bool {
	if strings.HasPrefix(key, AnnotationSpecPrefix) {
		return true
	}
	for _, f := range nodeFields {
		if key == f.v4 || (f.v6 != "" && key == f.v6) {
			return true
		}
	}
	return false
}

// nodeDoc is an api.Node document with its spec kept raw.
type nodeDoc struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   docMeta         `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
}

// nodeAnnotations returns the annotations that hold the spec of the api.Node
// document value, and the labels of its metadata.
func nodeAnnotations(kv datastore.KV) (map[string]string, map[string]string, error) {
	var doc nodeDoc
	if err := json.Unmarshal(kv.Value, &doc); err != nil {
		return nil, nil, fmt.Errorf("node %q: the value must be an api.Node document: %w: %w", kv.Name, datastore.ErrInvalid, err)
	}
	var spec map[string]json.RawMessage
	if len(doc.Spec) > 0 {
		if err := json.Unmarshal(doc.Spec, &spec); err != nil {
			return nil, nil, fmt.Errorf("node %q: spec must be an object: %w: %w", kv.Name, datastore.ErrInvalid, err)
		}
	}
	ann := map[string]string{}
	known := map[string]bool{}
	for _, f := range nodeFields {
		known[f.json] = true
		raw, ok := spec[f.json]
		if !ok || isNull(raw) {
			continue
		}
		var s string
		if f.isNumber {
			var n int64
			if err := json.Unmarshal(raw, &n); err != nil {
				return nil, nil, fmt.Errorf("node %q: spec.%s must be an integer: %w", kv.Name, f.json, datastore.ErrInvalid)
			}
			if n == 0 {
				continue
			}
			s = strconv.FormatInt(n, 10)
		} else if err := json.Unmarshal(raw, &s); err != nil {
			return nil, nil, fmt.Errorf("node %q: spec.%s must be a string: %w", kv.Name, f.json, datastore.ErrInvalid)
		}
		if s == "" {
			continue
		}
		ann[f.annotation(s)] = s
	}
	if ann[AnnotationIPv4Address] == "" && ann[AnnotationIPv6Address] == "" {
		return nil, nil, fmt.Errorf("node %q: spec.address is required (it marks the Kubernetes Node as a Twill node): %w", kv.Name, datastore.ErrInvalid)
	}
	for k, raw := range spec {
		if known[k] || isNull(raw) {
			continue
		}
		ann[AnnotationSpecPrefix+k] = string(raw)
	}
	return ann, doc.Metadata.Labels, nil
}

// annotation picks the field's annotation for value s by address family.
func (f nodeField) annotation(s string) string {
	if f.v6 == "" {
		return f.v4
	}
	if a, err := netip.ParsePrefix(s); err == nil && a.Addr().Is6() && !a.Addr().Is4In6() {
		return f.v6
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is6() && !a.Is4In6() {
		return f.v6
	}
	return f.v4
}

// nodeKV rebuilds the api.Node document a v1.Node carries.
func nodeKV(n *corev1.Node) (datastore.KV, error) {
	spec := map[string]json.RawMessage{}
	for _, f := range nodeFields {
		s := n.Annotations[f.v4]
		if f.v6 != "" && n.Annotations[f.v6] != "" {
			s = n.Annotations[f.v6]
		}
		if s == "" {
			continue
		}
		if f.isNumber {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return datastore.KV{}, fmt.Errorf("node %q: annotation %s=%q is not an integer", n.Name, f.v4, s)
			}
			spec[f.json] = json.RawMessage(strconv.FormatInt(v, 10))
			continue
		}
		b, _ := json.Marshal(s)
		spec[f.json] = b
	}
	for k, v := range n.Annotations {
		if field, ok := strings.CutPrefix(k, AnnotationSpecPrefix); ok && field != "" && json.Valid([]byte(v)) {
			spec[field] = json.RawMessage(v)
		}
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return datastore.KV{}, fmt.Errorf("node %q: encode spec: %w", n.Name, err)
	}
	labels := maps.Clone(n.Labels)
	if len(labels) == 0 {
		labels = nil
	}
	value, err := json.Marshal(nodeDoc{
		APIVersion: api.Version,
		Kind:       api.KindNode,
		Metadata:   docMeta{Name: n.Name, Labels: labels},
		Spec:       specJSON,
	})
	if err != nil {
		return datastore.KV{}, fmt.Errorf("node %q: encode value: %w", n.Name, err)
	}
	return datastore.KV{Kind: datastore.KindNode, Name: n.Name, Labels: labels, Value: value, Revision: n.ResourceVersion}, nil
}

// setNodeAnnotations replaces Twill's annotations on n with ann and adds
// labels (the Node's other labels, from kubelet, stay).
func setNodeAnnotations(n *corev1.Node, ann, labels map[string]string) {
	if n.Annotations == nil {
		n.Annotations = map[string]string{}
	}
	for k := range n.Annotations {
		if isNodeAnnotation(k) {
			delete(n.Annotations, k)
		}
	}
	maps.Copy(n.Annotations, ann)
	if len(labels) > 0 {
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		maps.Copy(n.Labels, labels)
	}
}

// sortKVs sorts objects by name.
func sortKVs(kvs []datastore.KV) {
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].Name < kvs[j].Name })
}
