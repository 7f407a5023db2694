// Package etcd implements datastore.Store on etcd v3 and runs an embedded
// etcd server for "twill datastore run" and for tests.
//
// Every request carries a bounded timeout. Errors are mapped onto the
// datastore sentinels: a request that etcd did not answer in time wraps
// datastore.ErrUnavailable and names the endpoints, a failed
// compare-and-swap is datastore.ErrConflict, a missing key is
// datastore.ErrNotFound, and a watch from compacted history ends with
// datastore.ErrCompacted.
package etcd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"twill.dev/twill/datastore"
)

var _ datastore.Store = (*Store)(nil)

// Defaults applied by New to a zero Config.
const (
	DefaultEndpoint       = "http://127.0.0.1:2379"
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// Environment variables read by ConfigFromEnv. The CLI binds the flags
// --etcd-endpoints, --etcd-ca, --etcd-cert and --etcd-key to them.
const (
	EnvEndpoints = "TWILL_ETCD_ENDPOINTS"
	EnvCA        = "TWILL_ETCD_CA"
	EnvCert      = "TWILL_ETCD_CERT"
	EnvKey       = "TWILL_ETCD_KEY"
)

// listPageSize is how many keys one List request reads at a time (a
// variable so that tests can exercise paging).
var listPageSize int64 = 1000

// Config says how to reach etcd.
type Config struct {
	// Endpoints are etcd client URLs, e.g. http://127.0.0.1:2379 or
	// https://10.0.0.1:2379. Empty means DefaultEndpoint.
	Endpoints []string
	// CAFile verifies the server's certificate; CertFile and KeyFile are the
	// client's certificate and key. All three are PEM files; any of them set
	// requires https:// endpoints.
	CAFile, CertFile, KeyFile string
	// DialTimeout bounds the reachability check in New (default 5s).
	DialTimeout time.Duration
	// RequestTimeout bounds every Get, List and Txn, and how long a watch
	// tolerates a lost connection (default 10s).
	RequestTimeout time.Duration
}

// ConfigFromEnv reads TWILL_ETCD_ENDPOINTS (comma-separated, default
// http://127.0.0.1:2379), TWILL_ETCD_CA, TWILL_ETCD_CERT and TWILL_ETCD_KEY
// through getenv (usually os.Getenv).
func ConfigFromEnv(getenv func(string) string) Config {
	var cfg Config
	for _, e := range strings.Split(getenv(EnvEndpoints), ",") {
		if e = strings.TrimSpace(e); e != "" {
			cfg.Endpoints = append(cfg.Endpoints, e)
		}
	}
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = []string{DefaultEndpoint}
	}
	cfg.CAFile = strings.TrimSpace(getenv(EnvCA))
	cfg.CertFile = strings.TrimSpace(getenv(EnvCert))
	cfg.KeyFile = strings.TrimSpace(getenv(EnvKey))
	return cfg
}

// withDefaults returns cfg with empty fields set to their defaults.
func (cfg Config) withDefaults() Config {
	var eps []string
	for _, e := range cfg.Endpoints {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		eps = []string{DefaultEndpoint}
	}
	cfg.Endpoints = eps
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	return cfg
}

// tlsConfig builds the client TLS configuration from the PEM files, or nil
// when none is set.
func (cfg Config) tlsConfig() (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	for _, e := range cfg.Endpoints {
		if strings.HasPrefix(e, "http://") {
			return nil, fmt.Errorf("etcd endpoint %s is plain http but TLS files are set (--etcd-ca/--etcd-cert/--etcd-key): use an https:// endpoint, or drop the TLS files", e)
		}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA file (--etcd-ca / %s): %w", EnvCA, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s (--etcd-ca / %s) holds no PEM certificate", cfg.CAFile, EnvCA)
		}
		tc.RootCAs = pool
	}
	switch {
	case cfg.CertFile == "" && cfg.KeyFile == "":
	case cfg.CertFile == "":
		return nil, fmt.Errorf("etcd client key %s is set but no client certificate: set --etcd-cert / %s too", cfg.KeyFile, EnvCert)
	case cfg.KeyFile == "":
		return nil, fmt.Errorf("etcd client certificate %s is set but no key: set --etcd-key / %s too", cfg.CertFile, EnvKey)
	default:
		certPEM, err := os.ReadFile(cfg.CertFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd client certificate (--etcd-cert / %s): %w", EnvCert, err)
		}
		keyPEM, err := os.ReadFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd client key (--etcd-key / %s): %w", EnvKey, err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate %s and key %s do not form a PEM key pair: %w", cfg.CertFile, cfg.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// Store is a datastore.Store backed by an etcd v3 cluster.
type Store struct {
	cli       *clientv3.Client
	endpoints string
	timeout   time.Duration
}

// New connects to etcd and checks within cfg.DialTimeout that the cluster
// answers a linearizable read. An unreachable cluster gives an error that
// wraps datastore.ErrUnavailable and names the endpoints.
func New(ctx context.Context, cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tc,
		Logger:      zap.NewNop(),
		// Keep-alives on open streams notice a server that went silent.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: cfg.RequestTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	s := &Store{cli: cli, endpoints: strings.Join(cfg.Endpoints, ","), timeout: cfg.RequestTimeout}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(pctx, datastore.Prefix, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to etcd at %s: %w", s.endpoints, ctx.Err())
		}
		if isUnavailable(err) {
			why := diagnose(ctx, cfg.Endpoints, tc)
			return nil, fmt.Errorf("cannot reach etcd at %s within %s: is \"twill datastore run\" (or your etcd cluster) running, and do --etcd-endpoints / %s point at it? (%w: %w%s)",
				s.endpoints, cfg.DialTimeout, EnvEndpoints, datastore.ErrUnavailable, err, why)
		}
		return nil, fmt.Errorf("etcd at %s refused the connection check: %w", s.endpoints, err)
	}
	return s, nil
}

