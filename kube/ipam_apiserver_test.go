package kube

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/datastore/kubetest"
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/ipam"
	"twill.dev/twill/ipam/ipamtest"
)

// TestContentionOnAPIServer runs the IPAM contention test (8 agents on 8
// nodes, 500 allocations each, borrowing and exhaustion) against a real
// kube-apiserver.
func TestContentionOnAPIServer(t *testing.T) {
	c := kubetest.StartWithCRDs(t)
	ipamtest.Contention(t, func(t *testing.T) datastore.Store { return c.NewStore(t) }, 8, 500)
}

// The crash test's child process: the test binary re-executed with
// envCrashChild set runs crashChild instead of the tests (see TestMain).
const (
	// envCrashChild holds the handle prefix of the child's allocations.
	envCrashChild = "TWILL_TEST_CRASH_CHILD"
	// envCrashJournal is the journal file the child appends to.
	envCrashJournal = "TWILL_TEST_CRASH_JOURNAL"
	// envCrashNode is the node the child allocates for.
	envCrashNode = "TWILL_TEST_CRASH_NODE"
	// envCrashPool is the pool the child allocates from.
	envCrashPool = "TWILL_TEST_CRASH_POOL"
	// envCrashSeed, when set, seeds the kill delays (to replay a run).
	envCrashSeed = "TWILL_TEST_CRASH_SEED"
)

// Crash test sizes and bounds.
const (
	crashKills    = 100
	crashMinDelay = 20 * time.Millisecond
	crashMaxDelay = 300 * time.Millisecond
	// crashKillPhase bounds the time spent starting and killing children.
	crashKillPhase = 6 * time.Minute
	// crashReadyTimeout bounds a child's start-up (connect, read pools).
	crashReadyTimeout = 30 * time.Second
	// crashChildLife bounds a child that is never killed.
	crashChildLife = time.Minute
	// crashChildWorkers allocate concurrently in one child, so that a kill
	// also lands in the middle of a merged (group commit) batch.
	crashChildWorkers = 4
	// crashChildMax bounds the allocations of one child (and so the pods
	// the test creates); a child that made them waits for its kill.
	crashChildMax = 200
	// crashGrace is the GC's grace; its clock is advanced past it.
	crashGrace = time.Minute
)

// TestMain runs the crash test's child when envCrashChild is set, and the
// tests otherwise.
func TestMain(m *testing.M) {
	if prefix := os.Getenv(envCrashChild); prefix != "" {
		os.Exit(crashChild(prefix))
	}
	os.Exit(m.Run())
}

