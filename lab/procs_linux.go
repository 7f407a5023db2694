package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"twill.dev/twill/datastore/open"
)

// lockFile holds the lab lock: an exclusive flock on StateDir/lock, held
// for the whole of `up` and `down`. The kernel drops it when the process
// dies, so a crashed `up` never leaves the lab locked.
type lockFile struct{ f *os.File }

// acquireLock takes the lock without waiting; ErrBusy names the holder.
func acquireLock(dir string) (*lockFile, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab state directory: %w", err)
	}
	f, err := os.OpenFile(lockPath(dir), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 64))
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			who := strings.TrimSpace(string(holder))
			if who == "" {
				who = "another process"
			} else {
				who = "process " + who
			}
			return nil, fmt.Errorf("%w: %s holds %s; wait for it, or interrupt it (Ctrl-C tears down what it built)", ErrBusy, who, lockPath(dir))
		}
		return nil, fmt.Errorf("lab lock %s: %w", lockPath(dir), err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &lockFile{f: f}, nil
}

func (l *lockFile) release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Truncate(0)
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
	l.f = nil
}

// procStat returns a process's state letter and start time (clock ticks
// since boot) from /proc/PID/stat.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name is in parentheses and may hold anything; fields
	// after the last ')' are space-separated: state is the first, start
	// time the 20th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return f[0][0], start, nil
}

// alive reports whether the recorded process still runs: same PID, same
// start time, not a zombie.
func (p Process) alive() bool {
	if p.PID <= 0 {
		return false
	}
	state, start, err := procStat(p.PID)
	return err == nil && start == p.StartTime && state != 'Z' && state != 'X'
}

// stop ends the recorded process: SIGTERM, then SIGKILL after grace. Only
// a process whose PID and start time both match is signalled.
func (p Process) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	if err := unix.Kill(p.PID, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): %w", p.Name, p.PID, err)
	}
	if waitGone(p, grace) {
		return nil
	}
	if err := unix.Kill(p.PID, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", p.Name, p.PID, err)
	}
	if waitGone(p, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.PID)
}

func waitGone(p Process, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !p.alive() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !p.alive()
}

// child is a process this lab run started.
type child struct {
	rec  Process
	done chan struct{}
	err  error
}

// exited reports whether the child has exited, with its error.
func (c *child) exited() (bool, error) {
	select {
	case <-c.done:
		return true, c.err
	default:
		return false, nil
	}
}

// childEnv is the environment of child processes: the caller's, without
// the datastore selection and the etcd client settings, which would point
// the children at another datastore or at TLS files the lab's etcd does
// not use.
func childEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "TWILL_ETCD_") || strings.HasPrefix(e, open.EnvType+"=") || strings.HasPrefix(e, open.EnvCalicoType+"=") {
			continue
		}
		env = append(env, e)
	}
	return env
}

// startChild starts exe with args in its own session, output to logPath.
// before is called with the record (PID still 0) before the start, and
// after with the PID and start time.
func startChild(exe, name string, args []string, logPath string, recordFile func(string) error, recordProc func(Process) error) (*child, error) {
	if err := recordFile(logPath); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = childEnv()
	// Its own session: a Ctrl-C at the terminal reaches `up`, which tears
	// down in order, and not the children directly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	_, start, err := procStat(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("start %s: read its start time: %w", name, err)
	}
	c := &child{rec: Process{Name: name, PID: cmd.Process.Pid, StartTime: start, Args: args, Log: logPath}, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	if err := recordProc(c.rec); err != nil {
		_ = c.rec.stop(2 * time.Second)
		return nil, err
	}
	return c, nil
}

// logTail returns the last lines of a log file, for error messages.
func logTail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// hasAgent reports whether exe has the `node run` command with the flags
// the lab passes; kube adds those of the kubernetes datastore.
func hasAgent(ctx context.Context, exe string, kube bool) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, exe, "node", "run", "--help").CombinedOutput()
	flags := []string{"--netns", "--socket", "--vxlan-vni"}
	if kube {
		flags = append(flags, "--kubeconfig", "--ipam-gc-grace", "--ipam-gc-interval")
	}
	for _, f := range flags {
		if err != nil || !bytes.Contains(out, []byte(f)) {
			return fmt.Errorf("%w: `%s node run --help` shows no %s flags; build twill with cli/node.go, or stop at a stage before agents (--until datastore)", ErrNoAgent, exe, strings.Join(flags, "/"))
		}
	}
	return nil
}
