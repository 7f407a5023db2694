package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Object is a decoded resource together with the revision it was read at;
// set it as KV.Revision to write the object back as a compare-and-swap.
type Object[T any] struct {
	Name     string
	Labels   map[string]string
	Value    T
	Revision string
}

// Encode marshals a resource for storage.
func Encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil
}

// Decode unmarshals one stored object into T.
func Decode[T any](kv KV) (Object[T], error) {
	var v T
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return Object[T]{}, fmt.Errorf("decode %s %q: %w", kv.Kind, kv.Name, err)
	}
	return Object[T]{Name: kv.Name, Labels: kv.Labels, Value: v, Revision: kv.Revision}, nil
}

// NewKV encodes v as the value of the object kind/name.
func NewKV(kind Kind, name string, v any) (KV, error) {
	b, err := Encode(v)
	if err != nil {
		return KV{}, err
	}
	return KV{Kind: kind, Name: name, Value: b}, nil
}

// GetObject reads and decodes one object; ErrNotFound when it is absent.
func GetObject[T any](ctx context.Context, s Store, kind Kind, name string) (Object[T], error) {
	kv, err := s.Get(ctx, kind, name)
	if err != nil {
		return Object[T]{}, err
	}
	return Decode[T](kv)
}

// ListObjects reads and decodes every object of kind matching opts, sorted
// by name, and returns the revision the list was read at.
func ListObjects[T any](ctx context.Context, s Store, kind Kind, opts ListOptions) ([]Object[T], string, error) {
	kvs, rev, err := s.List(ctx, kind, opts)
	if err != nil {
		return nil, "", err
	}
	out := make([]Object[T], 0, len(kvs))
	for _, kv := range kvs {
		o, err := Decode[T](kv)
		if err != nil {
			return nil, "", err
		}
		out = append(out, o)
	}
	return out, rev, nil
}

// Put writes kv whether or not the object exists: a Create, or an
// unconditional Update when it is already there. Create comes first because
// Put's callers mostly record new objects (a pod's endpoint at CNI ADD), so
// the common case costs one round trip. The race where the object appears
// or disappears in between is retried a bounded number of times.
func Put(ctx context.Context, s Store, kv KV) (KV, error) {
	kv.Revision = ""
	var err error
	for i := 0; i < 5; i++ {
		var out KV
		out, err = s.Create(ctx, kv)
		if !errors.Is(err, ErrExists) {
			return out, err
		}
		out, err = s.Update(ctx, kv)
		if !errors.Is(err, ErrNotFound) {
			return out, err
		}
	}
	return KV{}, err
}

// MatchLabels reports whether labels carry every pair of want.
func MatchLabels(labels, want map[string]string) bool {
	for k, v := range want {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// BlockName is the object name of the block with the given CIDR: "/"
// becomes "-" and IPv6 colons become "-" too, so that the name is a valid
// Kubernetes object name (10.244.0.0/26 → 10.244.0.0-26).
func BlockName(cidr string) string {
	return strings.ReplaceAll(strings.ReplaceAll(cidr, ":", "-"), "/", "-")
}

// EscapeSegment makes s safe as one etcd key segment: '%' and '/' are
// percent-encoded.
func EscapeSegment(s string) string {
	if !strings.ContainsAny(s, "%/") {
		return s
	}
	r := strings.NewReplacer("%", "%25", "/", "%2F")
	return r.Replace(s)
}

// UnescapeSegment undoes EscapeSegment.
func UnescapeSegment(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	r := strings.NewReplacer("%2F", "/", "%25", "%")
	return r.Replace(s)
}
