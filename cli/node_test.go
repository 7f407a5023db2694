package cli_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/internal/nettest"
)

func TestNodeRunUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"node", "run", "--log-level", "loud"}, "--log-level"},
		{[]string{"node", "run", "--ip-autodetection-method", "nearest"}, "nearest"},
		{[]string{"node", "run", "--ip", "not-an-ip"}, "IPv4 address"},
		{[]string{"node", "run", "--health-addr", "0.0.0.0:9099"}, "loopback"},
		{[]string{"node", "run", "--vxlan-vni", "99999999"}, "VNI"},
		{[]string{"node", "run", "--vtep-mac", "01:00:5e:00:00:01"}, "VTEP MAC"},
		{[]string{"node", "run", "extra"}, "unknown command"},
		{[]string{"node", "fly"}, "unknown command"},
	}
	for _, tc := range cases {
		r := twill(t, "http://127.0.0.1:1", "", tc.args...)
		if r.code != 2 {
			t.Errorf("twill %v: exit %d, want 2 (bad usage)\nstderr: %s", tc.args, r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, tc.want) {
			t.Errorf("twill %v: stderr does not mention %q:\n%s", tc.args, tc.want, r.stderr)
		}
	}
}

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestNodeRunInNamespace runs the real binary against a namespace holding
// one node, checks health, metrics and the kernel, and stops it with
// SIGTERM.
func TestNodeRunInNamespace(t *testing.T) {
	nettest.RequireRoot(t, "ip")
	nsh := nettest.New(t, "cli")
	ns := nsh.Name
	if err := nsh.Veth("eth0", nsh, "twpeer0"); err != nil {
		t.Fatal(err)
	}
	if err := nsh.AddrAdd("eth0", "192.168.3.241/24"); err != nil {
		t.Fatal(err)
	}

	ep := etcdtest.Start(t)
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	health := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, twillBin, "node", "run", "--name", "k8s-master1", "--netns", nsh.Path,
		"--socket", sock, "--health-addr", health, "--metrics-addr", metrics)
	cmd.Env = append(os.Environ(), "TWILL_ETCD_ENDPOINTS="+ep,
		"CALICO_IPV4POOL_CIDR=172.16.0.0/16", "CALICO_IPV4POOL_VXLAN=CrossSubnet", "CALICO_IPV4POOL_IPIP=Never")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	}()

	nettest.Eventually(t, 20*time.Second, 20*time.Millisecond, "/readyz answers 200", func() (bool, string) {
		code, body, err := httpGet("http://" + health + "/readyz")
		return code == http.StatusOK, fmt.Sprintf("%d %q, %v", code, body, err)
	})
	if code, body, err := httpGet("http://" + health + "/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("/healthz = %d %q, %v", code, body, err)
	}
	code, body, err := httpGet("http://" + metrics + "/metrics")
	if err != nil || code != http.StatusOK || !strings.Contains(body, `twill_reconcile_total{result="ok"}`) || !strings.Contains(body, "twill_cni_requests_total") && !strings.Contains(body, "twill_reconcile_duration_seconds_bucket") {
		t.Errorf("/metrics = %d, %v; body lacks the agent's metrics:\n%.2000s", code, err, body)
	}
	routes := ip(t, "-n", ns, "route", "show", "proto", "80")
	if !strings.Contains(routes, "blackhole 172.16.") {
		t.Errorf("no blackhole route for the node's block in the namespace:\n%s", routes)
	}
	link := ip(t, "-n", ns, "-d", "link", "show", "vxlan.calico")
	if !strings.Contains(link, "66:04:84:48:ab:6a") || !strings.Contains(link, "id 4096") || !strings.Contains(link, "mtu 1450") {
		t.Errorf("vxlan.calico is not as configured:\n%s", link)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: %v", sock, err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("twill node run exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("twill node run did not stop within 10s of SIGTERM")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
	// The kernel keeps its state when the agent stops.
	if routes := ip(t, "-n", ns, "route", "show", "proto", "80"); !strings.Contains(routes, "blackhole 172.16.") {
		t.Errorf("routes removed on shutdown:\n%s", routes)
	}
}
