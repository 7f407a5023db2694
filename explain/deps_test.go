package explain_test

import (
	"testing"

	"twill.dev/twill/internal/depcheck"
)

// TestDependencyDirection keeps explain pure: it imports only api, plan and
// the standard library, and reaches no kernel, datastore, firewall or CNI
// library even indirectly.
func TestDependencyDirection(t *testing.T) {
	const self = "twill.dev/twill/explain"
	allowed := map[string]bool{"twill.dev/twill/api": true, "twill.dev/twill/plan": true}
	for _, imp := range depcheck.Imports(t, self) {
		if !depcheck.Std(imp) && !allowed[imp] {
			t.Errorf("%s imports %s: explain may import only api, plan and the standard library", self, imp)
		}
	}
	for _, d := range depcheck.WithPrefix(depcheck.Deps(t, self), depcheck.Infrastructure...) {
		t.Errorf("%s depends on %s: the pure core must not reach kernel, datastore, firewall or CNI libraries", self, d)
	}
}
