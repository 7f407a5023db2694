package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"twill.dev/twill/image"
)

// tarEntry is one entry read back from a tar.
type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

// readTar returns the entries of the tar b in order, failing the test on a
// malformed tar or a repeated name.
func readTar(t *testing.T, b []byte) ([]string, map[string]tarEntry) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	byName := map[string]tarEntry{}
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("more than 1000 tar entries")
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading %s: %v", h.Name, err)
		}
		if _, dup := byName[h.Name]; dup {
			t.Fatalf("tar entry %s repeated", h.Name)
		}
		names = append(names, h.Name)
		byName[h.Name] = tarEntry{h, data}
	}
	return names, byName
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// inputs writes two stand-in binaries and returns the spec of an image
// holding them, laid out as `twill image build` lays out the real ones.
func inputs(t *testing.T, format image.Format) (image.Spec, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	contents := map[string][]byte{
		"usr/local/bin/twill":     []byte("#!/bin/sh\necho twill\n"),
		"usr/local/bin/twill-cni": bytes.Repeat([]byte("cni\x00"), 3000),
	}
	var files []image.File
	for _, name := range []string{"twill", "twill-cni"} {
		src := filepath.Join(dir, name)
		if err := os.WriteFile(src, contents["usr/local/bin/"+name], 0o700); err != nil {
			t.Fatal(err)
		}
		files = append(files, image.File{Path: "/usr/local/bin/" + name, Mode: 0o755, Source: src})
	}
	files = append(files, image.File{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777})
	return image.Spec{
		Name:       "twill.dev/twill:v0.2.0",
		Format:     format,
		Files:      files,
		Entrypoint: []string{"/usr/local/bin/twill"},
		Cmd:        []string{"node", "run"},
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
	}, contents
}

func build(t *testing.T, s image.Spec) ([]byte, image.Result) {
	t.Helper()
	var buf bytes.Buffer
	res, err := image.Build(&buf, s)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return buf.Bytes(), res
}

// checkConfig checks the config's platform, defaults and diff_ids.
func checkConfig(t *testing.T, cfgJSON []byte, s image.Spec, diffID string) {
	t.Helper()
	var cfg image.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("config platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	if !reflect.DeepEqual(cfg.Config.Entrypoint, s.Entrypoint) || !reflect.DeepEqual(cfg.Config.Cmd, s.Cmd) || !reflect.DeepEqual(cfg.Config.Env, s.Env) {
		t.Errorf("config defaults %+v, want entrypoint %q cmd %q env %q", cfg.Config, s.Entrypoint, s.Cmd, s.Env)
	}
	if cfg.RootFS.Type != "layers" || !reflect.DeepEqual(cfg.RootFS.DiffIDs, []string{diffID}) {
		t.Errorf("config rootfs %+v, want diff_ids [%s]", cfg.RootFS, diffID)
	}
	if cfg.Created != "1970-01-01T00:00:00Z" {
		t.Errorf("config created %q, want the epoch", cfg.Created)
	}
}

