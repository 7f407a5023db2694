// Package apiserver runs a real kube-apiserver process on loopback, backed
// by an etcd Twill starts, with certificates generated on the spot: for the
// Kubernetes datastore's tests (package datastore/kubetest wraps it for
// testing.TB) and for the lab's Kubernetes mode.
//
// The binary is built from k8s.io/kubernetes by scripts/kube-build.sh into
// a cache directory (CacheDir); FindBinary looks there.
package apiserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Defaults, matching scripts/kube-build.sh.
const (
	// DefaultVersion is the Kubernetes version Twill builds and tests with.
	DefaultVersion = "v1.37.2"
	// DefaultCacheRoot is where kube-build.sh caches binaries, one
	// directory per version.
	DefaultCacheRoot = "/var/cache/twill/kube"
	// DefaultReadyTimeout bounds the wait for /readyz.
	DefaultReadyTimeout = 60 * time.Second
	// stopTimeout bounds the wait for the process to exit after SIGTERM
	// before it is killed. A graceful shutdown waits for open watches for
	// up to the apiserver's request timeout (60 s); its state is all in
	// etcd, so a kill loses nothing.
	stopTimeout = 3 * time.Second
	// startAttempts bounds the retries when a picked port is taken between
	// picking and listening.
	startAttempts = 3
	// logTailLines is how much of the log a start failure quotes.
	logTailLines = 40
)

// ErrNoBinary is wrapped by FindBinary's error when the binary has not been
// built yet.
var ErrNoBinary = errors.New("kubernetes binary not built")

// CacheDir returns the directory kube-build.sh caches binaries in:
// $TWILL_KUBE_DIR when set (scripts/test.sh sets it to the directory the
// script printed), else $TWILL_KUBE_CACHE (default /var/cache/twill/kube) /
// $TWILL_KUBE_VERSION (default v1.37.2). The binaries are in its bin
// subdirectory.
func CacheDir() string {
	if dir := os.Getenv("TWILL_KUBE_DIR"); dir != "" {
		return dir
	}
	root := os.Getenv("TWILL_KUBE_CACHE")
	if root == "" {
		root = DefaultCacheRoot
	}
	version := os.Getenv("TWILL_KUBE_VERSION")
	if version == "" {
		version = DefaultVersion
	}
	return filepath.Join(root, version)
}

// FindBinary returns the path of the named Kubernetes binary (for example
// kube-apiserver or kubectl) in CacheDir()/bin, or an error wrapping
// ErrNoBinary that says to run scripts/kube-build.sh.
func FindBinary(name string) (string, error) {
	p := filepath.Join(CacheDir(), "bin", name)
	fi, err := os.Stat(p)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s is not at %s: run scripts/kube-build.sh to build it (about 10 minutes the first time): %w", name, p, ErrNoBinary)
	}
	return p, nil
}

// Options configures Start.
type Options struct {
	// Binary is the kube-apiserver executable; empty means
	// FindBinary("kube-apiserver").
	Binary string
	// Dir receives the certificates, the kubeconfig and the log. It is
	// created if missing. Required.
	Dir string
	// EtcdServers are the etcd client URLs the apiserver stores into.
	// Required.
	EtcdServers []string
	// EtcdPrefix is the apiserver's key prefix in etcd; empty means a fresh
	// random one, so that several apiservers can share one etcd.
	EtcdPrefix string
	// Port is the secure port on 127.0.0.1; 0 picks a free one.
	Port int
	// ReadyTimeout bounds the wait for /readyz (default 60s).
	ReadyTimeout time.Duration
	// ExtraArgs are appended to the apiserver's flags.
	ExtraArgs []string
	// SysProcAttr is the process's attributes. Nil kills the apiserver
	// when the process that started it exits (Pdeathsig), which suits
	// tests; a caller that manages the process itself (the lab records its
	// PID and stops it) may pass Setsid instead, so that it lives on.
	SysProcAttr *syscall.SysProcAttr
}

