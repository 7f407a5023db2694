package ipam

import (
	"testing"

	"twill.dev/twill/internal/depcheck"
)

// TestImportsStayInTheCore keeps package ipam free of etcd, netlink and
// anything else outside the standard library, api and datastore.
func TestImportsStayInTheCore(t *testing.T) {
	allowed := map[string]bool{"twill.dev/twill/api": true, "twill.dev/twill/datastore": true}
	files := depcheck.FileImports(t, ".")
	for _, f := range files {
		for _, path := range f.Imports {
			if !depcheck.Std(path) && !allowed[path] {
				t.Errorf("%s imports %s; ipam may import only the standard library, api and datastore", f.Name, path)
			}
		}
	}
	if len(files) == 0 {
		t.Fatal("no source files checked")
	}
}
