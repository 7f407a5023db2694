package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/internal/atomicfile"
)

// Defaults of InstallOptions.
const (
	DefaultConfName    = "10-twill.conflist"
	DefaultNetworkName = "twill"
	// DefaultCNIVersion is the cniVersion Install writes by default:
	// 1.0.0, the newest that containerd 1.6 (Debian 12's) accepts. Its CNI
	// library refuses a 1.1.0 result, after the plugin attached the pod;
	// Calico writes an older version for the same reason. 1.0.0 lacks
	// STATUS and GC only.
	DefaultCNIVersion = "1.0.0"
	// PluginBinaryName is the plugin's binary next to the twill binary.
	PluginBinaryName = "twill-cni"
)

// ErrInstall is wrapped by Install's errors.
var ErrInstall = errors.New("install the twill CNI plugin")

// InstallOptions say where Install writes the plugin and its configuration.
type InstallOptions struct {
	// BinDir receives the plugin binary, named PluginType ("twill"), e.g.
	// /opt/cni/bin. Required.
	BinDir string
	// ConfDir receives the network configuration list, e.g. /etc/cni/net.d.
	// Required.
	ConfDir string
	// PluginBinary is the binary to install; default PluginBinaryName next
	// to the running executable.
	PluginBinary string
	// ConfName is the conflist's file name; default DefaultConfName.
	ConfName string
	// NetworkName is the network's name; default DefaultNetworkName.
	NetworkName string
	// CNIVersion is the conflist's cniVersion, one of SupportedVersions;
	// default DefaultCNIVersion. The runtime sends it to the plugin, which
	// answers in it: it must be one the runtime's CNI library reads (1.0.0
	// for containerd 1.6 and 1.7; 1.1.0, which adds STATUS and GC, needs
	// libcni 1.2 or later, as in containerd 2.0).
	CNIVersion string
	// AgentSocket, MTU, LogLevel and LogFile go into the plugin's
	// configuration (see NetConf); empty or zero values are left out.
	AgentSocket string
	MTU         int
	LogLevel    string
	LogFile     string
}

// Installed says what Install wrote.
type Installed struct {
	Binary   string
	Conflist string
}

// Install writes the plugin binary (mode 0755) into BinDir and a conflist
// (mode 0644) into ConfDir. Each file is written to a temporary file in its
// directory and renamed into place, so that a runtime reading the directory
// never sees a partial file. The plugin's configuration is checked with
// ParseConfig before anything is written.
func Install(opts InstallOptions) (Installed, error) {
	bad := func(format string, a ...any) (Installed, error) {
		return Installed{}, fmt.Errorf("%w: "+format, append([]any{ErrInstall}, a...)...)
	}
	if opts.BinDir == "" || opts.ConfDir == "" {
		return bad("give both the CNI bin directory (--cni-bin-dir, e.g. /opt/cni/bin) and the CNI config directory (--cni-conf-dir, e.g. /etc/cni/net.d)")
	}
	if opts.ConfName == "" {
		opts.ConfName = DefaultConfName
	}
	if strings.ContainsRune(opts.ConfName, filepath.Separator) || !strings.HasSuffix(opts.ConfName, ".conflist") {
		return bad("--conf-name %q must be a file name ending in .conflist, e.g. %s", opts.ConfName, DefaultConfName)
	}
	if opts.NetworkName == "" {
		opts.NetworkName = DefaultNetworkName
	}
	if opts.CNIVersion == "" {
		opts.CNIVersion = DefaultCNIVersion
	}
	if err := CheckVersion(opts.CNIVersion); err != nil {
		return Installed{}, fmt.Errorf("%w: --cni-version: %w", ErrInstall, err)
	}
	if opts.PluginBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return bad("find the running executable to locate %s next to it (use --plugin-binary): %v", PluginBinaryName, err)
		}
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		opts.PluginBinary = filepath.Join(filepath.Dir(exe), PluginBinaryName)
	}
	conf, err := Conflist(opts)
	if err != nil {
		return bad("%v", err)
	}
	src, err := os.Open(opts.PluginBinary)
	if err != nil {
		return bad("open the plugin binary (build it with `go build -o %s ./cmd/twill-cni`, or give --plugin-binary): %v", opts.PluginBinary, err)
	}
	defer src.Close()
	if fi, err := src.Stat(); err != nil || !fi.Mode().IsRegular() {
		return bad("the plugin binary %s is not a regular file", opts.PluginBinary)
	}
	for _, d := range []string{opts.BinDir, opts.ConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return bad("create %s: %v", d, err)
		}
	}
	out := Installed{Binary: filepath.Join(opts.BinDir, PluginType), Conflist: filepath.Join(opts.ConfDir, opts.ConfName)}
	// Installing a binary onto itself leaves nothing to copy.
	if !same(opts.PluginBinary, out.Binary) {
		if err := atomicfile.Write(out.Binary, 0o755, func(w io.Writer) error {
			_, err := io.Copy(w, src)
			return err
		}); err != nil {
			return bad("%v", err)
		}
	}
	if err := atomicfile.Write(out.Conflist, 0o644, func(w io.Writer) error {
		_, err := w.Write(conf)
		return err
	}); err != nil {
		return bad("%v", err)
	}
	return out, nil
}

// same reports whether two paths name the same existing file.
func same(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// Conflist returns the network configuration list Install writes. It
// checks the version with CheckVersion and the plugin's configuration
// with ParseConfig.
func Conflist(opts InstallOptions) ([]byte, error) {
	name := opts.NetworkName
	if name == "" {
		name = DefaultNetworkName
	}
	cniVersion := opts.CNIVersion
	if cniVersion == "" {
		cniVersion = DefaultCNIVersion
	}
	if err := CheckVersion(cniVersion); err != nil {
		return nil, err
	}
	plugin := map[string]any{
		"type":         PluginType,
		"capabilities": map[string]bool{"ips": true},
	}
	if opts.AgentSocket != "" && opts.AgentSocket != agentapi.DefaultSocket {
		plugin["agentSocket"] = opts.AgentSocket
	}
	if opts.MTU != 0 {
		plugin["mtu"] = opts.MTU
	}
	if opts.LogLevel != "" {
		plugin["logLevel"] = opts.LogLevel
	}
	if opts.LogFile != "" {
		plugin["logFile"] = opts.LogFile
	}
	// Check the plugin's part as the plugin will read it.
	check := map[string]any{"cniVersion": cniVersion, "name": name}
	for k, v := range plugin {
		check[k] = v
	}
	b, err := json.Marshal(check)
	if err != nil {
		return nil, err
	}
	if _, err := ParseConfig(b); err != nil {
		return nil, err
	}
	list := map[string]any{
		"cniVersion": cniVersion,
		"name":       name,
		"plugins":    []any{plugin},
	}
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
