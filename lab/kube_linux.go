package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/datastore/kube"
	"twill.dev/twill/datastore/kube/apiserver"
	"twill.dev/twill/datastore/open"
)

// Names of the lab's processes on the kubernetes datastore.
const (
	// procAPIServer is `twill lab kube-apiserver`, which runs
	// kube-apiserver (it dies with it) and stops it on SIGTERM.
	procAPIServer = "apiserver"
	// procKubeAPIServer is the kube-apiserver process itself, recorded
	// once it is ready so that Down stops it directly.
	procKubeAPIServer = "kube-apiserver"
)

// apiserverStopGrace is how long Down waits after SIGTERM before it kills
// kube-apiserver: its graceful shutdown would wait for open watches for up
// to a minute, and its state is all in the lab's etcd, which goes too.
const apiserverStopGrace = 3 * time.Second

// apiserverStartSlack is added to apiserver.DefaultReadyTimeout for the
// wait for `twill lab kube-apiserver` to report the apiserver ready: the
// certificates and the process start come first.
const apiserverStartSlack = 30 * time.Second

// APIServerConfig configures RunAPIServer.
type APIServerConfig struct {
	// Dir receives the certificates, the kubeconfig, the apiserver's log
	// and, once it is ready, ready.json.
	Dir string
	// EtcdServers are the etcd client URLs kube-apiserver stores into.
	EtcdServers []string
	// Binary is the kube-apiserver executable; empty means the one
	// scripts/kube-build.sh built (apiserver.FindBinary).
	Binary string
}

// apiserverReady is what RunAPIServer writes to ready.json.
type apiserverReady struct {
	URL        string   `json:"url"`
	PID        int      `json:"pid"`
	Kubeconfig string   `json:"kubeconfig"`
	Log        string   `json:"log"`
	Args       []string `json:"args"`
}

func readyPath(dir string) string { return filepath.Join(dir, "ready.json") }

// RunAPIServer runs kube-apiserver on 127.0.0.1 backed by cfg.EtcdServers
// (etcd prefix /registry), writes Dir/ready.json (its URL, PID, kubeconfig
// and log) once /readyz answers, and keeps it running until ctx ends, when
// it stops it. kube-apiserver is killed if this process dies. It returns
// an error, quoting the apiserver's log, when the apiserver fails to start
// or exits by itself. `twill lab kube-apiserver` is this function: the lab
// runs it as a recorded child process, so that the apiserver is never
// unaccounted for, even while it starts.
func RunAPIServer(ctx context.Context, cfg APIServerConfig, out io.Writer) error {
	if cfg.Dir == "" || len(cfg.EtcdServers) == 0 {
		return errors.New("kube-apiserver for the lab: give the directory and the etcd servers")
	}
	s, err := apiserver.Start(ctx, apiserver.Options{Dir: cfg.Dir, EtcdServers: cfg.EtcdServers, Binary: cfg.Binary, EtcdPrefix: "/registry"})
	if err != nil {
		return err
	}
	ready := apiserverReady{URL: s.URL, PID: s.PID(), Kubeconfig: s.Kubeconfig, Log: s.LogPath, Args: s.Args}
	b, err := json.Marshal(ready)
	if err == nil {
		tmp := readyPath(cfg.Dir) + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, readyPath(cfg.Dir))
		}
	}
	if err != nil {
		_ = s.Stop()
		return fmt.Errorf("kube-apiserver for the lab: write %s: %w", readyPath(cfg.Dir), err)
	}
	fmt.Fprintf(out, "kube-apiserver pid %d serving %s; kubeconfig %s; log %s\n", ready.PID, ready.URL, ready.Kubeconfig, ready.Log)
	select {
	case <-ctx.Done():
		if err := s.Stop(); err != nil {
			return err
		}
		fmt.Fprintln(out, "kube-apiserver stopped")
		return nil
	case <-s.Done():
		err := s.Stop()
		return fmt.Errorf("kube-apiserver exited by itself (%v); its log %s ends:\n%s", err, s.LogPath, s.LogTail(20))
	}
}

// kubeBinary returns the kube-apiserver binary the lab runs.
func kubeBinary() (string, error) { return apiserver.FindBinary("kube-apiserver") }

