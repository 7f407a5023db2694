package crd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"twill.dev/twill/api"
)

// TestManifestsUpToDate runs controller-gen as go:generate does, into a
// temporary directory, and requires manifests/crds to hold exactly its
// output.
func TestManifestsUpToDate(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the go command is needed to run controller-gen: %v", err)
		}
		t.Skipf("the go command is not on PATH: %v", err)
	}
	out := t.TempDir()
	cmd := exec.Command(goBin, "tool", "controller-gen", "crd:crdVersions=v1", "paths=.", "output:crd:dir="+out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, stderr.String())
	}
	want := yamlFiles(t, out)
	got := yamlFiles(t, filepath.Join("..", "manifests", "crds"))
	if len(want) != len(Resources) {
		t.Errorf("controller-gen wrote %d manifests, want one per resource (%v)", len(want), Resources)
	}
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("manifests/crds/%s is missing; run go generate ./crd", name)
		case !bytes.Equal(g, w):
			t.Errorf("manifests/crds/%s differs from controller-gen's output; run go generate ./crd\n%s", name, firstDiff(g, w))
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("manifests/crds/%s is not generated from package crd; remove it", name)
		}
	}
}

func yamlFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = b
	}
	return out
}

// firstDiff quotes the first differing line of two texts.
func firstDiff(got, want []byte) string {
	g := strings.Split(string(got), "\n")
	w := strings.Split(string(want), "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n  committed: " + gl + "\n  generated: " + wl
		}
	}
	return "(no line differs)"
}

// TestSpecsMirrorAPI requires each spec type that copies an api struct's
// fields to have exactly those fields (name, type and JSON tag), less the
// embedded TypeMeta: a field added to the api type must be added here, or
// the apiserver would prune it.
func TestSpecsMirrorAPI(t *testing.T) {
	for _, tc := range []struct {
		api, spec any
	}{
		{api.Block{}, BlockSpec{}},
		{api.Handle{}, HandleSpec{}},
		{api.IPAMConfig{}, IPAMConfigSpec{}},
	} {
		at, st := reflect.TypeOf(tc.api), reflect.TypeOf(tc.spec)
		want := fields(at, true)
		got := fields(st, false)
		if !slices.Equal(got, want) {
			t.Errorf("%s has fields\n  %v\nbut api.%s (less TypeMeta) has\n  %v", st.Name(), got, at.Name(), want)
		}
	}
}

// fields lists a struct's fields as "Name Type `tag`".
func fields(t reflect.Type, skipTypeMeta bool) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if skipTypeMeta && f.Anonymous && f.Type == reflect.TypeOf(api.TypeMeta{}) {
			continue
		}
		out = append(out, f.Name+" "+f.Type.String()+" `"+string(f.Tag)+"`")
	}
	return out
}

// TestKinds checks that the resource kinds are the api package's.
func TestKinds(t *testing.T) {
	if got := Group + "/" + Version; got != api.Version {
		t.Errorf("group/version %s, api.Version %s", got, api.Version)
	}
	for _, tc := range []struct {
		typ  any
		kind string
	}{
		{IPPool{}, api.KindIPPool}, {IPAMBlock{}, api.KindBlock}, {IPAMHandle{}, api.KindHandle},
		{WorkloadEndpoint{}, api.KindWorkloadEndpoint}, {IPAMConfig{}, KindIPAMConfig},
	} {
		if name, kind := reflect.TypeOf(tc.typ).Name(), tc.kind; name != kind {
			t.Errorf("type %s would generate kind %s; the api kind is %s", name, name, kind)
		}
	}
}
