package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Defaults applied by StartServer to a zero ServerConfig.
const (
	DefaultServerName      = "twill"
	DefaultDataDir         = "/var/lib/twill/etcd"
	DefaultListenClientURL = "http://127.0.0.1:2379"
	DefaultListenPeerURL   = "http://127.0.0.1:2380"
	// DefaultReadyTimeout bounds how long StartServer waits for the member
	// to be ready to serve.
	DefaultReadyTimeout = 60 * time.Second
	// DefaultCompactionRetention is how much history the embedded server
	// keeps: older revisions are compacted away every so often, and a watch
	// that asks for them ends with datastore.ErrCompacted.
	DefaultCompactionRetention = time.Hour
)

// ServerConfig configures the embedded single-member etcd server.
type ServerConfig struct {
	// Name is the member name (default "twill"). Keep it stable across
	// restarts on one data directory.
	Name string
	// DataDir holds the member's WAL and database (default
	// /var/lib/twill/etcd); it is created with mode 0700.
	DataDir string
	// ListenClientURL is where clients connect (default
	// http://127.0.0.1:2379); it is also the advertised client URL.
	ListenClientURL string
	// ListenPeerURL is the raft peer URL (default http://127.0.0.1:2380).
	ListenPeerURL string
	// Logger receives etcd's own log records (default slog.Default()).
	Logger *slog.Logger
	// Verbose passes etcd's informational records on; otherwise only its
	// errors are logged.
	Verbose bool
	// ReadyTimeout bounds the wait for the member to serve (default 60s).
	ReadyTimeout time.Duration
	// UnsafeNoFsync skips fsync of the WAL and database. For tests and
	// benchmarks only: a crash can lose or corrupt data.
	UnsafeNoFsync bool
	// QuotaBackendBytes caps the database size; 0 keeps etcd's default
	// (2 GiB).
	QuotaBackendBytes int64
	// SnapshotCount is the number of applied entries between snapshots; 0
	// keeps etcd's default.
	SnapshotCount uint64
	// HeartbeatInterval and ElectionTimeout are raft's tick and election
	// timeout; 0 keeps etcd's defaults (100ms, 1s). Tests shorten them so
	// that a fresh member elects itself sooner.
	HeartbeatInterval, ElectionTimeout time.Duration
}

// Server is a running embedded etcd member.
type Server struct {
	e        *embed.Etcd
	endpoint string
	done     chan struct{}
	once     sync.Once
	// closing is set by Close: etcd then logs closed listeners as errors,
	// which are expected and demoted to debug.
	closing *atomic.Bool

	mu  sync.Mutex
	err error
}

// StartServer starts an embedded single-member etcd cluster and waits until
// it serves clients. ctx bounds only the start-up; call Close to stop the
// server. A port in use or an unusable data directory gives an error that
// names the URL or directory to change.
func StartServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	if cfg.Name == "" {
		cfg.Name = DefaultServerName
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if cfg.ListenClientURL == "" {
		cfg.ListenClientURL = DefaultListenClientURL
	}
	if cfg.ListenPeerURL == "" {
		cfg.ListenPeerURL = DefaultListenPeerURL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	curl, err := parseListenURL("client", cfg.ListenClientURL)
	if err != nil {
		return nil, err
	}
	purl, err := parseListenURL("peer", cfg.ListenPeerURL)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create etcd data directory %s (choose another with --data-dir): %w", cfg.DataDir, err)
	}

	level := zapcore.ErrorLevel
	if cfg.Verbose {
		level = zapcore.InfoLevel
	}
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	ec.ClusterState = embed.ClusterStateFlagNew
	ec.Logger = "zap"
	closing := new(atomic.Bool)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(&slogCore{h: cfg.Logger.Handler(), level: level, closing: closing}))
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = DefaultCompactionRetention.String()
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	if cfg.QuotaBackendBytes > 0 {
		ec.QuotaBackendBytes = cfg.QuotaBackendBytes
	}
	if cfg.SnapshotCount > 0 {
		ec.SnapshotCount = cfg.SnapshotCount
	}
	if cfg.HeartbeatInterval > 0 {
		ec.TickMs = uint(max(cfg.HeartbeatInterval.Milliseconds(), 1))
	}
	if cfg.ElectionTimeout > 0 {
		ec.ElectionMs = uint(max(cfg.ElectionTimeout.Milliseconds(), 1))
	}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			which := cfg.ListenClientURL + " or " + cfg.ListenPeerURL
			var oe *net.OpError
			if errors.As(err, &oe) && oe.Addr != nil {
				switch oe.Addr.String() {
				case curl.Host:
					which = cfg.ListenClientURL
				case purl.Host:
					which = cfg.ListenPeerURL
				}
			}
			return nil, fmt.Errorf("embedded etcd cannot listen on %s: the port is in use (is another etcd or \"twill datastore run\" running?); stop it or choose other URLs: %w", which, err)
		}
		return nil, fmt.Errorf("start embedded etcd (data dir %s, client %s, peer %s): %w", cfg.DataDir, cfg.ListenClientURL, cfg.ListenPeerURL, err)
	}
	s := &Server{e: e, endpoint: curl.String(), done: make(chan struct{}), closing: closing}

	timer := time.NewTimer(cfg.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd at %s failed while starting: %w", s.endpoint, err)
	case <-e.Server.StopNotify():
		e.Close()
		return nil, fmt.Errorf("embedded etcd at %s stopped while starting (see its log; data dir %s)", s.endpoint, cfg.DataDir)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("embedded etcd at %s was not ready within %s; check its log and the data dir %s", s.endpoint, cfg.ReadyTimeout, cfg.DataDir)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("start embedded etcd at %s: %w", s.endpoint, ctx.Err())
	}
	go s.monitor()
	return s, nil
}

