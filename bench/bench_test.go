package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

func durations(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m) * time.Millisecond
	}
	return out
}

func TestPercentileNearestRank(t *testing.T) {
	// 1..100 ms: the p-th percentile is exactly p ms.
	var hundred []int
	for i := 1; i <= 100; i++ {
		hundred = append(hundred, i)
	}
	s := durations(hundred...)
	for _, tc := range []struct {
		p    float64
		want int
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0.5, 1}} {
		if got := Percentile(s, tc.p); got != time.Duration(tc.want)*time.Millisecond {
			t.Errorf("Percentile(1..100 ms, %v) = %v; want %d ms", tc.p, got, tc.want)
		}
	}
	// Nearest rank on 20 samples: p99 is the largest (rank ⌈19.8⌉ = 20),
	// p50 the 10th.
	s20 := durations(20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
	st := Summarize(s20)
	if st.N != 20 || st.P50 != 10*time.Millisecond || st.P99 != 20*time.Millisecond || st.Min != time.Millisecond || st.Max != 20*time.Millisecond {
		t.Errorf("Summarize(20 samples) = %+v; want p50 10ms, p99 20ms, min 1ms, max 20ms", st)
	}
	if s20[0] != 20*time.Millisecond {
		t.Error("Summarize sorted its argument in place")
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("Percentile(nil) = %v; want 0", got)
	}
	if got := Summarize(nil); got != (Stats{}) {
		t.Errorf("Summarize(nil) = %+v; want zero", got)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2}} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v; want %v", tc.in, got, tc.want)
		}
	}
}

func TestLatencyRowRatioAndVerdict(t *testing.T) {
	goal := Goal{Stat: StatP99, AtMost: true, Limit: 50}
	r := latencyRow(FigSelfHeal, "route", durations(2, 4, 6, 8), durations(1, 1, 2, 2), "(base)", goal)
	if r.Result.P50 != 4 || r.Result.P99 != 8 || r.Result.Value != 8 || r.Result.Samples != 4 {
		t.Errorf("result = %+v; want p50 4, p99 8 (value), 4 samples", r.Result)
	}
	if r.Ratio.P50 != 4 || r.Ratio.P99 != 4 || r.Ratio.Value != 4 {
		t.Errorf("ratio = %+v; want 4 (4/1) and 4 (8/2)", r.Ratio)
	}
	if !r.Met || r.Verdict != VerdictMet || r.Goal != "p99 ≤ 50 ms" {
		t.Errorf("verdict %q (met %v), goal %q; want met, p99 ≤ 50 ms", r.Verdict, r.Met, r.Goal)
	}
	slow := latencyRow(FigSelfHeal, "route", durations(2, 60), durations(1, 1), "(base)", goal)
	if slow.Met || slow.Verdict != VerdictNotMet {
		t.Errorf("p99 60 ms: verdict %q; want not met", slow.Verdict)
	}
}

func TestTwoGoalsMustBothHold(t *testing.T) {
	goals := []Goal{{Stat: StatP50, AtMost: true, Limit: 10}, {Stat: StatP99, AtMost: true, Limit: 40}}
	// p50 fine, p99 too slow.
	r := latencyRow(FigCNIAdd, "serial", durations(5, 5, 5, 50), durations(1, 1, 1, 1), "", goals...)
	if r.Met || r.Goal != "p50 ≤ 10 ms, p99 ≤ 40 ms" {
		t.Errorf("verdict %q, goal %q; want not met with both goals shown", r.Verdict, r.Goal)
	}
	ok := latencyRow(FigCNIAdd, "serial", durations(5, 5, 5, 30), durations(1, 1, 1, 1), "", goals...)
	if !ok.Met {
		t.Errorf("p50 5, p99 30: verdict %q; want met", ok.Verdict)
	}
}

func TestRatioGoal(t *testing.T) {
	goal := Goal{Stat: StatRatio, AtMost: false, Limit: 0.95}
	r := valueRow(FigThroughput, "vxlan", "Gbit/s", Measurement{Samples: 1, Value: 9}, Measurement{Samples: 1, Value: 10}, "", goal)
	if r.Ratio.Value != 0.9 || r.Met || r.Goal != "ratio ≥ 0.95" {
		t.Errorf("9 vs 10 Gbit/s: ratio %v, met %v, goal %q; want 0.9, not met, ratio ≥ 0.95", r.Ratio.Value, r.Met, r.Goal)
	}
	r = valueRow(FigThroughput, "vxlan", "Gbit/s", Measurement{Samples: 1, Value: 9.6}, Measurement{Samples: 1, Value: 10}, "", goal)
	if !r.Met {
		t.Errorf("9.6 vs 10 Gbit/s: verdict %q; want met", r.Verdict)
	}
}

