package cni

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"twill.dev/twill/agentapi"
)

// PluginType is the plugin's type in a network configuration, and the
// name of its binary in the CNI bin directory.
const PluginType = "twill"

// Limits of NetConf.MTU (0 means ask the agent).
const (
	MinMTU = 68
	MaxMTU = 65535
)

// NetConf is the plugin's network configuration, read from stdin:
//
//	{"cniVersion": "1.1.0", "name": "twill", "type": "twill",
//	 "agentSocket": "/var/run/twill/agent.sock", "mtu": 0,
//	 "logLevel": "info", "logFile": "/var/log/twill/cni.log",
//	 "capabilities": {"ips": true}}
type NetConf struct {
	types.PluginConf
	// AgentSocket is the node agent's unix socket; default
	// agentapi.DefaultSocket.
	AgentSocket string `json:"agentSocket,omitempty"`
	// MTU is the pod interface's MTU; 0 takes the agent's answer.
	MTU int `json:"mtu,omitempty"`
	// LogLevel is debug, info, warn or error; default info.
	LogLevel string `json:"logLevel,omitempty"`
	// LogFile receives the plugin's logs (appended); default stderr.
	LogFile string `json:"logFile,omitempty"`
	// RuntimeConfig carries the runtime's capability arguments.
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`

	// level is LogLevel parsed.
	level slog.Level
}

// RuntimeConfig holds the capability arguments the plugin understands.
type RuntimeConfig struct {
	// IPs is the "ips" capability: requested addresses, with or without a
	// prefix length. Twill gives one IPv4 address per attachment.
	IPs []string `json:"ips,omitempty"`
}

// ParseConfig decodes and checks a network configuration. Its errors are
// *types.Error: CodeDecode when the JSON cannot be decoded, CodeInvalidConfig
// when a value is unusable. Defaults are filled in.
func ParseConfig(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(CodeDecode, fmt.Sprintf("decode the twill network configuration: %v", err), "")
	}
	bad := func(format string, a ...any) (*NetConf, error) {
		return nil, types.NewError(CodeInvalidConfig, "invalid twill network configuration: "+fmt.Sprintf(format, a...), "")
	}
	if conf.Name == "" {
		return bad(`"name" is missing: give the network a name, e.g. "twill"`)
	}
	if conf.CNIVersion != "" {
		if _, err := version.GreaterThanOrEqualTo(conf.CNIVersion, "0.1.0"); err != nil {
			return bad("cniVersion %q is not a version such as 1.1.0", conf.CNIVersion)
		}
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = agentapi.DefaultSocket
	} else if !filepath.IsAbs(conf.AgentSocket) {
		return bad("agentSocket %q must be an absolute path such as %s", conf.AgentSocket, agentapi.DefaultSocket)
	}
	if conf.MTU != 0 && (conf.MTU < MinMTU || conf.MTU > MaxMTU) {
		return bad("mtu %d is outside %d-%d (0 takes the agent's MTU)", conf.MTU, MinMTU, MaxMTU)
	}
	lvl, err := parseLevel(conf.LogLevel)
	if err != nil {
		return bad("%v", err)
	}
	conf.level = lvl
	if conf.LogFile != "" && !filepath.IsAbs(conf.LogFile) {
		return bad("logFile %q must be an absolute path such as /var/log/twill/cni.log", conf.LogFile)
	}
	if _, err := conf.requestedIP(); err != nil {
		return bad("%v", err)
	}
	for _, a := range conf.ValidAttachments {
		if a.ContainerID == "" || a.IfName == "" {
			return bad("every entry of cni.dev/valid-attachments needs containerID and ifname; got %+v", a)
		}
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(CodeDecode, fmt.Sprintf("decode prevResult: %v", err), "")
		}
	}
	return conf, nil
}

// parseLevel reads a log level; "" is info.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("logLevel %q must be debug, info, warn or error", s)
}

// requestedIP returns the address asked for through runtimeConfig.ips, if
// any.
func (c *NetConf) requestedIP() (netip.Addr, error) {
	var out netip.Addr
	for _, s := range c.RuntimeConfig.IPs {
		a, err := parseAddr(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("runtimeConfig.ips: %w", err)
		}
		if out.IsValid() && out != a {
			return netip.Addr{}, fmt.Errorf("runtimeConfig.ips asks for %s and %s: twill gives one IPv4 address per interface, ask for one", out, a)
		}
		out = a
	}
	return out, nil
}

// parseAddr reads an IPv4 address, with or without a prefix length.
func parseAddr(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil {
		p, perr := netip.ParsePrefix(s)
		if perr != nil {
			return netip.Addr{}, fmt.Errorf("%q is not an address such as 10.244.1.7 or 10.244.1.7/32", s)
		}
		a = p.Addr()
	}
	a = a.Unmap()
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s is not IPv4: twill gives IPv4 addresses only", a)
	}
	return a, nil
}

// Logger returns a logger honouring LogLevel and LogFile, and a function
// that closes the log file. When the file cannot be opened, logs go to
// stderr with a warning.
func (c *NetConf) Logger(stderr io.Writer) (*slog.Logger, func()) {
	var w io.Writer = stderr
	closer := func() {}
	var openErr error
	if c.LogFile != "" {
		if err := os.MkdirAll(filepath.Dir(c.LogFile), 0o755); err != nil {
			openErr = err
		} else if f, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640); err != nil {
			openErr = err
		} else {
			w = f
			closer = func() { f.Close() }
		}
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: c.level})).With("plugin", PluginType)
	if openErr != nil {
		log.Warn("cannot open logFile; logging to stderr", "file", c.LogFile, "err", openErr)
	}
	return log, closer
}

// K8sArgs are the CNI_ARGS the plugin reads; others are ignored.
type K8sArgs struct {
	types.CommonArgs
	// IP requests a specific address (IP=10.244.1.7).
	IP                         types.UnmarshallableString
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // CNI_ARGS key
}

// ParseArgs decodes CNI_ARGS ("K=V;K2=V2"), ignoring unknown keys. Its
// errors are *types.Error with CodeInvalidEnvironment.
func ParseArgs(s string) (K8sArgs, error) {
	a := K8sArgs{}
	a.IgnoreUnknown = true
	if err := types.LoadArgs(s, &a); err != nil {
		return K8sArgs{}, types.NewError(CodeInvalidEnvironment, fmt.Sprintf("CNI_ARGS %q: %v (want K=V pairs separated by ';')", s, err), "")
	}
	if a.IP != "" {
		if _, err := parseAddr(string(a.IP)); err != nil {
			return K8sArgs{}, types.NewError(CodeInvalidEnvironment, fmt.Sprintf("CNI_ARGS IP: %v", err), "")
		}
	}
	return a, nil
}

// requested combines the address asked for in the configuration and in
// CNI_ARGS; asking for two different ones is an error.
func requested(conf *NetConf, args K8sArgs) (netip.Addr, error) {
	fromConf, err := conf.requestedIP()
	if err != nil {
		return netip.Addr{}, types.NewError(CodeInvalidConfig, err.Error(), "")
	}
	if args.IP == "" {
		return fromConf, nil
	}
	fromArgs, err := parseAddr(string(args.IP))
	if err != nil {
		return netip.Addr{}, types.NewError(CodeInvalidEnvironment, fmt.Sprintf("CNI_ARGS IP: %v", err), "")
	}
	if fromConf.IsValid() && fromConf != fromArgs {
		return netip.Addr{}, types.NewError(CodeInvalidConfig, fmt.Sprintf("runtimeConfig.ips asks for %s but CNI_ARGS IP for %s: ask for one address", fromConf, fromArgs), "")
	}
	return fromArgs, nil
}

// hostMAC is the MAC of every host-side veth (as in Calico): pods reach the
// gateway 169.254.1.1 through proxy ARP, so the MAC never needs to differ.
var hostMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// gateway is the address pods route through.
var gateway = netip.MustParseAddr("169.254.1.1")