// parseListenURL checks that raw is an http URL with host and port.
func parseListenURL(what, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("etcd %s URL %q: %w", what, raw, err)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("etcd %s URL %q: the embedded server listens on http:// URLs only (use an external etcd cluster for TLS)", what, raw)
	}
	if _, port, err := net.SplitHostPort(u.Host); err != nil || port == "" {
		return nil, fmt.Errorf("etcd %s URL %q needs a host and port, e.g. http://127.0.0.1:2379", what, raw)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("etcd %s URL %q must not have a path", what, raw)
	}
	u.Path = ""
	return u, nil
}

// monitor records the first error the member reports and closes done once
// it has stopped.
func (s *Server) monitor() {
	defer close(s.done)
	select {
	case err, ok := <-s.e.Err():
		if ok && err != nil {
			s.mu.Lock()
			s.err = fmt.Errorf("embedded etcd at %s: %w", s.endpoint, err)
			s.mu.Unlock()
		}
		<-s.e.Server.StopNotify()
	case <-s.e.Server.StopNotify():
	}
}

// Endpoint returns the client URL to pass to New, e.g. http://127.0.0.1:2379.
func (s *Server) Endpoint() string { return s.endpoint }

// Done is closed when the server has stopped, after Close or on failure.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err returns the error that stopped the server, or nil.
func (s *Server) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops the server and waits for it to release its ports and data
// directory. It returns Err: nil for a server that ran until Close, else the
// failure that had stopped it. It is safe to call more than once.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.closing.Store(true)
		s.e.Close()
	})
	<-s.done
	return s.Err()
}

// benignStorageVersionMsg is logged by etcd at error level while a fresh
// member bootstraps; it is harmless and retried (etcd-io/etcd#18978), so it
// is demoted to a warning.
const benignStorageVersionMsg = "failed to update storage version"

// slogCore is a zapcore.Core that hands etcd's zap records to a slog.Handler.
type slogCore struct {
	h       slog.Handler
	level   zapcore.LevelEnabler
	fields  []zapcore.Field
	closing *atomic.Bool
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return c.level.Enabled(l) }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	n := *c
	n.fields = append(append([]zapcore.Field(nil), c.fields...), fields...)
	return &n
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	zl := e.Level
	switch {
	case c.closing.Load() && zl < zapcore.DPanicLevel:
		// Closed listeners are reported as errors while the server stops.
		zl = zapcore.DebugLevel
	case e.Message == benignStorageVersionMsg && zl == zapcore.ErrorLevel:
		zl = zapcore.WarnLevel
	}
	if !c.level.Enabled(zl) {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	var lvl slog.Level
	switch {
	case zl >= zapcore.ErrorLevel:
		lvl = slog.LevelError
	case zl == zapcore.WarnLevel:
		lvl = slog.LevelWarn
	case zl == zapcore.InfoLevel:
		lvl = slog.LevelInfo
	default:
		lvl = slog.LevelDebug
	}
	ctx := context.Background()
	if !c.h.Enabled(ctx, lvl) {
		return nil
	}
	r := slog.NewRecord(e.Time, lvl, e.Message, 0)
	r.AddAttrs(slog.String("component", "etcd"))
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		r.AddAttrs(slog.Any(k, enc.Fields[k]))
	}
	return c.h.Handle(ctx, r)
}

func (c *slogCore) Sync() error { return nil }
