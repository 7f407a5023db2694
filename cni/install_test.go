package cni

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

func TestInstall(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "twill-cni")
	if err := os.WriteFile(src, []byte("plugin v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := InstallOptions{
		BinDir: filepath.Join(root, "opt", "cni", "bin"), ConfDir: filepath.Join(root, "etc", "cni", "net.d"),
		PluginBinary: src, AgentSocket: "/run/twill/a.sock", MTU: 1400,
	}
	got, err := Install(opts)
	if err != nil {
		t.Fatal(err)
	}
	if got.Binary != filepath.Join(opts.BinDir, "twill") || got.Conflist != filepath.Join(opts.ConfDir, DefaultConfName) {
		t.Errorf("installed %+v", got)
	}
	b, err := os.ReadFile(got.Binary)
	if err != nil || string(b) != "plugin v1" {
		t.Errorf("binary holds %q, %v", b, err)
	}
	if fi, err := os.Stat(got.Binary); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("binary mode %v, %v; want 0755", fi.Mode(), err)
	}
	if fi, err := os.Stat(got.Conflist); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("conflist mode %v, %v; want 0644", fi.Mode(), err)
	}

	// The conflist is what a runtime loads, and the plugin accepts its part.
	list, err := libcni.ConfListFromFile(got.Conflist)
	if err != nil {
		t.Fatal(err)
	}
	if list.Name != DefaultNetworkName || list.CNIVersion != DefaultCNIVersion || len(list.Plugins) != 1 {
		t.Fatalf("conflist %+v", list)
	}
	p := list.Plugins[0]
	if p.Network.Type != PluginType || !p.Network.Capabilities["ips"] {
		t.Errorf("plugin entry %+v; want type twill with the ips capability", p.Network)
	}
	// libcni adds the list's name and version when it runs the plugin.
	injected, err := libcni.InjectConf(p, map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := ParseConfig(injected.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if conf.AgentSocket != "/run/twill/a.sock" || conf.MTU != 1400 {
		t.Errorf("plugin configuration %+v", conf)
	}

	// Installing again replaces both files and leaves no temporary file.
	if err := os.WriteFile(src, []byte("plugin v2"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.MTU = 0
	if _, err := Install(opts); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(got.Binary); string(b) != "plugin v2" {
		t.Errorf("reinstalled binary holds %q", b)
	}
	if b, _ := os.ReadFile(got.Conflist); bytes.Contains(b, []byte("mtu")) {
		t.Errorf("reinstalled conflist still sets the MTU: %s", b)
	}
	for _, d := range []string{opts.BinDir, opts.ConfDir} {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 1 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("%s holds %v; want exactly one file", d, names)
		}
	}

	// Installing the installed binary onto itself works.
	opts.PluginBinary = got.Binary
	if _, err := Install(opts); err != nil {
		t.Errorf("install onto itself: %v", err)
	}
	if b, _ := os.ReadFile(got.Binary); string(b) != "plugin v2" {
		t.Errorf("binary installed onto itself holds %q", b)
	}
}

func TestInstallErrors(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "plugin")
	if err := os.WriteFile(src, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin, conf := filepath.Join(root, "bin"), filepath.Join(root, "conf")
	for _, tc := range []struct {
		name     string
		opts     InstallOptions
		mentions string
	}{
		{"no dirs", InstallOptions{PluginBinary: src}, "--cni-bin-dir"},
		{"no plugin binary", InstallOptions{BinDir: bin, ConfDir: conf, PluginBinary: filepath.Join(root, "missing")}, "--plugin-binary"},
		{"default binary missing", InstallOptions{BinDir: bin, ConfDir: conf}, PluginBinaryName},
		{"bad conf name", InstallOptions{BinDir: bin, ConfDir: conf, PluginBinary: src, ConfName: "twill.json"}, ".conflist"},
		{"bad mtu", InstallOptions{BinDir: bin, ConfDir: conf, PluginBinary: src, MTU: 20}, "mtu"},
		{"relative socket", InstallOptions{BinDir: bin, ConfDir: conf, PluginBinary: src, AgentSocket: "a.sock"}, "agentSocket"},
		{"pre-conflist version", InstallOptions{BinDir: bin, ConfDir: conf, PluginBinary: src, CNIVersion: "0.2.0"}, "--cni-version"},
		{"future version", InstallOptions{BinDir: bin, ConfDir: conf, PluginBinary: src, CNIVersion: "1.2.0"}, "1.0.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Install(tc.opts)
			if !errors.Is(err, ErrInstall) {
				t.Fatalf("got %v; want an error wrapping ErrInstall", err)
			}
			if !strings.Contains(err.Error(), tc.mentions) {
				t.Errorf("error %q does not mention %q", err, tc.mentions)
			}
		})
	}
	_, err := Install(InstallOptions{BinDir: bin, ConfDir: conf, PluginBinary: src, CNIVersion: "2.0.0"})
	if !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("install with cniVersion 2.0.0: %v; want an error wrapping ErrUnsupportedVersion", err)
	}
	// Nothing was written by the failed installs.
	for _, d := range []string{bin, conf} {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("%s holds %d files after failed installs", d, len(ents))
		}
	}
}

// TestInstallCNIVersion: the conflist carries the chosen cniVersion
// (DefaultCNIVersion, 1.0.0, when none is chosen), which libcni passes to
// the plugin.
func TestInstallCNIVersion(t *testing.T) {
	if DefaultCNIVersion != "1.0.0" {
		t.Errorf("DefaultCNIVersion is %s; containerd 1.6 needs 1.0.0", DefaultCNIVersion)
	}
	src := filepath.Join(t.TempDir(), "plugin")
	if err := os.WriteFile(src, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ give, want string }{{"", DefaultCNIVersion}, {"1.0.0", "1.0.0"}, {"1.1.0", "1.1.0"}, {"0.3.1", "0.3.1"}} {
		root := t.TempDir()
		got, err := Install(InstallOptions{BinDir: filepath.Join(root, "bin"), ConfDir: filepath.Join(root, "net.d"), PluginBinary: src, CNIVersion: tc.give})
		if err != nil {
			t.Fatalf("install with cniVersion %q: %v", tc.give, err)
		}
		list, err := libcni.ConfListFromFile(got.Conflist)
		if err != nil {
			t.Fatal(err)
		}
		if list.CNIVersion != tc.want {
			t.Errorf("install with cniVersion %q wrote %q; want %q", tc.give, list.CNIVersion, tc.want)
		}
		injected, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
		if err != nil {
			t.Fatal(err)
		}
		if conf, err := ParseConfig(injected.Bytes); err != nil || conf.CNIVersion != tc.want {
			t.Errorf("the plugin reads cniVersion %v, %v; want %s", conf, err, tc.want)
		}
	}
}
