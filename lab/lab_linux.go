package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/open"
	"twill.dev/twill/ipam"
)

// teardownTimeout bounds a teardown after a failed or interrupted `up`.
const teardownTimeout = 2 * time.Minute

// run is one `up` in progress.
type run struct {
	opts     Options
	layout   *Layout
	state    *State
	exe      string
	store    datastore.Store
	children map[string]*child
}

func (r *run) save() error { return saveState(r.opts.StateDir, r.state) }

func (r *run) recordNetns(ns string) error {
	r.state.Namespaces = append(r.state.Namespaces, ns)
	return r.save()
}

func (r *run) recordFile(p string) error {
	if !slices.Contains(r.state.Files, p) {
		r.state.Files = append(r.state.Files, p)
	}
	return r.save()
}

func (r *run) recordDir(p string) error {
	r.state.Dirs = append(r.state.Dirs, p)
	return r.save()
}

func (r *run) recordProc(p Process) error {
	r.state.Processes = append(r.state.Processes, p)
	return r.save()
}

func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab creates network namespaces and needs root: run it with sudo")
	}
	return nil
}

// Up builds the topology's lab up to opts.Until and leaves it running;
// Down removes it. When any step fails, or ctx ends (Ctrl-C), everything
// built so far is torn down and the error says which step failed.
func Up(ctx context.Context, t *Topology, opts Options) (err error) {
	opts = opts.withDefaults()
	if err := needRoot(); err != nil {
		return err
	}
	layout, err := t.Layout(opts.Prefix)
	if err != nil {
		return err
	}
	if opts.Datastore, err = open.ParseType(opts.Datastore); err != nil {
		return fmt.Errorf("lab datastore: %w", err)
	}
	if opts.Datastore == open.TypeKubernetes && opts.Until.includes(StageDatastore) {
		if _, err := kubeBinary(); err != nil {
			return fmt.Errorf("the kubernetes datastore runs kube-apiserver: %w", err)
		}
	}
	src, err := yaml.Marshal(t)
	if err != nil {
		return fmt.Errorf("record the topology: %w", err)
	}
	exe := opts.Exe
	if exe == "" && opts.Until.includes(StageDatastore) {
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("find the twill binary: %w", err)
		}
	}
	lock, err := acquireLock(opts.StateDir)
	if err != nil {
		return err
	}
	defer lock.release()
	if old, err := LoadState(opts.StateDir); err == nil {
		return fmt.Errorf("%w: topology %s (prefix %s, %s since %s); run `twill lab down` first",
			ErrAlreadyUp, old.Topology, old.Prefix, old.Phase, old.Started.Format(time.DateTime))
	} else if !errors.Is(err, ErrNotUp) {
		return err
	}
	r := &run{
		opts: opts, layout: layout, exe: exe, children: map[string]*child{},
		state: &State{
			Version: stateVersion, Topology: t.Name, TopologyYAML: string(src), Prefix: opts.Prefix,
			Phase: PhaseBuilding, Until: opts.Until, UpPID: os.Getpid(), Started: time.Now().UTC(),
			Datastore: opts.Datastore,
		},
	}
	if err := r.save(); err != nil {
		return err
	}
	err = r.up(ctx)
	if r.store != nil {
		r.store.Close()
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		opts.progress("interrupted: tearing down everything built so far")
	} else {
		opts.progress("FAILED: %v", err)
		opts.progress("tearing down everything built so far")
	}
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	if terr := teardown(tctx, opts, r.state); terr != nil {
		return fmt.Errorf("lab up: %w; the teardown failed too (run `twill lab down` again): %w", err, terr)
	}
	return fmt.Errorf("lab up: %w (everything it built was removed)", err)
}

func (r *run) up(ctx context.Context) error {
	o := r.opts
	o.progress("topology %s: %d subnets, %d nodes, %d hosts, %d pods; namespaces %s-*; state in %s",
		r.layout.Topology, len(r.layout.Subnets), len(r.layout.Nodes()), len(r.layout.Members)-len(r.layout.Nodes()), len(r.layout.Pods), r.layout.Prefix, o.StateDir)
	if err := buildNetwork(r.layout, r.recordNetns, o.progress); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if o.Until.includes(StageDatastore) {
		if err := r.startDatastore(ctx); err != nil {
			return fmt.Errorf("datastore: %w", err)
		}
	}
	if o.Until.includes(StageAgents) {
		if err := r.startAgents(ctx); err != nil {
			return fmt.Errorf("agents: %w", err)
		}
	}
	if o.Until.includes(StagePods) {
		if err := r.addPods(ctx); err != nil {
			return fmt.Errorf("pods: %w", err)
		}
	}
	r.state.Phase = PhaseUp
	if err := r.save(); err != nil {
		return err
	}
	o.progress("up (stage %s); `twill lab status`, `twill lab exec TARGET -- CMD`, `twill lab report`, `twill lab down`", o.Until)
	if r.state.Kubeconfig != "" {
		o.progress("the datastore is Kubernetes: kubeconfig %s; try KUBECONFIG=%s kubectl get ippools,nodes", r.state.Kubeconfig, r.state.Kubeconfig)
	}
	return nil
}