// crashChild opens the datastore the environment selects (open.Open, as
// every Twill process does), says "ready" on stdout, and then allocates
// addresses for node envCrashNode from pool envCrashPool, one per handle
// prefix-<i>, with the pod of the same name in namespace default, with
// crashChildWorkers goroutines. After each allocation it appends "handle
// address" to the journal and syncs it: the journal is the set of pods
// that exist. It runs until it is killed (after crashChildMax allocations
// it waits for the kill); it exits non-zero on an error or when
// crashChildLife has passed.
func crashChild(prefix string) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "crash child %s: %v\n", prefix, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), crashChildLife)
	defer cancel()
	s, err := open.Open(ctx, open.ConfigFromEnv(os.Getenv))
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	journal, err := os.OpenFile(os.Getenv(envCrashJournal), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fail(err)
	}
	defer journal.Close()
	node, pool := os.Getenv(envCrashNode), os.Getenv(envCrashPool)
	if node == "" || pool == "" {
		return fail(errors.New("set " + envCrashNode + " and " + envCrashPool))
	}
	m := ipam.New(s)
	if _, err := fmt.Println("ready"); err != nil {
		return fail(err)
	}
	var next atomic.Int64
	errs := make(chan error, crashChildWorkers)
	for range crashChildWorkers {
		go func() {
			for {
				i := next.Add(1) - 1
				if i >= crashChildMax {
					<-ctx.Done()
					errs <- fmt.Errorf("made all %d allocations and was not killed within %v", crashChildMax, crashChildLife)
					return
				}
				h := prefix + "-" + strconv.FormatInt(i, 10)
				ips, err := m.Allocate(ctx, ipam.AllocateRequest{Handle: h, Node: node, Pools: []string{pool},
					Attrs: map[string]string{api.AttrNamespace: "default", api.AttrPod: h}})
				if err == nil && len(ips) != 1 {
					err = fmt.Errorf("allocate %s: got %v, want one address", h, ips)
				}
				if err != nil {
					errs <- err
					return
				}
				if _, err := journal.WriteString(h + " " + ips[0].String() + "\n"); err != nil {
					errs <- err
					return
				}
				if err := journal.Sync(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	return fail(<-errs)
}

// crashBackend is a datastore the crash test runs against.
type crashBackend struct {
	// store is the parent's connection.
	store datastore.Store
	// env selects the same datastore for the child (open.ConfigFromEnv).
	env []string
	// prefix starts every handle and pod name of the run.
	prefix string
}

// TestCrashGCOnAPIServer kills processes that are allocating addresses,
// crashKills times at random points, then runs the IPAM GC against a real
// kube-apiserver that holds a pod for every allocation the processes
// journaled, and checks that exactly the crash orphans (allocated but never
// journaled) were released, every journaled address is still held by its
// handle, no address is held twice and the handles match the blocks. It
// runs with the IPAM state in the Kubernetes API and in etcd (the pods are
// in the apiserver in both cases).
func TestCrashGCOnAPIServer(t *testing.T) {
	c := kubetest.StartWithCRDs(t)
	admin := fastClient(t, c.Config)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The apiserver makes these shortly after it is ready; the
	// ServiceAccount admission plugin wants the default account.
	for _, ns := range []string{"default", DefaultNamespace} {
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	_, err := admin.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, n := range crashNodes {
		if _, err := admin.CoreV1().Nodes().Create(ctx, k8sNode(n), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("kubernetes", func(t *testing.T) {
		crashTest(t, admin, crashBackend{
			store:  c.NewStore(t),
			env:    []string{open.EnvType + "=" + open.TypeKubernetes, open.EnvKubeconfig + "=" + c.Kubeconfig},
			prefix: "crash",
		})
	})
	t.Run("etcd", func(t *testing.T) {
		ep := etcdtest.Start(t)
		crashTest(t, admin, crashBackend{
			store:  etcdtest.Connect(t, ep, etcd.Config{}),
			env:    []string{open.EnvType + "=" + open.TypeEtcd, etcd.EnvEndpoints + "=" + ep},
			prefix: "crash-etcd",
		})
	})
}

// crashNodes are the Kubernetes nodes the children allocate for, in turn;
// the GC runs on the first.
var crashNodes = []string{"crash-a", "crash-b"}

// fastClient is a clientset on cfg without client-side rate limiting (the
// test creates a pod per journaled allocation).
func fastClient(t *testing.T, cfg *rest.Config) kubernetes.Interface {
	t.Helper()
	rc := rest.CopyConfig(cfg)
	rc.QPS = -1
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// journalEntry is one allocation a child journaled.
type journalEntry struct {
	handle string
	addr   netip.Addr
}

// crashTest is TestCrashGCOnAPIServer on one backend.
func crashTest(t *testing.T, admin kubernetes.Interface, b crashBackend) {
	ctx, cancel := context.WithTimeout(context.Background(), crashKillPhase+5*time.Minute)
	defer cancel()
	s := b.store
	const poolName = "crash"
	pool := netip.MustParsePrefix("10.96.0.0/16")
	p := api.IPPool{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
		Metadata: api.ObjectMeta{Name: poolName},
		Spec:     api.IPPoolSpec{CIDR: pool.String(), BlockSize: 26},
	}
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	kv, err := datastore.NewKV(datastore.KindIPPool, poolName, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, kv); err != nil {
		t.Fatalf("create pool: %v", err)
	}

	// Start and kill the children.
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(envCrashSeed); v != "" {
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", envCrashSeed, v, err)
		}
	}
	t.Logf("kill delays seeded with %d (replay with %s=%d)", seed, envCrashSeed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	journalPath := t.TempDir() + "/journal"
	start := time.Now()
	kills := 0
	for run := 0; run < crashKills; run++ {
		if time.Since(start) > crashKillPhase {
			t.Fatalf("only %d of %d kills within %v", kills, crashKills, crashKillPhase)
		}
		delay := crashMinDelay + time.Duration(rng.Int64N(int64(crashMaxDelay-crashMinDelay)))
		env := append(os.Environ(), b.env...)
		env = append(env,
			envCrashChild+"="+fmt.Sprintf("%s-%d", b.prefix, run),
			envCrashJournal+"="+journalPath,
			envCrashNode+"="+crashNodes[run%len(crashNodes)],
			envCrashPool+"="+poolName)
		if err := runAndKill(env, delay); err != nil {
			t.Fatalf("run %d (kill after %v): %v", run, delay, err)
		}
		kills++
	}
	journal := readJournal(t, journalPath)
	t.Logf("%d children killed in %v; %d allocations journaled", kills, time.Since(start).Round(time.Millisecond), len(journal))

	// Before the GC: every journaled address is in its block; the rest of
	// the pool's addresses are crash orphans.
	jset := map[string]netip.Addr{}
	jaddr := map[netip.Addr]string{}
	for _, e := range journal {
		if _, dup := jset[e.handle]; dup {
			t.Fatalf("handle %s journaled twice", e.handle)
		}
		if prev, dup := jaddr[e.addr]; dup {
			t.Fatalf("%s journaled for %s and %s: handed out twice", e.addr, prev, e.handle)
		}
		jset[e.handle], jaddr[e.addr] = e.addr, e.handle
	}
	held := ipamtest.Holdings(ctx, t, s, pool)
	orphans := 0
	for ip, h := range held {
		if _, ok := jset[h]; !ok {
			orphans++
		} else if jset[h] != ip {
			t.Errorf("%s holds %s, but journaled %s", h, ip, jset[h])
		}
	}
	for ip, h := range jaddr {
		if held[ip] != h {
			t.Errorf("%s journaled %s, which its block gives to %q", h, ip, held[ip])
		}
	}
	before := ipamtest.HandleMismatches(ctx, t, s, pool, b.prefix+"-")
	t.Logf("before the GC: %d addresses held, %d of them crash orphans; %d handles do not match the blocks", len(held), orphans, len(before))
	if orphans+len(before) == 0 {
		t.Errorf("no kill landed in the middle of an allocation (no orphan address, no handle over-count): no crash was tested")
	}
	if t.Failed() {
		t.FailNow()
	}

	// A pod for every journaled allocation.
	createPods(ctx, t, admin, journal)

	// Two GC passes, the clock moved past the grace in between; a third
	// finds nothing to do.
	clock := &fakeClock{now: time.Now()}
	gc, err := NewGC(GCConfig{
		Client:   admin,
		IPAM:     ipam.New(s, ipam.WithCacheTTL(0), ipam.WithRepairGrace(0)),
		Store:    s,
		Identity: crashNodes[0],
		Grace:    crashGrace,
		Clock:    clock,
		Logger:   slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	var results []PassResult
	for pass := range 3 {
		res, err := gc.Pass(ctx)
		if err != nil {
			t.Fatalf("GC pass %d: %v", pass+1, err)
		}
		results = append(results, res)
		clock.Advance(crashGrace)
	}
	released := results[0].Released + results[1].Released
	repaired := results[0].HandlesRepaired + results[1].HandlesRepaired
	t.Logf("GC: released %d orphans (pass 1: %d, pass 2: %d), repaired %d handles (%d, %d); pass 3 released %d, repaired %d",
		released, results[0].Released, results[1].Released, repaired, results[0].HandlesRepaired, results[1].HandlesRepaired,
		results[2].Released, results[2].HandlesRepaired)
	if results[0].Released != 0 {
		t.Errorf("the first pass released %d addresses before the grace had passed", results[0].Released)
	}
	if released != orphans {
		t.Errorf("the GC released %d addresses, want the %d crash orphans", released, orphans)
	}
	if results[2].Released != 0 || results[2].HandlesRepaired != 0 {
		t.Errorf("a third pass released %d addresses and repaired %d handles, want nothing left to do", results[2].Released, results[2].HandlesRepaired)
	}

	// After: the pool holds exactly the journal, and the handles match.
	after := ipamtest.Holdings(ctx, t, s, pool)
	leaked := 0
	for ip, h := range after {
		if jaddr[ip] != h {
			if leaked++; leaked <= 5 {
				t.Errorf("%s is held by %s, which no pod journaled: leaked", ip, h)
			}
		}
	}
	freed := 0
	for ip, h := range jaddr {
		if after[ip] != h {
			if freed++; freed <= 5 {
				t.Errorf("%s of live pod %s was freed (now %q)", ip, h, after[ip])
			}
		}
	}
	if mis := ipamtest.HandleMismatches(ctx, t, s, pool, b.prefix+"-"); len(mis) > 0 {
		t.Errorf("after the GC, %d handles do not match the blocks, e.g. %s", len(mis), strings.Join(mis[:min(5, len(mis))], "; "))
	}
	checkHandleAddrs(ctx, t, ipam.New(s), journal)
	t.Logf("after the GC: %d addresses held, %d leaked, %d live allocations freed", len(after), leaked, freed)
	if leaked > 0 || freed > 0 {
		t.Errorf("%d addresses leaked and %d live allocations freed, want 0 and 0", leaked, freed)
	}
}

// runAndKill starts the test binary as a crash child with env, waits for it
// to say it is ready, kills it with SIGKILL after delay and reaps it. It is
// an error when the child fails to start or exits by itself.
func runAndKill(env []string, delay time.Duration) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = env
	cmd.Stdout = w
	var stderr strings.Builder
	cmd.Stderr = &stderr
	// The child dies with the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	w.Close()
	exited := make(chan error, 1)
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(r)
		ready <- sc.Scan() && sc.Text() == "ready"
		_, _ = io.Copy(io.Discard, r)
		exited <- cmd.Wait()
	}()
	timeout := time.NewTimer(crashReadyTimeout)
	defer timeout.Stop()
	select {
	case ok := <-ready:
		if !ok {
			err := <-exited
			return fmt.Errorf("the child exited before it was ready: %v: %s", err, stderr.String())
		}
	case <-timeout.C:
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("the child was not ready within %v: %s", crashReadyTimeout, stderr.String())
	}
	kill := time.NewTimer(delay)
	defer kill.Stop()
	select {
	case err := <-exited:
		return fmt.Errorf("the child exited by itself before the kill: %v: %s", err, stderr.String())
	case <-kill.C:
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill the child: %w", err)
	}
	err = <-exited
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return nil
		}
	}
	return fmt.Errorf("the child ended with %v, not by the kill: %s", err, stderr.String())
}

// readJournal parses the journal the children wrote: one "handle address"
// line per allocation. A last line without its newline would be a write
// cut short, which a SIGKILL does not do to a small append: it fails the
// test.
func readJournal(t *testing.T, path string) []journalEntry {
	t.Helper()
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	if text != "" && !strings.HasSuffix(text, "\n") {
		t.Fatalf("the journal ends with a partial line %q", text[strings.LastIndexByte(text, '\n')+1:])
	}
	var out []journalEntry
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if line == "" {
			continue
		}
		h, a, ok := strings.Cut(line, " ")
		ip, err := netip.ParseAddr(a)
		if !ok || err != nil {
			t.Fatalf("malformed journal line %q", line)
		}
		out = append(out, journalEntry{handle: h, addr: ip})
	}
	return out
}

// createPods creates pod default/<handle> for every journal entry, a few
// at a time.
func createPods(ctx context.Context, t *testing.T, admin kubernetes.Interface, journal []journalEntry) {
	t.Helper()
	start := time.Now()
	no := false
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for w := range errs {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(journal) || ctx.Err() != nil {
					return
				}
				h := journal[i].handle
				_, err := admin.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: h},
					Spec: corev1.PodSpec{
						AutomountServiceAccountToken: &no,
						Containers:                   []corev1.Container{{Name: "c", Image: "example.invalid/pause"}},
					},
				}, metav1.CreateOptions{})
				if err != nil {
					errs[w] = fmt.Errorf("create pod %s: %w", h, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("created %d pods in %v", len(journal), time.Since(start).Round(time.Millisecond))
}

// checkHandleAddrs checks that HandleAddrs finds exactly the journaled
// address of every journaled handle.
func checkHandleAddrs(ctx context.Context, t *testing.T, m *ipam.IPAM, journal []journalEntry) {
	t.Helper()
	var next atomic.Int64
	var bad atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(journal) || ctx.Err() != nil {
					return
				}
				e := journal[i]
				got, err := m.HandleAddrs(ctx, e.handle)
				if err != nil || !slices.Equal(got, []netip.Addr{e.addr}) {
					if bad.Add(1) <= 5 {
						t.Errorf("HandleAddrs(%s) = %v, %v; want [%s]", e.handle, got, err, e.addr)
					}
				}
			}
		})
	}
	wg.Wait()
	if n := bad.Load(); n > 5 {
		t.Errorf("%d handles in all do not find their journaled address", n)
	}
}
