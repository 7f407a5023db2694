package api

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps package api free of anything but the standard library
// and sigs.k8s.io/yaml: it is part of Twill's pure core.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(path, "/")
			if strings.Contains(first, ".") && path != "sigs.k8s.io/yaml" {
				t.Errorf("%s imports %s; package api may import only the standard library and sigs.k8s.io/yaml", f, path)
			}
		}
		checked++
	}
	if checked < 6 {
		t.Errorf("checked %d files, want at least 6", checked)
	}
}
