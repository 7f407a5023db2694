package manifest_test

// The capability tests run the real agent (agent.Run: address detection,
// registration, the default pool, netlink, nftables, the CNI socket and the
// health server) and the real CNI installer (cni.Install) in a child
// process that holds exactly the Linux capabilities the manifest gives the
// container, as root, the way a container runtime starts it: the child
// drops every other capability from its bounding set and executes itself
// again, so that root's permitted and effective sets are that set. The
// agent's child runs in a throw-away network namespace (nettest, prefix
// "tw") with a veth "eth0" as the node's interface.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"twill.dev/twill/agent"
	"twill.dev/twill/cni"
	"twill.dev/twill/datastore"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/manifest"
	"twill.dev/twill/plan"
)

// Environment of a capability child.
const (
	envChild = "TWILL_MANIFEST_CAP_CHILD" // "agent" or "install-cni"
	envStage = "TWILL_MANIFEST_CAP_STAGE" // "" (drop capabilities) or "run"
	envCaps  = "TWILL_MANIFEST_CAPS"      // capability names, comma-separated
	envNetns = "TWILL_MANIFEST_NETNS"     // the agent's network namespace
	envDir   = "TWILL_MANIFEST_DIR"       // a directory for the child's files
	envWait  = "TWILL_MANIFEST_WAIT"      // how long the agent may take to be ready
)

// capNumbers maps the capability names a manifest may use to their numbers.
var capNumbers = map[string]int{
	"NET_ADMIN": unix.CAP_NET_ADMIN, "NET_RAW": unix.CAP_NET_RAW, "SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "SYS_MODULE": unix.CAP_SYS_MODULE,
	"DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "CHOWN": unix.CAP_CHOWN, "FOWNER": unix.CAP_FOWNER,
	"SYS_PTRACE": unix.CAP_SYS_PTRACE, "BPF": unix.CAP_BPF, "PERFMON": unix.CAP_PERFMON,
}

// containerCaps returns the added capabilities of the manifest's container
// name, and checks that it drops all others.
func containerCaps(t *testing.T, name string) []string {
	t.Helper()
	ds := defaultDaemonSet(t)
	c, ok := findContainer(ds.Spec.Template.Spec, name)
	if !ok {
		t.Fatalf("the DaemonSet has no container %s", name)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Fatalf("container %s does not drop ALL capabilities: %+v", name, sc)
	}
	var out []string
	for _, c := range sc.Capabilities.Add {
		if _, ok := capNumbers[string(c)]; !ok {
			t.Fatalf("container %s adds %s, which this test does not know: add it to capNumbers", name, c)
		}
		out = append(out, string(c))
	}
	return out
}

// TestManifestAgentCapabilities: the real agent becomes ready (it
// programmed its VXLAN device and host firewall, and answers /healthz and
// /readyz on the manifest's health address) with exactly the capabilities
// the manifest gives it, and fails without any one of them, so that each
// is needed.
func TestManifestAgentCapabilities(t *testing.T) {
	nettest.RequireRoot(t)
	caps := containerCaps(t, manifest.AgentContainer)
	if len(caps) == 0 {
		t.Fatal("the agent container adds no capabilities; it cannot program the kernel")
	}
	out, err := runAgentChild(t, caps, 15*time.Second)
	if err != nil {
		t.Fatalf("the agent with capabilities %v: %v\n%s", caps, err, out)
	}
	if !strings.Contains(out, "agent ready") {
		t.Fatalf("the agent with capabilities %v did not report ready:\n%s", caps, out)
	}
	for _, c := range caps {
		less := slices.DeleteFunc(slices.Clone(caps), func(s string) bool { return s == c })
		t.Run("without "+c, func(t *testing.T) {
			out, err := runAgentChild(t, less, 4*time.Second)
			if err == nil {
				t.Fatalf("the agent became ready without %s (capabilities %v): drop %s from the manifest\n%s", c, less, c, out)
			}
			t.Logf("without %s the agent fails, as expected: %v\n%s", c, err, lastLines(out, 6))
		})
	}
}