// startDatastore runs `twill datastore run` on free loopback ports and
// waits for it; on the kubernetes datastore it then runs kube-apiserver on
// it (startKube). It applies the pools and pins the blocks.
func (r *run) startDatastore(ctx context.Context) error {
	o := r.opts
	cport, err := freePort()
	if err != nil {
		return err
	}
	pport, err := freePort()
	for i := 0; err == nil && pport == cport && i < 10; i++ {
		pport, err = freePort()
	}
	if err != nil {
		return err
	}
	dataDir := filepath.Join(o.StateDir, "etcd")
	if err := r.recordDir(dataDir); err != nil {
		return err
	}
	if err := os.RemoveAll(dataDir); err != nil {
		return fmt.Errorf("clear %s: %w", dataDir, err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d", cport)
	args := []string{"datastore", "run", "--data-dir", dataDir, "--listen-client-url", url,
		"--listen-peer-url", fmt.Sprintf("http://127.0.0.1:%d", pport)}
	c, err := startChild(r.exe, procEtcd, args, filepath.Join(o.StateDir, "etcd.log"), r.recordFile, r.recordProc)
	if err != nil {
		return err
	}
	r.children[procEtcd] = c
	r.state.Etcd = url
	if err := r.save(); err != nil {
		return err
	}
	o.progress("etcd: pid %d serving %s (log %s)", c.rec.PID, url, c.rec.Log)

	deadline := time.Now().Add(60 * time.Second)
	for attempt := 1; ; attempt++ {
		if done, err := c.exited(); done {
			return fmt.Errorf("etcd exited (%v); its log %s ends:\n%s", err, c.rec.Log, logTail(c.rec.Log, 15))
		}
		s, err := open.Open(ctx, open.Config{Type: open.TypeEtcd, Etcd: etcd.Config{Endpoints: []string{url}, DialTimeout: 2 * time.Second}})
		if err == nil {
			if r.state.DatastoreType() == open.TypeEtcd {
				r.store = s
			} else {
				s.Close() // it only told that etcd answers
			}
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd at %s did not answer within 60s (%d attempts): %w; its log %s ends:\n%s", url, attempt, err, c.rec.Log, logTail(c.rec.Log, 15))
		}
		time.Sleep(300 * time.Millisecond)
	}
	if r.state.DatastoreType() == open.TypeKubernetes {
		if err := r.startKube(ctx, url); err != nil {
			return err
		}
	}

	for _, p := range r.layout.Pools {
		kv, err := datastore.NewKV(datastore.KindIPPool, p.Metadata.Name, p)
		if err != nil {
			return err
		}
		if _, err := r.store.Create(ctx, kv); err != nil {
			return fmt.Errorf("apply pool %s: %w", p.Metadata.Name, err)
		}
		o.progress("pool %s %s: blockSize %d, vxlanMode %s, natOutgoing %t", p.Metadata.Name, p.Spec.CIDR, p.Spec.BlockSize, p.Spec.VXLANMode, p.Spec.NATOutgoing)
	}
	m := ipam.New(r.store)
	for _, n := range r.layout.Nodes() {
		if !n.Block.IsValid() {
			continue
		}
		if err := m.PinBlock(ctx, n.Block, n.Name); err != nil {
			return fmt.Errorf("pin block %s to %s: %w", n.Block, n.Name, err)
		}
		o.progress("block %s pinned to %s", n.Block, n.Name)
	}
	return nil
}

// startAgents runs one `twill node run` per node against its namespace and
// waits until every node's kernel matches its plan.
func (r *run) startAgents(ctx context.Context) error {
	kube := r.state.DatastoreType() == open.TypeKubernetes
	if err := hasAgent(ctx, r.exe, kube); err != nil {
		return err
	}
	for _, m := range r.layout.Nodes() {
		sock := agentSocket(r.opts.StateDir, m.Name)
		if err := r.recordFile(sock); err != nil {
			return err
		}
		args := []string{"node", "run",
			"--name", m.Name,
			"--ip", m.Address.String(),
			"--netns", NetnsPath(m.Netns),
			"--socket", sock,
			"--health-addr=",
			"--datastore", r.state.DatastoreType(),
			"--log-level", r.opts.AgentLogLevel,
			"--vxlan-device", r.layout.VXLAN.Device,
			"--vxlan-vni", strconv.Itoa(r.layout.VXLAN.VNI),
			"--vxlan-port", strconv.Itoa(r.layout.VXLAN.Port),
			"--vxlan-mtu", strconv.Itoa(r.layout.VXLAN.MTU),
		}
		if kube {
			// The agents run in the root namespace (--netns points them
			// at their node's), so the apiserver on 127.0.0.1 is theirs
			// to reach, as etcd is.
			args = append(args, "--kubeconfig", r.state.Kubeconfig,
				"--ipam-gc-grace", r.opts.KubeGCGrace.String(),
				"--ipam-gc-interval", r.opts.KubeGCInterval.String())
		} else {
			args = append(args, "--etcd-endpoints", r.state.Etcd)
		}
		c, err := startChild(r.exe, agentProcess(m.Name), args, filepath.Join(r.opts.StateDir, m.Name+".log"), r.recordFile, func(p Process) error {
			p.Socket = sock
			return r.recordProc(p)
		})
		if err != nil {
			return err
		}
		r.children[agentProcess(m.Name)] = c
		r.opts.progress("agent %s: pid %d, socket %s (log %s)", m.Name, c.rec.PID, sock, c.rec.Log)
	}
	return r.waitConverged(ctx, "agents")
}

// addPods creates each pod's namespace and has the PodAdder plumb it.
func (r *run) addPods(ctx context.Context) error {
	if len(r.layout.Pods) == 0 {
		return nil
	}
	if r.opts.Pods == nil {
		r.opts.progress("pods: NOT ADDED: no pod adder is wired in (the CNI plugin step); %d pods skipped", len(r.layout.Pods))
		return nil
	}
	work := podWorkDir(r.opts.StateDir)
	if err := r.recordDir(work); err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return fmt.Errorf("pod work directory: %w", err)
	}
	client, err := r.podClient()
	if err != nil {
		return err
	}
	for _, p := range r.layout.Pods {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := r.recordNetns(p.Netns); err != nil {
			return err
		}
		if err := createNetns(p.Netns); err != nil {
			return err
		}
		if err := setSysctls(p.Netns, quietIPv6, true); err != nil {
			return err
		}
		node, _ := r.layout.Member(p.Node)
		spec := PodSpec{
			PodLayout: p, NetnsPath: NetnsPath(p.Netns), IfName: PodIfName,
			NodeNetnsPath: NetnsPath(node.Netns), AgentSocket: agentSocket(r.opts.StateDir, p.Node), WorkDir: podWorkDir(r.opts.StateDir),
		}
		if client != nil {
			// The pod exists in the API before its ADD, as a kubelet's
			// does: the agent reads it, the garbage collector sees it live.
			if err := CreatePodObject(ctx, client, &spec); err != nil {
				return err
			}
		}
		res, err := r.opts.Pods.AddPod(ctx, spec)
		if err != nil {
			return fmt.Errorf("add pod %s on %s: %w", p.Name, p.Node, err)
		}
		if p.IP.IsValid() && res.Address.Addr() != p.IP {
			return fmt.Errorf("pod %s got %s, but the topology asks for %s", p.Name, res.Address, p.IP)
		}
		r.state.Pods = append(r.state.Pods, PodState{Name: p.Name, Node: p.Node, Netns: p.Netns, Address: res.Address.Addr().String(), HostIface: res.HostIface})
		if err := r.save(); err != nil {
			return err
		}
		r.opts.progress("pod %s on %s: %s via %s (namespace %s)", p.Name, p.Node, res.Address, res.HostIface, p.Netns)
	}
	return r.waitConverged(ctx, "pods")
}

// Down removes the lab recorded in opts.StateDir: it deletes the pods
// through the PodAdder when one is given, stops the processes, deletes the
// namespaces and removes the files. It is idempotent (no lab is not an
// error) and works from the state file alone, after a crash of `up`.
func Down(ctx context.Context, opts Options) error {
	opts = opts.withDefaults()
	if err := needRoot(); err != nil {
		return err
	}
	lock, err := acquireLock(opts.StateDir)
	if err != nil {
		return err
	}
	defer lock.release()
	st, err := LoadState(opts.StateDir)
	if errors.Is(err, ErrNotUp) {
		opts.progress("no lab is up (nothing recorded in %s)", opts.StateDir)
		return nil
	}
	if err != nil {
		return err
	}
	return teardown(ctx, opts, st)
}

// teardown removes everything st records, in reverse order of creation,
// and then the state file. What could not be removed stays recorded, so
// that another Down can retry it.
func teardown(ctx context.Context, opts Options, st *State) error {
	dir := opts.StateDir
	st.Phase = PhaseTearDown
	_ = saveState(dir, st)
	var errs []error

	if opts.Pods != nil && len(st.Pods) > 0 {
		deletePods(ctx, opts, st)
	}

	var procsLeft []Process
	for _, p := range stopProcesses(st.Processes) {
		if p.err != nil {
			errs = append(errs, p.err)
			procsLeft = append(procsLeft, p.Process)
			continue
		}
		opts.progress("stopped %s (pid %d)", p.Name, p.PID)
	}
	slices.Reverse(procsLeft)
	st.Processes = procsLeft

	var nsLeft []string
	for _, ns := range slices.Backward(st.Namespaces) {
		if err := deleteNetns(ns); err != nil {
			errs = append(errs, err)
			nsLeft = append(nsLeft, ns)
		}
	}
	if n := len(st.Namespaces) - len(nsLeft); n > 0 {
		opts.progress("deleted %d namespaces", n)
	}
	slices.Reverse(nsLeft)
	st.Namespaces = nsLeft

	var filesLeft []string
	for _, f := range st.Files {
		if opts.KeepLogs && strings.HasSuffix(f, ".log") {
			continue
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", f, err))
			filesLeft = append(filesLeft, f)
		}
	}
	st.Files = filesLeft
	var dirsLeft []string
	for _, d := range st.Dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
			dirsLeft = append(dirsLeft, d)
		}
	}
	st.Dirs = dirsLeft
	if len(errs) > 0 {
		_ = saveState(dir, st)
		return errors.Join(errs...)
	}
	if err := removeState(dir); err != nil {
		return err
	}
	opts.progress("down: everything the lab created is removed")
	return nil
}

