package kube

import (
	"encoding/json"
	"fmt"
	"maps"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"twill.dev/twill/api"
	"twill.dev/twill/crd"
	"twill.dev/twill/datastore"
)

// resource says how one Twill kind is stored as a custom resource.
type resource struct {
	gvr schema.GroupVersionResource
	// kind is both the custom resource's kind and the api document's kind.
	kind string
	// flat is set for documents without metadata and spec (api.Block,
	// api.Handle, api.IPAMConfig): the resource's spec is the document's
	// fields without apiVersion and kind. Other documents have metadata and
	// spec, and the resource's spec is the document's spec.
	flat bool
}

// resources maps every kind except KindNode (a v1.Node) to its resource.
var resources = map[datastore.Kind]resource{
	datastore.KindIPPool:     {gvr: gvr(crd.ResourceIPPool), kind: api.KindIPPool},
	datastore.KindWorkload:   {gvr: gvr(crd.ResourceWorkloadEndpoint), kind: api.KindWorkloadEndpoint},
	datastore.KindBlock:      {gvr: gvr(crd.ResourceIPAMBlock), kind: api.KindBlock, flat: true},
	datastore.KindHandle:     {gvr: gvr(crd.ResourceIPAMHandle), kind: api.KindHandle, flat: true},
	datastore.KindIPAMConfig: {gvr: gvr(crd.ResourceIPAMConfig), kind: crd.KindIPAMConfig, flat: true},
}

func gvr(plural string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: crd.Group, Version: crd.Version, Resource: plural}
}

// docMeta is the part of a document's metadata the store keeps: the name
// comes from the object's logical name, the labels are the object's labels.
type docMeta struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// metaDoc is a document with metadata and spec, as rebuilt on read.
type metaDoc struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   docMeta         `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
}

// toObject builds the custom resource that stores kv. The resource's labels
// are the document's metadata.labels together with kv.Labels (which win);
// a value that is not a JSON object is ErrInvalid.
func (r resource) toObject(kv datastore.KV) (*unstructured.Unstructured, error) {
	spec, labels, err := r.splitValue(kv)
	if err != nil {
		return nil, err
	}
	meta := map[string]any{"name": ObjectName(kv.Name)}
	if len(labels) > 0 {
		meta["labels"] = labels
	}
	if ObjectName(kv.Name) != kv.Name {
		meta["annotations"] = map[string]string{AnnotationName: kv.Name}
	}
	b, err := json.Marshal(map[string]any{
		"apiVersion": api.Version,
		"kind":       r.kind,
		"metadata":   meta,
		"spec":       spec,
	})
	if err != nil {
		return nil, fmt.Errorf("%s %q: encode custom resource: %w: %w", kv.Kind, kv.Name, datastore.ErrInvalid, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("%s %q: encode custom resource: %w: %w", kv.Kind, kv.Name, datastore.ErrInvalid, err)
	}
	if s, ok := u.Object["spec"].(map[string]any); ok {
		dropNulls(s)
	}
	return u, nil
}

// splitValue returns the resource spec that stores kv's value, and the
// labels the resource carries.
func (r resource) splitValue(kv datastore.KV) (json.RawMessage, map[string]string, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(kv.Value, &doc); err != nil || doc == nil {
		return nil, nil, fmt.Errorf("%s %q: the value must be a JSON object (an api.%s document): %w", kv.Kind, kv.Name, r.kind, datastore.ErrInvalid)
	}
	labels := map[string]string{}
	var spec json.RawMessage
	if r.flat {
		delete(doc, "apiVersion")
		delete(doc, "kind")
		b, err := json.Marshal(doc)
		if err != nil {
			return nil, nil, fmt.Errorf("%s %q: %w: %w", kv.Kind, kv.Name, datastore.ErrInvalid, err)
		}
		spec = b
	} else {
		if m, ok := doc["metadata"]; ok && !isNull(m) {
			var meta docMeta
			if err := json.Unmarshal(m, &meta); err != nil {
				return nil, nil, fmt.Errorf("%s %q: metadata: %w: %w", kv.Kind, kv.Name, datastore.ErrInvalid, err)
			}
			maps.Copy(labels, meta.Labels)
		}
		spec = doc["spec"]
		if len(spec) == 0 || isNull(spec) {
			spec = json.RawMessage("{}")
		}
	}
	maps.Copy(labels, kv.Labels)
	return spec, labels, nil
}

// fromObject rebuilds the stored object from its custom resource.
func (r resource) fromObject(kind datastore.Kind, u *unstructured.Unstructured) (datastore.KV, error) {
	name := logicalName(u.GetName(), u.GetAnnotations())
	labels := u.GetLabels()
	if len(labels) == 0 {
		labels = nil
	}
	spec := []byte("{}")
	if s, ok := u.Object["spec"]; ok && s != nil {
		b, err := json.Marshal(s)
		if err != nil {
			return datastore.KV{}, fmt.Errorf("%s %q: decode spec: %w", kind, name, err)
		}
		spec = b
	}
	var value []byte
	var err error
	if r.flat {
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(spec, &doc); err != nil || doc == nil {
			return datastore.KV{}, fmt.Errorf("%s %q: spec is not an object: %s", kind, name, spec)
		}
		doc["apiVersion"], _ = json.Marshal(api.Version)
		doc["kind"], _ = json.Marshal(r.kind)
		value, err = json.Marshal(doc)
	} else {
		value, err = json.Marshal(metaDoc{
			APIVersion: api.Version,
			Kind:       r.kind,
			Metadata:   docMeta{Name: name, Labels: labels},
			Spec:       spec,
		})
	}
	if err != nil {
		return datastore.KV{}, fmt.Errorf("%s %q: encode value: %w", kind, name, err)
	}
	return datastore.KV{Kind: kind, Name: name, Labels: labels, Value: value, Revision: u.GetResourceVersion()}, nil
}

// dropNulls deletes null members from m and from the objects nested in it:
// Go encodes nil slices and maps as null, which the apiserver would refuse
// or prune, and which decode to the same nil as an absent member.
func dropNulls(m map[string]any) {
	for k, v := range m {
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			dropNulls(x)
		case []any:
			for _, e := range x {
				if em, ok := e.(map[string]any); ok {
					dropNulls(em)
				}
			}
		}
	}
}

func isNull(b json.RawMessage) bool { return string(b) == "null" }