// checkLayer checks that the uncompressed layer holds exactly the
// binaries, their parent directories and /tmp, with fixed metadata.
func checkLayer(t *testing.T, layer []byte, contents map[string][]byte) {
	t.Helper()
	names, entries := readTar(t, layer)
	want := []string{"tmp/", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/twill", "usr/local/bin/twill-cni"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("layer entries %q, want %q", names, want)
	}
	wantMode := map[string]int64{"tmp/": 0o1777, "usr/": 0o755, "usr/local/": 0o755, "usr/local/bin/": 0o755,
		"usr/local/bin/twill": 0o755, "usr/local/bin/twill-cni": 0o755}
	for _, n := range names {
		h := entries[n].hdr
		if h.Mode != wantMode[n] {
			t.Errorf("%s: mode %o, want %o", n, h.Mode, wantMode[n])
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: owner %d:%d (%q:%q), mtime %s; want 0:0, no names, the epoch", n, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
		isDir := strings.HasSuffix(n, "/")
		if isDir != (h.Typeflag == tar.TypeDir) || (!isDir && h.Typeflag != tar.TypeReg) {
			t.Errorf("%s: type %c", n, h.Typeflag)
		}
		if !isDir && !bytes.Equal(entries[n].data, contents[n]) {
			t.Errorf("%s: contents differ from the source file", n)
		}
	}
}

func TestDockerArchive(t *testing.T) {
	s, contents := inputs(t, image.FormatDocker)
	b, res := build(t, s)
	names, entries := readTar(t, b)
	var mf []image.DockerManifest
	if err := json.Unmarshal(entries["manifest.json"].data, &mf); err != nil || len(mf) != 1 {
		t.Fatalf("manifest.json %s: %v", entries["manifest.json"].data, err)
	}
	m := mf[0]
	if !reflect.DeepEqual(m.RepoTags, []string{"twill.dev/twill:v0.2.0"}) || len(m.Layers) != 1 {
		t.Fatalf("manifest.json entry %+v", m)
	}
	cfg, ok := entries[m.Config]
	if !ok {
		t.Fatalf("config %s missing from %q", m.Config, names)
	}
	if d := digest(cfg.data); d != res.ImageID || m.Config != strings.TrimPrefix(d, "sha256:")+".json" {
		t.Errorf("config %s has digest %s; result says %s", m.Config, d, res.ImageID)
	}
	layer, ok := entries[m.Layers[0]]
	if !ok {
		t.Fatalf("layer %s missing from %q", m.Layers[0], names)
	}
	diffID := digest(layer.data)
	if diffID != res.DiffID || diffID != res.LayerDigest || int64(len(layer.data)) != res.LayerSize {
		t.Errorf("layer digest %s size %d; result %+v", diffID, len(layer.data), res)
	}
	if m.Layers[0] != strings.TrimPrefix(diffID, "sha256:")+"/layer.tar" {
		t.Errorf("layer path %s is not named after its diff id %s", m.Layers[0], diffID)
	}
	checkConfig(t, cfg.data, s, diffID)
	checkLayer(t, layer.data, contents)
	if len(names) != 4 {
		t.Errorf("archive entries %q, want config, layer dir, layer and manifest.json", names)
	}
}

func TestOCILayout(t *testing.T) {
	s, contents := inputs(t, image.FormatOCI)
	b, res := build(t, s)
	names, entries := readTar(t, b)
	if got := string(entries["oci-layout"].data); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %q", got)
	}
	blob := func(d image.Descriptor) []byte {
		t.Helper()
		e, ok := entries["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing from %q", d.Digest, names)
		}
		if digest(e.data) != d.Digest || int64(len(e.data)) != d.Size {
			t.Fatalf("blob %s: digest %s size %d, descriptor says size %d", d.Digest, digest(e.data), len(e.data), d.Size)
		}
		return e.data
	}
	var idx image.Index
	if err := json.Unmarshal(entries["index.json"].data, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", entries["index.json"].data, err)
	}
	md := idx.Manifests[0]
	if idx.SchemaVersion != 2 || idx.MediaType != image.MediaTypeIndex || md.MediaType != image.MediaTypeManifest ||
		md.Platform == nil || *md.Platform != (image.Platform{Architecture: runtime.GOARCH, OS: "linux"}) {
		t.Errorf("index.json %s", entries["index.json"].data)
	}
	if md.Annotations[image.AnnotationImageName] != "twill.dev/twill:v0.2.0" || md.Annotations[image.AnnotationRefName] != "v0.2.0" {
		t.Errorf("index annotations %v", md.Annotations)
	}
	if md.Digest != res.ManifestDigest {
		t.Errorf("index points at %s, result says %s", md.Digest, res.ManifestDigest)
	}
	var m image.Manifest
	if err := json.Unmarshal(blob(md), &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.MediaType != image.MediaTypeManifest || m.Config.MediaType != image.MediaTypeConfig ||
		len(m.Layers) != 1 || m.Layers[0].MediaType != image.MediaTypeLayerGz {
		t.Fatalf("manifest %+v", m)
	}
	if m.Config.Digest != res.ImageID || m.Layers[0].Digest != res.LayerDigest || m.Layers[0].Size != res.LayerSize {
		t.Errorf("manifest %+v disagrees with the result %+v", m, res)
	}
	cfg := blob(m.Config)
	zr, err := gzip.NewReader(bytes.NewReader(blob(m.Layers[0])))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	layer, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip the layer: %v", err)
	}
	diffID := digest(layer)
	if diffID != res.DiffID || diffID == res.LayerDigest {
		t.Errorf("uncompressed layer %s; result diff id %s, layer digest %s", diffID, res.DiffID, res.LayerDigest)
	}
	checkConfig(t, cfg, s, diffID)
	checkLayer(t, layer, contents)
	if want := []string{"blobs/", "blobs/sha256/"}; !reflect.DeepEqual(names[:2], want) || len(names) != 7 {
		t.Errorf("archive entries %q, want 2 directories, 3 blobs, index.json and oci-layout", names)
	}
}