func TestErrorAndEmptyRows(t *testing.T) {
	r := errorRow(FigScale, "rss", "MiB", errors.New("agent died"), Goal{Stat: StatValue, AtMost: true, Limit: 64})
	if r.Met || r.Verdict != VerdictError || r.Error != "agent died" {
		t.Errorf("error row: %+v", r)
	}
	// A zero value is never "met", even against an upper bound.
	z := valueRow(FigScale, "rss", "MiB", Measurement{}, Measurement{Value: 1}, "", Goal{Stat: StatValue, AtMost: true, Limit: 64})
	if z.Met || z.Verdict != VerdictError {
		t.Errorf("row without a value: verdict %q; want error", z.Verdict)
	}
}

// TestVersusEtcd: a row of the Kubernetes datastore takes the etcd row's
// result as its baseline, so that its ratio is kubernetes ÷ etcd; its
// title names the datastore; a row without goals says so.
func TestVersusEtcd(t *testing.T) {
	goal := Goal{Stat: StatP99, AtMost: true, Limit: 250}
	etcd := latencyRow(FigConvergence, "new node", durations(10, 20), durations(1, 2), "(etcd put→watch event)", goal)
	k := versusEtcd(&etcd, FigConvergence, "new node", "ms", true, latencyMeasurement(durations(30, 80)), goal)
	if k.Baseline != etcd.Result || k.Ratio.P50 != 3 || k.Ratio.P99 != 4 || k.Datastore != "kubernetes" {
		t.Errorf("kubernetes row: baseline %+v (etcd result %+v), ratio %+v, datastore %q; want the etcd result, ratios 3 and 4", k.Baseline, etcd.Result, k.Ratio, k.Datastore)
	}
	if k.Title() != "convergence: new node (kubernetes)" || etcd.Title() != "convergence: new node" {
		t.Errorf("titles %q and %q", k.Title(), etcd.Title())
	}
	if !k.Met || k.Verdict != VerdictMet {
		t.Errorf("p99 80 ms against p99 ≤ 250 ms: verdict %q", k.Verdict)
	}
	ipamEtcd := valueRow(FigIPAM, "1 worker", "alloc/s", Measurement{Samples: 10, Value: 200}, Measurement{Samples: 10, Value: 400}, "(raw)", Goal{Stat: StatRatio, Limit: 0.5})
	ki := versusEtcd(&ipamEtcd, FigIPAM, "1 worker", "alloc/s", false, Measurement{Samples: 10, Value: 50}, kubeGoals(&ipamEtcd)...)
	if ki.Ratio.Value != 0.25 || len(ki.Goals) != 0 || ki.Verdict != VerdictNoGoal || ki.Met {
		t.Errorf("ipam kubernetes row: ratio %v, goals %v, verdict %q, met %v; want 0.25, none, %q, false", ki.Ratio.Value, ki.Goals, ki.Verdict, ki.Met, VerdictNoGoal)
	}
	// Without an etcd row there is no ratio to show.
	none := versusEtcd(nil, FigIPAM, "1 worker", "alloc/s", false, Measurement{Samples: 10, Value: 50})
	if none.ratioCell() != "-" || !strings.Contains(none.BaselineWhat, "no etcd figure") {
		t.Errorf("row without an etcd row: ratio cell %q, baseline %q", none.ratioCell(), none.BaselineWhat)
	}
	fails := kubeFailRows([]Row{etcd}, FigConvergence, errors.New("no apiserver"))
	if len(fails) != 1 || fails[0].Case != "new node" || fails[0].Verdict != VerdictError || fails[0].Datastore != "kubernetes" {
		t.Errorf("kubeFailRows = %+v", fails)
	}
}

func TestWriteTableAndJSON(t *testing.T) {
	rows := []Row{
		latencyRow(FigSelfHeal, "route", durations(2, 4), durations(1, 1), "(netlink route add→event)", Goal{Stat: StatP99, AtMost: true, Limit: 50}),
		errorRow(FigIPAM, "", "alloc/s", errors.New("etcd down"), Goal{Stat: StatRatio, Limit: 0.5}),
	}
	rows[0].Note = "a note"
	var b bytes.Buffer
	if err := WriteTable(&b, rows); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"FIGURE", "P50/P99 (OR VALUE)", "BASELINE", "RATIO", "GOAL", "VERDICT",
		"self-heal: route", "2.00/4.00 ms (n=2)", "(netlink route add→event)", "2.00/4.00", "p99 ≤ 50 ms", "met",
		"ipam", "error", "ERROR: etcd down", "a note", "nearest-rank"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	if err := WriteJSON(&b, rows); err != nil {
		t.Fatal(err)
	}
	var back []Row
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not decode: %v\n%s", err, b.String())
	}
	if len(back) != 2 || back[0].Result.Value != 4 || back[0].Verdict != VerdictMet || back[1].Error != "etcd down" {
		t.Errorf("JSON round trip = %+v", back)
	}
	b.Reset()
	if err := WriteJSON(&b, nil); err != nil || strings.TrimSpace(b.String()) != "[]" {
		t.Errorf("WriteJSON(nil) = %q, %v; want []", b.String(), err)
	}
}

