// Package etcd implements datastore.Store on etcd v3 and runs an embedded
// etcd server for "twill datastore run" and for tests.
//
// # Layout
//
// Every object is one etcd key,
//
//	/twill/v1/<kind>/<name>
//
// where <kind> is the datastore.Kind (ippools, nodes, ipamconfigs,
// ipamblocks, ipamhandles, workloadendpoints) and <name> is the object's
// name escaped with datastore.EscapeSegment ('%' becomes %25, '/' becomes
// %2F), so that each kind is exactly the keys under the prefix
// /twill/v1/<kind>/. The key's value is a JSON envelope that carries the
// object's labels next to its document:
//
//	{"labels":{"twill.dev/node":"node-1"},"value":{"apiVersion":"twill.dev/v1",...}}
//
// ("labels" is left out when there are none; "value" holds the document
// exactly as written). An object's revision is its key's ModRevision as a
// decimal string; a List's revision is the header revision of its first
// page, and a Watch of a kind from revision r watches the kind's prefix
// from etcd revision r+1.
//
// Every write is a transaction on one key: Create puts if the key's
// CreateRevision is 0; Update and Delete with an expected revision apply
// if the key's ModRevision equals it, and without one if the key exists
// (CreateRevision > 0). A failed transaction reads the key in its else
// branch, which tells a missing object (datastore.ErrNotFound) from a
// changed one (datastore.ErrConflict). Labels are matched client-side.
//
// # Errors
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
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"strconv"
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

var (
	_ datastore.Store = (*Store)(nil)
	_ datastore.Pager = (*Store)(nil)
)

// Prefix is the key prefix under which every Twill object is stored.
const Prefix = "/twill/v1/"

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
	// RequestTimeout bounds every request (a Get, each List page, each
	// write), and how long a watch tolerates a lost connection (default
	// 10s).
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

// Store is a datastore.Store backed by an etcd v3 cluster, in the layout
// the package documentation describes.
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
	if _, err := cli.Get(pctx, Prefix, clientv3.WithCountOnly()); err != nil {
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
// (status, defragmentation) that datastore.Store does not cover.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Close implements datastore.Store.
func (s *Store) Close() error {
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client for %s: %w", s.endpoints, err)
	}
	return nil
}

// KindPrefix returns the key prefix that holds the objects of kind:
// Prefix + kind + "/".
func KindPrefix(kind datastore.Kind) string { return Prefix + string(kind) + "/" }

// Key returns the etcd key of object kind/name.
func Key(kind datastore.Kind, name string) string {
	return KindPrefix(kind) + datastore.EscapeSegment(name)
}

// checkKind refuses a kind that cannot be a key segment.
func checkKind(kind datastore.Kind) error {
	if kind == "" || strings.ContainsAny(string(kind), "/%") {
		return fmt.Errorf("object kind %q: must be a non-empty word without '/' or '%%': %w", kind, datastore.ErrInvalid)
	}
	return nil
}

// objectKey checks kind and name and returns the object's key.
func objectKey(kind datastore.Kind, name string) (string, error) {
	if err := checkKind(kind); err != nil {
		return "", err
	}
	if name == "" {
		return "", fmt.Errorf("%s object without a name: %w", kind, datastore.ErrInvalid)
	}
	return Key(kind, name), nil
}

// envelope is the stored form of an object: its labels and its document.
type envelope struct {
	Labels map[string]string `json:"labels,omitempty"`
	Value  json.RawMessage   `json:"value"`
}

// encodeValue returns the envelope of kv. A value that is not a JSON
// document wraps datastore.ErrInvalid.
func encodeValue(kv datastore.KV) (string, error) {
	if !json.Valid(kv.Value) {
		return "", fmt.Errorf("%s %q: value is not a JSON document: %w", kv.Kind, kv.Name, datastore.ErrInvalid)
	}
	var b strings.Builder
	b.Grow(len(kv.Value) + 32)
	b.WriteByte('{')
	if len(kv.Labels) > 0 {
		lb, err := json.Marshal(kv.Labels)
		if err != nil {
			return "", fmt.Errorf("%s %q: labels: %w: %w", kv.Kind, kv.Name, datastore.ErrInvalid, err)
		}
		b.WriteString(`"labels":`)
		b.Write(lb)
		b.WriteByte(',')
	}
	b.WriteString(`"value":`)
	b.Write(kv.Value)
	b.WriteByte('}')
	return b.String(), nil
}