// delPodsBudget bounds all of teardown's CNI DELs together, and
// delPodTimeout each one: the namespaces go anyway, so a slow DEL must not
// hold Down up.
const (
	delPodsBudget = 20 * time.Second
	delPodTimeout = 5 * time.Second
)

// deletePods runs CNI DEL for the recorded pods, newest first, through the
// PodAdder, while the pod's agent and the datastore's processes run (a DEL
// against a dead datastore could only fail), within delPodsBudget.
func deletePods(ctx context.Context, opts Options, st *State) {
	dir := opts.StateDir
	l, err := st.Layout()
	if err != nil {
		return
	}
	for _, name := range []string{procEtcd, procKubeAPIServer} {
		if p, ok := st.process(name); ok && !p.alive() {
			opts.progress("warning: %s is not running: the pods are not deleted through CNI (their namespaces are removed anyway)", name)
			return
		}
	}
	deadline := time.Now().Add(delPodsBudget)
	for i := len(st.Pods) - 1; i >= 0; i-- {
		ps := st.Pods[i]
		p := slices.IndexFunc(l.Pods, func(x PodLayout) bool { return x.Name == ps.Name })
		ag, ok := st.process(agentProcess(ps.Node))
		if p < 0 || !ok || !ag.alive() {
			continue
		}
		left := time.Until(deadline)
		if left <= 0 {
			opts.progress("warning: the CNI DELs took longer than %s: the remaining %d pods are not deleted through CNI (their namespaces are removed anyway)", delPodsBudget, i+1)
			return
		}
		node, _ := l.Member(ps.Node)
		spec := PodSpec{PodLayout: l.Pods[p], NetnsPath: NetnsPath(ps.Netns), IfName: PodIfName,
			NodeNetnsPath: NetnsPath(node.Netns), AgentSocket: agentSocket(dir, ps.Node), WorkDir: podWorkDir(dir)}
		dctx, cancel := context.WithTimeout(ctx, min(left, delPodTimeout))
		if err := opts.Pods.DelPod(dctx, spec); err != nil {
			opts.progress("warning: delete pod %s: %v (its namespace is removed anyway)", ps.Name, err)
		}
		cancel()
	}
}

