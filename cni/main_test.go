package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"twill.dev/twill/internal/depcheck"
)

// pluginDir holds the plugin binary, built once for these tests under its
// installed name.
var (
	pluginDir string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "twcni-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create a temporary directory:", err)
		os.Exit(1)
	}
	pluginDir = dir
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, PluginType), "twill.dev/twill/cmd/twill-cni").CombinedOutput()
	if err != nil {
		buildErr = fmt.Errorf("go build ./cmd/twill-cni: %v: %s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// pluginBinary returns the built plugin, failing the test when the build
// failed.
func pluginBinary(t testing.TB) string {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(pluginDir, PluginType)
}

// TestPluginDeps keeps the plugin binary small and quick to start: it must
// not link etcd, gRPC, the CLI or the agent.
func TestPluginDeps(t *testing.T) {
	deps := depcheck.Deps(t, "twill.dev/twill/cmd/twill-cni")
	for _, d := range deps {
		if d == "twill.dev/twill/agent" {
			t.Errorf("the plugin links the agent (%s)", d)
		}
	}
	forbidden := []string{"go.etcd.io/", "google.golang.org/grpc", "github.com/spf13/cobra", "github.com/prometheus/",
		"twill.dev/twill/cli", "twill.dev/twill/datastore", "twill.dev/twill/ipam", "twill.dev/twill/dataplane", "twill.dev/twill/plan"}
	for _, d := range depcheck.WithPrefix(deps, forbidden...) {
		t.Errorf("the plugin links %s", d)
	}
	fi, err := os.Stat(pluginBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	// etcd's client alone would add more than this; the plugin is ~11 MB.
	const maxSize = 24 << 20
	if fi.Size() > maxSize {
		t.Errorf("the plugin binary is %d bytes, over %d: what did it start linking?", fi.Size(), maxSize)
	}
	t.Logf("plugin binary: %d bytes, %d packages", fi.Size(), len(deps))
}

// unprivilegedNet writes a conflist of cniVersion v pointing the plugin
// at sock and returns libcni's view of it.
func unprivilegedNet(t *testing.T, sock, v string) (*libcni.CNIConfig, *libcni.NetworkConfigList) {
	t.Helper()
	pluginBinary(t)
	dir := t.TempDir()
	b, err := Conflist(InstallOptions{AgentSocket: sock, LogLevel: "error", CNIVersion: v})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, DefaultConfName)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, filepath.Join(dir, "cache"), nil), list
}

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) carries no CNI error", err, err)
	}
	return te.Code
}

// TestBinaryWithoutAgent runs the built plugin through libcni, with no
// agent on the socket: nothing here needs root.
func TestBinaryWithoutAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nobody.sock")
	c, list := unprivilegedNet(t, sock, "1.1.0")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// VERSION lists exactly the versions the plugin answers in.
	vi, err := c.GetVersionInfo(ctx, PluginType)
	if err != nil {
		t.Fatal(err)
	}
	if got := vi.SupportedVersions(); !slices.Equal(got, SupportedVersions()) {
		t.Errorf("VERSION answers %v; want %v", got, SupportedVersions())
	}

	err = c.GetStatusNetworkList(ctx, list)
	if err == nil || cniCode(t, err) != CodePluginNotAvailable || !strings.Contains(err.Error(), sock) {
		t.Errorf("STATUS without agent: %v; want code %d naming %s", err, CodePluginNotAvailable, sock)
	}
	err = c.GCNetworkList(ctx, list, &libcni.GCArgs{})
	if err == nil || cniCode(t, err) != CodeTryAgainLater || !strings.Contains(err.Error(), sock) {
		t.Errorf("GC without agent: %v; want code %d naming %s", err, CodeTryAgainLater, sock)
	}
	rt := &libcni.RuntimeConf{ContainerID: "twtest-missing-ns", NetNS: "/var/run/netns/twtest-does-not-exist", IfName: "eth0"}
	_, err = c.AddNetworkList(ctx, list, rt)
	if err == nil || cniCode(t, err) != CodeInvalidNetNS {
		t.Errorf("ADD into a missing namespace: %v; want code %d", err, CodeInvalidNetNS)
	}
}