// decodeKV turns a stored key of kind into a KV. A value that is not an
// envelope wraps datastore.ErrInvalid and names the key.
func decodeKV(kind datastore.Kind, kv *mvccpb.KeyValue) (datastore.KV, error) {
	name := datastore.UnescapeSegment(strings.TrimPrefix(string(kv.Key), KindPrefix(kind)))
	var env envelope
	if err := json.Unmarshal(kv.Value, &env); err != nil || env.Value == nil {
		if err == nil {
			err = errors.New(`no "value" field`)
		}
		return datastore.KV{}, fmt.Errorf("etcd key %s holds no Twill object envelope: %w: %w", kv.Key, datastore.ErrInvalid, err)
	}
	if len(env.Labels) == 0 {
		env.Labels = nil
	}
	return datastore.KV{Kind: kind, Name: name, Labels: env.Labels, Value: []byte(env.Value), Revision: formatRev(kv.ModRevision)}, nil
}

// formatRev and parseRev convert between etcd revisions and the opaque
// revision strings of datastore.KV. parseRev returns -1, which matches no
// key, for a string this store did not hand out.
func formatRev(r int64) string { return strconv.FormatInt(r, 10) }

func parseRev(s string) int64 {
	r, err := strconv.ParseInt(s, 10, 64)
	if err != nil || r <= 0 {
		return -1
	}
	return r
}