// TestManifestInstallCNICapabilities: the init container's CNI install
// succeeds, twice (a restart or upgrade rewrites the files in place), with
// the capabilities the manifest gives it (none).
func TestManifestInstallCNICapabilities(t *testing.T) {
	nettest.RequireRoot(t)
	caps := containerCaps(t, manifest.InstallCNIContainer)
	dir := t.TempDir()
	out, err := runChild(t, "install-cni", caps, map[string]string{envDir: dir}, 30*time.Second)
	if err != nil {
		t.Fatalf("install-cni with capabilities %v: %v\n%s", caps, err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "net.d", cni.DefaultConfName))
	if err != nil {
		t.Fatalf("the conflist was not written: %v\n%s", err, out)
	}
	want := fmt.Sprintf(`"cniVersion": %q`, manifest.Default().CNIVersion)
	if !strings.Contains(string(b), want) {
		t.Errorf("the conflist lacks %s:\n%s", want, b)
	}
	if fi, err := os.Stat(filepath.Join(dir, "bin", cni.PluginType)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the plugin binary: %v, %v", fi, err)
	}
}

// runAgentChild runs the agent with caps in a new network namespace.
func runAgentChild(t *testing.T, caps []string, wait time.Duration) (string, error) {
	t.Helper()
	ns := nettest.New(t, "mcap")
	// A veth pair inside the namespace (this kernel may lack dummy links);
	// the peer has no address, so first-found picks eth0.
	if err := ns.H.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "twpeer0"}); err != nil {
		t.Fatalf("add eth0 in %s: %v", ns.Name, err)
	}
	if err := ns.AddrAdd("eth0", "10.99.0.1/24"); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"eth0", "twpeer0"} {
		if err := ns.LinkUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return runChild(t, "agent", caps, map[string]string{envNetns: ns.Path, envDir: t.TempDir(), envWait: wait.String()}, wait+15*time.Second)
}

// runChild runs this test binary as a capability child and returns its
// output.
func runChild(t *testing.T, role string, caps []string, env map[string]string, timeout time.Duration) (string, error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+role, envStage+"=", envCaps+"="+strings.Join(caps, ","))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("the child did not finish within %s: %w", timeout, ctx.Err())
	}
	return string(out), err
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// capChildMain runs a capability child when the environment asks for one:
// first it enters the namespace and drops capabilities and executes itself
// again, then it runs its role.
func capChildMain() (int, bool) {
	role := os.Getenv(envChild)
	if role == "" {
		return 0, false
	}
	if os.Getenv(envStage) == "" {
		if err := dropAndExec(); err != nil {
			fmt.Fprintf(os.Stderr, "capability child: %v\n", err)
			return 3, true
		}
		return 3, true // not reached: Exec replaced the process
	}
	var err error
	if err = checkCaps(); err == nil {
		switch role {
		case "agent":
			err = childAgent()
		case "install-cni":
			err = childInstallCNI()
		default:
			err = fmt.Errorf("unknown role %q", role)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "capability child %s: %v\n", role, err)
		return 1, true
	}
	return 0, true
}

// wantedCaps parses envCaps.
func wantedCaps() (map[int]bool, error) {
	want := map[int]bool{}
	for _, name := range strings.Split(os.Getenv(envCaps), ",") {
		if name == "" {
			continue
		}
		n, ok := capNumbers[name]
		if !ok {
			return nil, fmt.Errorf("unknown capability %q", name)
		}
		want[n] = true
	}
	return want, nil
}