func TestCheckFigure(t *testing.T) {
	for _, f := range append([]string{""}, Figures...) {
		if err := CheckFigure(f); err != nil {
			t.Errorf("CheckFigure(%q) = %v", f, err)
		}
	}
	if err := CheckFigure("latency"); !errors.Is(err, ErrUnknownFigure) || !strings.Contains(err.Error(), "self-heal") {
		t.Errorf("CheckFigure(latency) = %v; want ErrUnknownFigure listing the names", err)
	}
	if len(Figures) != 7 {
		t.Errorf("%d figures; issue 7 has 7", len(Figures))
	}
}

func TestScaleClusterPlansHalfDirectHalfVXLAN(t *testing.T) {
	const peers, pods = 40, 3
	c := ScaleCluster("local", peers, pods)
	if len(c.Nodes) != peers+1 || len(c.Blocks) != peers+1 || len(c.Workloads) != peers*pods || len(c.Handles) != peers*pods {
		t.Fatalf("cluster has %d nodes, %d blocks, %d workloads, %d handles", len(c.Nodes), len(c.Blocks), len(c.Workloads), len(c.Handles))
	}
	dp := plan.Plan(c.Input(plan.VXLANConfig{}))
	kinds := map[plan.RouteKind]int{}
	for _, r := range dp.Routes {
		kinds[r.Kind]++
	}
	if kinds[plan.KindDirect] != peers/2 || kinds[plan.KindVXLAN] != peers/2 {
		t.Errorf("plan has %d direct and %d VXLAN routes; want %d of each", kinds[plan.KindDirect], kinds[plan.KindVXLAN], peers/2)
	}
	if len(dp.Neighbors) != peers || len(dp.FDB) != peers {
		t.Errorf("plan has %d neighbours and %d FDB entries; want %d each", len(dp.Neighbors), len(dp.FDB), peers)
	}
	// Allocations sit at distinct ordinals inside their block.
	b := c.Blocks[1]
	if len(b.Allocations) != pods+1 || b.Allocations[0].Ordinal != 0 || b.Allocations[pods].Ordinal != pods {
		t.Errorf("block %s allocations = %+v", b.CIDR, b.Allocations)
	}
}

func TestClusterWrite(t *testing.T) {
	c := ScaleCluster("local", 30, 4)
	s := datastore.NewFake()
	ctx := context.Background()
	skip := func(kind datastore.Kind, name string) bool { return kind == datastore.KindNode && name == "local" }
	if err := c.Write(ctx, s, skip); err != nil {
		t.Fatal(err)
	}
	kvs, err := c.KVs("")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, kind := range datastore.Kinds {
		all, _, err := s.List(ctx, kind, datastore.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		total += len(all)
	}
	if total != len(kvs)-1 {
		t.Errorf("store holds %d objects; want %d (all but the skipped one)", total, len(kvs)-1)
	}
	// One write per object: no batching.
	if s.Writes() != len(kvs)-1 {
		t.Errorf("%d writes for %d objects; want one each", s.Writes(), len(kvs)-1)
	}
	if _, err := s.Get(ctx, datastore.KindNode, "local"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("skipped object written: %v", err)
	}
	w, err := datastore.GetObject[api.WorkloadEndpoint](ctx, s, datastore.KindWorkload, "node-00007-c3.eth0")
	if err != nil || w.Value.Spec.Node != "node-00007" || w.Labels[datastore.LabelNode] != "node-00007" {
		t.Errorf("workload of node 7: %+v, %v", w, err)
	}
	// Node 7's endpoints are found by label, as its agent lists them.
	mine, _, err := s.List(ctx, datastore.KindWorkload, datastore.ListOptions{Labels: map[string]string{datastore.LabelNode: "node-00007"}})
	if err != nil || len(mine) != 4 {
		t.Errorf("node 7's endpoints by label: %d, %v; want 4", len(mine), err)
	}
	b, err := datastore.GetObject[api.Block](ctx, s, datastore.KindBlock, datastore.BlockName(ScaleBlock(7).String()))
	if err != nil || b.Value.Affinity != "node-00007" || b.Labels[datastore.LabelNode] != "node-00007" {
		t.Errorf("block of node 7: %+v, %v", b, err)
	}
}

// TestClusterWriteStopsOnFailure: a failing store ends Write with the
// failure, without writing the rest.
func TestClusterWriteStopsOnFailure(t *testing.T) {
	c := ScaleCluster("local", 200, 10)
	s := datastore.NewFake()
	s.Fail(1, datastore.ErrUnavailable)
	err := c.Write(context.Background(), s, nil)
	if !errors.Is(err, datastore.ErrUnavailable) {
		t.Fatalf("Write = %v; want ErrUnavailable", err)
	}
	kvs, _ := c.KVs("")
	if s.Writes() >= len(kvs)-1 {
		t.Errorf("%d of %d objects written after a failure", s.Writes(), len(kvs))
	}
}

func TestNthBlock(t *testing.T) {
	if got := ScaleBlock(0).String(); got != "172.16.0.0/26" {
		t.Errorf("ScaleBlock(0) = %s", got)
	}
	if got := ScaleBlock(5).String(); got != "172.16.1.64/26" {
		t.Errorf("ScaleBlock(5) = %s", got)
	}
}
