package cli_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/etcdtest"
	"twill.dev/twill/ipam"
)

// twillBin is the real twill binary, built once for these tests.
var twillBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "twill-cli-test")
	if err != nil {
		panic(err)
	}
	twillBin = filepath.Join(dir, "twill")
	build := exec.Command("go", "build", "-o", twillBin, "twill.dev/twill/cmd/twill")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		panic("building twill: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// twill runs the real binary against endpoint with stdin.
func twill(t *testing.T, endpoint, stdin string, args ...string) result {
	t.Helper()
	return twillEnv(t, []string{"TWILL_ETCD_ENDPOINTS=" + endpoint}, stdin, args...)
}

// twillEnv runs the real binary with stdin and env added to the test's
// environment, from which the datastore settings are removed first.
func twillEnv(t *testing.T, env []string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, twillBin, args...)
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); !slices.Contains(datastoreEnv, k) {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running twill %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

// datastoreEnv are the variables that select and reach a datastore.
var datastoreEnv = []string{"TWILL_DATASTORE_TYPE", "DATASTORE_TYPE", "KUBECONFIG", "KUBERNETES_SERVICE_HOST",
	"TWILL_ETCD_ENDPOINTS", "TWILL_ETCD_CA", "TWILL_ETCD_CERT", "TWILL_ETCD_KEY"}

func mustSucceed(t *testing.T, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	return r
}

func mustFail(t *testing.T, r result, wantInErr ...string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("expected failure, got exit 0\nstdout: %s", r.stdout)
	}
	for _, w := range wantInErr {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr does not mention %q:\n%s", w, r.stderr)
		}
	}
}

// snapshot returns every object of every kind, with its revision.
func snapshot(t *testing.T, endpoint string) map[string]string {
	t.Helper()
	s := etcdtest.Connect(t, endpoint, etcd.Config{})
	m := map[string]string{}
	for _, kind := range datastore.Kinds {
		kvs, _, err := s.List(context.Background(), kind, datastore.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			m[string(kind)+"/"+kv.Name] = kv.Revision + " " + string(kv.Value)
		}
	}
	return m
}

func sameSnapshot(t *testing.T, before, after map[string]string) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("store changed: %d keys before, %d after", len(before), len(after))
	}
	for k, v := range before {
		if after[k] != v {
			t.Fatalf("store changed at %s:\nbefore %s\nafter  %s", k, v, after[k])
		}
	}
}

const seedPool = `apiVersion: twill.dev/v1
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 172.16.0.0/16
  blockSize: 26
  ipipMode: Never
  vxlanMode: CrossSubnet
  natOutgoing: true
  nodeSelector: all()
`

func TestVersion(t *testing.T) {
	r := mustSucceed(t, twill(t, "http://127.0.0.1:1", "", "version"))
	if !strings.HasPrefix(r.stdout, "twill v") {
		t.Fatalf("version output %q", r.stdout)
	}
}

