package lab

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/kube/apiserver"
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/internal/syncbuf"
	"twill.dev/twill/ipam"
	"twill.dev/twill/plan"
)

// requireKubeBinaries returns the kubectl binary and checks that
// kube-apiserver is there too (scripts/kube-build.sh builds both); without
// them the test fails under CI=true and is skipped otherwise.
func requireKubeBinaries(t *testing.T) (kubectl string) {
	t.Helper()
	var missing []error
	for _, name := range []string{"kube-apiserver", "kubectl"} {
		p, err := apiserver.FindBinary(name)
		if err != nil {
			missing = append(missing, err)
		}
		if name == "kubectl" {
			kubectl = p
		}
	}
	if err := errors.Join(missing...); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: the kubernetes lab needs the Kubernetes binaries: %v", err)
		}
		t.Skip(err)
	}
	return kubectl
}

// kubeLabOptions is podLabOptions on the kubernetes datastore.
func kubeLabOptions(t *testing.T) (opts Options, kubectl string) {
	t.Helper()
	kubectl = requireKubeBinaries(t)
	opts = podLabOptions(t)
	opts.Datastore = open.TypeKubernetes
	return opts, kubectl
}

// runKubectl runs the built kubectl against the lab's apiserver, with
// KUBECONFIG as a person would set it.
func runKubectl(ctx context.Context, t *testing.T, kubectl, kubeconfig string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectl, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("KUBECONFIG=%s kubectl %s: %v\n%s", kubeconfig, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// specLines returns the lines of the "Spec:" section of `kubectl
// describe` output, trimmed, with runs of spaces folded into one.
func specLines(out string) []string {
	var lines []string
	in := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case l == "Spec:":
			in = true
		case in && strings.HasPrefix(l, " "):
			lines = append(lines, strings.Join(strings.Fields(l), " "))
		case in:
			return lines
		}
	}
	return lines
}

// allocated maps every allocated address of the lab's IPAM blocks to its
// handle.
func allocated(ctx context.Context, t *testing.T, s datastore.Store) map[netip.Addr]string {
	t.Helper()
	all, err := ipam.New(s, ipam.WithCacheTTL(0)).AllAllocations(ctx)
	if err != nil {
		t.Fatalf("read the IPAM blocks: %v", err)
	}
	out := map[netip.Addr]string{}
	for _, a := range all {
		out[a.IP] = a.Handle
	}
	return out
}

// hasRoute reports whether the namespace's kernel holds Twill's route to dst.
func hasRoute(t *testing.T, ns, dst string) bool {
	t.Helper()
	rs, err := kernelRoutes(ns)
	if err != nil {
		t.Fatalf("routes of %s: %v", ns, err)
	}
	return slices.ContainsFunc(rs, func(r plan.Route) bool { return r.Dst.String() == dst })
}

