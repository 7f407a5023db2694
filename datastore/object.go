package datastore

import (
	"context"
	"encoding/json"
	"fmt"
)

// Object is a decoded resource together with the revision it was read at;
// pass Revision as Op.Expect to write it back as a compare-and-swap.
type Object[T any] struct {
	Key      string
	Value    T
	Revision int64
}

// Encode marshals a resource for storage.
func Encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil
}

// Decode unmarshals one stored key into T.
func Decode[T any](kv KV) (Object[T], error) {
	var v T
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return Object[T]{}, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	return Object[T]{Key: kv.Key, Value: v, Revision: kv.Revision}, nil
}

// GetObject reads and decodes one key; ErrNotFound when it is absent.
func GetObject[T any](ctx context.Context, s Store, key string) (Object[T], error) {
	kv, err := s.Get(ctx, key)
	if err != nil {
		return Object[T]{}, err
	}
	return Decode[T](kv)
}

// ListObjects reads and decodes every key under prefix, sorted by key, and
// returns the revision the list was read at.
func ListObjects[T any](ctx context.Context, s Store, prefix string) ([]Object[T], int64, error) {
	kvs, rev, err := s.List(ctx, prefix)
	if err != nil {
		return nil, 0, err
	}
	out := make([]Object[T], 0, len(kvs))
	for _, kv := range kvs {
		o, err := Decode[T](kv)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, o)
	}
	return out, rev, nil
}