// diagnoseTimeout bounds each connection attempt of diagnose.
const diagnoseTimeout = time.Second

// diagnose dials each endpoint once, with a TLS handshake when tc is set,
// and returns what failed ("; host:port: reason" per endpoint), so that an
// unreachable-etcd error tells a refused port from a certificate problem.
func diagnose(ctx context.Context, endpoints []string, tc *tls.Config) string {
	var b strings.Builder
	for _, ep := range endpoints {
		host := ep
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			host = u.Host
		}
		dctx, cancel := context.WithTimeout(ctx, diagnoseTimeout)
		conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", host)
		if err == nil && tc != nil {
			c := tc.Clone()
			if h, _, serr := net.SplitHostPort(host); serr == nil {
				c.ServerName = h
			}
			tconn := tls.Client(conn, c)
			err = tconn.HandshakeContext(dctx)
			conn = tconn
		}
		cancel()
		if conn != nil {
			conn.Close()
		}
		if err != nil {
			fmt.Fprintf(&b, "; %s: %v", host, err)
		}
	}
	return b.String()
}

// Endpoints returns the comma-separated endpoints the store talks to.
func (s *Store) Endpoints() string { return s.endpoints }

// Client returns the underlying etcd client, for administrative calls
// (compaction, status) that datastore.Store does not cover.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Close implements datastore.Store.
func (s *Store) Close() error {
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client for %s: %w", s.endpoints, err)
	}
	return nil
}

