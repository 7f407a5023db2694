package etcd_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
)

// pki is a throwaway CA with a server and a client certificate, as PEM files.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "twill test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) (string, string) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(cn+".pem", "CERTIFICATE", der), write(cn+"-key.pem", "EC PRIVATE KEY", kder)
	}
	p := pki{ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf(2, "server", x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf(3, "client", x509.ExtKeyUsageClientAuth)
	return p
}

// startTLSEtcd runs an etcd member that serves clients over TLS and
// requires client certificates, and returns its https client URL.
func startTLSEtcd(t *testing.T, p pki) string {
	t.Helper()
	client := &url.URL{Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	peer := &url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg := embed.NewConfig()
	cfg.Name = "tls"
	cfg.Dir = t.TempDir()
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: p.serverCert, KeyFile: p.serverKey, TrustedCAFile: p.ca, ClientCertAuth: true}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 100
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start TLS etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		t.Fatal("TLS etcd not ready within a minute")
	}
	return client.String()
}

func TestTLS(t *testing.T) {
	p := newPKI(t)
	ep := startTLSEtcd(t, p)
	ctx := testCtx(t)

	s, err := etcd.New(ctx, etcd.Config{Endpoints: []string{ep}, CAFile: p.ca, CertFile: p.clientCert, KeyFile: p.clientKey})
	if err != nil {
		t.Fatalf("New over TLS: %v", err)
	}
	defer s.Close()
	created, err := s.Create(ctx, datastore.KV{Kind: datastore.KindHandle, Name: "tls", Value: []byte(`"v"`)})
	if err != nil {
		t.Fatalf("Create over TLS: %v", err)
	}
	if kv, err := s.Get(ctx, datastore.KindHandle, "tls"); err != nil || string(kv.Value) != `"v"` || kv.Revision != created.Revision {
		t.Fatalf("Get over TLS = %+v, %v", kv, err)
	}

	// Without a client certificate the server refuses the handshake.
	_, err = etcd.New(ctx, etcd.Config{Endpoints: []string{ep}, CAFile: p.ca, DialTimeout: 500 * time.Millisecond})
	if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), ep) {
		t.Fatalf("New without client certificate = %v; want ErrUnavailable naming %s", err, ep)
	}

	// With a CA that did not sign the server's certificate, the error says
	// what the handshake found.
	other := newPKI(t)
	_, err = etcd.New(ctx, etcd.Config{Endpoints: []string{ep}, CAFile: other.ca, CertFile: p.clientCert, KeyFile: p.clientKey, DialTimeout: 500 * time.Millisecond})
	var unknownCA x509.UnknownAuthorityError
	if !errors.Is(err, datastore.ErrUnavailable) || !strings.Contains(err.Error(), unknownCA.Error()) {
		t.Fatalf("New with the wrong CA = %v; want ErrUnavailable mentioning %q", err, unknownCA.Error())
	}
}

func TestTLSFileErrors(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	const ep = "https://127.0.0.1:1"
	cases := []struct {
		name string
		cfg  etcd.Config
		want []string
	}{
		{"missing CA", etcd.Config{CAFile: missing}, []string{missing, "--etcd-ca"}},
		{"CA not PEM", etcd.Config{CAFile: garbage}, []string{garbage, "no PEM certificate"}},
		{"cert without key", etcd.Config{CertFile: p.clientCert}, []string{p.clientCert, "--etcd-key"}},
		{"key without cert", etcd.Config{KeyFile: p.clientKey}, []string{p.clientKey, "--etcd-cert"}},
		{"missing cert", etcd.Config{CertFile: missing, KeyFile: p.clientKey}, []string{missing, "--etcd-cert"}},
		{"missing key", etcd.Config{CertFile: p.clientCert, KeyFile: missing}, []string{missing, "--etcd-key"}},
		{"key does not match", etcd.Config{CertFile: p.clientCert, KeyFile: p.serverKey}, []string{p.clientCert, p.serverKey}},
		{"plain http endpoint", etcd.Config{Endpoints: []string{"http://127.0.0.1:2379"}, CAFile: p.ca}, []string{"http://127.0.0.1:2379", "https://"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.cfg.Endpoints == nil {
				c.cfg.Endpoints = []string{ep}
			}
			c.cfg.DialTimeout = 200 * time.Millisecond
			s, err := etcd.New(testCtx(t), c.cfg)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded; want a TLS configuration error")
			}
			if errors.Is(err, datastore.ErrUnavailable) {
				t.Fatalf("New = %v; want a configuration error before any connection attempt", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("New error %q does not mention %q", err, w)
				}
			}
		})
	}
}
