package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

func TestConformance(t *testing.T) {
	ep := etcdtest.Start(t)
	storetest.Run(t, func(t *testing.T) datastore.Store {
		return etcdtest.Connect(t, ep, etcd.Config{})
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
	if _, err := s.Txn(ctx, datastore.Put("/t/k", []byte("v"), datastore.MustNotExist)); err != nil {
		t.Fatalf("Txn before stop: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err := s.Get(ctx, "/t/k")
	if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), srv.Endpoint()) {
		t.Errorf("Get after stop = %v; want ErrUnavailable naming %s", err, srv.Endpoint())
	}
	_, err = s.Txn(ctx, datastore.Put("/t/k", []byte("v2"), datastore.AnyRevision))
	if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), srv.Endpoint()) {
		t.Errorf("Txn after stop = %v; want ErrUnavailable naming %s", err, srv.Endpoint())
	}
	_, _, err = s.List(ctx, "/t/")
	if !errors.Is(err, datastore.ErrUnavailable) {
		t.Errorf("List after stop = %v; want ErrUnavailable", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("requests returned only when the test's context ended: %v", err)
	}
}

func TestConflictNamesKey(t *testing.T) {
	s := etcdtest.NewStore(t)
	ctx := testCtx(t)
	rev, err := s.Txn(ctx, datastore.Put("/t/a", []byte("1"), datastore.MustNotExist))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Txn(ctx, datastore.Put("/t/a", []byte("2"), rev)); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		ops  []datastore.Op
		want string
	}{
		{[]datastore.Op{datastore.Put("/t/b", nil, datastore.MustNotExist), datastore.Put("/t/a", nil, datastore.MustNotExist)}, "/t/a already exists"},
		{[]datastore.Op{datastore.Put("/t/a", nil, rev)}, fmt.Sprintf("/t/a changed (expected revision %d, now %d)", rev, rev+1)},
		{[]datastore.Op{datastore.Delete("/t/gone", rev)}, "/t/gone was deleted"},
	}
	for _, c := range cases {
		_, err := s.Txn(ctx, c.ops...)
		if !errors.Is(err, datastore.ErrConflict) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Txn = %v; want ErrConflict saying %q", err, c.want)
		}
	}
}

func TestTxnRejectsBadOps(t *testing.T) {
	s := etcdtest.NewStore(t)
	ctx := testCtx(t)
	_, err := s.Txn(ctx, datastore.Put("/t/a", nil, datastore.AnyRevision), datastore.Delete("/t/a", datastore.AnyRevision))
	if err == nil || errors.Is(err, datastore.ErrConflict) || !strings.Contains(err.Error(), "/t/a") {
		t.Errorf("Txn writing /t/a twice = %v; want an error naming the key, not a conflict", err)
	}
	_, err = s.Txn(ctx, datastore.Put("/t/a", nil, -5))
	if err == nil || errors.Is(err, datastore.ErrConflict) {
		t.Errorf("Txn expecting revision -5 = %v; want an invalid-argument error", err)
	}
	if _, err := s.Get(ctx, "/t/a"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("rejected transactions wrote /t/a: Get = %v", err)
	}
}

