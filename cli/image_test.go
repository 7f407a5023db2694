package cli_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"twill.dev/twill/cli"
	"twill.dev/twill/image"
)

// staticBinaries builds a tiny statically linked program into dir as twill
// and twill-cni (the latter with a marker appended, so the two differ) and
// returns their paths.
func staticBinaries(t *testing.T, dir string) (twillPath, cniPath string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	twillPath, cniPath = filepath.Join(dir, "twill"), filepath.Join(dir, "twill-cni")
	build := exec.Command("go", "build", "-o", twillPath, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b, err := os.ReadFile(twillPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cniPath, append(b, "twill-cni"...), 0o755); err != nil {
		t.Fatal(err)
	}
	return twillPath, cniPath
}

// twillIn runs the real binary in dir with env added.
func twillIn(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, twillBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running twill %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

// untar returns the regular files and directories of a tar by name.
func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	files := map[string][]byte{}
	for i := 0; i < 1000; i++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = data
	}
	t.Fatal("more than 1000 tar entries")
	return nil
}

// imageParts returns the config and the uncompressed layer of an archive
// `twill image build` wrote, checking that the references between its
// parts match.
func imageParts(t *testing.T, format string, archive []byte) (image.Config, map[string][]byte) {
	t.Helper()
	files := untar(t, archive)
	var cfgJSON, layer []byte
	switch format {
	case "docker":
		var mf []image.DockerManifest
		if err := json.Unmarshal(files["manifest.json"], &mf); err != nil || len(mf) != 1 || len(mf[0].Layers) != 1 {
			t.Fatalf("manifest.json %s: %v", files["manifest.json"], err)
		}
		if want := "twill.dev/twill:" + cli.Version; !reflect.DeepEqual(mf[0].RepoTags, []string{want}) {
			t.Errorf("RepoTags %q, want %s", mf[0].RepoTags, want)
		}
		cfgJSON, layer = files[mf[0].Config], files[mf[0].Layers[0]]
	case "oci":
		var idx image.Index
		if err := json.Unmarshal(files["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
			t.Fatalf("index.json %s: %v", files["index.json"], err)
		}
		blob := func(d image.Descriptor) []byte {
			b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
			if !ok || digestOf(b) != d.Digest || int64(len(b)) != d.Size {
				t.Fatalf("blob %s missing or wrong", d.Digest)
			}
			return b
		}
		var m image.Manifest
		if err := json.Unmarshal(blob(idx.Manifests[0]), &m); err != nil || len(m.Layers) != 1 {
			t.Fatalf("manifest: %v", err)
		}
		cfgJSON = blob(m.Config)
		zr, err := gzip.NewReader(bytes.NewReader(blob(m.Layers[0])))
		if err != nil {
			t.Fatal(err)
		}
		if layer, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	var cfg image.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatalf("config %s: %v", cfgJSON, err)
	}
	if !reflect.DeepEqual(cfg.RootFS.DiffIDs, []string{digestOf(layer)}) {
		t.Errorf("diff_ids %q, want the uncompressed layer's %s", cfg.RootFS.DiffIDs, digestOf(layer))
	}
	return cfg, untar(t, layer)
}

func TestImageBuild(t *testing.T) {
	dir := t.TempDir()
	twillPath, cniPath := staticBinaries(t, dir)
	for _, format := range []string{"docker", "oci"} {
		t.Run(format, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "twill.tar")
			r := mustSucceed(t, twillIn(t, dir, nil, "image", "build", "--format", format, "--twill", twillPath, "--twill-cni", cniPath, "-o", out))
			if !strings.Contains(r.stdout, out) || !strings.Contains(r.stdout, "twill.dev/twill:"+cli.Version) {
				t.Errorf("output %q does not name the file and the image", r.stdout)
			}
			archive, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			cfg, layer := imageParts(t, format, archive)
			if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH ||
				!reflect.DeepEqual(cfg.Config.Entrypoint, []string{"/usr/local/bin/twill"}) || !reflect.DeepEqual(cfg.Config.Cmd, []string{"node", "run"}) {
				t.Errorf("config %+v", cfg)
			}
			if !slicesHasPrefix(cfg.Config.Env, "PATH=") || !strings.Contains(cfg.Config.Env[0], "/usr/local/bin") {
				t.Errorf("config env %q lacks a PATH with /usr/local/bin", cfg.Config.Env)
			}
			var names []string
			for n := range layer {
				names = append(names, n)
			}
			if len(layer) != 6 {
				t.Errorf("layer holds %q, want tmp/, usr/, usr/local/, usr/local/bin/ and the two binaries", names)
			}
			for name, src := range map[string]string{"usr/local/bin/twill": twillPath, "usr/local/bin/twill-cni": cniPath} {
				want, err := os.ReadFile(src)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(layer[name], want) {
					t.Errorf("%s in the layer differs from %s", name, src)
				}
			}

			// Same inputs, same bytes; SOURCE_DATE_EPOCH changes them.
			again := filepath.Join(t.TempDir(), "again.tar")
			mustSucceed(t, twillIn(t, dir, nil, "image", "build", "--format", format, "--twill", twillPath, "--twill-cni", cniPath, "-o", again))
			if b, err := os.ReadFile(again); err != nil || !bytes.Equal(b, archive) {
				t.Errorf("a second build differs (%v)", err)
			}
			mustSucceed(t, twillIn(t, dir, []string{"SOURCE_DATE_EPOCH=1700000000"}, "image", "build", "--format", format, "--twill", twillPath, "--twill-cni", cniPath, "-o", again))
			if b, err := os.ReadFile(again); err != nil || bytes.Equal(b, archive) {
				t.Errorf("SOURCE_DATE_EPOCH did not change the archive (%v)", err)
			}
			entries, err := os.ReadDir(filepath.Dir(again))
			if err != nil || len(entries) != 1 {
				t.Errorf("output directory holds %v (%v), want only the archive", entries, err)
			}
		})
	}
}

