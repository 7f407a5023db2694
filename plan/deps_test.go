package plan_test

import (
	"testing"

	"twill.dev/twill/internal/depcheck"
)

// TestDependencyDirection keeps the pure core pure: plan, api and ipam must
// not depend, even indirectly, on netlink, etcd, nftables or CNI.
func TestDependencyDirection(t *testing.T) {
	pkgs := []struct {
		path     string
		required bool
	}{
		{"twill.dev/twill/plan", true},
		{"twill.dev/twill/api", true},
		{"twill.dev/twill/ipam", true},
	}
	for _, p := range pkgs {
		t.Run(p.path, func(t *testing.T) {
			if depcheck.GoFiles(t, p.path) == 0 {
				if p.required {
					t.Fatalf("package %s has no Go files", p.path)
				}
				t.Skipf("package %s does not exist yet", p.path)
			}
			for _, d := range depcheck.WithPrefix(depcheck.Deps(t, p.path), depcheck.Infrastructure...) {
				t.Errorf("%s depends on %s: the pure core must not import kernel, datastore, firewall or CNI libraries", p.path, d)
			}
		})
	}
}
