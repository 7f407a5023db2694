package kube

import (
	"bytes"
	"context"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"

	"twill.dev/twill/datastore"
)

// Watch implements datastore.Store with a Kubernetes watch from afterRev
// (empty: from now) with bookmarks, which advance WatchResponse.Revision.
// A 410 Gone (the apiserver no longer has afterRev) ends the watch with
// datastore.ErrCompacted; a watch the apiserver ends (its request timeout,
// a restart) ends with datastore.ErrUnavailable, and the caller lists again.
// The channel closes without an error when ctx ends or the store is closed.
//
// A Node watch reports only Nodes that carry a Twill node: a Node that loses
// its address annotation, or is deleted, is an EventDelete, and a Node
// update that leaves Twill's fields and the labels alone (kubelet status)
// only advances the revision.
func (s *Store) Watch(ctx context.Context, kind datastore.Kind, afterRev string) <-chan datastore.WatchResponse {
	out := make(chan datastore.WatchResponse, 64)
	go func() {
		defer close(out)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(s.ctx, cancel)
		defer stop()
		if err := s.watch(wctx, kind, afterRev, out); err != nil && wctx.Err() == nil {
			send(wctx, out, datastore.WatchResponse{Err: err})
		}
	}()
	return out
}

// send delivers r unless ctx ends first.
func send(ctx context.Context, out chan<- datastore.WatchResponse, r datastore.WatchResponse) bool {
	select {
	case out <- r:
		return true
	case <-ctx.Done():
		return false
	}
}

// watch runs one watch until it fails or ctx ends.
func (s *Store) watch(ctx context.Context, kind datastore.Kind, rev string, out chan<- datastore.WatchResponse) error {
	var r resource
	var nodes map[string]datastore.KV
	if kind == datastore.KindNode {
		var err error
		if nodes, rev, err = s.nodesAt(ctx, rev); err != nil {
			return err
		}
	} else {
		var err error
		if r, err = resourceFor(kind); err != nil {
			return err
		}
		if rev == "" {
			if _, rev, _, err = s.listPage(ctx, kind, metav1.ListOptions{Limit: 1}); err != nil {
				return err
			}
		}
	}

	lo := metav1.ListOptions{ResourceVersion: rev, AllowWatchBookmarks: true}
	var w watch.Interface
	var err error
	if kind == datastore.KindNode {
		w, err = s.core.CoreV1().Nodes().Watch(ctx, lo)
	} else {
		w, err = s.dyn.Resource(r.gvr).Watch(ctx, lo)
	}
	if err != nil {
		return s.mapErr(ctx, "watch", kind, "", err)
	}
	defer w.Stop()

	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case ev, ok = <-w.ResultChan():
		}
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kubernetes watch %s: the apiserver at %s ended the watch after revision %s; list again: %w", kind, s.host, rev, datastore.ErrUnavailable)
		}
		var resp datastore.WatchResponse
		switch ev.Type {
		case watch.Error:
			return s.watchErr(kind, rev, ev.Object)
		case watch.Bookmark:
			acc, err := meta.Accessor(ev.Object)
			if err != nil {
				return fmt.Errorf("kubernetes watch %s: bookmark without metadata: %w", kind, err)
			}
			resp.Revision = acc.GetResourceVersion()
		default:
			if kind == datastore.KindNode {
				resp, err = nodeEvent(nodes, ev)
			} else {
				resp, err = crEvent(r, kind, ev)
			}
			if err != nil {
				return err
			}
		}
		if resp.Revision != "" {
			rev = resp.Revision
		}
		if !send(ctx, out, resp) {
			return nil
		}
	}
}

// watchErr turns a watch's ERROR event into the error that ends it.
func (s *Store) watchErr(kind datastore.Kind, rev string, obj any) error {
	var err error = fmt.Errorf("unexpected error event %T", obj)
	if st, ok := obj.(*metav1.Status); ok {
		err = apierrors.FromObject(st)
	}
	if apierrors.IsGone(err) || apierrors.IsResourceExpired(err) {
		return fmt.Errorf("kubernetes watch %s from revision %s: %w: %s", kind, rev, datastore.ErrCompacted, apiMessage(err))
	}
	return fmt.Errorf("kubernetes watch %s at %s after revision %s: %w: %w", kind, s.host, rev, datastore.ErrUnavailable, err)
}

// crEvent converts an event on a custom resource.
func crEvent(r resource, kind datastore.Kind, ev watch.Event) (datastore.WatchResponse, error) {
	u, ok := ev.Object.(*unstructured.Unstructured)
	if !ok {
		return datastore.WatchResponse{}, fmt.Errorf("kubernetes watch %s: unexpected object %T", kind, ev.Object)
	}
	kv, err := r.fromObject(kind, u)
	if err != nil {
		return datastore.WatchResponse{}, err
	}
	typ := datastore.EventPut
	if ev.Type == watch.Deleted {
		typ = datastore.EventDelete
	}
	return datastore.WatchResponse{Events: []datastore.Event{{Type: typ, KV: kv}}, Revision: kv.Revision}, nil
}

// nodesAt returns the Twill nodes as of revision rev (empty: now), and the
// revision they were read at, for a Node watch to tell which Nodes it has
// reported.
func (s *Store) nodesAt(ctx context.Context, rev string) (map[string]datastore.KV, string, error) {
	lo := metav1.ListOptions{}
	if rev != "" {
		lo.ResourceVersion = rev
		lo.ResourceVersionMatch = metav1.ResourceVersionMatchExact
	}
	kvs, listRev, _, err := s.listPage(ctx, datastore.KindNode, lo)
	if err != nil {
		return nil, "", err
	}
	known := make(map[string]datastore.KV, len(kvs))
	for _, kv := range kvs {
		known[kv.Name] = kv
	}
	if rev == "" {
		rev = listRev
	}
	return known, rev, nil
}

// nodeEvent converts an event on a v1.Node, keeping known (the Twill nodes
// reported so far) up to date.
func nodeEvent(known map[string]datastore.KV, ev watch.Event) (datastore.WatchResponse, error) {
	n, ok := ev.Object.(*corev1.Node)
	if !ok {
		return datastore.WatchResponse{}, fmt.Errorf("kubernetes watch nodes: unexpected object %T", ev.Object)
	}
	resp := datastore.WatchResponse{Revision: n.ResourceVersion}
	prev, had := known[n.Name]
	if ev.Type == watch.Deleted || !isTwillNode(n) {
		if !had {
			return resp, nil
		}
		delete(known, n.Name)
		last := prev
		if isTwillNode(n) {
			if kv, err := nodeKV(n); err == nil {
				last = kv
			}
		}
		last.Revision = n.ResourceVersion
		resp.Events = []datastore.Event{{Type: datastore.EventDelete, KV: last}}
		return resp, nil
	}
	kv, err := nodeKV(n)
	if err != nil {
		return datastore.WatchResponse{}, err
	}
	known[n.Name] = kv
	if had && bytes.Equal(prev.Value, kv.Value) && maps.Equal(prev.Labels, kv.Labels) {
		return resp, nil
	}
	resp.Events = []datastore.Event{{Type: datastore.EventPut, KV: kv}}
	return resp, nil
}