// TestReproducible builds each format twice, with the sources' times and
// the temporary directory changed in between: the bytes are the same.
// Another creation time gives other bytes.
func TestReproducible(t *testing.T) {
	for _, f := range image.Formats {
		t.Run(string(f), func(t *testing.T) {
			s, _ := inputs(t, f)
			first, res1 := build(t, s)
			for _, file := range s.Files {
				if file.Source != "" {
					later := time.Now().Add(time.Hour)
					if err := os.Chtimes(file.Source, later, later); err != nil {
						t.Fatal(err)
					}
				}
			}
			t.Setenv("TMPDIR", t.TempDir())
			// The order of Files does not matter either.
			s.Files[0], s.Files[1] = s.Files[1], s.Files[0]
			second, res2 := build(t, s)
			if !bytes.Equal(first, second) || res1 != res2 {
				t.Fatalf("two builds differ: %d and %d bytes, %+v and %+v", len(first), len(second), res1, res2)
			}
			s.Created = time.Unix(1700000000, 0)
			third, res3 := build(t, s)
			if bytes.Equal(first, third) || res3.ImageID == res1.ImageID {
				t.Fatal("another creation time gave the same image")
			}
			_, entries := readTar(t, third)
			for name, e := range entries {
				if !e.hdr.ModTime.Equal(s.Created) {
					t.Errorf("%s: mtime %s, want %s", name, e.hdr.ModTime, s.Created)
				}
			}
		})
	}
}

func TestSourceDateEpoch(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "SOURCE_DATE_EPOCH" {
				return v
			}
			return ""
		}
	}
	for v, want := range map[string]time.Time{"": time.Unix(0, 0), "1700000000": time.Unix(1700000000, 0)} {
		got, err := image.SourceDateEpoch(env(v))
		if err != nil || !got.Equal(want) {
			t.Errorf("SOURCE_DATE_EPOCH=%q: %s, %v; want %s", v, got, err, want)
		}
	}
	for _, v := range []string{"yesterday", "-5", "1.5"} {
		if _, err := image.SourceDateEpoch(env(v)); !errors.Is(err, image.ErrSpec) {
			t.Errorf("SOURCE_DATE_EPOCH=%q: %v, want ErrSpec", v, err)
		}
	}
}

func TestParseName(t *testing.T) {
	for name, want := range map[string][3]string{
		"twill.dev/twill:v0.2.0":       {"twill.dev/twill", "v0.2.0", "twill.dev/twill:v0.2.0"},
		"twill":                        {"twill", "latest", "docker.io/library/twill:latest"},
		"me/twill:dev":                 {"me/twill", "dev", "docker.io/me/twill:dev"},
		"localhost:5000/a/twill:1.0":   {"localhost:5000/a/twill", "1.0", "localhost:5000/a/twill:1.0"},
		"registry.example/twill/agent": {"registry.example/twill/agent", "latest", "registry.example/twill/agent:latest"},
	} {
		repo, tag, full, err := image.ParseName(name)
		if err != nil || [3]string{repo, tag, full} != want {
			t.Errorf("ParseName(%q) = %q %q %q, %v; want %q", name, repo, tag, full, err, want)
		}
	}
}

