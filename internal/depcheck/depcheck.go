// Package depcheck lists what a package imports, for the tests that keep
// Twill's layers apart (the pure core reaches no kernel, datastore,
// Kubernetes client, firewall or CNI library; the CNI plugin links no
// etcd).
package depcheck

import (
	"bytes"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Infrastructure are the import-path prefixes of the kernel, datastore
// (etcd and the Kubernetes client), firewall and CNI libraries, which the
// pure core must not reach. sigs.k8s.io/yaml is no client and not listed.
var Infrastructure = []string{
	"github.com/vishvananda/",
	"go.etcd.io/",
	"k8s.io/",
	"github.com/google/nftables",
	"github.com/containernetworking/",
}

// goList runs `go list args...` and returns the fields of its output. The
// test fails when the go command fails, and without the go command it
// fails under CI=true and is skipped otherwise.
func goList(t testing.TB, args ...string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the go command is needed to list dependencies: %v", err)
		}
		t.Skipf("the go command is not on PATH: %v", err)
	}
	cmd := exec.Command(goBin, append([]string{"list"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.Fields(string(out))
}

// Deps returns pkg and every package it depends on, even indirectly, as
// `go list -deps` orders them (pkg last); the test fails if the list does
// not end with pkg.
func Deps(t testing.TB, pkg string) []string {
	t.Helper()
	deps := goList(t, "-deps", "-f", "{{.ImportPath}}", pkg)
	if len(deps) == 0 || deps[len(deps)-1] != pkg {
		t.Fatalf("go list -deps %s listed %d packages, not ending with the package itself", pkg, len(deps))
	}
	return deps
}

// Imports returns the packages pkg imports directly; the test fails if
// there are none.
func Imports(t testing.TB, pkg string) []string {
	t.Helper()
	imports := goList(t, "-f", `{{join .Imports " "}}`, pkg)
	if len(imports) == 0 {
		t.Fatalf("go list found no imports of %s", pkg)
	}
	return imports
}

// GoFiles returns how many non-test Go files pkg has (0 for a package not
// written yet).
func GoFiles(t testing.TB, pkg string) int {
	t.Helper()
	out := goList(t, "-e", "-f", "{{len .GoFiles}}", pkg)
	if len(out) != 1 {
		t.Fatalf("go list -e %s printed %q, want one number", pkg, out)
	}
	n, err := strconv.Atoi(out[0])
	if err != nil {
		t.Fatalf("go list -e %s: %v", pkg, err)
	}
	return n
}

// File is one source file and the packages it imports.
type File struct {
	Name    string
	Imports []string
}

// FileImports parses every non-test .go file in dir, whatever its build
// constraints, and returns each file's imports, in file name order.
func FileImports(t testing.TB, dir string) []File {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		f := File{Name: filepath.Base(name)}
		for _, imp := range af.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatalf("%s: import %s: %v", name, imp.Path.Value, err)
			}
			f.Imports = append(f.Imports, path)
		}
		files = append(files, f)
	}
	return files
}

// Std reports whether path is a standard-library package: its first
// element has no dot.
func Std(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

// WithPrefix returns the paths that start with one of prefixes.
func WithPrefix(paths []string, prefixes ...string) []string {
	var out []string
	for _, p := range paths {
		if slices.ContainsFunc(prefixes, func(f string) bool { return strings.HasPrefix(p, f) }) {
			out = append(out, p)
		}
	}
	return out
}
