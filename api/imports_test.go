package api

import (
	"testing"

	"twill.dev/twill/internal/depcheck"
)

// TestImports keeps package api free of anything but the standard library
// and sigs.k8s.io/yaml: it is part of Twill's pure core.
func TestImports(t *testing.T) {
	files := depcheck.FileImports(t, ".")
	for _, f := range files {
		for _, path := range f.Imports {
			if !depcheck.Std(path) && path != "sigs.k8s.io/yaml" {
				t.Errorf("%s imports %s; package api may import only the standard library and sigs.k8s.io/yaml", f.Name, path)
			}
		}
	}
	if len(files) < 6 {
		t.Errorf("checked %d files, want at least 6", len(files))
	}
}