// Get implements datastore.Store.
func (s *Store) Get(ctx context.Context, kind datastore.Kind, name string) (datastore.KV, error) {
	key, err := objectKey(kind, name)
	if err != nil {
		return datastore.KV{}, err
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Get(rctx, key)
	if err != nil {
		return datastore.KV{}, s.mapErr(ctx, "get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return datastore.KV{}, fmt.Errorf("%s %q: %w", kind, name, datastore.ErrNotFound)
	}
	return decodeKV(kind, resp.Kvs[0])
}

// List implements datastore.Store. A large kind is read in pages, all at
// the revision of the first page, so the result is one consistent
// snapshot; if that revision is compacted away between pages, the list
// starts over.
func (s *Store) List(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions) ([]datastore.KV, string, error) {
	var out []datastore.KV
	rev, err := s.ListPages(ctx, kind, opts, func(kvs []datastore.KV, restart bool) error {
		if restart {
			out = out[:0]
		}
		out = append(out, kvs...)
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, rev, nil
}

// listAttempts is how many times a list starts over when its revision is
// compacted away between pages.
const listAttempts = 3

// ListPages implements datastore.Pager. It reads the objects of kind as
// List does (sorted by name, all at one revision, which it returns), but
// hands them to page one page at a time instead of collecting them, so
// that a caller that decodes the objects as they come never holds the
// whole kind at once. Each page holds the objects matching opts among up
// to 1,000 keys; pages with no match are skipped. page owns the slice it
// gets. When the revision is compacted away between pages the list starts
// over: page is then called once with restart set (and no objects), and
// the caller drops what it received so far. An error from page ends the
// list and is returned as is.
func (s *Store) ListPages(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions, page func(kvs []datastore.KV, restart bool) error) (string, error) {
	if err := checkKind(kind); err != nil {
		return "", err
	}
	for i := 1; ; i++ {
		rev, err := s.listPages(ctx, kind, opts, page)
		if err == nil {
			return formatRev(rev), nil
		}
		var pe pageError
		if errors.As(err, &pe) {
			return "", pe.err
		}
		if errors.Is(err, datastore.ErrInvalid) {
			return "", err
		}
		if i == listAttempts || !errors.Is(err, rpctypes.ErrCompacted) {
			return "", s.mapErr(ctx, "list", KindPrefix(kind), err)
		}
		if err := page(nil, true); err != nil {
			return "", err
		}
	}
}

// pageError carries an error of a ListPages callback through listPages.
type pageError struct{ err error }

func (e pageError) Error() string { return e.err.Error() }

// listPages reads every key of kind, page by page, at one revision.
func (s *Store) listPages(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions, page func([]datastore.KV, bool) error) (int64, error) {
	prefix := KindPrefix(kind)
	key, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	var rev int64
	for {
		ops := []clientv3.OpOption{
			clientv3.WithRange(end),
			clientv3.WithLimit(listPageSize),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend),
		}
		if rev != 0 {
			ops = append(ops, clientv3.WithRev(rev))
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		resp, err := s.cli.Get(rctx, key, ops...)
		cancel()
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs := make([]datastore.KV, 0, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			o, err := decodeKV(kind, kv)
			if err != nil {
				return 0, err
			}
			if datastore.MatchLabels(o.Labels, opts.Labels) {
				kvs = append(kvs, o)
			}
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

// Create implements datastore.Store: the put applies only if the key has
// never been created or was deleted since (CreateRevision 0).
func (s *Store) Create(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	key, err := objectKey(kv.Kind, kv.Name)
	if err != nil {
		return datastore.KV{}, err
	}
	val, err := encodeValue(kv)
	if err != nil {
		return datastore.KV{}, err
	}
	resp, err := s.write(ctx, "create", key, clientv3.Compare(clientv3.CreateRevision(key), "=", 0), clientv3.OpPut(key, val))
	if err != nil {
		return datastore.KV{}, err
	}
	if !resp.Succeeded {
		return datastore.KV{}, fmt.Errorf("create %s %q (now at revision %d): %w: %w", kv.Kind, kv.Name, currentRev(resp), datastore.ErrExists, datastore.ErrConflict)
	}
	return stored(kv, resp), nil
}

// Update implements datastore.Store: with kv.Revision set the put applies
// only if the key's ModRevision still equals it, without only if the key
// exists.
func (s *Store) Update(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	key, err := objectKey(kv.Kind, kv.Name)
	if err != nil {
		return datastore.KV{}, err
	}
	val, err := encodeValue(kv)
	if err != nil {
		return datastore.KV{}, err
	}
	resp, err := s.write(ctx, "update", key, expectation(key, kv.Revision), clientv3.OpPut(key, val))
	if err != nil {
		return datastore.KV{}, err
	}
	if !resp.Succeeded {
		return datastore.KV{}, failedWrite("update", kv.Kind, kv.Name, kv.Revision, resp)
	}
	return stored(kv, resp), nil
}

// Delete implements datastore.Store, with the expectations of Update.
func (s *Store) Delete(ctx context.Context, kind datastore.Kind, name, expect string) error {
	key, err := objectKey(kind, name)
	if err != nil {
		return err
	}
	resp, err := s.write(ctx, "delete", key, expectation(key, expect), clientv3.OpDelete(key))
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return failedWrite("delete", kind, name, expect, resp)
	}
	return nil
}

// expectation is the compare of an Update or Delete: the key's
// ModRevision equals expect, or the key exists when expect is empty.
func expectation(key, expect string) clientv3.Cmp {
	if expect == "" {
		return clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(key), "=", parseRev(expect))
}

// write runs the one-key transaction If(cmp) Then(then) Else(read the key's
// revisions) within the request timeout.
func (s *Store) write(ctx context.Context, op, key string, cmp clientv3.Cmp, then clientv3.Op) (*clientv3.TxnResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Txn(rctx).If(cmp).Then(then).Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return nil, s.mapErr(ctx, op, key, err)
	}
	return resp, nil
}

// currentRev returns the key's ModRevision as read by a failed write's
// else branch, 0 when the key does not exist.
func currentRev(resp *clientv3.TxnResponse) int64 {
	if len(resp.Responses) > 0 {
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			return r.Kvs[0].ModRevision
		}
	}
	return 0
}

// failedWrite explains a failed Update or Delete: the object is missing
// (datastore.ErrNotFound) or its revision is no longer expect
// (datastore.ErrConflict).
func failedWrite(op string, kind datastore.Kind, name, expect string, resp *clientv3.TxnResponse) error {
	cur := currentRev(resp)
	if cur == 0 {
		return fmt.Errorf("%s %s %q: %w", op, kind, name, datastore.ErrNotFound)
	}
	return fmt.Errorf("%s %s %q: expected revision %s, now %d: %w", op, kind, name, expect, cur, datastore.ErrConflict)
}

// stored returns what a successful Create or Update stored: a copy of kv at
// the transaction's revision, which for a one-key write is the key's new
// ModRevision.
func stored(kv datastore.KV, resp *clientv3.TxnResponse) datastore.KV {
	out := datastore.KV{Kind: kv.Kind, Name: kv.Name, Value: bytes.Clone(kv.Value), Revision: formatRev(resp.Header.Revision)}
	if len(kv.Labels) > 0 {
		out.Labels = maps.Clone(kv.Labels)
	}
	return out
}

// Compact compacts etcd's history up to its current revision and waits
// until the compaction is applied: a watch from an earlier revision then
// ends with datastore.ErrCompacted. It is for tests and administration;
// the embedded server also compacts on its own (DefaultCompactionRetention).
func (s *Store) Compact(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Get(rctx, Prefix, clientv3.WithCountOnly())
	if err != nil {
		return s.mapErr(ctx, "compact", Prefix, err)
	}
	rev := resp.Header.Revision
	if _, err := s.cli.Compact(rctx, rev, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return s.mapErr(ctx, "compact", fmt.Sprintf("to revision %d", rev), err)
	}
	return nil
}

// Watch implements datastore.Store on the kind's key prefix, from etcd
// revision afterRev+1 (from the current revision when afterRev is empty).
// Each etcd watch response becomes one WatchResponse whose Revision is
// that of its last event; deletes carry the object's last value and
// labels. The channel ends with an Err response when history after
// afterRev was compacted or afterRev is not a revision of this store
// (datastore.ErrCompacted), when the stream fails, or when the connection
// to etcd stays down for longer than the request timeout
// (datastore.ErrUnavailable); it closes without one when ctx ends.
func (s *Store) Watch(ctx context.Context, kind datastore.Kind, afterRev string) <-chan datastore.WatchResponse {
	out := make(chan datastore.WatchResponse, 64)
	var start int64
	var bad error
	if err := checkKind(kind); err != nil {
		bad = err
	} else if afterRev != "" {
		if r, err := strconv.ParseInt(afterRev, 10, 64); err != nil || r < 0 {
			bad = fmt.Errorf("watch %s from revision %q: not a revision of etcd at %s; list again: %w", kind, afterRev, s.endpoints, datastore.ErrCompacted)
		} else {
			start = r + 1
		}
	}
	if bad != nil {
		go func() {
			defer close(out)
			select {
			case out <- datastore.WatchResponse{Err: bad}:
			case <-ctx.Done():
			}
		}()
		return out
	}
	prefix := KindPrefix(kind)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV()}
	if start > 0 {
		opts = append(opts, clientv3.WithRev(start))
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
				fail(fmt.Errorf("watch %s: lost the connection to etcd at %s for more than %s: %w", kind, s.endpoints, s.timeout, datastore.ErrUnavailable))
				return
			case wr, ok := <-wch:
				if !ok {
					if ctx.Err() == nil {
						fail(fmt.Errorf("watch %s: etcd at %s closed the stream: %w", kind, s.endpoints, datastore.ErrUnavailable))
					}
					return
				}
				if wr.CompactRevision != 0 {
					fail(fmt.Errorf("watch %s after revision %s: etcd compacted its history up to revision %d; list again: %w", kind, afterRev, wr.CompactRevision, datastore.ErrCompacted))
					return
				}
				if err := wr.Err(); err != nil {
					if ctx.Err() != nil {
						return
					}
					fail(s.mapErr(ctx, "watch", prefix, err))
					return
				}
				if len(wr.Events) == 0 {
					continue
				}
				r, err := watchResponse(kind, wr.Events)
				if err != nil {
					fail(err)
					return
				}
				if !send(r) {
					return
				}
			}
		}
	}()
	return out
}

// watchResponse turns the events of one etcd watch response, in revision
// order, into a WatchResponse at the revision of the last one.
func watchResponse(kind datastore.Kind, evs []*clientv3.Event) (datastore.WatchResponse, error) {
	r := datastore.WatchResponse{Events: make([]datastore.Event, 0, len(evs))}
	for _, ev := range evs {
		var e datastore.Event
		if ev.Type == mvccpb.DELETE {
			e.Type = datastore.EventDelete
			e.KV = datastore.KV{
				Kind:     kind,
				Name:     datastore.UnescapeSegment(strings.TrimPrefix(string(ev.Kv.Key), KindPrefix(kind))),
				Revision: formatRev(ev.Kv.ModRevision),
			}
			if ev.PrevKv != nil {
				prev, err := decodeKV(kind, ev.PrevKv)
				if err != nil {
					return datastore.WatchResponse{}, err
				}
				e.KV.Labels, e.KV.Value = prev.Labels, prev.Value
			}
		} else {
			kv, err := decodeKV(kind, ev.Kv)
			if err != nil {
				return datastore.WatchResponse{}, err
			}
			e.Type, e.KV = datastore.EventPut, kv
		}
		r.Events = append(r.Events, e)
		r.Revision = formatRev(ev.Kv.ModRevision)
	}
	return r, nil
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
