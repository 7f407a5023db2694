package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"twill.dev/twill/agentapi"
)

// agentProxy stands between the plugin and the agent, rewriting the JSON
// of allocate requests and answers, to play agents of other versions. It
// counts the requests it forwards by "METHOD path".
type agentProxy struct {
	sock      string
	rewriteRq func(map[string]any)
	rewriteRs func(map[string]any)

	mu   sync.Mutex
	seen map[string]int
}

func newAgentProxy(t *testing.T, agentSock string, rq, rs func(map[string]any)) *agentProxy {
	t.Helper()
	dir, err := os.MkdirTemp("", "twcnp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &agentProxy{sock: filepath.Join(dir, "proxy.sock"), rewriteRq: rq, rewriteRs: rs, seen: map[string]int{}}
	l, err := net.Listen("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	upstream := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", agentSock)
	}}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.EscapedPath()
		p.mu.Lock()
		key := r.Method + " " + path
		if strings.HasPrefix(path, agentapi.EndpointsPath) {
			key = r.Method + " " + agentapi.EndpointsPath
		}
		p.seen[key]++
		p.mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		allocate := r.Method == http.MethodPost && path == agentapi.AllocatePath
		if allocate {
			body = rewriteJSON(t, body, p.rewriteRq)
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://agent"+path, bytes.NewReader(body))
		resp, err := upstream.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if allocate && resp.StatusCode == http.StatusOK {
			out = rewriteJSON(t, out, p.rewriteRs)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(resp.StatusCode)
		w.Write(out)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return p
}

func rewriteJSON(t *testing.T, b []byte, f func(map[string]any)) []byte {
	if f == nil {
		return b
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Errorf("proxy: decode %s: %v", b, err)
		return b
	}
	f(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Errorf("proxy: encode: %v", err)
	}
	return out
}

func (p *agentProxy) count(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[key]
}

// via returns a configuration list like the node's, pointing at the proxy.
func (n *testNode) via(t *testing.T, p *agentProxy) *libcni.NetworkConfigList {
	t.Helper()
	dir := t.TempDir()
	inst, err := Install(InstallOptions{
		BinDir: filepath.Join(dir, "bin"), ConfDir: filepath.Join(dir, "net.d"), PluginBinary: pluginBinary(t),
		AgentSocket: p.sock, LogLevel: "debug", LogFile: n.logFile, CNIVersion: n.opts.cniVersion,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromFile(inst.Conflist)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestAddWithOlderAgent: an agent that predates recording the endpoint
// with the allocation ignores the request's record and does not say
// "recorded"; the plugin then records the endpoint itself, and the
// attachment is whole (CHECK passes, DEL removes everything).
func TestAddWithOlderAgent(t *testing.T) {
	n := newNode(t, nodeOpts{})
	proxy := newAgentProxy(t, n.sock,
		func(m map[string]any) { delete(m, "record") },
		func(m map[string]any) { delete(m, "recording") })
	n.list = n.via(t, proxy)
	p := n.newPod(t)
	res := n.mustAdd(t, p)
	if got := proxy.count("PUT " + agentapi.EndpointsPath); got != 1 {
		t.Errorf("the plugin PUT the endpoint %d times; want once, as the agent did not record it", got)
	}
	st, err := n.client.GetEndpoint(context.Background(), p.handle)
	if err != nil || !st.Allocated || st.Endpoint == nil || st.Endpoint.HostIface != p.veth || len(st.Endpoint.Addresses) != 1 ||
		st.Endpoint.Addresses[0] != podAddr(t, res).String()+"/32" {
		t.Errorf("agent's endpoint %+v (%+v), %v", st, st.Endpoint, err)
	}
	if err := n.check(p); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := n.del(p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	n.assertGone(t, p)
}

// TestAddRecordedWithAllocation: the current agent records the endpoint
// with the allocation, so ADD makes no PUT but one sync, which waits for
// the record before the route is added.
func TestAddRecordedWithAllocation(t *testing.T) {
	n := newNode(t, nodeOpts{})
	proxy := newAgentProxy(t, n.sock, nil, nil)
	n.list = n.via(t, proxy)
	p := n.newPod(t)
	n.mustAdd(t, p)
	if got := proxy.count("PUT " + agentapi.EndpointsPath); got != 0 {
		t.Errorf("the plugin PUT the endpoint %d times; the agent recorded it", got)
	}
	if got := proxy.count("POST " + agentapi.SyncPath); got != 1 {
		t.Errorf("the plugin synced %d times; want once", got)
	}
	if err := n.check(p); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := n.del(p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	n.assertGone(t, p)
}

// TestAddFailureLeavesNoRecord: an ADD that fails after the agent recorded
// the endpoint with the allocation removes the record with the address.
func TestAddFailureLeavesNoRecord(t *testing.T) {
	n := newNode(t, nodeOpts{})
	p := n.newPod(t)
	ipCmd(t, "-n", p.nsName, "link", "add", "eth0", "type", "veth", "peer", "name", "tweth0x")
	if _, err := n.add(p); err == nil {
		t.Fatal("ADD into a pod with an eth0 succeeded")
	}
	st, err := n.client.GetEndpoint(context.Background(), p.handle)
	if err != nil || st.Allocated || st.Endpoint != nil {
		t.Errorf("after the failed ADD the agent holds %+v (%+v), %v; want nothing", st, st.Endpoint, err)
	}
}