func TestBadSpecs(t *testing.T) {
	good, _ := inputs(t, image.FormatDocker)
	with := func(change func(*image.Spec)) image.Spec {
		s := good
		s.Files = append([]image.File(nil), good.Files...)
		change(&s)
		return s
	}
	for name, s := range map[string]image.Spec{
		"no name":         with(func(s *image.Spec) { s.Name = "" }),
		"upper case name": with(func(s *image.Spec) { s.Name = "twill.dev/Twill:v1" }),
		"digest":          with(func(s *image.Spec) { s.Name = "twill.dev/twill@sha256:" + strings.Repeat("a", 64) }),
		"bad tag":         with(func(s *image.Spec) { s.Name = "twill.dev/twill:-x" }),
		"bad format":      with(func(s *image.Spec) { s.Format = "zip" }),
		"no files":        with(func(s *image.Spec) { s.Files = nil }),
		"relative path":   with(func(s *image.Spec) { s.Files[0].Path = "usr/bin/twill" }),
		"unclean path":    with(func(s *image.Spec) { s.Files[0].Path = "/usr/../twill" }),
		"root":            with(func(s *image.Spec) { s.Files[2].Path = "/" }),
		"twice":           with(func(s *image.Spec) { s.Files = append(s.Files, s.Files[0]) }),
		"file as parent": with(func(s *image.Spec) {
			s.Files = append(s.Files, image.File{Path: "/tmp/x"}, image.File{Path: "/tmp/x/y"})
		}),
		"source and data":  with(func(s *image.Spec) { s.Files[0].Data = []byte("x") }),
		"dir with data":    with(func(s *image.Spec) { s.Files[2].Data = []byte("x") }),
		"symlink mode":     with(func(s *image.Spec) { s.Files[0].Mode |= fs.ModeSymlink }),
		"directory source": with(func(s *image.Spec) { s.Files[0].Source = t.TempDir() }),
		"before 1970":      with(func(s *image.Spec) { s.Created = time.Unix(-10, 0) }),
	} {
		var buf bytes.Buffer
		if _, err := image.Build(&buf, s); !errors.Is(err, image.ErrSpec) {
			t.Errorf("%s: %v, want ErrSpec", name, err)
		}
		if buf.Len() != 0 {
			t.Errorf("%s: %d bytes written for a bad spec", name, buf.Len())
		}
	}
	missing := with(func(s *image.Spec) { s.Files[0].Source = filepath.Join(t.TempDir(), "nope") })
	if _, err := image.Build(io.Discard, missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "/usr/local/bin/twill") {
		t.Errorf("missing source: %v, want ErrNotExist naming the image path", err)
	}
}

// TestDataFilesAndDefaults: Data files, default modes and an explicit
// architecture.
func TestDataFilesAndDefaults(t *testing.T) {
	s := image.Spec{Name: "x", Files: []image.File{{Path: "/etc/hello", Data: []byte("hi\n")}, {Path: "/var/empty", Mode: fs.ModeDir}},
		Architecture: "arm64"}
	b, res := build(t, s)
	if res.Name != "x:latest" {
		t.Errorf("name %q, want x:latest", res.Name)
	}
	_, entries := readTar(t, b)
	var mf []image.DockerManifest
	if err := json.Unmarshal(entries["manifest.json"].data, &mf); err != nil || len(mf) != 1 {
		t.Fatalf("manifest.json: %v", err)
	}
	var cfg image.Config
	if err := json.Unmarshal(entries[mf[0].Config].data, &cfg); err != nil || cfg.Architecture != "arm64" {
		t.Errorf("config architecture %q, %v; want arm64", cfg.Architecture, err)
	}
	names, layer := readTar(t, entries[mf[0].Layers[0]].data)
	if want := []string{"etc/", "etc/hello", "var/", "var/empty/"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("layer %q, want %q", names, want)
	}
	if h := layer["etc/hello"].hdr; h.Mode != 0o644 || string(layer["etc/hello"].data) != "hi\n" {
		t.Errorf("etc/hello: mode %o contents %q", h.Mode, layer["etc/hello"].data)
	}
	if h := layer["var/empty/"].hdr; h.Mode != 0o755 {
		t.Errorf("var/empty: mode %o", h.Mode)
	}
}

// goTool returns the go command.
func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no go command to build a test binary: %v", err)
	}
	return p
}

func TestCheckBinary(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	static := filepath.Join(dir, "static")
	cmd := exec.Command(goTool(t), "build", "-o", static, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if arch, err := image.CheckBinary(static); err != nil || arch != "arm64" {
		t.Errorf("static arm64 binary: %q, %v", arch, err)
	}
	text := filepath.Join(dir, "script")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := image.CheckBinary(text); !errors.Is(err, image.ErrBinary) {
		t.Errorf("shell script: %v, want ErrBinary", err)
	}
	if _, err := image.CheckBinary(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	// The dynamic loader itself, or a system binary, is dynamically linked
	// on every Linux distribution with a C library.
	for _, dyn := range []string{"/bin/sh", "/usr/bin/env", "/bin/ls"} {
		f, err := elf.Open(dyn)
		if err != nil {
			continue
		}
		interp := false
		for _, p := range f.Progs {
			interp = interp || p.Type == elf.PT_INTERP
		}
		f.Close()
		if !interp {
			continue
		}
		if _, err := image.CheckBinary(dyn); !errors.Is(err, image.ErrBinary) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
			t.Errorf("%s (dynamically linked): %v, want ErrBinary saying CGO_ENABLED=0", dyn, err)
		}
		return
	}
	t.Log("no dynamically linked system binary found to check")
}