func TestApplyGetDescribe(t *testing.T) {
	ep := etcdtest.Start(t)
	r := mustSucceed(t, twill(t, ep, seedPool, "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool created" {
		t.Fatalf("apply output %q", r.stdout)
	}
	r = mustSucceed(t, twill(t, ep, seedPool, "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool unchanged" {
		t.Fatalf("re-apply output %q", r.stdout)
	}
	r = mustSucceed(t, twill(t, ep, strings.Replace(seedPool, "natOutgoing: true", "natOutgoing: false", 1), "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool configured" {
		t.Fatalf("update output %q", r.stdout)
	}
	mustSucceed(t, twill(t, ep, seedPool, "apply", "-f", "-"))

	r = mustSucceed(t, twill(t, ep, "", "get", "ippools"))
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") {
		t.Fatalf("get ippools:\n%s", r.stdout)
	}
	for _, want := range []string{"default-ipv4-ippool", "172.16.0.0/16", "CrossSubnet", "true", "all()"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("get ippools row lacks %q: %q", want, lines[1])
		}
	}
	r = mustSucceed(t, twill(t, ep, "", "get", "ippool", "default-ipv4-ippool", "-o", "wide"))
	if !strings.Contains(r.stdout, "Workload,Tunnel") || !strings.Contains(r.stdout, "26") {
		t.Errorf("wide output lacks uses or block size:\n%s", r.stdout)
	}
	r = mustSucceed(t, twill(t, ep, "", "get", "ippool", "default-ipv4-ippool", "-o", "yaml"))
	docs, err := api.DecodeDocuments([]byte(r.stdout))
	if err != nil {
		t.Fatalf("get -o yaml does not re-decode: %v\n%s", err, r.stdout)
	}
	if len(docs) != 1 || docs[0].Pool == nil || docs[0].Pool.Spec.CIDR != "172.16.0.0/16" || !docs[0].Pool.Spec.NATOutgoing {
		t.Fatalf("get -o yaml round trip: %+v", docs)
	}
	r = mustSucceed(t, twill(t, ep, "", "get", "ippools", "-o", "json"))
	if !strings.Contains(r.stdout, `"kind": "List"`) || !strings.Contains(r.stdout, `"cidr": "172.16.0.0/16"`) {
		t.Errorf("get -o json:\n%s", r.stdout)
	}
	mustFail(t, twill(t, ep, "", "get", "ippool", "nope"), `IPPool "nope" not found`)

	r = mustSucceed(t, twill(t, ep, "", "describe", "ippool", "default-ipv4-ippool"))
	// The Spec section reads like the seed's kubectl describe output.
	wantSpec := `Spec:
  Allowed Uses:
    Workload
    Tunnel
  Block Size:     26
  Cidr:           172.16.0.0/16
  Ipip Mode:      Never
  Nat Outgoing:   true
  Node Selector:  all()
  Vxlan Mode:     CrossSubnet
`
	if !strings.Contains(r.stdout, wantSpec) {
		t.Fatalf("describe Spec section differs from the seed's:\n%s", r.stdout)
	}
}

func TestApplyCalicoManifest(t *testing.T) {
	ep := etcdtest.Start(t)
	doc := `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
  creationTimestamp: "2023-11-09T01:00:00Z"
  uid: 0b7b7c6e-1b4e-4f0a-9d5e-6a1c2c6f2f00
spec:
  allowedUses:
  - Workload
  - Tunnel
  blockSize: 26
  cidr: 172.16.0.0/16
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: CrossSubnet
`
	mustSucceed(t, twill(t, ep, doc, "apply", "-f", "-"))
	r := mustSucceed(t, twill(t, ep, "", "get", "ippools"))
	if !strings.Contains(r.stdout, "CrossSubnet") {
		t.Fatalf("converted pool not listed:\n%s", r.stdout)
	}
}

func TestApplyRejectsBadInputAndChangesNothing(t *testing.T) {
	ep := etcdtest.Start(t)
	mustSucceed(t, twill(t, ep, seedPool, "apply", "-f", "-"))
	before := snapshot(t, ep)
	cases := []struct {
		name string
		doc  string
		want []string
	}{
		{"bad yaml", "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata: [unclosed\n", []string{"document"}},
		{"overlapping pool", strings.NewReplacer("default-ipv4-ippool", "other", "172.16.0.0/16", "172.16.128.0/17").Replace(seedPool), []string{"overlaps", "default-ipv4-ippool"}},
		{"block size 33", strings.NewReplacer("default-ipv4-ippool", "p33", "172.16.0.0/16", "10.9.0.0/16", "blockSize: 26", "blockSize: 33").Replace(seedPool), []string{"spec.blockSize", "33"}},
		{"pool smaller than a block", strings.NewReplacer("default-ipv4-ippool", "tiny", "172.16.0.0/16", "10.9.0.0/27").Replace(seedPool), []string{"spec.cidr", "block"}},
		{"ipip", strings.NewReplacer("default-ipv4-ippool", "ipip", "172.16.0.0/16", "10.9.0.0/16", "ipipMode: Never", "ipipMode: Always", "vxlanMode: CrossSubnet", "vxlanMode: Never").Replace(seedPool), []string{"IPIP"}},
		{"unknown field", strings.NewReplacer("default-ipv4-ippool", "typo", "172.16.0.0/16", "10.9.0.0/16", "blockSize:", "blocksize:").Replace(seedPool), []string{"blocksize"}},
		{"cidr change", strings.Replace(seedPool, "172.16.0.0/16", "172.16.0.0/15", 1), []string{"spec.cidr"}},
		{"one bad document of two", strings.NewReplacer("default-ipv4-ippool", "good", "172.16.0.0/16", "10.8.0.0/16").Replace(seedPool) + "---\n" + strings.NewReplacer("default-ipv4-ippool", "bad", "172.16.0.0/16", "10.9.0.1/16").Replace(seedPool), []string{"document 2", "10.9.0.0/16"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mustFail(t, twill(t, ep, c.doc, "apply", "-f", "-"), c.want...)
			sameSnapshot(t, before, snapshot(t, ep))
		})
	}
	mustFail(t, twill(t, ep, "", "apply", "-f", filepath.Join(t.TempDir(), "missing.yaml")), "missing.yaml")
	mustFail(t, twill(t, ep, "", "apply"), "-f")
	sameSnapshot(t, before, snapshot(t, ep))
}

func TestDeletePoolRefusedWhileAllocated(t *testing.T) {
	ep := etcdtest.Start(t)
	mustSucceed(t, twill(t, ep, seedPool, "apply", "-f", "-"))
	s := etcdtest.Connect(t, ep, etcd.Config{})
	m := ipam.New(s)
	ctx := context.Background()
	if err := m.PinBlock(ctx, netip.MustParsePrefix("172.16.159.128/26"), "k8s-master1"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Allocate(ctx, ipam.AllocateRequest{Handle: "ctr1.eth0", Node: "k8s-master1", IP: netip.MustParseAddr("172.16.159.145"), Attrs: map[string]string{api.AttrNamespace: "default", api.AttrPod: "web-1"}}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, ep)
	mustFail(t, twill(t, ep, "", "delete", "ippool", "default-ipv4-ippool"), "172.16.159.145", "ctr1.eth0", "default/web-1", "k8s-master1")
	sameSnapshot(t, before, snapshot(t, ep))

	r := mustSucceed(t, twill(t, ep, "", "ipam", "show", "--show-blocks"))
	for _, want := range []string{"172.16.0.0/16", "65536", "172.16.159.128/26", "k8s-master1 (pinned)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("ipam show lacks %q:\n%s", want, r.stdout)
		}
	}
	r = mustSucceed(t, twill(t, ep, "", "get", "blocks"))
	if !strings.Contains(r.stdout, "172.16.159.128/26") || !strings.Contains(r.stdout, "63") {
		t.Errorf("get blocks:\n%s", r.stdout)
	}

	r = mustSucceed(t, twill(t, ep, "", "ipam", "release", "--handle", "ctr1.eth0"))
	if !strings.Contains(r.stdout, "released 172.16.159.145") {
		t.Fatalf("release output %q", r.stdout)
	}
	mustSucceed(t, twill(t, ep, "", "delete", "ippool", "default-ipv4-ippool"))
	r = mustSucceed(t, twill(t, ep, "", "get", "ippools"))
	if strings.Contains(r.stdout, "default-ipv4-ippool") {
		t.Fatalf("pool still listed after delete:\n%s", r.stdout)
	}
}

func TestNodesApplyAndGet(t *testing.T) {
	ep := etcdtest.Start(t)
	doc := `apiVersion: twill.dev/v1
kind: Node
metadata:
  name: k8s-master1
  labels: {zone: a}
spec:
  address: 192.168.3.241/24
  vtepMAC: "66:04:84:48:ab:6a"
  tunnelAddress: 172.16.159.128
`
	mustSucceed(t, twill(t, ep, doc, "apply", "-f", "-"))
	r := mustSucceed(t, twill(t, ep, "", "get", "nodes", "-o", "wide"))
	for _, want := range []string{"k8s-master1", "192.168.3.241/24", "172.16.159.128", "66:04:84:48:ab:6a", "zone=a"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("get nodes lacks %q:\n%s", want, r.stdout)
		}
	}
	mustFail(t, twill(t, ep, strings.Replace(doc, "192.168.3.241/24", "192.168.3.241", 1), "apply", "-f", "-"), "spec.address")
}

func TestUnreachableDatastore(t *testing.T) {
	start := time.Now()
	r := twill(t, "http://127.0.0.1:1", "", "get", "ippools", "--etcd-timeout", "1s")
	mustFail(t, r, "http://127.0.0.1:1")
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("unreachable datastore took %v to report", d)
	}
}

// TestApplyResourceVersion: a document with metadata.resourceVersion is a
// compare-and-swap against it; a stale one changes nothing.
func TestApplyResourceVersion(t *testing.T) {
	ep := etcdtest.Start(t)
	mustSucceed(t, twill(t, ep, seedPool, "apply", "-f", "-"))
	got := mustSucceed(t, twill(t, ep, "", "get", "ippool", "default-ipv4-ippool", "-o", "yaml")).stdout
	if !strings.Contains(got, "resourceVersion:") {
		t.Fatalf("get -o yaml has no resourceVersion:\n%s", got)
	}
	edited := strings.Replace(got, "natOutgoing: true", "natOutgoing: false", 1)
	if edited == got {
		t.Fatalf("get -o yaml has no natOutgoing: true:\n%s", got)
	}
	r := mustSucceed(t, twill(t, ep, edited, "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool configured" {
		t.Fatalf("apply with the current resourceVersion: %q", r.stdout)
	}
	// The same document again: its resourceVersion is stale now.
	before := snapshot(t, ep)
	mustFail(t, twill(t, ep, strings.Replace(got, "natOutgoing: true", "natOutgoing: true\n  disabled: true", 1), "apply", "-f", "-"), "resourceVersion", "stale")
	sameSnapshot(t, before, snapshot(t, ep))
	r = mustSucceed(t, twill(t, ep, "", "get", "ippool", "default-ipv4-ippool", "-o", "json"))
	if strings.Contains(r.stdout, `"natOutgoing": true`) {
		t.Errorf("natOutgoing is not false after the apply:\n%s", r.stdout)
	}
	// A resourceVersion for an object that does not exist is refused.
	gone := strings.Replace(got, "default-ipv4-ippool", "gone", 1)
	gone = strings.Replace(gone, "172.16.0.0/16", "10.20.0.0/16", 1)
	mustFail(t, twill(t, ep, gone, "apply", "-f", "-"), "document 1", "does not exist")
	sameSnapshot(t, before, snapshot(t, ep))
}

// TestApplySeveralKinds: pools and nodes in one file are each created,
// and reported in document order.
func TestApplySeveralKinds(t *testing.T) {
	ep := etcdtest.Start(t)
	node := `apiVersion: twill.dev/v1
kind: Node
metadata:
  name: k8s-node1
spec:
  address: 192.168.32.105/24
`
	other := strings.NewReplacer("default-ipv4-ippool", "second", "172.16.0.0/16", "10.8.0.0/16").Replace(seedPool)
	r := mustSucceed(t, twill(t, ep, seedPool+"---\n"+node+"---\n"+other, "apply", "-f", "-"))
	want := "ippool.twill.dev/default-ipv4-ippool created\nnode.twill.dev/k8s-node1 created\nippool.twill.dev/second created"
	if strings.TrimSpace(r.stdout) != want {
		t.Fatalf("apply output %q; want %q", r.stdout, want)
	}
	r = mustSucceed(t, twill(t, ep, seedPool+"---\n"+node, "apply", "-f", "-"))
	if strings.TrimSpace(r.stdout) != "ippool.twill.dev/default-ipv4-ippool unchanged\nnode.twill.dev/k8s-node1 unchanged" {
		t.Fatalf("re-apply output %q", r.stdout)
	}
	s := etcdtest.Connect(t, ep, etcd.Config{})
	if _, err := s.Get(context.Background(), datastore.KindNode, "k8s-node1"); err != nil {
		t.Errorf("node not stored: %v", err)
	}
}

// TestDatastoreSelection: --datastore and its environment variables pick
// the datastore; bad or ambiguous choices are usage errors.
func TestDatastoreSelection(t *testing.T) {
	ep := etcdtest.Start(t)
	mustSucceed(t, twill(t, ep, seedPool, "apply", "-f", "-"))
	// Explicit etcd, by flag and by each variable (Calico's etcdv3 too).
	for _, env := range [][]string{{"TWILL_DATASTORE_TYPE=etcd"}, {"DATASTORE_TYPE=etcdv3"}, {"KUBERNETES_SERVICE_HOST=10.96.0.1"}, nil} {
		args := []string{"get", "ippools", "--etcd-endpoints", ep}
		if env == nil {
			args = append(args, "--datastore", "etcd")
		}
		r := mustSucceed(t, twillEnv(t, env, "", args...))
		if !strings.Contains(r.stdout, "default-ipv4-ippool") {
			t.Errorf("env %v: get ippools:\n%s", env, r.stdout)
		}
	}
	for _, tc := range []struct {
		env  []string
		args []string
		want []string
	}{
		{nil, []string{"get", "ippools", "--datastore", "consul"}, []string{"consul", "etcd or kubernetes"}},
		{[]string{"TWILL_DATASTORE_TYPE=consul"}, []string{"get", "ippools"}, []string{"consul", "etcd or kubernetes"}},
		{nil, []string{"get", "ippools", "--etcd-endpoints", ep, "--kubeconfig", "/nonexistent"}, []string{"--datastore"}},
		{nil, []string{"lab", "up", "--datastore", "consul"}, []string{"consul", "etcd or kubernetes"}},
		{nil, []string{"lab", "up", "--datastore", "kubernetes", "--kubeconfig", "/nonexistent"}, []string{"--kubeconfig", "its own kubeconfig"}},
		{[]string{"TWILL_DATASTORE_TYPE=kubernetes"}, []string{"bench", "--only", "ipam"}, []string{"etcd", "kubernetes"}},
	} {
		r := twillEnv(t, tc.env, "", tc.args...)
		if r.code != 2 {
			t.Errorf("env %v twill %v: exit %d, want 2 (stderr %q)", tc.env, tc.args, r.code, r.stderr)
		}
		mustFail(t, r, tc.want...)
	}
	// The kubernetes datastore is tried, and its kubeconfig named, even
	// with etcd endpoints in the environment.
	kc := filepath.Join(t.TempDir(), "no-kubeconfig")
	r := twillEnv(t, []string{"TWILL_ETCD_ENDPOINTS=" + ep}, "", "get", "ippools", "--datastore", "kubernetes", "--kubeconfig", kc)
	mustFail(t, r, kc)
	r = twillEnv(t, []string{"TWILL_DATASTORE_TYPE=kubernetes", "KUBECONFIG=" + kc}, "", "get", "ippools")
	mustFail(t, r, kc)
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {"get"}, {"get", "ippools", "--bogus"}, {"get", "widgets"}, {"ipam", "release"}} {
		r := twill(t, "http://127.0.0.1:1", "", args...)
		if r.code != 2 {
			t.Errorf("twill %v: exit %d, want 2 (stderr %q)", args, r.code, r.stderr)
		}
	}
}
