package cli_test

import (
	"os"
	"path/filepath"
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