func slicesHasPrefix(list []string, prefix string) bool {
	return len(list) > 0 && strings.HasPrefix(list[0], prefix)
}

// TestImageBuildDefaults: twill-cni is found next to --twill, and without
// --twill the running binary is used, which must be static.
func TestImageBuildDefaults(t *testing.T) {
	dir := t.TempDir()
	twillPath, cniPath := staticBinaries(t, dir)
	out := filepath.Join(t.TempDir(), "img.tar")
	mustSucceed(t, twillIn(t, t.TempDir(), nil, "image", "build", "--twill", twillPath, "-o", out))
	_, layer := imageParts(t, "docker", mustRead(t, out))
	if want := mustRead(t, cniPath); !bytes.Equal(layer["usr/local/bin/twill-cni"], want) {
		t.Error("twill-cni next to --twill was not used")
	}

	// The running binary: the test's twill, static or not depending on
	// whether cgo was enabled when it was built.
	out = filepath.Join(t.TempDir(), "self.tar")
	r := twillIn(t, t.TempDir(), nil, "image", "build", "--twill-cni", cniPath, "-o", out)
	if _, err := image.CheckBinary(twillBin); err != nil {
		mustFail(t, r, twillBin, "CGO_ENABLED=0")
		if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a failed build left %s: %v", out, err)
		}
		return
	}
	mustSucceed(t, r)
	_, layer = imageParts(t, "docker", mustRead(t, out))
	if !bytes.Equal(layer["usr/local/bin/twill"], mustRead(t, twillBin)) {
		t.Error("the running binary is not the image's twill")
	}
}

func TestImageBuildErrors(t *testing.T) {
	dir := t.TempDir()
	twillPath, cniPath := staticBinaries(t, dir)
	outDir := t.TempDir()
	out := filepath.Join(outDir, "img.tar")
	// A twill without twill-cni next to it, run where there is no
	// bin/twill-cni.
	lone := filepath.Join(t.TempDir(), "twill")
	if err := os.WriteFile(lone, mustRead(t, twillPath), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"no output", []string{"--twill", twillPath}, 2, []string{"--output"}},
		{"bad format", []string{"--format", "zip", "-o", out}, 2, []string{"--format"}},
		{"bad name", []string{"--name", "Twill:x", "-o", out}, 2, []string{"--name"}},
		{"missing twill", []string{"--twill", filepath.Join(dir, "nope"), "--twill-cni", cniPath, "-o", out}, 1, []string{"--twill", "nope"}},
		{"missing twill-cni", []string{"--twill", twillPath, "--twill-cni", filepath.Join(dir, "nope"), "-o", out}, 1, []string{"--twill-cni", "nope"}},
		{"no twill-cni beside", []string{"--twill", lone, "-o", out}, 1, []string{"twill-cni", "bin/twill-cni", "--twill-cni"}},
		{"not a binary", []string{"--twill", twillPath, "--twill-cni", writeScript(t), "-o", out}, 1, []string{"--twill-cni", "not an ELF"}},
		{"output dir missing", []string{"--twill", twillPath, "--twill-cni", cniPath, "-o", filepath.Join(outDir, "no", "img.tar")}, 1, []string{"temporary file"}},
	} {
		r := twillIn(t, t.TempDir(), nil, append([]string{"image", "build"}, tc.args...)...)
		if r.code != tc.code {
			t.Errorf("%s: exit %d, want %d; stderr %q", tc.name, r.code, tc.code, r.stderr)
		}
		mustFail(t, r, tc.want...)
	}
	if entries, err := os.ReadDir(outDir); err != nil || len(entries) != 0 {
		t.Errorf("failed builds left %v (%v)", entries, err)
	}
	// A dynamically linked system binary is refused.
	for _, dyn := range []string{"/bin/sh", "/usr/bin/env"} {
		if _, err := image.CheckBinary(dyn); errors.Is(err, image.ErrBinary) {
			mustFail(t, twillIn(t, dir, nil, "image", "build", "--twill", dyn, "--twill-cni", cniPath, "-o", out), "dynamically linked", "CGO_ENABLED=0")
			break
		}
	}
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func writeScript(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
