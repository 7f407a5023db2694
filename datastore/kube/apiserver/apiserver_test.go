package apiserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", b)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPKI checks the generated certificates: the serving certificate
// verifies for 127.0.0.1 and localhost, the admin certificate is a client
// certificate in group system:masters, both chain to the CA, and the
// service-account keys are a P-256 pair.
func TestPKI(t *testing.T) {
	p, err := newPKI()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(parseCert(t, p.caCert))

	srv := parseCert(t, p.serverCert)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if _, err := srv.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("serving certificate for %s: %v", host, err)
		}
	}
	admin := parseCert(t, p.adminCert)
	if _, err := admin.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("admin client certificate: %v", err)
	}
	if !slices.Contains(admin.Subject.Organization, "system:masters") {
		t.Errorf("admin certificate organizations %v, want system:masters", admin.Subject.Organization)
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("the serving certificate is also a client certificate")
	}

	keyBlk, _ := pem.Decode(p.saKey)
	pubBlk, _ := pem.Decode(p.saPub)
	if keyBlk == nil || pubBlk == nil {
		t.Fatal("service-account keys are not PEM")
	}
	key, err := x509.ParseECPrivateKey(keyBlk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(pubBlk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if ep, ok := pub.(*ecdsa.PublicKey); !ok || !ep.Equal(&key.PublicKey) || key.Curve.Params().Name != "P-256" {
		t.Errorf("service-account public key %T does not match the P-256 private key", pub)
	}

	dir := t.TempDir()
	files, err := p.write(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(files.saKey)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("service-account key file %v mode %v, want 0600", err, fi.Mode())
	}
}

func TestFindBinaryMissing(t *testing.T) {
	t.Setenv("TWILL_KUBE_DIR", t.TempDir())
	_, err := FindBinary("kube-apiserver")
	if !errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), "scripts/kube-build.sh") {
		t.Fatalf("FindBinary in an empty directory = %v; want ErrNoBinary saying to run scripts/kube-build.sh", err)
	}
	_, err = Start(context.Background(), Options{Dir: t.TempDir(), EtcdServers: []string{"http://127.0.0.1:1"}})
	if !errors.Is(err, ErrNoBinary) {
		t.Fatalf("Start without a binary = %v; want ErrNoBinary", err)
	}
}

// TestStartFailureQuotesLog starts a "binary" that prints and exits: Start
// fails at once, quoting the output.
func TestStartFailureQuotesLog(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-apiserver")
	script := "#!/bin/sh\necho \"E0101 fake: cannot start: $1\" >&2\nexit 3\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), Options{Binary: bin, Dir: filepath.Join(dir, "run"), EtcdServers: []string{"http://127.0.0.1:1"}})
	if err == nil {
		t.Fatal("Start of a binary that exits succeeded")
	}
	for _, want := range []string{"exited while starting", "cannot start: --etcd-servers=http://127.0.0.1:1", "kube-apiserver.log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start error lacks %q:\n%v", want, err)
		}
	}
}

func TestTailFrom(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	var b strings.Builder
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := tailFrom(p, 0, 3); got != "line 98\nline 99\nline 100" {
		t.Errorf("tail 3 = %q", got)
	}
	if got := tailFrom(p, int64(len(b.String())-len("line 100\n")), 5); got != "line 100" {
		t.Errorf("tail after offset = %q", got)
	}
}
