package open

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/datastore/kube"
	"twill.dev/twill/datastore/kubetest"
)

// env returns a getenv over m.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestConfigFromEnvPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		want     string
		explicit bool
	}{
		{"nothing set: etcd", nil, TypeEtcd, false},
		{"inside a pod: kubernetes", map[string]string{EnvInCluster: "10.96.0.1"}, TypeKubernetes, false},
		{"etcd endpoints given inside a pod: etcd", map[string]string{EnvInCluster: "10.96.0.1", etcd.EnvEndpoints: "http://10.0.0.1:2379"}, TypeEtcd, false},
		{"TWILL_DATASTORE_TYPE", map[string]string{EnvType: "kubernetes"}, TypeKubernetes, true},
		{"DATASTORE_TYPE", map[string]string{EnvCalicoType: "kubernetes"}, TypeKubernetes, true},
		{"Calico's etcdv3", map[string]string{EnvCalicoType: "etcdv3", EnvInCluster: "10.96.0.1"}, TypeEtcd, true},
		{"TWILL_DATASTORE_TYPE wins over DATASTORE_TYPE", map[string]string{EnvType: "etcd", EnvCalicoType: "kubernetes"}, TypeEtcd, true},
		{"TWILL_DATASTORE_TYPE wins in a pod", map[string]string{EnvType: "etcd", EnvInCluster: "10.96.0.1"}, TypeEtcd, true},
		{"explicit kubernetes wins over etcd endpoints", map[string]string{EnvType: "Kubernetes ", etcd.EnvEndpoints: "http://10.0.0.1:2379"}, TypeKubernetes, true},
		{"blank TWILL_DATASTORE_TYPE falls through", map[string]string{EnvType: "  ", EnvCalicoType: "kubernetes"}, TypeKubernetes, true},
		{"unknown value kept for Open to reject", map[string]string{EnvType: "consul"}, "consul", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ, explicit := TypeFromEnv(env(tc.env))
			if typ != tc.want || explicit != tc.explicit {
				t.Errorf("TypeFromEnv = %q, %t; want %q, %t", typ, explicit, tc.want, tc.explicit)
			}
			if got := ConfigFromEnv(env(tc.env)).Type; got != tc.want {
				t.Errorf("ConfigFromEnv().Type = %q; want %q", got, tc.want)
			}
		})
	}
}

func TestConfigFromEnvReadsKubeconfigAndEtcd(t *testing.T) {
	cfg := ConfigFromEnv(env(map[string]string{
		EnvType:           "kubernetes",
		EnvKubeconfig:     " /etc/twill/kubeconfig ",
		etcd.EnvEndpoints: "https://a:2379, https://b:2379",
		etcd.EnvCA:        "/ca.pem",
		etcd.EnvCert:      "/cert.pem",
		etcd.EnvKey:       "/key.pem",
	}))
	if cfg.Type != TypeKubernetes || cfg.Kubeconfig != "/etc/twill/kubeconfig" {
		t.Errorf("type %q kubeconfig %q", cfg.Type, cfg.Kubeconfig)
	}
	if !slices.Equal(cfg.Etcd.Endpoints, []string{"https://a:2379", "https://b:2379"}) ||
		cfg.Etcd.CAFile != "/ca.pem" || cfg.Etcd.CertFile != "/cert.pem" || cfg.Etcd.KeyFile != "/key.pem" {
		t.Errorf("etcd config %+v", cfg.Etcd)
	}
}

