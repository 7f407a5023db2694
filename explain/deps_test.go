package explain_test

import (
	"bytes"
	"os"
	"os/exec"
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

// TestDependencyDirection keeps explain pure: it imports only api, plan and
// the standard library, and reaches no kernel, datastore, firewall or CNI
// library even indirectly.
func TestDependencyDirection(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the go command is needed to list dependencies: %v", err)
		}
		t.Skipf("the go command is not on PATH: %v", err)
	}
	const self = "twill.dev/twill/explain"
	list := func(args ...string) []string {
		t.Helper()
		cmd := exec.Command(goBin, append([]string{"list"}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
		}
		return strings.Fields(string(out))
	}
	allowed := map[string]bool{"twill.dev/twill/api": true, "twill.dev/twill/plan": true}
	imports := list("-f", `{{join .Imports " "}}`, self)
	if len(imports) == 0 {
		t.Fatalf("go list found no imports of %s", self)
	}
	for _, imp := range imports {
		if first, _, _ := strings.Cut(imp, "/"); strings.Contains(first, ".") && !allowed[imp] {
			t.Errorf("%s imports %s: explain may import only api, plan and the standard library", self, imp)
		}
	}
	deps := list("-deps", "-f", "{{.ImportPath}}", self)
	if len(deps) == 0 || deps[len(deps)-1] != self {
		t.Fatalf("go list -deps %s listed %d packages, not ending with the package itself", self, len(deps))
	}
	for _, d := range deps {
		for _, f := range forbiddenDeps {
			if strings.HasPrefix(d, f) {
				t.Errorf("%s depends on %s: the pure core must not reach kernel, datastore, firewall or CNI libraries", self, d)
			}
		}
	}
}
