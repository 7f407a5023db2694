package plan_test

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// forbiddenDeps are the import-path prefixes the pure core must not reach:
// kernel, datastore, firewall and CNI libraries.
var forbiddenDeps = []string{
	"github.com/vishvananda/",
	"go.etcd.io/",
	"github.com/google/nftables",
	"github.com/containernetworking/",
}

// TestDependencyDirection keeps the pure core pure: plan, api and ipam must
// not depend, even indirectly, on netlink, etcd, nftables or CNI.
func TestDependencyDirection(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the go command is needed to list dependencies: %v", err)
		}
		t.Skipf("the go command is not on PATH: %v", err)
	}
	pkgs := []struct {
		path     string
		required bool
	}{
		{"twill.dev/twill/plan", true},
		{"twill.dev/twill/api", true},
		{"twill.dev/twill/ipam", false}, // may not be written yet
	}
	for _, p := range pkgs {
		t.Run(p.path, func(t *testing.T) {
			out, err := exec.Command(goBin, "list", "-e", "-f", "{{len .GoFiles}}", p.path).Output()
			if err != nil {
				t.Fatalf("go list %s: %v", p.path, err)
			}
			if n, _ := strconv.Atoi(strings.TrimSpace(string(out))); n == 0 {
				if p.required {
					t.Fatalf("package %s has no Go files", p.path)
				}
				t.Skipf("package %s does not exist yet", p.path)
			}
			cmd := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", p.path)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err = cmd.Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", p.path, err, stderr.String())
			}
			deps := strings.Fields(string(out))
			if len(deps) == 0 || deps[len(deps)-1] != p.path {
				t.Fatalf("go list -deps %s listed %d packages, not ending with the package itself", p.path, len(deps))
			}
			for _, d := range deps {
				for _, f := range forbiddenDeps {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s depends on %s: the pure core must not import kernel, datastore, firewall or CNI libraries", p.path, d)
					}
				}
			}
		})
	}
}
