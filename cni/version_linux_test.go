package cni

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// recordingExec runs plugins as libcni does and keeps, per CNI_COMMAND,
// the last configuration sent and the plugin's stdout: libcni converts
// what it reads, so a result's exact bytes are only seen here.
type recordingExec struct {
	invoke.Exec

	mu     sync.Mutex
	stdin  map[string][]byte
	stdout map[string][]byte
}

func newRecordingExec() *recordingExec {
	return &recordingExec{
		Exec:  &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}},
		stdin: map[string][]byte{}, stdout: map[string][]byte{},
	}
}

func (r *recordingExec) ExecPlugin(ctx context.Context, path string, stdin []byte, env []string) ([]byte, error) {
	out, err := r.Exec.ExecPlugin(ctx, path, stdin, env)
	cmd := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "CNI_COMMAND="); ok {
			cmd = v
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stdin[cmd], r.stdout[cmd] = stdin, out
	return out, err
}

func (r *recordingExec) last(t *testing.T, cmd string) (stdin, stdout []byte) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok := r.stdin[cmd]
	if !ok {
		t.Fatalf("libcni never ran %s", cmd)
	}
	return in, r.stdout[cmd]
}

// listOf installs the node's configuration list again with cniVersion v,
// as `twill install-cni --cni-version v` does, and loads it.
func (n *testNode) listOf(t *testing.T, v string) *libcni.NetworkConfigList {
	t.Helper()
	dir := t.TempDir()
	inst, err := Install(InstallOptions{
		BinDir: filepath.Join(dir, "bin"), ConfDir: filepath.Join(dir, "net.d"), PluginBinary: pluginBinary(t),
		AgentSocket: n.sock, LogLevel: "debug", LogFile: n.logFile, CNIVersion: v,
	})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromFile(inst.Conflist)
	if err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != v {
		t.Fatalf("installed conflist has cniVersion %s; want %s", list.CNIVersion, v)
	}
	return list
}

// execPlugin runs the plugin of list directly (libcni sends neither CHECK
// before 0.4.0 nor STATUS and GC before 1.1.0), with the list's name and
// version injected as libcni does, plus extra keys.
func (n *testNode) execPlugin(t *testing.T, list *libcni.NetworkConfigList, cmd string, rt *libcni.RuntimeConf, extra map[string]any) error {
	t.Helper()
	inject := map[string]any{"name": list.Name, "cniVersion": list.CNIVersion}
	for k, v := range extra {
		inject[k] = v
	}
	conf, err := libcni.InjectConf(list.Plugins[0], inject)
	if err != nil {
		t.Fatal(err)
	}
	args := &invoke.Args{Command: cmd, Path: strings.Join(n.cni.Path, string(os.PathListSeparator))}
	if rt != nil {
		args.ContainerID, args.NetNS, args.IfName, args.PluginArgs = rt.ContainerID, rt.NetNS, rt.IfName, rt.Args
	}
	return n.do(func(ctx context.Context) error {
		path, err := invoke.FindInPath(PluginType, n.cni.Path)
		if err != nil {
			return err
		}
		return invoke.ExecPluginWithoutResult(ctx, path, conf.Bytes, args, nil)
	})
}