// Get implements datastore.Store.
func (s *Store) Get(ctx context.Context, key string) (datastore.KV, error) {
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Get(rctx, key)
	if err != nil {
		return datastore.KV{}, s.mapErr(ctx, "get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return datastore.KV{}, fmt.Errorf("%s: %w", key, datastore.ErrNotFound)
	}
	return toKV(resp.Kvs[0]), nil
}

// List implements datastore.Store. Large prefixes are read in pages, all at
// the revision of the first page, so the result is one consistent snapshot;
// if that revision is compacted away between pages, the list starts over.
func (s *Store) List(ctx context.Context, prefix string) ([]datastore.KV, int64, error) {
	var out []datastore.KV
	rev, err := s.ListPages(ctx, prefix, func(kvs []datastore.KV, restart bool) error {
		if restart {
			out = out[:0]
		}
		out = append(out, kvs...)
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, rev, nil
}

// listAttempts is how many times a list starts over when its revision is
// compacted away between pages.
const listAttempts = 3

// ListPages reads every key under prefix as List does (sorted, all at one
// revision, which it returns), but hands them to page one page of up to
// 1,000 keys at a time instead of collecting them, so that a caller that
// decodes the keys as they come never holds the whole prefix at once. page
// owns the slice it gets. When the revision is compacted away between
// pages the list starts over: page is then called once with restart set
// (and no keys), and the caller drops what it received so far. An error
// from page ends the list and is returned as is.
func (s *Store) ListPages(ctx context.Context, prefix string, page func(kvs []datastore.KV, restart bool) error) (int64, error) {
	for i := 1; ; i++ {
		rev, err := s.listPages(ctx, prefix, page)
		if err == nil {
			return rev, nil
		}
		var pe pageError
		if errors.As(err, &pe) {
			return 0, pe.err
		}
		if i == listAttempts || !errors.Is(err, rpctypes.ErrCompacted) {
			return 0, s.mapErr(ctx, "list", prefix, err)
		}
		if err := page(nil, true); err != nil {
			return 0, err
		}
	}
}

// pageError carries an error of a ListPages callback through listPages.
type pageError struct{ err error }

func (e pageError) Error() string { return e.err.Error() }

// listPages reads every key under prefix, page by page, at one revision.
func (s *Store) listPages(ctx context.Context, prefix string, page func([]datastore.KV, bool) error) (int64, error) {
	key, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	if prefix == "" {
		key, end = "\x00", "\x00"
	}
	var rev int64
	for {
		opts := []clientv3.OpOption{
			clientv3.WithRange(end),
			clientv3.WithLimit(listPageSize),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend),
		}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		resp, err := s.cli.Get(rctx, key, opts...)
		cancel()
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs := make([]datastore.KV, 0, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			kvs = append(kvs, toKV(kv))
		}
		more := resp.More && len(resp.Kvs) > 0
		if more {
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		if len(kvs) > 0 {
			if err := page(kvs, false); err != nil {
				return 0, pageError{err}
			}
		}
		if !more {
			return rev, nil
		}
	}
}

// Txn implements datastore.Store: all ops apply in one etcd transaction
// guarded by one compare per op with an expectation. A key may appear in at
// most one op.
func (s *Store) Txn(ctx context.Context, ops ...datastore.Op) (int64, error) {
	var (
		cmps   []clientv3.Cmp
		thens  []clientv3.Op
		elses  []clientv3.Op
		expect []datastore.Op
		seen   = make(map[string]bool, len(ops))
	)
	for _, op := range ops {
		if seen[op.Key] {
			return 0, fmt.Errorf("transaction writes key %s twice: merge the ops into one", op.Key)
		}
		seen[op.Key] = true
		switch {
		case op.Expect == datastore.AnyRevision:
		case op.Expect == datastore.MustNotExist:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(op.Key), "=", 0))
		case op.Expect > 0:
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(op.Key), "=", op.Expect))
		default:
			return 0, fmt.Errorf("op on %s expects revision %d: use a revision read earlier, datastore.MustNotExist or datastore.AnyRevision", op.Key, op.Expect)
		}
		if op.Expect != datastore.AnyRevision {
			expect = append(expect, op)
			elses = append(elses, clientv3.OpGet(op.Key, clientv3.WithKeysOnly()))
		}
		if op.Delete {
			thens = append(thens, clientv3.OpDelete(op.Key))
		} else {
			thens = append(thens, clientv3.OpPut(op.Key, string(op.Value)))
		}
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Txn(rctx).If(cmps...).Then(thens...).Else(elses...).Commit()
	if err != nil {
		what := ""
		if len(ops) > 0 {
			what = ops[0].Key
			if len(ops) > 1 {
				what = fmt.Sprintf("%s and %d more keys", what, len(ops)-1)
			}
		}
		return 0, s.mapErr(ctx, "txn", what, err)
	}
	if !resp.Succeeded {
		return 0, conflictErr(expect, resp)
	}
	return resp.Header.Revision, nil
}

// conflictErr names the first op whose expectation failed, from the reads
// the transaction's else branch made.
func conflictErr(expect []datastore.Op, resp *clientv3.TxnResponse) error {
	for i, op := range expect {
		if i >= len(resp.Responses) {
			break
		}
		var cur int64
		if r := resp.Responses[i].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			cur = r.Kvs[0].ModRevision
		}
		switch {
		case op.Expect == datastore.MustNotExist && cur != 0:
			return fmt.Errorf("%s already exists (revision %d): %w", op.Key, cur, datastore.ErrConflict)
		case op.Expect > 0 && cur == 0:
			return fmt.Errorf("%s was deleted (expected revision %d): %w", op.Key, op.Expect, datastore.ErrConflict)
		case op.Expect > 0 && cur != op.Expect:
			return fmt.Errorf("%s changed (expected revision %d, now %d): %w", op.Key, op.Expect, cur, datastore.ErrConflict)
		}
	}
	return fmt.Errorf("transaction expectations failed: %w", datastore.ErrConflict)
}