// startKube runs kube-apiserver on the lab's etcd (through `twill lab
// kube-apiserver`, recorded before it starts), records the apiserver
// process once it is ready, installs Twill's CRDs, creates the namespaces,
// the default ServiceAccount and one v1.Node per lab node, and opens the
// datastore on it.
func (r *run) startKube(ctx context.Context, etcdURL string) error {
	o := r.opts
	bin, err := kubeBinary()
	if err != nil {
		return err
	}
	dir := filepath.Join(o.StateDir, "kube")
	if err := r.recordDir(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clear %s: %w", dir, err)
	}
	args := []string{"lab", "kube-apiserver", "--dir", dir, "--etcd-servers", etcdURL, "--binary", bin}
	c, err := startChild(r.exe, procAPIServer, args, filepath.Join(o.StateDir, "apiserver.log"), r.recordFile, r.recordProc)
	if err != nil {
		return err
	}
	r.children[procAPIServer] = c
	o.progress("kube-apiserver: starting %s on the lab's etcd (pid %d, log %s)", bin, c.rec.PID, c.rec.Log)

	var ready apiserverReady
	deadline := time.Now().Add(apiserver.DefaultReadyTimeout + apiserverStartSlack)
	for {
		if done, err := c.exited(); done {
			return fmt.Errorf("kube-apiserver did not start (%v); %s ends:\n%s", err, c.rec.Log, logTail(c.rec.Log, 40))
		}
		b, rerr := os.ReadFile(readyPath(dir))
		if rerr == nil {
			if err := json.Unmarshal(b, &ready); err != nil {
				return fmt.Errorf("kube-apiserver: %s: %w", readyPath(dir), err)
			}
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver was not ready within %s; %s ends:\n%s", apiserver.DefaultReadyTimeout+apiserverStartSlack, c.rec.Log, logTail(c.rec.Log, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, start, err := procStat(ready.PID)
	if err != nil {
		return fmt.Errorf("kube-apiserver (pid %d) is gone right after it was ready: %w; %s ends:\n%s", ready.PID, err, c.rec.Log, logTail(c.rec.Log, 40))
	}
	if err := r.recordProc(Process{Name: procKubeAPIServer, PID: ready.PID, StartTime: start, Args: ready.Args, Log: ready.Log}); err != nil {
		return err
	}
	r.state.Kubeconfig, r.state.APIServer = ready.Kubeconfig, ready.URL
	if err := r.save(); err != nil {
		return err
	}
	o.progress("kube-apiserver: pid %d serving %s (log %s)", ready.PID, ready.URL, ready.Log)
	o.progress("kubeconfig %s", ready.Kubeconfig)

	rc, err := open.RESTConfig(open.Config{Type: open.TypeKubernetes, Kubeconfig: ready.Kubeconfig})
	if err != nil {
		return err
	}
	if err := kube.InstallCRDs(ctx, rc); err != nil {
		return fmt.Errorf("install Twill's CRDs: %w", err)
	}
	o.progress("CRDs installed")
	client, err := kubeClientFor(ready.Kubeconfig)
	if err != nil {
		return err
	}
	if err := ensureKubeBasics(ctx, client); err != nil {
		return err
	}
	for _, m := range r.layout.Nodes() {
		if err := CreateNodeObject(ctx, client, m.Name, m.Address.Addr()); err != nil {
			return err
		}
	}
	o.progress("v1.Node objects created for %d nodes (the agents annotate them)", len(r.layout.Nodes()))
	s, err := open.Open(ctx, open.Config{Type: open.TypeKubernetes, Kubeconfig: ready.Kubeconfig})
	if err != nil {
		return fmt.Errorf("open the kubernetes datastore: %w", err)
	}
	r.store = s
	return nil
}

// podClient returns the Kubernetes client addPods creates v1.Pods with;
// nil on the etcd datastore.
func (r *run) podClient() (kubernetes.Interface, error) {
	if r.state.DatastoreType() != open.TypeKubernetes {
		return nil, nil
	}
	return kubeClientFor(r.state.Kubeconfig)
}