// APIServer is a running kube-apiserver process.
type APIServer struct {
	// URL is the apiserver's address, https://127.0.0.1:PORT.
	URL string
	// Kubeconfig is the path of a kubeconfig file that authenticates as an
	// administrator (group system:masters) with a client certificate.
	Kubeconfig string
	// LogPath is the file that holds the apiserver's output.
	LogPath string
	// EtcdPrefix is the apiserver's key prefix in etcd.
	EtcdPrefix string
	// Args are the binary and its arguments.
	Args []string

	config *rest.Config
	cmd    *exec.Cmd
	done   chan struct{}
	// waitErr is cmd.Wait's result, set before done is closed.
	waitErr  error
	stopOnce sync.Once
	stopErr  error
}

// Start starts kube-apiserver on 127.0.0.1, waits until /readyz answers ok
// (bounded by opts.ReadyTimeout and ctx) and writes an admin kubeconfig in
// opts.Dir. Stop the server with Stop. A failure to start quotes the tail
// of the apiserver's log.
func Start(ctx context.Context, opts Options) (*APIServer, error) {
	if opts.Dir == "" {
		return nil, errors.New("start kube-apiserver: Options.Dir is required")
	}
	if len(opts.EtcdServers) == 0 {
		return nil, errors.New("start kube-apiserver: Options.EtcdServers is required")
	}
	if opts.Binary == "" {
		b, err := FindBinary("kube-apiserver")
		if err != nil {
			return nil, err
		}
		opts.Binary = b
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = DefaultReadyTimeout
	}
	if opts.EtcdPrefix == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("start kube-apiserver: random etcd prefix: %w", err)
		}
		opts.EtcdPrefix = "/twill-kube-" + hex.EncodeToString(b[:])
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start kube-apiserver: create %s: %w", opts.Dir, err)
	}
	p, err := newPKI()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	files, err := p.write(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	logPath := filepath.Join(opts.Dir, "kube-apiserver.log")

	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = freePort(); err != nil {
				return nil, fmt.Errorf("start kube-apiserver: pick a free loopback port: %w", err)
			}
		}
		s, inUse, err := startOnce(ctx, opts, p, files, port, logPath)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !inUse || opts.Port != 0 {
			break
		}
	}
	return nil, lastErr
}

// startOnce runs one attempt on port; inUse reports that the port was
// taken, so that another port may be tried.
func startOnce(ctx context.Context, opts Options, p *pki, files paths, port int, logPath string) (s *APIServer, inUse bool, err error) {
	host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := []string{
		"--etcd-servers=" + strings.Join(opts.EtcdServers, ","),
		"--etcd-prefix=" + opts.EtcdPrefix,
		"--secure-port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--cert-dir=" + opts.Dir,
		"--tls-cert-file=" + files.serverCert,
		"--tls-private-key-file=" + files.serverKey,
		"--client-ca-file=" + files.caCert,
		"--service-account-key-file=" + files.saPub,
		"--service-account-signing-key-file=" + files.saKey,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range=10.96.0.0/24",
		"--endpoint-reconciler-type=none",
		"--authorization-mode=Node,RBAC",
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	args = append(args, opts.ExtraArgs...)

	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("start kube-apiserver: open log %s: %w", logPath, err)
	}
	defer logf.Close()
	logStart, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, false, fmt.Errorf("start kube-apiserver: log %s: %w", logPath, err)
	}
	fmt.Fprintf(logf, "# %s %s\n", opts.Binary, strings.Join(args, " "))

	cmd := exec.Command(opts.Binary, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// The apiserver dies with the process that started it, so that a
	// crashed test or lab leaves no apiserver behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if opts.SysProcAttr != nil {
		cmd.SysProcAttr = opts.SysProcAttr
	}
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("start kube-apiserver %s: %w", opts.Binary, err)
	}
	s = &APIServer{
		URL:        "https://" + host,
		Kubeconfig: filepath.Join(opts.Dir, "kubeconfig"),
		LogPath:    logPath,
		EtcdPrefix: opts.EtcdPrefix,
		Args:       append([]string{opts.Binary}, args...),
		cmd:        cmd,
		done:       make(chan struct{}),
		config: &rest.Config{
			Host: "https://" + host,
			TLSClientConfig: rest.TLSClientConfig{
				CAData:   p.caCert,
				CertData: p.adminCert,
				KeyData:  p.adminKey,
			},
		},
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()

	if err := s.waitReady(ctx, opts.ReadyTimeout); err != nil {
		_ = s.Stop()
		tail := tailFrom(logPath, logStart, logTailLines)
		inUse = strings.Contains(tail, "address already in use")
		return nil, inUse, fmt.Errorf("%w\n--- last lines of %s ---\n%s", err, logPath, tail)
	}
	if err := s.writeKubeconfig(p); err != nil {
		_ = s.Stop()
		return nil, false, err
	}
	return s, false, nil
}