// stopResult is one process teardown tried to stop.
type stopResult struct {
	Process
	err error
}

// stopGrace is how long a process gets between SIGTERM and SIGKILL.
func stopGrace(name string) time.Duration {
	if name == procKubeAPIServer {
		return apiserverStopGrace
	}
	return 10 * time.Second
}

// stopProcesses stops the recorded processes in reverse start order, the
// agents all at once (they were started last and are independent), and
// returns each with its error, in the order they were stopped.
func stopProcesses(procs []Process) []stopResult {
	isAgent := func(p Process) bool { return strings.HasPrefix(p.Name, agentProcess("")) }
	var res []stopResult
	var agents []Process
	for _, p := range slices.Backward(procs) {
		if isAgent(p) {
			agents = append(agents, p)
		}
	}
	agentRes := make([]stopResult, len(agents))
	var wg sync.WaitGroup
	for i, p := range agents {
		wg.Go(func() { agentRes[i] = stopResult{Process: p, err: p.stop(stopGrace(p.Name))} })
	}
	wg.Wait()
	res = append(res, agentRes...)
	for _, p := range slices.Backward(procs) {
		if !isAgent(p) {
			res = append(res, stopResult{Process: p, err: p.stop(stopGrace(p.Name))})
		}
	}
	return res
}