// labProcesses lists the processes whose command line mentions dir (the
// lab's state directory): the agents, etcd, and kube-apiserver, whose
// certificates live there.
func labProcesses(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		if state, _, err := procStat(pid); err == nil && state != 'Z' {
			out = append(out, e.Name()+" "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// TestKubeEndToEndSeed builds the seed cluster on the kubernetes datastore
// (the lab's etcd, a real kube-apiserver on it, four agents with
// --datastore kubernetes, thirteen pods with v1.Pod objects) and checks
// everything TestEndToEndSeed checks, and then: kubectl sees the pool as
// the seed has it and the nodes, through the kubeconfig `up` printed; the
// status names the datastore; a v1.Pod deleted through the API, with no
// CNI DEL, has its address released by the IPAM garbage collector while the
// other pods keep theirs; a v1.Node deleted through the API takes its
// block's routes off every peer within 2 s; Down leaves nothing.
func TestKubeEndToEndSeed(t *testing.T) {
	opts, kubectl := kubeLabOptions(t)
	var out syncbuf.Buffer
	opts.Out = io.MultiWriter(opts.Out, &out)
	seed := loadSeedObserved(t)
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	before := rootState(t)
	linksBefore := rootLinks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := Up(ctx, topo, opts); err != nil {
		t.Fatalf("Up: %v", err)
	}
	recorded, err := LoadState(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	kc := recorded.Kubeconfig
	if recorded.Datastore != open.TypeKubernetes || kc != filepath.Join(opts.StateDir, "kube", "kubeconfig") {
		t.Fatalf("state: datastore %q, kubeconfig %q", recorded.Datastore, kc)
	}

	// Up printed the kubeconfig with a kubectl hint.
	hint := regexp.MustCompile(`KUBECONFIG=(\S+) kubectl get ippools,nodes`).FindStringSubmatch(out.String())
	if hint == nil || hint[1] != kc {
		t.Errorf("up did not print the hint KUBECONFIG=%s kubectl get ippools,nodes; it printed:\n%s", kc, out.String())
	}

	// The status says which datastore the lab runs, and that its
	// processes run.
	st, err := Status(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if want := "kubernetes (kubeconfig " + kc + ")"; st.Datastore != want {
		t.Errorf("status: datastore %q; want %q", st.Datastore, want)
	}
	var statusText bytes.Buffer
	st.WriteText(&statusText)
	for _, want := range []string{"Datastore: kubernetes (kubeconfig " + kc + ")", "kube-apiserver: " + recorded.APIServer + " pid"} {
		if !strings.Contains(statusText.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, statusText.String())
		}
	}
	if st.Etcd == nil || !st.Etcd.Alive || st.APIServer == nil || !st.APIServer.Alive || st.APIServer.Name != procKubeAPIServer || len(st.Pods) != 13 {
		t.Errorf("status: etcd %+v, apiserver %+v, %d pods", st.Etcd, st.APIServer, len(st.Pods))
	}
	for _, m := range st.Members {
		if m.Agent == nil || !m.Agent.Alive || !m.Ready {
			t.Errorf("status: %s agent %+v ready %v (%s)", m.Name, m.Agent, m.Ready, m.Reason)
		}
	}

	// Everything the etcd lab shows, the kubernetes lab shows too.
	checkSeedCluster(ctx, t, opts, seed)

	// kubectl, through the printed kubeconfig: the pool as the seed has
	// it, and the nodes.
	desc := runKubectl(ctx, t, kubectl, kc, "describe", "ippool", "default-ipv4-ippool")
	wantSpec := []string{"Allowed Uses:", "Workload", "Tunnel", "Block Size: 26", "Cidr: 172.16.0.0/16", "Ipip Mode: Never",
		"Nat Outgoing: true", "Node Selector: all()", "Vxlan Mode: CrossSubnet"}
	if got := specLines(desc); !slices.Equal(got, wantSpec) {
		t.Errorf("kubectl describe ippool default-ipv4-ippool: Spec\n got  %q\n want %q\n%s", got, wantSpec, desc)
	}
	get := runKubectl(ctx, t, kubectl, kc, "get", "ippools,nodes")
	for _, want := range []string{"ippool.twill.dev/default-ipv4-ippool", "172.16.0.0/16", "node/k8s-master1", "node/k8s-master2", "node/k8s-master3", "node/k8s-node1"} {
		if !strings.Contains(get, want) {
			t.Errorf("kubectl get ippools,nodes lacks %q:\n%s", want, get)
		}
	}

	client, err := KubeClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := recorded.StoreConfig()
	store, err := open.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	// A pod deleted through the API, with no CNI DEL: the garbage
	// collector releases its address after its grace (3 s, passes every
	// 2 s); every other pod keeps its own.
	const gone = "k8s-master3-pod-2"
	addrs := map[string]netip.Addr{}
	for _, p := range recorded.Pods {
		addrs[p.Name] = netip.MustParseAddr(p.Address)
	}
	before0 := allocated(ctx, t, store)
	for name, a := range addrs {
		if before0[a] == "" {
			t.Fatalf("before the pod deletion, %s's address %s is not allocated", name, a)
		}
	}
	if err := DeletePodObject(ctx, client, PodNamespace, gone); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	released := false
	for time.Since(deleted) < 30*time.Second {
		if _, ok := allocated(ctx, t, store)[addrs[gone]]; !ok {
			released = true
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !released {
		t.Errorf("the address %s of pod %s, deleted through the API, was not released by the garbage collector within 30s", addrs[gone], gone)
	} else {
		t.Logf("the garbage collector released %s %s after the pod was deleted", addrs[gone], time.Since(deleted).Round(100*time.Millisecond))
	}
	after := allocated(ctx, t, store)
	for name, a := range addrs {
		if name != gone && after[a] != before0[a] {
			t.Errorf("pod %s's address %s: handle %q after the garbage collection, %q before", name, a, after[a], before0[a])
		}
	}

	// A node deleted through the API: every peer drops the route to its
	// block within 2 s (the acceptance bound).
	const victim, victimBlock = "k8s-node1", "172.16.36.64/26"
	var peers []string
	for _, m := range mustLayout(t, recorded).Nodes() {
		if m.Name != victim {
			peers = append(peers, m.Netns)
		}
	}
	for _, ns := range peers {
		if !hasRoute(t, ns, victimBlock) {
			t.Fatalf("before the node deletion, %s has no route to %s", ns, victimBlock)
		}
	}
	if err := client.CoreV1().Nodes().Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	left := peers
	for len(left) > 0 && time.Since(start) < 2*time.Second {
		left = slices.DeleteFunc(left, func(ns string) bool { return !hasRoute(t, ns, victimBlock) })
		if len(left) > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if len(left) > 0 {
		t.Errorf("2s after node %s was deleted through the API, %v still route to its block %s", victim, left, victimBlock)
	} else {
		t.Logf("every peer dropped the route to %s %s after node %s was deleted", victimBlock, time.Since(start).Round(time.Millisecond), victim)
	}

	if _, added := diff(before, rootState(t)); len(added) > 0 {
		t.Errorf("the root namespace gained %v", added)
	}
	if recorded, err = LoadState(opts.StateDir); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range recorded.Processes {
		names = append(names, p.Name)
	}
	if want := []string{procEtcd, procAPIServer, procKubeAPIServer, "agent/k8s-master1", "agent/k8s-master2", "agent/k8s-master3", "agent/k8s-node1"}; !slices.Equal(names, want) {
		t.Errorf("processes recorded %v; want %v", names, want)
	}
	downStart := time.Now()
	if err := Down(ctx, opts); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if took := time.Since(downStart); took > 30*time.Second {
		t.Errorf("Down took %s", took)
	} else {
		t.Logf("Down took %s", took.Round(time.Millisecond))
	}
	checkKubeDownClean(t, opts, recorded, linksBefore)
}

// checkKubeDownClean is checkDownClean plus what the kubernetes datastore
// adds: no process mentions the state directory (kube-apiserver keeps its
// certificates there) and the apiserver's directory is gone.
func checkKubeDownClean(t *testing.T, opts Options, recorded *State, linksBefore []string) {
	t.Helper()
	checkDownClean(t, opts, recorded, linksBefore)
	var left []string
	for range 40 {
		if left = labProcesses(t, opts.StateDir); len(left) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("processes left after Down: %q", left)
	}
	for _, p := range []string{filepath.Join(opts.StateDir, "kube"), recorded.Kubeconfig, filepath.Join(opts.StateDir, "apiserver.log")} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there after Down (%v)", p, err)
		}
	}
}

// TestKubeLabDownWithDeadAPIServer: when kube-apiserver has died, Down
// still removes everything within seconds (it does not wait on CNI DELs
// that could only fail).
func TestKubeLabDownWithDeadAPIServer(t *testing.T) {
	opts, _ := kubeLabOptions(t)
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	linksBefore := rootLinks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := Up(ctx, topo, opts); err != nil {
		t.Fatalf("Up: %v", err)
	}
	recorded, err := LoadState(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := recorded.process(procKubeAPIServer)
	if !ok || !p.alive() {
		t.Fatalf("kube-apiserver recorded %v, %+v; want it running", ok, p)
	}
	if err := unix.Kill(p.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitGone(p, 5*time.Second) {
		t.Fatal("kube-apiserver did not die of SIGKILL")
	}
	start := time.Now()
	if err := Down(ctx, opts); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("Down with a dead apiserver took %s; want seconds", took)
	} else {
		t.Logf("Down with a dead apiserver took %s", took.Round(time.Millisecond))
	}
	checkKubeDownClean(t, opts, recorded, linksBefore)
}

// mustLayout is s.Layout(); a failure ends the test.
func mustLayout(t *testing.T, s *State) *Layout {
	t.Helper()
	l, err := s.Layout()
	if err != nil {
		t.Fatal(err)
	}
	return l
}
