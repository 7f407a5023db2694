package depcheck

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestStdAndWithPrefix(t *testing.T) {
	for path, want := range map[string]bool{"fmt": true, "net/netip": true, "go.etcd.io/etcd/client/v3": false, "twill.dev/twill/api": false} {
		if got := Std(path); got != want {
			t.Errorf("Std(%q) = %v, want %v", path, got, want)
		}
	}
	deps := []string{"fmt", "github.com/vishvananda/netlink", "twill.dev/twill/plan", "github.com/google/nftables/expr",
		"k8s.io/client-go/kubernetes", "sigs.k8s.io/yaml"}
	if got, want := WithPrefix(deps, Infrastructure...), []string{"github.com/vishvananda/netlink", "github.com/google/nftables/expr", "k8s.io/client-go/kubernetes"}; !slices.Equal(got, want) {
		t.Errorf("WithPrefix = %v, want %v", got, want)
	}
}

func TestFileImports(t *testing.T) {
	dir := t.TempDir()
	for name, src := range map[string]string{
		"a.go":       "package p\n\nimport (\n\t\"fmt\"\n\tx \"go.etcd.io/etcd\"\n)\n",
		"b_linux.go": "//go:build linux\n\npackage p\n\nimport \"os\"\n",
		"c_test.go":  "package p\n\nimport \"testing\"\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := FileImports(t, dir)
	if len(got) != 2 || got[0].Name != "a.go" || !slices.Equal(got[0].Imports, []string{"fmt", "go.etcd.io/etcd"}) ||
		got[1].Name != "b_linux.go" || !slices.Equal(got[1].Imports, []string{"os"}) {
		t.Errorf("FileImports = %+v; want a.go (fmt, go.etcd.io/etcd) and b_linux.go (os), no test file", got)
	}
}

func TestDepsEndsWithThePackage(t *testing.T) {
	deps := Deps(t, "twill.dev/twill/internal/depcheck")
	if !slices.Contains(deps, "go/parser") || slices.Contains(deps, "github.com/vishvananda/netlink") {
		t.Errorf("Deps(depcheck) = %v; want go/parser and no netlink", deps)
	}
	if n := GoFiles(t, "twill.dev/twill/internal/depcheck"); n != 1 {
		t.Errorf("GoFiles(depcheck) = %d, want 1", n)
	}
}
