// Package kubetest runs a real kube-apiserver for tests: backed by an
// embedded etcd (datastore/etcdtest), on a free loopback port, with
// certificates generated for the test, stopped when the test ends. The
// process management lives in datastore/kube/apiserver, which the lab uses
// too; this package is the thin testing.TB wrapper.
//
// The kube-apiserver binary comes from scripts/kube-build.sh. When it has
// not been built, tests are skipped with a message saying to run the
// script, except under CI=true, where Start runs the script (about 10
// minutes the first time) and fails the test if that fails.
package kubetest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/datastore/kube"
	"twill.dev/twill/datastore/kube/apiserver"
)

// buildTimeout bounds a cold build of kube-apiserver under CI.
const buildTimeout = 45 * time.Minute

// Cluster is a running kube-apiserver with its own etcd.
type Cluster struct {
	// Server is the apiserver process.
	Server *apiserver.APIServer
	// Kubeconfig is the path of an admin kubeconfig file.
	Kubeconfig string
	// Config authenticates as an administrator; copy it before changing it.
	Config *rest.Config
}

// Start starts an embedded etcd and a kube-apiserver on it, both stopped by
// t.Cleanup. It skips the test when the binary is missing (see the package
// comment) and fails it when the apiserver does not become ready within
// 60 s, quoting the tail of the apiserver's log.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bin := Binary(t)
	etcd := etcdtest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*apiserver.DefaultReadyTimeout)
	defer cancel()
	s, err := apiserver.Start(ctx, apiserver.Options{
		Binary:      bin,
		Dir:         t.TempDir(),
		EtcdServers: []string{etcd.Endpoint()},
	})
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("kubetest: stop kube-apiserver: %v\n--- last lines of %s ---\n%s", err, s.LogPath, s.LogTail(20))
		}
	})
	return &Cluster{Server: s, Kubeconfig: s.Kubeconfig, Config: s.RESTConfig()}
}

// StartWithCRDs is Start followed by InstallCRDs.
func StartWithCRDs(t testing.TB) *Cluster {
	t.Helper()
	c := Start(t)
	c.InstallCRDs(t)
	return c
}

// InstallCRDs applies manifests/crds and waits until every CRD is
// established.
func (c *Cluster) InstallCRDs(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := kube.InstallCRDs(ctx, c.Config); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
}

// NewStore returns a kube.Store on the cluster, closed by t.Cleanup.
func (c *Cluster) NewStore(t testing.TB) *kube.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := kube.New(ctx, kube.Config{Kubeconfig: c.Kubeconfig})
	if err != nil {
		t.Fatalf("kubetest: connect to %s: %v", c.Server.URL, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Binary returns the kube-apiserver binary. A missing binary skips the
// test, or under CI=true is built with scripts/kube-build.sh.
func Binary(t testing.TB) string {
	t.Helper()
	return binary(t, "kube-apiserver")
}

// Kubectl returns the kubectl binary, found and built like Binary.
func Kubectl(t testing.TB) string {
	t.Helper()
	return binary(t, "kubectl")
}

func binary(t testing.TB, name string) string {
	t.Helper()
	p, err := apiserver.FindBinary(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "true" {
		t.Skipf("kubetest: %v", err)
	}
	dir, err := build(name)
	if err != nil {
		t.Fatalf("kubetest: build %s with scripts/kube-build.sh: %v", name, err)
	}
	p = filepath.Join(dir, "bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("kubetest: scripts/kube-build.sh printed %s, but %v", dir, err)
	}
	return p
}

// build runs scripts/kube-build.sh for one binary, one build at a time
// across test processes, and returns the cache directory it prints on its
// last line.
func build(name string) (string, error) {
	script, err := buildScript()
	if err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "twill-kube-build.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script, name)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tail := stderr.String()
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		return "", errors.Join(err, errors.New(tail))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), nil
}

// buildScript finds scripts/kube-build.sh in the module root above the
// working directory.
func buildScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for i := 0; i < 10; i++ {
		p := filepath.Join(dir, "scripts", "kube-build.sh")
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(p); err != nil {
				return "", err
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("scripts/kube-build.sh not found above the working directory")
}
