package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"twill.dev/twill/internal/nettest"
)

// testWriter sends progress lines to the test log.
type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testOptions gives a test its own state directory and namespace prefix,
// and makes sure everything is removed when it ends, even on failure.
func testOptions(tb testing.TB, until Stage) Options {
	tb.Helper()
	opts := Options{
		StateDir: tb.TempDir(),
		Prefix:   fmt.Sprintf("twt%04x", rand.N(0x10000)),
		Until:    until,
		Out:      testWriter{tb},
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := Down(ctx, opts); err != nil {
			tb.Errorf("cleanup: Down: %v", err)
		}
		if left := ourNetns(tb, opts.Prefix); len(left) > 0 {
			tb.Errorf("cleanup: namespaces left behind: %v", left)
			for _, n := range left {
				_ = deleteNetns(n)
			}
		}
	})
	return opts
}

// ourNetns lists the namespaces `ip netns list` shows with prefix.
func ourNetns(tb testing.TB, prefix string) []string {
	tb.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		tb.Fatalf("ip netns list: %v: %s", err, out)
	}
	var ours []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			ours = append(ours, f[0])
		}
	}
	return ours
}

// rootState is what the root network namespace holds: links, addresses
// and routes of every table, as comparable strings.
func rootState(tb testing.TB) []string {
	tb.Helper()
	h, err := netlink.NewHandle()
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	var out []string
	links, err := h.LinkList()
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range links {
		out = append(out, fmt.Sprintf("link %d %s", l.Attrs().Index, l.Attrs().Name))
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		tb.Fatal(err)
	}
	for _, a := range addrs {
		out = append(out, fmt.Sprintf("addr %d %s", a.LinkIndex, a.IPNet))
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range routes {
		out = append(out, fmt.Sprintf("route table %d %s via %s dev %d type %d", r.Table, r.Dst, r.Gw, r.LinkIndex, r.Type))
	}
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		tb.Fatal(err)
	}
	out = append(out, "ip_forward "+strings.TrimSpace(string(fwd)))
	slices.Sort(out)
	return out
}

func diff(a, b []string) (gone, added []string) {
	for _, x := range a {
		if !slices.Contains(b, x) {
			gone = append(gone, x)
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			added = append(added, x)
		}
	}
	return gone, added
}