func TestParseType(t *testing.T) {
	for in, want := range map[string]string{"etcd": TypeEtcd, "ETCD": TypeEtcd, "etcdv3": TypeEtcd, " kubernetes": TypeKubernetes} {
		if got, err := ParseType(in); err != nil || got != want {
			t.Errorf("ParseType(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "k8s", "consul"} {
		_, err := ParseType(in)
		if !errors.Is(err, ErrUnknownType) {
			t.Errorf("ParseType(%q) = %v; want ErrUnknownType", in, err)
			continue
		}
		for _, v := range Types {
			if !strings.Contains(err.Error(), v) {
				t.Errorf("ParseType(%q) error %q does not list %q", in, err, v)
			}
		}
	}
}

func TestOpenUnknownType(t *testing.T) {
	s, err := Open(context.Background(), Config{Type: "consul"})
	if s != nil || !errors.Is(err, ErrUnknownType) {
		t.Fatalf("Open(consul) = %v, %v; want ErrUnknownType", s, err)
	}
	if !strings.Contains(err.Error(), "etcd or kubernetes") {
		t.Errorf("error %q does not list the valid values", err)
	}
}

// TestOpenEtcd opens a real embedded etcd and round-trips an object.
func TestOpenEtcd(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{Type: "etcdv3", Etcd: etcd.Config{Endpoints: []string{ep}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok := s.(*etcd.Store); !ok {
		t.Fatalf("Open(etcd) returned a %T", s)
	}
	kv, err := datastore.NewKV(datastore.KindIPPool, "p", map[string]string{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, kv); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, datastore.KindIPPool, "p")
	if err != nil || string(got.Value) != string(kv.Value) {
		t.Errorf("Get = %s, %v; want %s", got.Value, err, kv.Value)
	}
}

// TestOpenKubernetes opens a real kube-apiserver through its kubeconfig,
// also given as a KUBECONFIG-style list, and round-trips an object.
func TestOpenKubernetes(t *testing.T) {
	c := kubetest.StartWithCRDs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list := filepath.Join(t.TempDir(), "missing") + string(filepath.ListSeparator) + c.Kubeconfig
	for i, kc := range []string{c.Kubeconfig, list} {
		s, err := Open(ctx, Config{Type: "Kubernetes", Kubeconfig: kc})
		if err != nil {
			t.Fatalf("Open(kubernetes, %s): %v", kc, err)
		}
		defer s.Close()
		if _, ok := s.(*kube.Store); !ok {
			t.Fatalf("Open(kubernetes) returned a %T", s)
		}
		name := fmt.Sprintf("p%d", i)
		kv, err := datastore.NewKV(datastore.KindIPPool, name, api.IPPool{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
			Metadata: api.ObjectMeta{Name: name}, Spec: api.IPPoolSpec{CIDR: fmt.Sprintf("10.%d.0.0/16", 40+i), BlockSize: 26}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Create(ctx, kv); err != nil {
			t.Fatal(err)
		}
		got, err := datastore.GetObject[api.IPPool](ctx, s, datastore.KindIPPool, name)
		if err != nil || got.Value.Spec.CIDR != fmt.Sprintf("10.%d.0.0/16", 40+i) || got.Revision == "" {
			t.Errorf("Get = %+v, %v", got, err)
		}
	}
}

// TestOpenEtcdUnreachable: nothing listens, so Open fails in time with
// ErrUnavailable.
func TestOpenEtcdUnreachable(t *testing.T) {
	start := time.Now()
	_, err := Open(context.Background(), Config{Type: TypeEtcd, Etcd: etcd.Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: time.Second}})
	if !errors.Is(err, datastore.ErrUnavailable) {
		t.Errorf("Open(unreachable etcd) = %v; want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Open took %s", d)
	}
}

// TestOpenKubernetesMissingKubeconfig: a kubeconfig that does not exist
// fails before any request, and the error names the file.
func TestOpenKubernetesMissingKubeconfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-kubeconfig")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{Type: TypeKubernetes, Kubeconfig: path, KubeTimeout: time.Second})
	if err == nil {
		s.Close()
		t.Fatal("Open(kubernetes) with a missing kubeconfig succeeded")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the kubeconfig %s", err, path)
	}
}

// TestRESTConfig loads a kubeconfig file, and a KUBECONFIG-style list of
// files in which the first one is missing.
func TestRESTConfig(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	const doc = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: secret-token}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`
	if err := os.WriteFile(kc, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{kc, filepath.Join(dir, "missing") + string(filepath.ListSeparator) + kc} {
		rc, err := RESTConfig(Config{Type: TypeKubernetes, Kubeconfig: path})
		if err != nil {
			t.Fatalf("RESTConfig(%s): %v", path, err)
		}
		if rc.Host != "https://127.0.0.1:6443" || rc.BearerToken != "secret-token" {
			t.Errorf("RESTConfig(%s) = host %q token %q", path, rc.Host, rc.BearerToken)
		}
	}
	missing := filepath.Join(dir, "missing")
	if _, err := RESTConfig(Config{Type: TypeKubernetes, Kubeconfig: missing}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("RESTConfig(missing file) = %v; want an error naming %s", err, missing)
	}
}

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Type: TypeEtcd, Etcd: etcd.Config{Endpoints: []string{"http://a:1", "http://b:2"}}}, "etcd at http://a:1,http://b:2"},
		{Config{Type: TypeEtcd}, "etcd at " + etcd.DefaultEndpoint},
		{Config{Type: TypeKubernetes}, "kubernetes (in-cluster)"},
		{Config{Type: TypeKubernetes, Kubeconfig: "/k"}, "kubernetes (kubeconfig /k)"},
	} {
		if got := tc.cfg.Describe(); got != tc.want {
			t.Errorf("Describe(%+v) = %q; want %q", tc.cfg, got, tc.want)
		}
	}
}
