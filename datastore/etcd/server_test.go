package etcd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/etcdtest"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestServerPortInUse(t *testing.T) {
	ep := etcdtest.Start(t)
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	srv, err := etcd.StartServer(testCtx(t), etcd.ServerConfig{
		DataDir:         t.TempDir(),
		ListenClientURL: ep,
		ListenPeerURL:   peer,
		Logger:          slog.New(slog.DiscardHandler),
	})
	if err == nil {
		srv.Close()
		t.Fatalf("second server on %s started; want a port-in-use error", ep)
	}
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), ep) || strings.Contains(err.Error(), peer) {
		t.Fatalf("StartServer on a used client port = %v; want EADDRINUSE naming %s only", err, ep)
	}
}

func TestServerBadConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  etcd.ServerConfig
		want string
	}{
		{"https", etcd.ServerConfig{ListenClientURL: "https://127.0.0.1:2379"}, "https://127.0.0.1:2379"},
		{"no port", etcd.ServerConfig{ListenPeerURL: "http://127.0.0.1"}, "http://127.0.0.1"},
		{"path", etcd.ServerConfig{ListenClientURL: "http://127.0.0.1:2379/x"}, "must not have a path"},
		{"data dir is a file", etcd.ServerConfig{DataDir: filepath.Join(file, "etcd")}, filepath.Join(file, "etcd")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.cfg.DataDir == "" {
				c.cfg.DataDir = t.TempDir()
			}
			c.cfg.Logger = slog.New(slog.DiscardHandler)
			srv, err := etcd.StartServer(testCtx(t), c.cfg)
			if err == nil {
				srv.Close()
				t.Fatalf("StartServer(%+v) succeeded; want an error", c.cfg)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("StartServer error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestServerLifecycle(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	cfg := etcd.ServerConfig{
		DataDir:         dir,
		ListenClientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		ListenPeerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		Logger:          slog.New(slog.NewTextHandler(&logs, nil)),
		UnsafeNoFsync:   true,
	}
	srv, err := etcd.StartServer(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if srv.Endpoint() != cfg.ListenClientURL {
		t.Fatalf("Endpoint() = %s; want %s", srv.Endpoint(), cfg.ListenClientURL)
	}
	s := etcdtest.Connect(t, srv.Endpoint(), etcd.Config{})
	created, err := s.Create(testCtx(t), datastore.KV{Kind: datastore.KindHandle, Name: "persist", Value: []byte(`"v"`)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Done():
		t.Fatal("Done closed while the server runs")
	default:
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-srv.Done():
	case <-time.After(wait):
		t.Fatalf("Done not closed within %s of Close", wait)
	}
	if err := srv.Err(); err != nil {
		t.Fatalf("Err after a clean Close = %v; want nil", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if logs.Len() != 0 {
		t.Errorf("etcd logged at its default (error) level during a clean run:\n%s", logs.String())
	}

	// A restart on the same data directory keeps the data.
	srv2, err := etcd.StartServer(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("restart on %s: %v", dir, err)
	}
	t.Cleanup(func() { srv2.Close() })
	s2 := etcdtest.Connect(t, srv2.Endpoint(), etcd.Config{})
	kv, err := s2.Get(testCtx(t), datastore.KindHandle, "persist")
	if err != nil || string(kv.Value) != `"v"` || kv.Revision != created.Revision {
		t.Fatalf("after restart Get = %+v, %v; want \"v\" at revision %s", kv, err, created.Revision)
	}
}

func TestServerStartCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	srv, err := etcd.StartServer(ctx, etcd.ServerConfig{
		DataDir:         t.TempDir(),
		ListenClientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		ListenPeerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		Logger:          slog.New(slog.DiscardHandler),
	})
	if err == nil {
		srv.Close()
		t.Fatal("StartServer with a cancelled context started a server")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("StartServer with a cancelled context = %v; want context.Canceled", err)
	}
}
