// Package etcdtest starts embedded etcd servers for tests and benchmarks:
// one single-member cluster per call, on free loopback ports, in the test's
// temporary directory, stopped when the test ends.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
)

// startAttempts bounds the retries when a picked port is taken between
// picking and listening.
const startAttempts = 5

// Start starts an embedded etcd server for the test and returns its client
// URL. The server is stopped by t.Cleanup. etcd logs only its errors (to
// slog.Default()) unless ETCDTEST_VERBOSE is set.
func Start(t testing.TB) (endpoint string) {
	t.Helper()
	srv := StartServer(t)
	return srv.Endpoint()
}

// StartServer is Start returning the server itself, for tests that stop it
// early (Close is safe to call again from the cleanup).
func StartServer(t testing.TB) *etcd.Server {
	t.Helper()
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			t.Fatalf("etcdtest: pick free loopback ports: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), etcd.DefaultReadyTimeout)
		srv, err := etcd.StartServer(ctx, etcd.ServerConfig{
			Name:              "etcdtest",
			DataDir:           fmt.Sprintf("%s/member-%d", dir, attempt),
			ListenClientURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
			ListenPeerURL:     fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
			Logger:            slog.Default(),
			Verbose:           os.Getenv("ETCDTEST_VERBOSE") != "",
			UnsafeNoFsync:     true,
			QuotaBackendBytes: 256 << 20,
			SnapshotCount:     10000,
			HeartbeatInterval: 10 * time.Millisecond,
			ElectionTimeout:   100 * time.Millisecond,
		})
		cancel()
		if err == nil {
			t.Cleanup(func() {
				if err := srv.Close(); err != nil {
					t.Errorf("etcdtest: stop server: %v", err)
				}
			})
			return srv
		}
		lastErr = err
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	t.Fatalf("etcdtest: start embedded etcd: %v", lastErr)
	return nil
}

// NewStore starts an embedded etcd server and returns a Store connected to
// it; both are closed by t.Cleanup.
func NewStore(t testing.TB) datastore.Store {
	t.Helper()
	return Connect(t, Start(t), etcd.Config{})
}

// Connect returns a Store for endpoint with cfg's timeouts (Endpoints is
// replaced), closed by t.Cleanup.
func Connect(t testing.TB, endpoint string, cfg etcd.Config) *etcd.Store {
	t.Helper()
	cfg.Endpoints = []string{endpoint}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := etcd.New(ctx, cfg)
	if err != nil {
		t.Fatalf("etcdtest: connect to %s: %v", endpoint, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("etcdtest: close store: %v", err)
		}
	})
	return s
}

// RawTxnRate measures the raw one-key etcd transaction rate through store
// (a store from NewStore or Connect): n sequential create transactions on
// fresh keys outside Twill's prefix, in transactions per second. See
// etcd.RawTxnRate.
func RawTxnRate(ctx context.Context, store datastore.Store, n int) (float64, error) {
	return etcd.RawTxnRate(ctx, store, n)
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
