package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/datastore/storetest"
)

// wait bounds every wait for a watch response in these tests.
const wait = 30 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// expire lists kind k, makes two more writes (outside Twill's prefix) and
// compacts etcd to its current revision: a watch from the listed revision
// then asks for compacted history.
func expire(t *testing.T, s datastore.Store, k datastore.Kind) string {
	t.Helper()
	es := s.(*etcd.Store)
	ctx := testCtx(t)
	_, rev, err := es.List(ctx, k, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := es.Client().Put(ctx, "/twill-test/expire", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := es.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	return rev
}

func TestConformance(t *testing.T) {
	ep := etcdtest.Start(t)
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) datastore.Store {
			return etcdtest.Connect(t, ep, etcd.Config{})
		},
		Expire: expire,
		Kinds:  datastore.Kinds,
	})
}

func TestNewUnreachable(t *testing.T) {
	const ep = "http://127.0.0.1:1"
	ctx := testCtx(t)
	s, err := etcd.New(ctx, etcd.Config{Endpoints: []string{ep}, DialTimeout: 300 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatalf("New(%s) succeeded; want an error", ep)
	}
	if !errors.Is(err, datastore.ErrUnavailable) {
		t.Fatalf("New(%s) = %v; want an error wrapping ErrUnavailable", ep, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("New(%s) returned only when the test's context ended, not after DialTimeout: %v", ep, err)
	}
	for _, want := range []string{ep, "within 300ms", "twill datastore run", "--etcd-endpoints", etcd.EnvEndpoints, syscall.ECONNREFUSED.Error()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New error %q does not mention %q", err, want)
		}
	}
}

func TestNewCallerCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := etcd.New(ctx, etcd.Config{Endpoints: []string{"http://127.0.0.1:1"}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("New with a cancelled context = %v; want an error wrapping context.Canceled", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	got := etcd.ConfigFromEnv(env(nil))
	if !slices.Equal(got.Endpoints, []string{"http://127.0.0.1:2379"}) || got.CAFile != "" || got.CertFile != "" || got.KeyFile != "" {
		t.Errorf("ConfigFromEnv(empty) = %+v; want the default endpoint and no TLS", got)
	}
	got = etcd.ConfigFromEnv(env(map[string]string{
		etcd.EnvEndpoints: " https://10.0.0.1:2379, ,https://10.0.0.2:2379 ",
		etcd.EnvCA:        "/etc/twill/ca.pem",
		etcd.EnvCert:      "/etc/twill/client.pem",
		etcd.EnvKey:       "/etc/twill/client-key.pem",
	}))
	want := etcd.Config{
		Endpoints: []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"},
		CAFile:    "/etc/twill/ca.pem", CertFile: "/etc/twill/client.pem", KeyFile: "/etc/twill/client-key.pem",
	}
	if !slices.Equal(got.Endpoints, want.Endpoints) || got.CAFile != want.CAFile || got.CertFile != want.CertFile || got.KeyFile != want.KeyFile {
		t.Errorf("ConfigFromEnv = %+v; want %+v", got, want)
	}
}

func TestRequestsAfterServerStop(t *testing.T) {
	srv := etcdtest.StartServer(t)
	s := etcdtest.Connect(t, srv.Endpoint(), etcd.Config{RequestTimeout: 500 * time.Millisecond})
	ctx := testCtx(t)
	kv := handle("k", 1)
	if _, err := s.Create(ctx, kv); err != nil {
		t.Fatalf("Create before stop: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	start := time.Now()
	_, err := s.Get(ctx, kv.Kind, kv.Name)
	errs := map[string]error{"Get": err}
	_, errs["Create"] = s.Create(ctx, handle("k2", 1))
	_, errs["Update"] = s.Update(ctx, kv)
	errs["Delete"] = s.Delete(ctx, kv.Kind, kv.Name, "")
	_, _, errs["List"] = s.List(ctx, kv.Kind, datastore.ListOptions{})
	for op, err := range errs {
		if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), srv.Endpoint()) {
			t.Errorf("%s after stop = %v; want ErrUnavailable naming %s", op, err, srv.Endpoint())
		}
	}
	if d := time.Since(start); d > 10*time.Second || ctx.Err() != nil {
		t.Fatalf("five requests to a stopped server took %s; want each within the 500ms request timeout", d)
	}
}

// handle returns a handle object name holding {"n":n}.
func handle(name string, n int) datastore.KV {
	return datastore.KV{Kind: datastore.KindHandle, Name: name, Value: fmt.Appendf(nil, `{"n":%d}`, n)}
}

// TestLayout checks the documented key and value layout, name escaping,
// and the errors for what does not fit it.
func TestLayout(t *testing.T) {
	s := etcdtest.Connect(t, etcdtest.Start(t), etcd.Config{})
	ctx := testCtx(t)
	kv := handle("a/b%c", 1)
	kv.Labels = map[string]string{datastore.LabelNode: "node-1"}
	created, err := s.Create(ctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	const key = "/twill/v1/ipamhandles/a%2Fb%25c"
	if got := etcd.Key(kv.Kind, kv.Name); got != key {
		t.Fatalf("Key = %s; want %s", got, key)
	}
	resp, err := s.Client().Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("raw Get %s = %v, %v; want the object", key, resp, err)
	}
	raw := resp.Kvs[0]
	if want := `{"labels":{"twill.dev/node":"node-1"},"value":{"n":1}}`; string(raw.Value) != want {
		t.Errorf("stored value %s; want the envelope %s", raw.Value, want)
	}
	if created.Revision != strconv.FormatInt(raw.ModRevision, 10) {
		t.Errorf("Create revision %q; want the key's ModRevision %d", created.Revision, raw.ModRevision)
	}
	kvs, _, err := s.List(ctx, kv.Kind, datastore.ListOptions{})
	if err != nil || len(kvs) != 1 || kvs[0].Name != kv.Name || string(kvs[0].Value) != `{"n":1}` || kvs[0].Labels[datastore.LabelNode] != "node-1" {
		t.Fatalf("List = %+v, %v; want %s with its value and labels", kvs, err, kv.Name)
	}
	// No labels: no "labels" field.
	if _, err := s.Create(ctx, handle("plain", 2)); err != nil {
		t.Fatal(err)
	}
	if resp, err := s.Client().Get(ctx, "/twill/v1/ipamhandles/plain"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"value":{"n":2}}` {
		t.Errorf("raw Get of an unlabelled object = %v, %v; want {\"value\":{\"n\":2}}", resp, err)
	}

	for _, bad := range []datastore.KV{
		{Kind: datastore.KindHandle, Value: []byte(`{}`)},
		{Kind: "a/b", Name: "x", Value: []byte(`{}`)},
		{Kind: "", Name: "x", Value: []byte(`{}`)},
		{Kind: datastore.KindHandle, Name: "x", Value: []byte(`{`)},
		{Kind: datastore.KindHandle, Name: "x"},
	} {
		if _, err := s.Create(ctx, bad); !errors.Is(err, datastore.ErrInvalid) {
			t.Errorf("Create(%q %q %q) = %v; want ErrInvalid", bad.Kind, bad.Name, bad.Value, err)
		}
	}

	// A key under a kind's prefix that holds no envelope is reported, by
	// name, as invalid.
	if _, err := s.Client().Put(ctx, "/twill/v1/ipamhandles/junk", "not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, datastore.KindHandle, "junk"); !errors.Is(err, datastore.ErrInvalid) || !strings.Contains(err.Error(), "/twill/v1/ipamhandles/junk") {
		t.Errorf("Get of a junk value = %v; want ErrInvalid naming the key", err)
	}
	if _, _, err := s.List(ctx, datastore.KindHandle, datastore.ListOptions{}); !errors.Is(err, datastore.ErrInvalid) {
		t.Errorf("List over a junk value = %v; want ErrInvalid", err)
	}
}

// TestWriteErrors checks that failed writes say why, and tell a missing
// object from a changed one.
func TestWriteErrors(t *testing.T) {
	s := etcdtest.NewStore(t)
	ctx := testCtx(t)
	r1, err := s.Create(ctx, handle("a", 1))
	if err != nil {
		t.Fatal(err)
	}
	up := handle("a", 2)
	up.Revision = r1.Revision
	r2, err := s.Update(ctx, up)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Create(ctx, handle("a", 3))
	if !errors.Is(err, datastore.ErrExists) || !errors.Is(err, datastore.ErrConflict) || !strings.Contains(err.Error(), `ipamhandles "a"`) {
		t.Errorf("Create of an existing object = %v; want ErrExists naming it", err)
	}
	_, err = s.Update(ctx, up)
	if want := fmt.Sprintf("expected revision %s, now %s", r1.Revision, r2.Revision); !errors.Is(err, datastore.ErrConflict) || !strings.Contains(err.Error(), want) {
		t.Errorf("stale Update = %v; want ErrConflict saying %q", err, want)
	}
	// A revision this store never handed out matches nothing.
	up.Revision = "not-a-revision"
	if _, err := s.Update(ctx, up); !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("Update expecting a malformed revision = %v; want ErrConflict", err)
	}
	if err := s.Delete(ctx, datastore.KindHandle, "gone", r2.Revision); !errors.Is(err, datastore.ErrNotFound) || errors.Is(err, datastore.ErrConflict) {
		t.Errorf("Delete of a missing object with an expectation = %v; want ErrNotFound only", err)
	}
}

func TestWatchCompacted(t *testing.T) {
	s := etcdtest.Connect(t, etcdtest.Start(t), etcd.Config{})
	ctx := testCtx(t)
	kv := handle("a", 1)
	kv.Labels = map[string]string{"l": "v"}
	first, err := s.Create(ctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	last := first
	for i := 2; i <= 5; i++ {
		kv = handle("a", i)
		kv.Labels, kv.Revision = map[string]string{"l": "v"}, last.Revision
		if last, err = s.Update(ctx, kv); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, datastore.KindHandle, first.Revision)
	wr := recv(t, ch)
	if !errors.Is(wr.Err, datastore.ErrCompacted) {
		t.Fatalf("watch after compacted revision %s: first response %+v; want ErrCompacted", first.Revision, wr)
	}
	wantClosed(t, ch)

	// Watching from the compaction point onwards works, and a delete
	// carries the last value and labels.
	_, from, err := s.List(ctx, datastore.KindHandle, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ch = s.Watch(wctx, datastore.KindHandle, from)
	if err := s.Delete(ctx, datastore.KindHandle, "a", last.Revision); err != nil {
		t.Fatal(err)
	}
	wr = recv(t, ch)
	if wr.Err != nil || len(wr.Events) != 1 || wr.Events[0].Type != datastore.EventDelete || wr.Events[0].KV.Name != "a" ||
		string(wr.Events[0].KV.Value) != `{"n":5}` || wr.Events[0].KV.Labels["l"] != "v" || wr.Revision != wr.Events[0].KV.Revision {
		t.Fatalf("watch after compaction = %+v; want the delete of a (last value {\"n\":5}, labels l=v)", wr)
	}
}

func TestWatchReplaysHistory(t *testing.T) {
	s := etcdtest.NewStore(t)
	ctx := testCtx(t)
	a, err := s.Create(ctx, handle("a", 1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Create(ctx, handle("b", 2))
	if err != nil {
		t.Fatal(err)
	}
	// Changes after a's creation were made before the watch started: etcd
	// replays them.
	ch := s.Watch(ctx, datastore.KindHandle, a.Revision)
	wr := recv(t, ch)
	if wr.Err != nil || wr.Revision != b.Revision || len(wr.Events) != 1 || wr.Events[0].KV.Name != "b" || wr.Events[0].KV.Revision != b.Revision {
		t.Fatalf("replayed watch response = %+v; want the put of b at %s", wr, b.Revision)
	}
	// A revision this store did not hand out cannot be watched from.
	wr = recv(t, s.Watch(ctx, datastore.KindHandle, "r-17"))
	if !errors.Is(wr.Err, datastore.ErrCompacted) {
		t.Fatalf("watch from a malformed revision = %+v; want ErrCompacted", wr)
	}
}

func TestWatchServerLost(t *testing.T) {
	srv := etcdtest.StartServer(t)
	s := etcdtest.Connect(t, srv.Endpoint(), etcd.Config{RequestTimeout: 500 * time.Millisecond})
	ctx := testCtx(t)
	ch := s.Watch(ctx, datastore.KindHandle, "")
	kv, err := s.Create(ctx, handle("k", 1))
	if err != nil {
		t.Fatal(err)
	}
	if wr := recv(t, ch); wr.Err != nil || wr.Revision != kv.Revision {
		t.Fatalf("watch response = %+v; want the put at %s", wr, kv.Revision)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	wr := recv(t, ch)
	if !errors.Is(wr.Err, datastore.ErrUnavailable) || !strings.Contains(wr.Err.Error(), srv.Endpoint()) {
		t.Fatalf("watch after server stop = %+v; want ErrUnavailable naming %s", wr, srv.Endpoint())
	}
	wantClosed(t, ch)
}

func TestWatchOutlivesRequestTimeout(t *testing.T) {
	ep := etcdtest.Start(t)
	s := etcdtest.Connect(t, ep, etcd.Config{RequestTimeout: 200 * time.Millisecond})
	ctx := testCtx(t)
	_, from, err := s.List(ctx, datastore.KindHandle, datastore.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ch := s.Watch(ctx, datastore.KindHandle, from)
	// An idle watch is not a request: it must stay open past the request
	// timeout and still deliver.
	time.Sleep(time.Second)
	select {
	case wr, ok := <-ch:
		t.Fatalf("idle watch produced %+v (open %v); want nothing", wr, ok)
	default:
	}
	kv, err := s.Create(ctx, handle("late", 1))
	if err != nil {
		t.Fatal(err)
	}
	if wr := recv(t, ch); wr.Err != nil || wr.Revision != kv.Revision || wr.Events[0].KV.Name != "late" {
		t.Fatalf("watch response = %+v; want the put of late at %s", wr, kv.Revision)
	}
}

func recv(t *testing.T, ch <-chan datastore.WatchResponse) datastore.WatchResponse {
	t.Helper()
	select {
	case wr, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed; want a response")
		}
		return wr
	case <-time.After(wait):
		t.Fatalf("no watch response within %s", wait)
	}
	return datastore.WatchResponse{}
}

func wantClosed(t *testing.T, ch <-chan datastore.WatchResponse) {
	t.Helper()
	select {
	case wr, ok := <-ch:
		if ok {
			t.Fatalf("watch sent %+v after its error; want it closed", wr)
		}
	case <-time.After(wait):
		t.Fatalf("watch channel not closed within %s after its error", wait)
	}
}
