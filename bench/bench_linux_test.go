package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"twill.dev/twill/bench"
	"twill.dev/twill/datastore/kube/apiserver"
)

// requireRootAndIperf skips (or, with CI=true, fails) without root or
// iperf3.
func requireRootAndIperf(t *testing.T) {
	t.Helper()
	ci := os.Getenv("CI") == "true"
	if os.Geteuid() != 0 {
		if ci {
			t.Fatal("CI=true: this test builds network namespaces and must run as root")
		}
		t.Skip("needs root (network namespaces)")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		if ci {
			t.Fatal("CI=true: iperf3 is missing (scripts/deps.sh installs it)")
		}
		t.Skip("needs iperf3")
	}
}

// kubeAvailable reports whether kube-apiserver has been built for the
// Kubernetes rows; without it the test fails under CI=true, and elsewhere
// runs the bench without them.
func kubeAvailable(t *testing.T) bool {
	t.Helper()
	if _, err := apiserver.FindBinary("kube-apiserver"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: the Kubernetes rows need kube-apiserver: %v", err)
		}
		t.Logf("running without the Kubernetes rows: %v", err)
		return false
	}
	return true
}

// TestQuickBenchEndToEnd builds the real binaries, runs `twill bench
// --quick -o json` and checks that every figure was produced with a
// positive value, and that the figures the datastore takes part in were
// measured on the Kubernetes datastore too, each against its etcd row. It
// asserts nothing about the goals: figures are for people to read, not for
// tests to time.
func TestQuickBenchEndToEnd(t *testing.T) {
	requireRootAndIperf(t)
	kube := kubeAvailable(t)
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "twill.dev/twill/cmd/twill", "twill.dev/twill/cmd/twill-cni")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "twill"), "bench", "--quick", "-o", "json", "--kubernetes="+strconv.FormatBool(kube))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("twill bench --quick took %s", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("twill bench --quick: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var rows []bench.Row
	if err := json.Unmarshal(stdout.Bytes(), &rows); err != nil {
		t.Fatalf("output is not the JSON rows: %v\n%s", err, stdout.String())
	}
	got := map[string]int{}
	etcdRows := map[string]bench.Row{}
	var kubeRows []bench.Row
	for _, r := range rows {
		if r.Error != "" {
			t.Errorf("%s: error: %s", r.Title(), r.Error)
		}
		if r.Result.Value <= 0 || r.Baseline.Value <= 0 || r.Ratio.Value <= 0 {
			t.Errorf("%s: value %v, baseline %v, ratio %v; want all positive", r.Title(), r.Result.Value, r.Baseline.Value, r.Ratio.Value)
		}
		switch {
		case len(r.Goals) == 0 && r.Verdict != bench.VerdictNoGoal:
			t.Errorf("%s: no goal, verdict %q", r.Title(), r.Verdict)
		case len(r.Goals) > 0 && r.Verdict != bench.VerdictMet && r.Verdict != bench.VerdictNotMet:
			t.Errorf("%s: verdict %q", r.Title(), r.Verdict)
		}
		switch r.Datastore {
		case "":
			etcdRows[r.Figure+"|"+r.Case] = r
		case "kubernetes":
			kubeRows = append(kubeRows, r)
		default:
			t.Errorf("%s: datastore %q", r.Title(), r.Datastore)
		}
		got[r.Figure]++
	}
	// The Kubernetes rows: one per etcd row of the figures the datastore
	// takes part in, set against it.
	wantKube := 0
	for _, r := range etcdRows {
		if kube && slices.Contains(bench.KubeFigures, r.Figure) {
			wantKube++
		}
	}
	if len(kubeRows) != wantKube || (kube && wantKube == 0) {
		t.Errorf("%d Kubernetes rows, want %d (one per etcd row of %v)", len(kubeRows), wantKube, bench.KubeFigures)
	}
	for _, r := range kubeRows {
		e, ok := etcdRows[r.Figure+"|"+r.Case]
		if !ok || r.Baseline != e.Result {
			t.Errorf("%s: baseline %+v; want the etcd row's result %+v", r.Title(), r.Baseline, e.Result)
		}
		if !strings.HasSuffix(r.Title(), " (kubernetes)") {
			t.Errorf("row title %q does not name the datastore", r.Title())
		}
	}
	for _, f := range bench.Figures {
		if got[f] == 0 {
			t.Errorf("figure %s was not produced", f)
		}
	}
	if len(got) != 7 {
		t.Errorf("%d figures produced (%v); want 7", len(got), got)
	}
	// Everything was torn down: no bench namespace is left.
	ents, err := os.ReadDir("/var/run/netns")
	if err == nil {
		for _, e := range ents {
			for _, p := range []string{bench.LabPrefix + "-", bench.ScalePrefix + "-", "twbh-", "twbp-", "twbr-"} {
				if len(e.Name()) >= len(p) && e.Name()[:len(p)] == p {
					t.Errorf("namespace %s left behind", e.Name())
				}
			}
		}
	}
}
