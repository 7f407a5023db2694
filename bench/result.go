package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Figure names, as --only takes them.
const (
	FigSelfHeal    = "self-heal"
	FigConvergence = "convergence"
	FigCNIAdd      = "cni-add"
	FigPodBurst    = "pod-burst"
	FigThroughput  = "throughput"
	FigScale       = "scale"
	FigIPAM        = "ipam"
)

// Figures lists every figure in table order (issue 7's numbering).
var Figures = []string{FigSelfHeal, FigConvergence, FigCNIAdd, FigPodBurst, FigThroughput, FigScale, FigIPAM}

// ErrUnknownFigure: --only names no figure.
var ErrUnknownFigure = errors.New("unknown figure")

// CheckFigure accepts "" (every figure) or one of Figures.
func CheckFigure(name string) error {
	if name == "" {
		return nil
	}
	for _, f := range Figures {
		if f == name {
			return nil
		}
	}
	return fmt.Errorf("%w %q: use one of %s", ErrUnknownFigure, name, strings.Join(Figures, ", "))
}

// Stat names the statistic of a Measurement that a goal bounds.
type Stat string

// Statistics a goal can bound.
const (
	StatP50   Stat = "p50"
	StatP99   Stat = "p99"
	StatValue Stat = "value"
	StatRatio Stat = "ratio"
)

// Goal bounds one statistic of a row: at most Limit (AtMost) or at least.
type Goal struct {
	Stat   Stat    `json:"stat"`
	AtMost bool    `json:"atMost"`
	Limit  float64 `json:"limit"`
}

// Measurement is one measured quantity: latency samples summarised by
// their nearest-rank p50 and p99 (Value is then the p99), or one value.
type Measurement struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50,omitempty"`
	P99     float64 `json:"p99,omitempty"`
	Value   float64 `json:"value"`
}