func sysctlIn(tb testing.TB, ns, key string) string {
	tb.Helper()
	var v []byte
	err := inNetns(NetnsPath(ns), func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// TestNetworkSeed builds the network part of the seed topology and checks
// it: namespaces, router, eth0s, routes, forwarding, reachability within
// and across subnets, the path frames take (captured on eth0), exec, and
// that the root namespace gained nothing. Down removes everything.
func TestNetworkSeed(t *testing.T) {
	nettest.RequireRoot(t, "ip")
	opts := testOptions(t, StageNetwork)
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	l, err := topo.Layout(opts.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	before := rootState(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := Up(ctx, topo, opts); err != nil {
		t.Fatalf("Up: %v", err)
	}

	// Every namespace is there, and `ip netns` sees it.
	want := []string{l.Router}
	for _, m := range l.Members {
		want = append(want, m.Netns)
	}
	got := ourNetns(t, opts.Prefix)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("ip netns list shows %v, want %v", got, want)
	}

	// Forwarding on in the router and nodes only; the root is untouched.
	if v := sysctlIn(t, l.Router, "net.ipv4.ip_forward"); v != "1" {
		t.Errorf("router ip_forward = %s, want 1", v)
	}
	for _, m := range l.Members {
		if v := sysctlIn(t, m.Netns, "net.ipv4.ip_forward"); v != "1" {
			t.Errorf("%s ip_forward = %s, want 1", m.Name, v)
		}
	}

	// eth0, MAC and default route of each node.
	for _, m := range l.Members {
		err := withHandle(m.Netns, func(h *netlink.Handle, _ netns.NsHandle) error {
			eth0, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			if m.MAC != nil && eth0.Attrs().HardwareAddr.String() != m.MAC.String() {
				t.Errorf("%s eth0 MAC %s, want %s", m.Name, eth0.Attrs().HardwareAddr, m.MAC)
			}
			addrs, err := h.AddrList(eth0, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			if len(addrs) != 1 || addrs[0].IPNet.String() != m.Address.String() {
				t.Errorf("%s eth0 addresses %v, want %s", m.Name, addrs, m.Address)
			}
			routes, err := h.RouteList(nil, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			hasDefault := false
			for _, r := range routes {
				if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == m.Gateway.String() {
					hasDefault = true
				}
			}
			if !hasDefault {
				t.Errorf("%s has no default route via %s: %v", m.Name, m.Gateway, routes)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
	}

	// Same subnet: straight over the shared segment; other subnet: through
	// the router, whose bridge MAC is then the frame's destination.
	master1, _ := l.Member("k8s-master1")
	master2, _ := l.Member("k8s-master2")
	node1, _ := l.Member("k8s-node1")
	var routerMAC string
	if err := withHandle(l.Router, func(h *netlink.Handle, _ netns.NsHandle) error {
		br, err := h.LinkByName(l.Subnets[master1.Subnet].Bridge)
		if err == nil {
			routerMAC = br.Attrs().HardwareAddr.String()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		to      Member
		wantMAC string
	}{
		{master2, master2.MAC.String()},
		{node1, routerMAC},
	} {
		pc := PathCheck{Src: master1.Address.Addr(), Dst: tc.to.Address.Addr(), Observed: PathUnknown}
		if err := capturePath(&pc, master1.Netns, master1.Netns, 0, 4789, 2*time.Second); err != nil {
			t.Errorf("k8s-master1 -> %s: %v", tc.to.Name, err)
			continue
		}
		if pc.Observed != PathDirect || len(pc.Lines) != 1 {
			t.Errorf("k8s-master1 -> %s: observed %s %v", tc.to.Name, pc.Observed, pc.Lines)
			continue
		}
		wantPrefix := fmt.Sprintf("%s > %s, ethertype IPv4 (0x0800), length 98: %s > %s: ICMP echo request",
			master1.MAC, tc.wantMAC, master1.Address.Addr(), tc.to.Address.Addr())
		if !strings.HasPrefix(pc.Lines[0], wantPrefix) {
			t.Errorf("k8s-master1 -> %s: captured\n  %s\nwant it to start with\n  %s", tc.to.Name, pc.Lines[0], wantPrefix)
		}
	}
	// Every member reaches every other, across the router where needed.
	for _, a := range l.Members {
		for _, b := range l.Members {
			if a.Name == b.Name {
				continue
			}
			if err := pingOnceOrTwice(a.Netns, b.Address.Addr(), 2*time.Second); err != nil {
				t.Errorf("%s -> %s: %v", a.Name, b.Name, err)
			}
		}
	}
	// Nothing reaches out of the lab: the router has no route to elsewhere.
	if err := pingOnceOrTwice(master1.Netns, netip.MustParseAddr("192.0.2.1"), 300*time.Millisecond); err == nil {
		t.Error("a ping to 192.0.2.1 (outside the lab) was answered")
	}

	// exec runs inside the namespace.
	var stdout, stderr bytes.Buffer
	code, err := Exec(ctx, opts, "k8s-node1", []string{"ip", "-o", "-4", "addr", "show", "dev", "eth0"}, nil, &stdout, &stderr)
	if err != nil || code != 0 || !strings.Contains(stdout.String(), "192.168.32.105/24") {
		t.Errorf("Exec(k8s-node1, ip addr) = %d, %v; stdout %q stderr %q", code, err, stdout.String(), stderr.String())
	}
	stdout.Reset()
	code, err = Exec(ctx, opts, "router", []string{"ip", "-o", "link", "show", "type", "bridge"}, nil, &stdout, &stderr)
	if err != nil || code != 0 || !strings.Contains(stdout.String(), "twbr0") || !strings.Contains(stdout.String(), "twbr1") {
		t.Errorf("Exec(router, ip link) = %d, %v; stdout %q", code, err, stdout.String())
	}
	code, err = Exec(ctx, opts, "k8s-node1", []string{"sh", "-c", "exit 3"}, nil, &stdout, &stderr)
	if err != nil || code != 3 {
		t.Errorf("Exec(exit 3) = %d, %v; want 3, nil", code, err)
	}
	if _, err := Exec(ctx, opts, "nobody", []string{"true"}, nil, &stdout, &stderr); !errors.Is(err, ErrUnknownTarget) {
		t.Errorf("Exec(nobody) = %v, want ErrUnknownTarget", err)
	}
	if _, err := Exec(ctx, opts, "k8s-master1-pod-1", []string{"true"}, nil, &stdout, &stderr); err == nil {
		t.Error("Exec in a pod that was never plumbed succeeded")
	}

	// status sees the members.
	st, err := Status(ctx, opts)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if !st.RouterOK || len(st.Members) != 4 || st.Phase != PhaseUp || st.Etcd != nil || st.Datastore != "none (stage network)" {
		t.Errorf("Status = %+v", st)
	}
	for _, m := range st.Members {
		if !m.NetnsExists {
			t.Errorf("status: %s's namespace missing", m.Name)
		}
	}
	var sb strings.Builder
	st.WriteText(&sb)
	if !strings.Contains(sb.String(), "k8s-node1") || !strings.Contains(sb.String(), "192.168.32.105/24") {
		t.Errorf("status text lacks k8s-node1:\n%s", sb.String())
	}

	// A second up is refused while this lab is up.
	if err := Up(ctx, topo, opts); !errors.Is(err, ErrAlreadyUp) {
		t.Errorf("second Up = %v, want ErrAlreadyUp", err)
	}

	// The root namespace gained no link, address or route.
	gone, added := diff(before, rootState(t))
	if len(added) > 0 {
		t.Errorf("the root namespace gained %v", added)
	}
	if len(gone) > 0 {
		t.Errorf("the root namespace lost %v", gone)
	}

	// Down removes everything, and again is fine.
	if err := Down(ctx, opts); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if left := ourNetns(t, opts.Prefix); len(left) > 0 {
		t.Errorf("after Down, ip netns list still shows %v", left)
	}
	if _, err := os.Stat(statePath(opts.StateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file still there after Down: %v", err)
	}
	if err := Down(ctx, opts); err != nil {
		t.Errorf("second Down: %v", err)
	}
	if _, err := Status(ctx, opts); !errors.Is(err, ErrNotUp) {
		t.Errorf("Status after Down = %v, want ErrNotUp", err)
	}
}

// fakeExe writes a shell script that stands in for the twill binary.
func fakeExe(tb testing.TB, body string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "fake-twill")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		tb.Fatal(err)
	}
	return p
}

// TestUpFailureTearsDown: a datastore that dies makes Up fail, say so, and
// remove what it built.
func TestUpFailureTearsDown(t *testing.T) {
	nettest.RequireRoot(t, "ip")
	opts := testOptions(t, StageDatastore)
	opts.Exe = fakeExe(t, "echo etcd cannot start >&2; exit 1")
	topo, err := Load("three-subnets")
	if err != nil {
		t.Fatal(err)
	}
	before := rootState(t)
	err = Up(context.Background(), topo, opts)
	if err == nil {
		t.Fatal("Up succeeded with a datastore that exits")
	}
	if !strings.Contains(err.Error(), "etcd exited") || !strings.Contains(err.Error(), "etcd cannot start") || !strings.Contains(err.Error(), "removed") {
		t.Errorf("Up error %q does not say that etcd exited, show its log and that the lab was removed", err)
	}
	if left := ourNetns(t, opts.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after a failed Up: %v", left)
	}
	if _, err := os.Stat(statePath(opts.StateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left after a failed Up: %v", err)
	}
	if _, added := diff(before, rootState(t)); len(added) > 0 {
		t.Errorf("the root namespace gained %v", added)
	}
}

// TestUpInterruptTearsDown: cancelling Up (Ctrl-C) while it waits for the
// datastore stops the child and removes everything.
func TestUpInterruptTearsDown(t *testing.T) {
	nettest.RequireRoot(t, "ip")
	opts := testOptions(t, StageDatastore)
	opts.Exe = fakeExe(t, "exec sleep 60")
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancel once the fake datastore runs.
	var rec Process
	go func() {
		for range 200 {
			if st, err := LoadState(opts.StateDir); err == nil {
				if p, ok := st.process("etcd"); ok {
					rec = p
					cancel()
					return
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
	}()
	err = Up(ctx, topo, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Up = %v, want context.Canceled", err)
	}
	if rec.PID == 0 {
		t.Fatal("the fake datastore never started")
	}
	if rec.alive() {
		t.Errorf("the datastore process %d still runs after the interrupted Up", rec.PID)
	}
	if left := ourNetns(t, opts.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after an interrupted Up: %v", left)
	}
}

// TestDownAfterCrash: Down removes what a crashed Up recorded (namespaces,
// a running child, files) from the state file alone.
func TestDownAfterCrash(t *testing.T) {
	nettest.RequireRoot(t, "ip")
	opts := testOptions(t, StageNetwork)
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	src := []byte(baseYAML)
	_ = topo
	st := &State{Version: stateVersion, Topology: "base", TopologyYAML: string(src), Prefix: opts.Prefix, Phase: PhaseBuilding, Until: StageAgents, UpPID: 1 << 22}
	dir := opts.StateDir
	save := func() error { return saveState(dir, st) }
	for _, ns := range []string{opts.Prefix + "-r", opts.Prefix + "-a"} {
		st.Namespaces = append(st.Namespaces, ns)
		if err := save(); err != nil {
			t.Fatal(err)
		}
		if err := createNetns(ns); err != nil {
			t.Fatal(err)
		}
	}
	// A namespace recorded but never created (the crash came first).
	st.Namespaces = append(st.Namespaces, opts.Prefix+"-b")
	c, err := startChild(fakeExe(t, "exec sleep 60"), "agent/a", nil, filepath.Join(dir, "a.log"),
		func(p string) error { st.Files = append(st.Files, p); return save() },
		func(p Process) error { st.Processes = append(st.Processes, p); return save() })
	if err != nil {
		t.Fatal(err)
	}
	// A process record whose PID now belongs to someone else must be
	// left alone: its start time does not match.
	st.Processes = append(st.Processes, Process{Name: "agent/b", PID: os.Getpid(), StartTime: 1})
	if err := save(); err != nil {
		t.Fatal(err)
	}

	if err := Down(context.Background(), opts); err != nil {
		t.Fatalf("Down: %v", err)
	}
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Error("the recorded child still runs after Down")
	}
	if left := ourNetns(t, opts.Prefix); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if _, err := os.Stat(filepath.Join(dir, "a.log")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("log left: %v", err)
	}
	if _, err := LoadState(dir); !errors.Is(err, ErrNotUp) {
		t.Errorf("LoadState after Down = %v, want ErrNotUp", err)
	}
}

// TestLockBusy: while one lab command holds the lock, up and down say so.
func TestLockBusy(t *testing.T) {
	nettest.RequireRoot(t, "ip")
	opts := testOptions(t, StageNetwork)
	lk, err := acquireLock(opts.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	topo, err := Load("seed")
	if err != nil {
		t.Fatal(err)
	}
	err = Up(context.Background(), topo, opts)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
		t.Errorf("Up while locked = %v; want ErrBusy naming pid %d", err, os.Getpid())
	}
	if err := Down(context.Background(), opts); !errors.Is(err, ErrBusy) {
		t.Errorf("Down while locked = %v; want ErrBusy", err)
	}
	if left := ourNetns(t, opts.Prefix); len(left) > 0 {
		t.Errorf("Up built %v while locked", left)
	}
	lk.release()
}