// Watch implements datastore.Store. Deletes carry the key's last value. The
// channel ends with an Err response when history before afterRev+1 was
// compacted (datastore.ErrCompacted), when the stream fails, or when the
// connection to etcd stays down for longer than the request timeout
// (datastore.ErrUnavailable); it closes without one when ctx ends. A
// negative afterRev watches from the current revision.
func (s *Store) Watch(ctx context.Context, prefix string, afterRev int64) <-chan datastore.WatchResponse {
	out := make(chan datastore.WatchResponse, 64)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV()}
	if afterRev >= 0 {
		opts = append(opts, clientv3.WithRev(afterRev+1))
	}
	wch := s.cli.Watch(wctx, prefix, opts...)
	lost := s.connLost(wctx)
	go func() {
		defer close(out)
		defer cancel()
		send := func(r datastore.WatchResponse) bool {
			select {
			case out <- r:
				return true
			case <-ctx.Done():
				return false
			}
		}
		fail := func(err error) { send(datastore.WatchResponse{Err: err}) }
		for {
			select {
			case <-ctx.Done():
				return
			case <-lost:
				fail(fmt.Errorf("watch %s: lost the connection to etcd at %s for more than %s: %w", prefix, s.endpoints, s.timeout, datastore.ErrUnavailable))
				return
			case wr, ok := <-wch:
				if !ok {
					if ctx.Err() == nil {
						fail(fmt.Errorf("watch %s: etcd at %s closed the stream: %w", prefix, s.endpoints, datastore.ErrUnavailable))
					}
					return
				}
				if wr.CompactRevision != 0 {
					fail(fmt.Errorf("watch %s from revision %d: etcd compacted its history up to revision %d; list again: %w", prefix, afterRev+1, wr.CompactRevision, datastore.ErrCompacted))
					return
				}
				if err := wr.Err(); err != nil {
					if ctx.Err() != nil {
						return
					}
					fail(s.mapErr(ctx, "watch", prefix, err))
					return
				}
				for _, batch := range splitByRevision(wr.Events) {
					if !send(batch) {
						return
					}
				}
			}
		}
	}()
	return out
}

// splitByRevision turns etcd events, which may span several revisions, into
// one WatchResponse per revision, in order.
func splitByRevision(evs []*clientv3.Event) []datastore.WatchResponse {
	var out []datastore.WatchResponse
	for _, ev := range evs {
		e := datastore.Event{Type: datastore.EventPut, KV: toKV(ev.Kv)}
		if ev.Type == mvccpb.DELETE {
			e.Type = datastore.EventDelete
			e.KV.Value = nil
			if ev.PrevKv != nil {
				e.KV.Value = bytes.Clone(ev.PrevKv.Value)
			}
		}
		rev := ev.Kv.ModRevision
		if n := len(out); n > 0 && out[n-1].Revision == rev {
			out[n-1].Events = append(out[n-1].Events, e)
			continue
		}
		out = append(out, datastore.WatchResponse{Events: []datastore.Event{e}, Revision: rev})
	}
	return out
}

// connLost returns a channel that is closed when the client's connection
// has not been ready for longer than the request timeout while ctx lasts.
func (s *Store) connLost(ctx context.Context) <-chan struct{} {
	lost := make(chan struct{})
	conn := s.cli.ActiveConnection()
	if conn == nil {
		return lost
	}
	go func() {
		for ctx.Err() == nil {
			st := conn.GetState()
			if st == connectivity.Ready {
				conn.WaitForStateChange(ctx, st)
				continue
			}
			// Not ready: give it the request timeout to come back.
			tctx, cancel := context.WithTimeout(ctx, s.timeout)
			for st != connectivity.Ready && st != connectivity.Shutdown {
				if st == connectivity.Idle {
					conn.Connect()
				}
				if !conn.WaitForStateChange(tctx, st) {
					break
				}
				st = conn.GetState()
			}
			expired := tctx.Err() != nil
			cancel()
			if ctx.Err() != nil {
				return
			}
			if st == connectivity.Shutdown || (st != connectivity.Ready && expired) {
				close(lost)
				return
			}
		}
	}()
	return lost
}

// mapErr wraps an etcd client error: timeouts and unreachable servers wrap
// datastore.ErrUnavailable and name the endpoints; a cancelled caller
// context is reported as such.
func (s *Store) mapErr(ctx context.Context, op, key string, err error) error {
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("etcd %s %s: %w", op, key, ctx.Err())
	}
	if isUnavailable(err) {
		return fmt.Errorf("etcd %s %s: no answer from etcd at %s in time; check that etcd is running and reachable (%w: %w)", op, key, s.endpoints, datastore.ErrUnavailable, err)
	}
	return fmt.Errorf("etcd %s %s at %s: %w", op, key, s.endpoints, err)
}

// isUnavailable tells whether err means etcd did not answer: a deadline, an
// unreachable server, or a cluster without leader.
func isUnavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable || ee.Code() == codes.DeadlineExceeded
	}
	if st, ok := status.FromError(err); ok {
		return st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded
	}
	return false
}

func toKV(kv *mvccpb.KeyValue) datastore.KV {
	return datastore.KV{Key: string(kv.Key), Value: bytes.Clone(kv.Value), Revision: kv.ModRevision}
}