func TestListPages(t *testing.T) {
	defer etcd.SetListPageSize(3)()
	s := etcdtest.NewStore(t)
	ctx := testCtx(t)
	var want []string
	var ops []datastore.Op
	for i := 0; i < 10; i++ {
		k := fmt.Sprintf("/t/p/%02d", i)
		want = append(want, k)
		ops = append(ops, datastore.Put(k, []byte(k), datastore.MustNotExist))
	}
	rev, err := s.Txn(ctx, ops...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Txn(ctx, datastore.Put("/t/q", nil, datastore.MustNotExist)); err != nil {
		t.Fatal(err)
	}
	kvs, lrev, err := s.List(ctx, "/t/p/")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, kv := range kvs {
		got = append(got, kv.Key)
		if string(kv.Value) != kv.Key || kv.Revision != rev {
			t.Errorf("List entry %s = %q rev %d; want %q rev %d", kv.Key, kv.Value, kv.Revision, kv.Key, rev)
		}
	}
	if !slices.Equal(got, want) || lrev <= rev {
		t.Fatalf("paged List = %v at %d; want %v at > %d", got, lrev, want, rev)
	}
	all, _, err := s.List(ctx, "")
	if err != nil || len(all) != 11 {
		t.Fatalf("List of every key = %d keys, %v; want 11", len(all), err)
	}
}

func TestWatchCompacted(t *testing.T) {
	s := etcdtest.Connect(t, etcdtest.Start(t), etcd.Config{})
	ctx := testCtx(t)
	first, err := s.Txn(ctx, datastore.Put("/t/w/a", []byte("1"), datastore.MustNotExist))
	if err != nil {
		t.Fatal(err)
	}
	last := first
	for i := 2; i <= 5; i++ {
		if last, err = s.Txn(ctx, datastore.Put("/t/w/a", []byte(fmt.Sprint(i)), last)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Client().Compact(ctx, last); err != nil {
		t.Fatalf("compact to %d: %v", last, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, "/t/w/", first)
	wr := recv(t, ch)
	if !errors.Is(wr.Err, datastore.ErrCompacted) {
		t.Fatalf("watch from compacted revision %d: first response %+v; want ErrCompacted", first+1, wr)
	}
	wantClosed(t, ch)

	// Watching from the compaction point onwards works.
	ch = s.Watch(wctx, "/t/w/", last)
	rev, err := s.Txn(ctx, datastore.Delete("/t/w/a", last))
	if err != nil {
		t.Fatal(err)
	}
	wr = recv(t, ch)
	if wr.Err != nil || len(wr.Events) != 1 || wr.Events[0].Type != datastore.EventDelete || wr.Revision != rev || string(wr.Events[0].KV.Value) != "5" {
		t.Fatalf("watch after compaction = %+v; want the delete of /t/w/a (last value 5) at %d", wr, rev)
	}
}

func TestWatchReplaysHistory(t *testing.T) {
	s := etcdtest.NewStore(t)
	ctx := testCtx(t)
	r1, err := s.Txn(ctx, datastore.Put("/t/h/a", []byte("1"), datastore.MustNotExist))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Txn(ctx, datastore.Put("/t/h/b", []byte("2"), datastore.MustNotExist))
	if err != nil {
		t.Fatal(err)
	}
	// Changes after r1 were made before the watch started: etcd replays them.
	ch := s.Watch(ctx, "/t/h/", r1)
	wr := recv(t, ch)
	if wr.Err != nil || wr.Revision != r2 || len(wr.Events) != 1 || wr.Events[0].KV.Key != "/t/h/b" {
		t.Fatalf("replayed watch response = %+v; want the put of /t/h/b at %d", wr, r2)
	}
}

func TestWatchServerLost(t *testing.T) {
	srv := etcdtest.StartServer(t)
	s := etcdtest.Connect(t, srv.Endpoint(), etcd.Config{RequestTimeout: 500 * time.Millisecond})
	ctx := testCtx(t)
	ch := s.Watch(ctx, "/t/", 0)
	rev, err := s.Txn(ctx, datastore.Put("/t/k", []byte("v"), datastore.MustNotExist))
	if err != nil {
		t.Fatal(err)
	}
	if wr := recv(t, ch); wr.Err != nil || wr.Revision != rev {
		t.Fatalf("watch response = %+v; want the put at %d", wr, rev)
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
	_, from, err := s.List(ctx, "/t/")
	if err != nil {
		t.Fatal(err)
	}
	ch := s.Watch(ctx, "/t/", from)
	// An idle watch is not a request: it must stay open past the request
	// timeout and still deliver.
	time.Sleep(time.Second)
	select {
	case wr, ok := <-ch:
		t.Fatalf("idle watch produced %+v (open %v); want nothing", wr, ok)
	default:
	}
	rev, err := s.Txn(ctx, datastore.Put("/t/late", []byte("v"), datastore.MustNotExist))
	if err != nil {
		t.Fatal(err)
	}
	if wr := recv(t, ch); wr.Err != nil || wr.Revision != rev || wr.Events[0].KV.Key != "/t/late" {
		t.Fatalf("watch response = %+v; want the put of /t/late at %d", wr, rev)
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