// TestBinaryBadInput execs the plugin directly, as a runtime would, with
// broken input.
func TestBinaryBadInput(t *testing.T) {
	bin := pluginBinary(t)
	run := func(stdin string, env ...string) (types.Error, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = env
		cmd.Stdin = strings.NewReader(stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err == nil {
			t.Fatalf("plugin succeeded on bad input; stdout %s", stdout.String())
		}
		var e types.Error
		if err := json.Unmarshal(stdout.Bytes(), &e); err != nil {
			t.Fatalf("stdout %q is not a CNI error: %v (stderr %s)", stdout.String(), err, stderr.String())
		}
		return e, stderr.String()
	}
	env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=twtest", "CNI_NETNS=/var/run/netns/twtest-none", "CNI_IFNAME=eth0", "CNI_PATH=" + pluginDir}
	if e, _ := run(`{"cniVersion":"1.1.0","name":"n","type":"twill"}`, env[0], env[1], env[2], env[4]); e.Code != CodeInvalidEnvironment || !strings.Contains(e.Msg, "CNI_IFNAME") {
		t.Errorf("no CNI_IFNAME: %+v; want code %d", e, CodeInvalidEnvironment)
	}
	if e, _ := run(`{"cniVersion":"1.1.0","name":"n","type":"twill"}`, env[0], env[2], env[3], env[4]); e.Code != CodeInvalidEnvironment || !strings.Contains(e.Msg, "CNI_CONTAINERID") {
		t.Errorf("no CNI_CONTAINERID: %+v; want code %d", e, CodeInvalidEnvironment)
	}
	if e, _ := run(`{"cniVersion":"1.1.0","name":`, env...); e.Code != CodeDecode {
		t.Errorf("bad JSON: %+v; want code %d", e, CodeDecode)
	}
	if e, _ := run(`{"cniVersion":"1.1.0","name":"n","type":"twill","mtu":5}`, env...); e.Code != CodeInvalidConfig || !strings.Contains(e.Msg, "mtu") {
		t.Errorf("bad mtu: %+v; want code %d", e, CodeInvalidConfig)
	}
	if e, _ := run(`{"cniVersion":"1.1.0","name":"n","type":"twill"}`, append(env, "CNI_ARGS=IP=300.1.1.1")...); e.Code != CodeInvalidEnvironment || !strings.Contains(e.Msg, "IP") {
		t.Errorf("bad CNI_ARGS: %+v; want code %d", e, CodeInvalidEnvironment)
	}
}

// TestBinaryVersionGates execs the plugin as a runtime would with
// configurations of versions that lack the command, or that the plugin
// does not speak: skel answers "incompatible CNI version" (code 1) before
// the plugin does anything, naming the supported versions.
func TestBinaryVersionGates(t *testing.T) {
	bin := pluginBinary(t)
	sock := filepath.Join(t.TempDir(), "nobody.sock")
	for _, tc := range []struct {
		cmd, version string
		details      string // in the error's details, if any
	}{
		{"STATUS", "1.0.0", ""},
		{"GC", "1.0.0", ""},
		{"GC", "0.4.0", ""},
		{"CHECK", "0.3.1", ""},
		{"CHECK", "0.3.0", ""},
		{"ADD", "0.2.0", "1.1.0"},
		{"ADD", "", "1.1.0"},
		{"DEL", "1.2.0", "1.1.0"},
	} {
		t.Run(tc.cmd+"@"+tc.version, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conf := map[string]any{"name": "n", "type": PluginType, "agentSocket": sock, "cni.dev/valid-attachments": []any{}}
			if tc.version != "" {
				conf["cniVersion"] = tc.version
			}
			stdin, err := json.Marshal(conf)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.CommandContext(ctx, bin)
			cmd.Env = []string{"CNI_COMMAND=" + tc.cmd, "CNI_CONTAINERID=twtest", "CNI_NETNS=/var/run/netns/twtest-none",
				"CNI_IFNAME=eth0", "CNI_PATH=" + pluginDir}
			cmd.Stdin = bytes.NewReader(stdin)
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			if err := cmd.Run(); err == nil {
				t.Fatalf("plugin succeeded; stdout %s", stdout.String())
			}
			var e types.Error
			if err := json.Unmarshal(stdout.Bytes(), &e); err != nil {
				t.Fatalf("stdout %q is not a CNI error: %v", stdout.String(), err)
			}
			if e.Code != types.ErrIncompatibleCNIVersion || !strings.Contains(e.Details, tc.details) {
				t.Errorf("got %+v; want code %d with details naming %q", e, types.ErrIncompatibleCNIVersion, tc.details)
			}
		})
	}
}
