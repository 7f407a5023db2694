package cli

import (
	"errors"
	"slices"
	"testing"
	"time"

	"twill.dev/twill/datastore/open"
)

// TestStoreConfig: how the global flags pick and configure the datastore
// when any of them was given explicitly (so no running lab is consulted).
func TestStoreConfig(t *testing.T) {
	base := globals{datastore: open.TypeEtcd, kubeconfig: "/home/u/.kube/config", kubeTimeout: 3 * time.Second,
		endpoints: "http://a:2379, http://b:2379", ca: "/ca", cert: "/cert", key: "/key", timeout: time.Second}
	for _, tc := range []struct {
		name           string
		change         func(g *globals)
		wantType       string
		wantEtcd       []string
		wantKubeconfig string
		wantUsage      bool
	}{
		{"explicit etcd", func(g *globals) { g.given.typ = true }, open.TypeEtcd, []string{"http://a:2379", "http://b:2379"}, "/home/u/.kube/config", false},
		{"explicit kubernetes", func(g *globals) { g.datastore, g.given.typ = "Kubernetes", true }, open.TypeKubernetes, nil, "/home/u/.kube/config", false},
		{"Calico's etcdv3", func(g *globals) { g.datastore, g.given.typ = "etcdv3", true }, open.TypeEtcd, []string{"http://a:2379", "http://b:2379"}, "/home/u/.kube/config", false},
		{"--etcd-endpoints implies etcd", func(g *globals) { g.datastore, g.given.endpoints = open.TypeKubernetes, true }, open.TypeEtcd, []string{"http://a:2379", "http://b:2379"}, "/home/u/.kube/config", false},
		{"--kubeconfig implies kubernetes", func(g *globals) { g.given.kubeconfig = true }, open.TypeKubernetes, nil, "/home/u/.kube/config", false},
		{"explicit type wins over --kubeconfig", func(g *globals) { g.given.typ, g.given.kubeconfig = true, true }, open.TypeEtcd, []string{"http://a:2379", "http://b:2379"}, "/home/u/.kube/config", false},
		{"both endpoints and kubeconfig is ambiguous", func(g *globals) { g.given.endpoints, g.given.kubeconfig = true, true }, "", nil, "", true},
		{"unknown type", func(g *globals) { g.datastore, g.given.typ = "consul", true }, "", nil, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := base
			tc.change(&g)
			cfg, err := g.storeConfig()
			if tc.wantUsage {
				var ee *exitError
				if !errors.As(err, &ee) || ee.code != 2 {
					t.Fatalf("storeConfig = %+v, %v; want a usage error", cfg, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Type != tc.wantType || cfg.Kubeconfig != tc.wantKubeconfig || cfg.KubeTimeout != 3*time.Second {
				t.Errorf("storeConfig = %+v", cfg)
			}
			if tc.wantEtcd != nil && !slices.Equal(cfg.Etcd.Endpoints, tc.wantEtcd) {
				t.Errorf("etcd endpoints %v; want %v", cfg.Etcd.Endpoints, tc.wantEtcd)
			}
			if cfg.Type == open.TypeEtcd && (cfg.Etcd.CAFile != "/ca" || cfg.Etcd.CertFile != "/cert" || cfg.Etcd.KeyFile != "/key" || cfg.Etcd.DialTimeout != time.Second) {
				t.Errorf("etcd TLS and timeout not carried: %+v", cfg.Etcd)
			}
		})
	}
	g := base
	g.endpoints, g.given.typ = " , ", true
	if _, err := g.storeConfig(); err == nil {
		t.Error("empty --etcd-endpoints accepted")
	}
}