// Row is one line of the bench table: a figure (or one case of it), the
// same-run baseline it is set against, their ratio and the goal's verdict.
type Row struct {
	// Figure is one of Figures; Case tells rows of one figure apart.
	Figure string `json:"figure"`
	Case   string `json:"case,omitempty"`
	// Datastore is "kubernetes" for a figure measured again on the
	// Kubernetes datastore, whose baseline is the same figure's etcd row
	// of this run (so the ratio is kubernetes ÷ etcd); "" for the etcd
	// lab's figures and those no datastore takes part in.
	Datastore string `json:"datastore,omitempty"`
	// Unit is the unit of Result's and Baseline's numbers.
	Unit string `json:"unit"`
	// Latency marks rows of latency samples (p50/p99).
	Latency bool        `json:"latency"`
	Result  Measurement `json:"result"`
	// Baseline is the same-run reference; BaselineWhat says what it is.
	Baseline     Measurement `json:"baseline"`
	BaselineWhat string      `json:"baselineWhat"`
	// BaselineUnit is set when the baseline's unit differs from Unit.
	BaselineUnit string `json:"baselineUnit,omitempty"`
	// Ratio is Result ÷ Baseline, statistic by statistic.
	Ratio Measurement `json:"ratio"`
	Goals []Goal      `json:"goals"`
	// Goal renders Goals; Met reports whether the row has goals and all of
	// them hold; Verdict is "met", "not met", "error" or, for a row
	// without a goal (shown for comparison), "no goal".
	Goal    string `json:"goal"`
	Met     bool   `json:"met"`
	Verdict string `json:"verdict"`
	Note    string `json:"note,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Verdicts.
const (
	VerdictMet    = "met"
	VerdictNotMet = "not met"
	VerdictError  = "error"
	VerdictNoGoal = "no goal"
)

// Title is the row's name in the table: "self-heal: route", and for a
// row of the Kubernetes datastore "convergence: ... (kubernetes)".
func (r Row) Title() string {
	t := r.Figure
	if r.Case != "" {
		t += ": " + r.Case
	}
	if r.Datastore != "" {
		t += " (" + r.Datastore + ")"
	}
	return t
}

func latencyMeasurement(samples []time.Duration) Measurement {
	s := Summarize(samples)
	return Measurement{Samples: s.N, P50: ms(s.P50), P99: ms(s.P99), Value: ms(s.P99)}
}

// latencyRow builds a row of latency samples (in ms) against baseline
// samples.
func latencyRow(fig, cas string, samples, base []time.Duration, baseWhat string, goals ...Goal) Row {
	r := Row{Figure: fig, Case: cas, Unit: "ms", Latency: true, Result: latencyMeasurement(samples),
		Baseline: latencyMeasurement(base), BaselineWhat: baseWhat, Goals: goals}
	r.finish()
	return r
}

// valueRow builds a row of one value against a baseline value.
func valueRow(fig, cas, unit string, v Measurement, base Measurement, baseWhat string, goals ...Goal) Row {
	r := Row{Figure: fig, Case: cas, Unit: unit, Result: v, Baseline: base, BaselineWhat: baseWhat, Goals: goals}
	r.finish()
	return r
}

// versusEtcd builds the row of a figure measured on the Kubernetes
// datastore: its baseline is the same figure's etcd row of this run
// (etcd; nil when there is none), so that its ratio is kubernetes ÷ etcd.
// Its goals are the figure's own where they bound the figure itself.
func versusEtcd(etcd *Row, fig, cas, unit string, latency bool, m Measurement, goals ...Goal) Row {
	r := Row{Figure: fig, Case: cas, Datastore: datastoreKubernetes, Unit: unit, Latency: latency, Result: m, Goals: goals,
		BaselineWhat: "(etcd: the row above)"}
	if etcd != nil && etcd.Error == "" {
		r.Baseline = etcd.Result
	} else {
		r.BaselineWhat = "(no etcd figure in this run)"
	}
	r.finish()
	return r
}

// kubeErrorRow records a figure that could not be measured on the
// Kubernetes datastore.
func kubeErrorRow(fig, cas, unit string, err error, goals ...Goal) Row {
	r := Row{Figure: fig, Case: cas, Datastore: datastoreKubernetes, Unit: unit, Goals: goals, Error: err.Error()}
	r.finish()
	return r
}

// errorRow records a figure that could not be measured.
func errorRow(fig, cas, unit string, err error, goals ...Goal) Row {
	r := Row{Figure: fig, Case: cas, Unit: unit, Goals: goals, Error: err.Error()}
	r.finish()
	return r
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// finish computes the ratio, renders the goal and decides the verdict.
func (r *Row) finish() {
	r.Ratio = Measurement{Samples: r.Result.Samples, Value: ratio(r.Result.Value, r.Baseline.Value)}
	if r.Latency {
		r.Ratio.P50 = ratio(r.Result.P50, r.Baseline.P50)
		r.Ratio.P99 = ratio(r.Result.P99, r.Baseline.P99)
	}
	var texts []string
	met := true
	for _, g := range r.Goals {
		texts = append(texts, g.text(r.Unit))
		met = met && g.holds(r)
	}
	r.Goal = strings.Join(texts, ", ")
	switch {
	case r.Error != "" || r.Result.Value <= 0:
		r.Met, r.Verdict = false, VerdictError
		if r.Error == "" {
			r.Error = "no value was measured"
		}
	case len(r.Goals) == 0:
		r.Met, r.Verdict = false, VerdictNoGoal
	case met:
		r.Met, r.Verdict = true, VerdictMet
	default:
		r.Met, r.Verdict = false, VerdictNotMet
	}
}

func (g Goal) value(r *Row) float64 {
	switch g.Stat {
	case StatP50:
		return r.Result.P50
	case StatP99:
		return r.Result.P99
	case StatRatio:
		return r.Ratio.Value
	default:
		return r.Result.Value
	}
}

func (g Goal) holds(r *Row) bool {
	v := g.value(r)
	if g.AtMost {
		return v <= g.Limit
	}
	return v >= g.Limit
}

func (g Goal) text(unit string) string {
	op := "≥"
	if g.AtMost {
		op = "≤"
	}
	switch g.Stat {
	case StatRatio:
		return fmt.Sprintf("ratio %s %s", op, limit(g.Limit))
	case StatValue:
		return fmt.Sprintf("%s %s %s", op, limit(g.Limit), unit)
	default:
		return fmt.Sprintf("%s %s %s %s", g.Stat, op, limit(g.Limit), unit)
	}
}

// num renders a number with about three significant digits.
func num(v float64) string {
	a := v
	if a < 0 {
		a = -a
	}
	switch {
	case a == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 0.1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func (m Measurement) cell(latency bool, unit string) string {
	if m.Samples == 0 && m.Value == 0 {
		return "-"
	}
	if latency {
		return fmt.Sprintf("%s/%s %s (n=%d)", num(m.P50), num(m.P99), unit, m.Samples)
	}
	return num(m.Value) + " " + unit
}

func (r Row) ratioCell() string {
	if (r.Error != "" && r.Ratio.Value == 0) || r.Baseline.Value == 0 {
		return "-"
	}
	if r.Latency {
		return num(r.Ratio.P50) + "/" + num(r.Ratio.P99)
	}
	return num(r.Ratio.Value)
}

// WriteTable renders rows as the bench table, followed by what the
// baselines are, the notes and the errors.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tP50/P99 (OR VALUE)\tBASELINE\tRATIO\tGOAL\tVERDICT")
	for _, r := range rows {
		bunit := r.Unit
		if r.BaselineUnit != "" {
			bunit = r.BaselineUnit
		}
		base := r.Baseline.cell(r.Latency, bunit)
		if r.BaselineWhat != "" {
			base += " " + r.BaselineWhat
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Title(), r.Result.cell(r.Latency, r.Unit), base, r.ratioCell(), r.Goal, r.Verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nratio = figure ÷ baseline (p50/p99 ratios for latencies); p50/p99 are nearest-rank on the sorted samples;")
	fmt.Fprintln(w, "warm-up runs excluded; every baseline was measured in this run, on this machine.")
	var notes []string
	for _, r := range rows {
		if r.Note != "" {
			notes = append(notes, r.Title()+": "+r.Note)
		}
		if r.Error != "" {
			notes = append(notes, r.Title()+": ERROR: "+r.Error)
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nnotes:")
		for _, n := range notes {
			fmt.Fprintln(w, "  "+n)
		}
	}
	return nil
}

// WriteJSON renders rows as a JSON array.
func WriteJSON(w io.Writer, rows []Row) error {
	if rows == nil {
		rows = []Row{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rows)
}

// limit renders a goal's limit as written: 50, 0.95.
func limit(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