// dropAndExec enters envNetns (when set), drops every capability not
// wanted from the bounding set, and executes this binary again with
// envStage=run, all from one locked thread: the bounding set and the
// network namespace belong to the thread, and execve keeps the calling
// thread's.
func dropAndExec() error {
	runtime.LockOSThread()
	want, err := wantedCaps()
	if err != nil {
		return err
	}
	if p := os.Getenv(envNetns); p != "" {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter %s: %w", p, err)
		}
		f.Close()
	}
	last, err := lastCap()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if want[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// The first occurrence of a variable wins in the new process: replace
	// the stage, do not append it.
	env := slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, envStage+"=") })
	return syscall.Exec(exe, os.Args, append(env, envStage+"=run"))
}

// lastCap is the highest capability number the kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// checkCaps verifies that the process holds exactly the wanted
// capabilities, effective and permitted, as a container's root would.
func checkCaps() error {
	want, err := wantedCaps()
	if err != nil {
		return err
	}
	var mask uint64
	for c := range want {
		mask |= 1 << c
	}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return err
	}
	defer f.Close()
	got := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && (k == "CapEff" || k == "CapPrm") {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			got[k] = n
		}
	}
	if got["CapEff"] != mask || got["CapPrm"] != mask {
		return fmt.Errorf("capabilities: effective %#x, permitted %#x, want %#x (%s)", got["CapEff"], got["CapPrm"], mask, os.Getenv(envCaps))
	}
	return nil
}

// childAgent runs the agent with the manifest's ConfigMap as its
// environment until it is ready (or fails, or envWait passes), then checks
// what it programmed and stops it.
func childAgent() error {
	wait, err := time.ParseDuration(os.Getenv(envWait))
	if err != nil {
		return err
	}
	data, err := manifest.Default().ConfigData()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg := agent.Config{
		NodeName:         "twm-node",
		AutodetectMethod: data["IP_AUTODETECTION_METHOD"],
		SocketPath:       filepath.Join(os.Getenv(envDir), "agent.sock"),
		HealthAddr:       manifest.HealthAddr,
		Getenv:           func(k string) string { return data[k] },
		Logger:           log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, datastore.NewFake(), cfg) }()
	stop := func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("the agent did not stop within 10s")
		}
	}
	hc := &http.Client{Timeout: time.Second}
	get := func(p string) (int, string) {
		resp, err := hc.Get("http://" + manifest.HealthAddr + p)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	deadline := time.Now().Add(wait)
	last := ""
	for {
		select {
		case err := <-done:
			return fmt.Errorf("the agent stopped: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
		code, body := get("/readyz")
		if code == http.StatusOK {
			break
		}
		last = fmt.Sprintf("/readyz: %d %s", code, body)
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("not ready within %s: %s", wait, last)
		}
	}
	var errs []error
	if code, body := get("/healthz"); code != http.StatusOK {
		errs = append(errs, fmt.Errorf("/healthz: %d %s", code, body))
	}
	if l, err := netlink.LinkByName(plan.DefaultVXLANDevice); err != nil {
		errs = append(errs, fmt.Errorf("the VXLAN device %s: %w", plan.DefaultVXLANDevice, err))
	} else if l.Type() != "vxlan" {
		errs = append(errs, fmt.Errorf("%s is a %s device, not vxlan", plan.DefaultVXLANDevice, l.Type()))
	}
	if c, err := nftables.New(); err != nil {
		errs = append(errs, err)
	} else if tables, err := c.ListTables(); err != nil || len(tables) == 0 {
		errs = append(errs, fmt.Errorf("no nftables table after the agent's first apply (%d tables, %v)", len(tables), err))
	}
	if err := stop(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Println("agent ready")
	return nil
}

// childInstallCNI installs the plugin (this binary stands in for it) and
// its configuration twice into envDir, as the init container does on a
// first start and on an upgrade.
func childInstallCNI() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir := os.Getenv(envDir)
	o := cni.InstallOptions{BinDir: filepath.Join(dir, "bin"), ConfDir: filepath.Join(dir, "net.d"),
		PluginBinary: exe, CNIVersion: manifest.Default().CNIVersion}
	for range 2 {
		if _, err := cni.Install(o); err != nil {
			return err
		}
	}
	return nil
}
