package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"twill.dev/twill/cni"
)

// ErrNoPlugin: the twill CNI plugin binary is not where the lab looks.
var ErrNoPlugin = errors.New("the twill CNI plugin binary is missing")

// CNIPodAdder plumbs lab pods with the twill CNI plugin through libcni, as
// a container runtime does: it installs the plugin and one configuration
// list per node (each naming that node's agent socket) below the pod work
// directory, and runs the plugin inside the node's namespace, with
// CNI_NETNS the pod's, so that the host side of the veth lands on the node.
type CNIPodAdder struct {
	plugin string

	mu    sync.Mutex
	lists map[string]*libcni.NetworkConfigList // by node
}

// NewCNIPodAdder returns the PodAdder `twill lab up` uses: the plugin is
// opts.CNIPlugin, else twill-cni next to opts.Exe (or the running binary).
func NewCNIPodAdder(opts Options) (PodAdder, error) {
	plugin := opts.CNIPlugin
	if plugin == "" {
		exe := opts.Exe
		if exe == "" {
			var err error
			if exe, err = os.Executable(); err != nil {
				return nil, fmt.Errorf("find the twill binary: %w", err)
			}
		}
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		plugin = filepath.Join(filepath.Dir(exe), cni.PluginBinaryName)
	}
	if fi, err := os.Stat(plugin); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s (build it with `go build -o %s ./cmd/twill-cni`, or stop before the pods with --until agents)",
			ErrNoPlugin, plugin, plugin)
	}
	return &CNIPodAdder{plugin: plugin, lists: map[string]*libcni.NetworkConfigList{}}, nil
}

// nodeDir is where a node's CNI files live.
func (a *CNIPodAdder) dirs(p PodSpec) (bin, conf, cache string) {
	return filepath.Join(p.WorkDir, "bin"), filepath.Join(p.WorkDir, p.Node, "net.d"), filepath.Join(p.WorkDir, p.Node, "cache")
}

// list installs the plugin and the node's configuration list on first use.
func (a *CNIPodAdder) list(p PodSpec) (*libcni.NetworkConfigList, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l, ok := a.lists[p.Node]; ok {
		return l, nil
	}
	bin, conf, _ := a.dirs(p)
	inst, err := cni.Install(cni.InstallOptions{
		BinDir: bin, ConfDir: conf, PluginBinary: a.plugin,
		AgentSocket: p.AgentSocket, LogLevel: "debug", LogFile: filepath.Join(p.WorkDir, p.Node, "cni.log"),
	})
	if err != nil {
		return nil, fmt.Errorf("install the CNI plugin for %s: %w", p.Node, err)
	}
	l, err := libcni.ConfListFromFile(inst.Conflist)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", inst.Conflist, err)
	}
	a.lists[p.Node] = l
	return l, nil
}

func (a *CNIPodAdder) config(p PodSpec) *libcni.CNIConfig {
	bin, _, cache := a.dirs(p)
	return libcni.NewCNIConfigWithCacheDir([]string{bin}, cache, &nsExec{netns: p.NodeNetnsPath})
}

func runtimeConf(p PodSpec) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NetnsPath,
		IfName:      p.IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "true"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		},
	}
	if p.PodUID != "" {
		rt.Args = append(rt.Args, [2]string{"K8S_POD_UID", p.PodUID})
	}
	if p.IP.IsValid() {
		rt.CapabilityArgs = map[string]any{"ips": []string{p.IP.String() + "/32"}}
	}
	return rt
}

// AddPod runs CNI ADD for the pod.
func (a *CNIPodAdder) AddPod(ctx context.Context, p PodSpec) (PodResult, error) {
	l, err := a.list(p)
	if err != nil {
		return PodResult{}, err
	}
	res, err := a.config(p).AddNetworkList(ctx, l, runtimeConf(p))
	if err != nil {
		return PodResult{}, fmt.Errorf("CNI ADD: %w", err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return PodResult{}, fmt.Errorf("CNI ADD result: %w", err)
	}
	var out PodResult
	for _, ip := range cur.IPs {
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if ok && addr.Unmap().Is4() {
			ones, _ := ip.Address.Mask.Size()
			out.Address = netip.PrefixFrom(addr.Unmap(), ones)
			break
		}
	}
	for _, itf := range cur.Interfaces {
		if itf.Sandbox == "" {
			out.HostIface = itf.Name
		}
	}
	if !out.Address.IsValid() {
		return PodResult{}, fmt.Errorf("CNI ADD returned no IPv4 address: %v", cur)
	}
	return out, nil
}

// DelPod runs CNI DEL for the pod.
func (a *CNIPodAdder) DelPod(ctx context.Context, p PodSpec) error {
	if _, err := os.Stat(p.WorkDir); errors.Is(err, fs.ErrNotExist) {
		return nil // nothing was ever installed
	}
	l, err := a.list(p)
	if err != nil {
		return err
	}
	if err := a.config(p).DelNetworkList(ctx, l, runtimeConf(p)); err != nil {
		return fmt.Errorf("CNI DEL: %w", err)
	}
	return nil
}

// nsExec runs CNI plugins from a thread inside a node's namespace, so that
// the plugin's "host" is the node.
type nsExec struct {
	raw   invoke.RawExec
	netns string
}

func (e *nsExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	var out []byte
	var perr error
	if err := inNetns(e.netns, func() error {
		out, perr = e.raw.ExecPlugin(ctx, pluginPath, stdinData, environ)
		return nil
	}); err != nil {
		return nil, err
	}
	return out, perr
}

func (e *nsExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *nsExec) Decode(b []byte) (version.PluginInfo, error) {
	var d version.PluginDecoder
	return d.Decode(b)
}