// Status reports what runs in the lab recorded in opts.StateDir.
func Status(ctx context.Context, opts Options) (*StatusReport, error) {
	opts = opts.withDefaults()
	st, err := LoadState(opts.StateDir)
	if err != nil {
		return nil, err
	}
	l, err := st.Layout()
	if err != nil {
		return nil, err
	}
	s := &StatusReport{Topology: st.Topology, Prefix: st.Prefix, Phase: st.Phase, Until: st.Until, Started: st.Started,
		UpPID: st.UpPID, Datastore: "none (stage network)", EtcdURL: st.Etcd, Router: l.Router, RouterOK: netnsExists(l.Router), Pods: st.Pods, PodsPlanned: len(l.Pods)}
	if st.Until.includes(StageDatastore) {
		s.Datastore = st.DatastoreDescription()
	}
	if state, _, err := procStat(st.UpPID); err == nil && state != 'Z' && st.UpPID != os.Getpid() {
		s.UpRunning = true
	}
	procStatus := func(name string) *ProcessStatus {
		p, ok := st.process(name)
		if !ok {
			return nil
		}
		return &ProcessStatus{Name: p.Name, PID: p.PID, Alive: p.alive(), Log: p.Log}
	}
	s.Etcd = procStatus(procEtcd)
	s.APIServer = procStatus(procKubeAPIServer)
	if s.APIServer == nil {
		// Not ready yet (or never): the process that starts it.
		s.APIServer = procStatus(procAPIServer)
	}
	s.APIServerURL, s.Kubeconfig = st.APIServer, st.Kubeconfig
	for _, m := range l.Members {
		ms := MemberStatus{Name: m.Name, Role: m.Role, Netns: m.Netns, Address: m.Address.String(), NetnsExists: netnsExists(m.Netns)}
		if m.Role == RoleNode {
			ms.Agent = procStatus(agentProcess(m.Name))
			if ms.Agent != nil && ms.Agent.Alive {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				as, err := agentapi.NewClient(agentSocket(opts.StateDir, m.Name), 2*time.Second).Status(cctx)
				cancel()
				if err != nil {
					ms.Reason = err.Error()
				} else {
					ms.Ready, ms.Reason = as.Ready, as.Reason
				}
			}
		}
		s.Members = append(s.Members, ms)
	}
	return s, nil
}

// Exec runs argv inside the namespace of target (a node, host or pod name,
// or "router") with the given standard streams, and returns its exit code.
func Exec(ctx context.Context, opts Options, target string, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	opts = opts.withDefaults()
	if len(argv) == 0 {
		return 0, errors.New("give a command to run after --, e.g. twill lab exec k8s-master1 -- ip route")
	}
	st, err := LoadState(opts.StateDir)
	if err != nil {
		return 0, err
	}
	l, err := st.Layout()
	if err != nil {
		return 0, err
	}
	ns, _, ok := l.Target(target)
	if !ok {
		return 0, fmt.Errorf("%w %q: targets are %s", ErrUnknownTarget, target, strings.Join(l.Targets(), ", "))
	}
	if !netnsExists(ns) {
		return 0, fmt.Errorf("%s's namespace %s does not exist (a pod not plumbed yet, or the lab is half torn down)", target, ns)
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return 0, fmt.Errorf("run %s: %w", argv[0], err)
	}
	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := startIn(NetnsPath(ns), cmd); err != nil {
		return 0, fmt.Errorf("run %s in %s: %w", argv[0], ns, err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, err
	}
	return 0, nil
}

// startIn starts cmd from a thread inside the namespace at path: the child
// inherits the thread's network namespace.
func startIn(path string, cmd *exec.Cmd) error {
	return inNetns(path, cmd.Start)
}