// waitReady polls /readyz until it answers 200, the process exits, or the
// timeout or ctx ends.
func (s *APIServer) waitReady(ctx context.Context, timeout time.Duration) error {
	tc, err := rest.TLSConfigFor(s.config)
	if err != nil {
		return fmt.Errorf("kube-apiserver at %s: TLS client config: %w", s.URL, err)
	}
	tr := &http.Transport{TLSClientConfig: tc}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last := "no answer yet"
	for {
		select {
		case <-s.done:
			return fmt.Errorf("kube-apiserver at %s exited while starting (%v)", s.URL, s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver at %s: waiting for /readyz: %w", s.URL, ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("kube-apiserver at %s was not ready within %s (last /readyz: %s)", s.URL, timeout, last)
		case <-tick.C:
		}
		resp, err := client.Get(s.URL + "/readyz")
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Sprintf("%s: %s", resp.Status, lastFailedCheck(body))
	}
}

// lastFailedCheck picks the failing checks out of a /readyz answer.
func lastFailedCheck(body []byte) string {
	var failed []string
	for _, l := range bytes.Split(body, []byte("\n")) {
		if bytes.HasPrefix(l, []byte("[-]")) {
			failed = append(failed, string(bytes.TrimPrefix(l, []byte("[-]"))))
		}
	}
	if len(failed) == 0 {
		return strings.TrimSpace(string(body))
	}
	return strings.Join(failed, "; ")
}

// writeKubeconfig writes an admin kubeconfig with embedded certificates.
func (s *APIServer) writeKubeconfig(p *pki) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["twill"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthorityData: p.caCert}
	cfg.AuthInfos["twill-admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: p.adminCert, ClientKeyData: p.adminKey}
	cfg.Contexts["twill"] = &clientcmdapi.Context{Cluster: "twill", AuthInfo: "twill-admin"}
	cfg.CurrentContext = "twill"
	if err := clientcmd.WriteToFile(*cfg, s.Kubeconfig); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", s.Kubeconfig, err)
	}
	return nil
}

// RESTConfig returns a client configuration that authenticates as an
// administrator; each call returns a fresh copy.
func (s *APIServer) RESTConfig() *rest.Config {
	return rest.CopyConfig(s.config)
}

// PID is the apiserver's process ID.
func (s *APIServer) PID() int { return s.cmd.Process.Pid }

// Done is closed when the process has exited.
func (s *APIServer) Done() <-chan struct{} { return s.done }

// Stop terminates the apiserver (SIGTERM, then SIGKILL after 3 s) and
// waits for it to exit. It returns nil when the process ended because it
// was stopped, else its exit error. It is safe to call more than once.
func (s *APIServer) Stop() error {
	s.stopOnce.Do(func() {
		select {
		case <-s.done:
			// It had already exited by itself: report why.
			if s.waitErr != nil {
				s.stopErr = fmt.Errorf("kube-apiserver at %s had exited: %w", s.URL, s.waitErr)
			}
			return
		default:
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(stopTimeout)
		defer t.Stop()
		select {
		case <-s.done:
		case <-t.C:
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s.stopErr
}

// LogTail returns the last n lines of the apiserver's log.
func (s *APIServer) LogTail(n int) string {
	return tailFrom(s.LogPath, 0, n)
}

// tailFrom returns the last n lines of path after offset from, reading at
// most the last 256 KiB.
func tailFrom(path string, from int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	const maxRead = 256 << 10
	start := max(from, fi.Size()-maxRead)
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxRead))
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