// TestSpecVersions runs ADD, CHECK and DEL through libcni, against the real
// agent, with a configuration list of every supported CNI version: the
// plugin answers ADD in the list's version, byte for byte, and CHECK and
// DEL read the prevResult of that version.
func TestSpecVersions(t *testing.T) {
	n := newNode(t, nodeOpts{})
	for _, v := range SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			list := n.listOf(t, v)
			rec := newRecordingExec()
			c := libcni.NewCNIConfigWithCacheDir(n.cni.Path, filepath.Join(t.TempDir(), "cache"), rec)
			p := n.newPod(t)
			var res types.Result
			err := n.do(func(ctx context.Context) error {
				var err error
				res, err = c.AddNetworkList(ctx, list, p.rt)
				return err
			})
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Errorf("libcni's result has version %s; want %s", res.Version(), v)
			}
			stdin, stdout := rec.last(t, "ADD")
			var sent struct {
				CNIVersion string `json:"cniVersion"`
			}
			if err := json.Unmarshal(stdin, &sent); err != nil || sent.CNIVersion != v {
				t.Errorf("libcni sent cniVersion %q (%v); want %s", sent.CNIVersion, err, v)
			}
			addr := checkResultJSON(t, v, stdout)
			if held := n.handleAddrs(t, p.handle); len(held) != 1 || held[0] != addr {
				t.Errorf("the agent holds %v for the pod; the result says %s", held, addr)
			}
			if _, err := n.h.LinkByName(p.veth); err != nil {
				t.Errorf("host veth: %v", err)
			}

			checkOK, err := version.GreaterThanOrEqualTo(v, MinCheckVersion)
			if err != nil {
				t.Fatal(err)
			}
			if checkOK {
				if err := n.do(func(ctx context.Context) error { return c.CheckNetworkList(ctx, list, p.rt) }); err != nil {
					t.Errorf("CHECK: %v", err)
				}
				in, _ := rec.last(t, "CHECK")
				var prev struct {
					PrevResult struct {
						CNIVersion string `json:"cniVersion"`
					} `json:"prevResult"`
				}
				if err := json.Unmarshal(in, &prev); err != nil || prev.PrevResult.CNIVersion != v {
					t.Errorf("CHECK's prevResult has cniVersion %q (%v); want %s", prev.PrevResult.CNIVersion, err, v)
				}
			} else {
				// CHECK does not exist before 0.4.0: libcni does not send
				// it, and the plugin refuses it with code 1.
				if err := n.do(func(ctx context.Context) error { return c.CheckNetworkList(ctx, list, p.rt) }); err == nil {
					t.Errorf("libcni ran CHECK of a %s list", v)
				}
				err := n.execPlugin(t, list, "CHECK", p.rt, map[string]any{"prevResult": res})
				if err == nil || cniCode(t, err) != types.ErrIncompatibleCNIVersion {
					t.Errorf("CHECK of a %s configuration: %v; want code %d", v, err, types.ErrIncompatibleCNIVersion)
				}
			}

			if err := n.do(func(ctx context.Context) error { return c.DelNetworkList(ctx, list, p.rt) }); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			n.assertGone(t, p)
		})
	}
}

// TestStatusGCNeed110: STATUS and GC on a configuration older than 1.1.0
// (here the default 1.0.0) get the "incompatible CNI version" error, and
// GC releases nothing.
func TestStatusGCNeed110(t *testing.T) {
	n := newNode(t, nodeOpts{})
	if n.list.CNIVersion != "1.0.0" {
		t.Fatalf("the node's list has cniVersion %s; this test wants 1.0.0", n.list.CNIVersion)
	}
	p := n.newPod(t)
	addr := podAddr(t, n.mustAdd(t, p))

	err := n.execPlugin(t, n.list, "STATUS", nil, nil)
	if err == nil || cniCode(t, err) != types.ErrIncompatibleCNIVersion {
		t.Errorf("STATUS of a 1.0.0 configuration: %v; want code %d", err, types.ErrIncompatibleCNIVersion)
	}
	// No attachment valid: a GC that ran would release the pod's address.
	err = n.execPlugin(t, n.list, "GC", nil, map[string]any{"cni.dev/valid-attachments": []types.GCAttachment{}})
	if err == nil || cniCode(t, err) != types.ErrIncompatibleCNIVersion {
		t.Errorf("GC of a 1.0.0 configuration: %v; want code %d", err, types.ErrIncompatibleCNIVersion)
	}
	if held := n.handleAddrs(t, p.handle); len(held) != 1 || held[0] != addr {
		t.Errorf("after the refused GC the pod holds %v; want %s", held, addr)
	}
	if err := n.check(p); err != nil {
		t.Errorf("CHECK after the refused GC: %v", err)
	}

	// The same STATUS with a 1.1.0 configuration reaches the ready agent.
	if err := n.execPlugin(t, n.listOf(t, "1.1.0"), "STATUS", nil, nil); err != nil {
		t.Errorf("STATUS of a 1.1.0 configuration: %v", err)
	}
	if err := n.del(p); err != nil {
		t.Fatal(err)
	}
}
