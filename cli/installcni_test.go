package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestInstallCNI(t *testing.T) {
	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	// Any file stands in for the plugin binary here.
	r := mustSucceed(t, twill(t, "", "", "install-cni", "--cni-bin-dir", bin, "--cni-conf-dir", conf,
		"--plugin-binary", twillBin, "--agent-socket", "/run/tw/agent.sock", "--mtu", "1450", "--conf-name", "05-twill.conflist"))
	if !strings.Contains(r.stdout, filepath.Join(bin, "twill")) || !strings.Contains(r.stdout, filepath.Join(conf, "05-twill.conflist")) {
		t.Errorf("output %q does not name what was written", r.stdout)
	}
	fi, err := os.Stat(filepath.Join(bin, "twill"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("installed plugin: %v, %v", fi, err)
	}
	b, err := os.ReadFile(filepath.Join(conf, "05-twill.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"type": "twill"`, `"agentSocket": "/run/tw/agent.sock"`, `"mtu": 1450`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("conflist lacks %s:\n%s", want, b)
		}
	}

	// Without --plugin-binary the plugin is looked for next to twill.
	mustFail(t, twill(t, "", "", "install-cni", "--cni-bin-dir", bin, "--cni-conf-dir", conf), "twill-cni")
	r = twill(t, "", "", "install-cni", "--cni-bin-dir", bin)
	if r.code != 2 || !strings.Contains(r.stderr, "--cni-conf-dir") {
		t.Errorf("missing --cni-conf-dir: exit %d, stderr %q; want exit 2 naming the flag", r.code, r.stderr)
	}
	r = twill(t, "", "", "install-cni", "--cni-bin-dir", bin, "--cni-conf-dir", conf, "--mtu", "9")
	if r.code != 2 || !strings.Contains(r.stderr, "--mtu") {
		t.Errorf("bad --mtu: exit %d, stderr %q; want exit 2", r.code, r.stderr)
	}
}

// TestInstallCNIVersion: --cni-version (or TWILL_CNI_VERSION, or
// CNI_VERSION) sets the conflist's cniVersion, 1.0.0 by default; a version
// the plugin does not speak is refused and nothing is written.
func TestInstallCNIVersion(t *testing.T) {
	noEnv := []string{"TWILL_CNI_VERSION=", "CNI_VERSION="}
	install := func(t *testing.T, env []string, args ...string) (result, string) {
		t.Helper()
		dir := t.TempDir()
		bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
		r := twillEnv(t, append(slices.Clone(noEnv), env...), "", append([]string{"install-cni", "--cni-bin-dir", bin, "--cni-conf-dir", conf, "--plugin-binary", twillBin}, args...)...)
		return r, filepath.Join(conf, "10-twill.conflist")
	}
	cniVersion := func(t *testing.T, path string) string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			CNIVersion string `json:"cniVersion"`
		}
		if err := json.Unmarshal(b, &list); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return list.CNIVersion
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"default", nil, nil, "1.0.0"},
		{"flag 1.0.0", nil, []string{"--cni-version", "1.0.0"}, "1.0.0"},
		{"flag 1.1.0", nil, []string{"--cni-version", "1.1.0"}, "1.1.0"},
		{"TWILL_CNI_VERSION", []string{"TWILL_CNI_VERSION=1.1.0", "CNI_VERSION=0.4.0"}, nil, "1.1.0"},
		{"CNI_VERSION", []string{"CNI_VERSION=0.4.0"}, nil, "0.4.0"},
		{"flag over env", []string{"TWILL_CNI_VERSION=1.1.0"}, []string{"--cni-version", "1.0.0"}, "1.0.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, path := install(t, tc.env, tc.args...)
			mustSucceed(t, r)
			if got := cniVersion(t, path); got != tc.want {
				t.Errorf("conflist cniVersion %q; want %q", got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name  string
		env   []string
		args  []string
		names string
	}{
		{"flag 1.2.0", nil, []string{"--cni-version", "1.2.0"}, "--cni-version"},
		{"flag 0.2.0", nil, []string{"--cni-version", "0.2.0"}, "--cni-version"},
		{"env", []string{"CNI_VERSION=9"}, nil, "CNI_VERSION"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, path := install(t, tc.env, tc.args...)
			if r.code != 2 || !strings.Contains(r.stderr, tc.names) || !strings.Contains(r.stderr, "0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0") {
				t.Errorf("exit %d, stderr %q; want exit 2 naming %s and the supported versions", r.code, r.stderr, tc.names)
			}
			if _, err := os.Stat(path); err == nil {
				t.Errorf("a refused install wrote %s", path)
			}
		})
	}
	r := twill(t, "", "", "install-cni", "--help")
	if !strings.Contains(r.stdout, "--cni-version") || !strings.Contains(r.stdout, "containerd 1.6") {
		t.Errorf("install-cni --help does not explain --cni-version:\n%s", r.stdout)
	}
}
