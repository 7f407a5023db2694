package api

import (
	"errors"
	"testing"
)

func TestParseSelectorMatches(t *testing.T) {
	master := map[string]string{"role": "master", "zone": "a", "kubernetes.io/os": "linux"}
	worker := map[string]string{"role": "worker", "zone": "b", "kubernetes.io/os": "linux", "gpu": ""}
	edge := map[string]string{"role": "edge-worker"}
	none := map[string]string{}
	nodes := []map[string]string{master, worker, edge, none}

	tests := []struct {
		sel       string
		canonical string
		want      []bool // for master, worker, edge, none
	}{
		{"", "all()", []bool{true, true, true, true}},
		{"   ", "all()", []bool{true, true, true, true}},
		{"all()", "all()", []bool{true, true, true, true}},
		{"all ( )", "all()", []bool{true, true, true, true}},
		{"has(gpu)", "has(gpu)", []bool{false, true, false, false}},
		{"has( kubernetes.io/os )", "has(kubernetes.io/os)", []bool{true, true, false, false}},
		{"!has(gpu)", "!has(gpu)", []bool{true, false, true, true}},
		{"role == 'master'", `role == "master"`, []bool{true, false, false, false}},
		{`role=="master"`, `role == "master"`, []bool{true, false, false, false}},
		{"role != 'master'", `role != "master"`, []bool{false, true, true, true}},
		{"gpu == ''", `gpu == ""`, []bool{false, true, false, false}},
		{"zone in {'a', 'b'}", `zone in {"a", "b"}`, []bool{true, true, false, false}},
		{"zone in {'b','a','b'}", `zone in {"a", "b"}`, []bool{true, true, false, false}},
		{"zone in {}", `zone in {}`, []bool{false, false, false, false}},
		{"zone not in {'a'}", `zone not in {"a"}`, []bool{false, true, true, true}},
		{"role contains 'work'", `role contains "work"`, []bool{false, true, true, false}},
		{"role starts with 'edge'", `role starts with "edge"`, []bool{false, false, true, false}},
		{"role ends with 'er'", `role ends with "er"`, []bool{true, true, true, false}},
		{"!role == 'master'", `!role == "master"`, []bool{false, true, true, true}},
		{"kubernetes.io/os == 'linux' && zone == 'b'", `kubernetes.io/os == "linux" && zone == "b"`,
			[]bool{false, true, false, false}},
		{"zone == 'a' || role == 'edge-worker'", `zone == "a" || role == "edge-worker"`,
			[]bool{true, false, true, false}},
		// && binds tighter than ||.
		{"zone == 'a' || zone == 'b' && has(gpu)", `zone == "a" || zone == "b" && has(gpu)`,
			[]bool{true, true, false, false}},
		{"(zone == 'a' || zone == 'b') && has(gpu)", `(zone == "a" || zone == "b") && has(gpu)`,
			[]bool{false, true, false, false}},
		// ! binds tighter than &&.
		{"!has(gpu) && has(zone)", `!has(gpu) && has(zone)`, []bool{true, false, false, false}},
		{"!(has(gpu) && has(zone))", `!(has(gpu) && has(zone))`, []bool{true, false, true, true}},
		{"!!has(gpu)", `!!has(gpu)`, []bool{false, true, false, false}},
		{"((has(gpu)))", `has(gpu)`, []bool{false, true, false, false}},
		{"a == 'x' && (b == 'y' && c == 'z')", `a == "x" && b == "y" && c == "z"`, []bool{false, false, false, false}},
		{`role == 'say "hi"'`, `role == 'say "hi"'`, []bool{false, false, false, false}},
		// Keywords are plain keys when not followed by "(".
		{"has == 'x' || all != 'y'", `has == "x" || all != "y"`, []bool{true, true, true, true}},
		{"\tzone\n==\r'a'", `zone == "a"`, []bool{true, false, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.sel, func(t *testing.T) {
			s, err := ParseSelector(tt.sel)
			if err != nil {
				t.Fatalf("ParseSelector: %v", err)
			}
			if got := s.String(); got != tt.canonical {
				t.Errorf("String() = %q, want %q", got, tt.canonical)
			}
			for i, n := range nodes {
				if got := s.Matches(n); got != tt.want[i] {
					t.Errorf("Matches(%v) = %v, want %v", n, got, tt.want[i])
				}
			}
			// The canonical form parses back to the same selector.
			again, err := ParseSelector(s.String())
			if err != nil {
				t.Fatalf("canonical form %q does not parse: %v", s.String(), err)
			}
			if again.String() != s.String() {
				t.Errorf("re-parsed String() = %q, want %q", again.String(), s.String())
			}
			for i, n := range nodes {
				if again.Matches(n) != tt.want[i] {
					t.Errorf("re-parsed selector disagrees on %v", n)
				}
			}
		})
	}
	// A nil label map is a node without labels.
	if !MustSelector(t, "!has(a)").Matches(nil) || MustSelector(t, "has(a)").Matches(nil) {
		t.Error("nil labels mishandled")
	}
}

func MustSelector(t *testing.T, s string) Selector {
	t.Helper()
	sel, err := ParseSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

func TestParseSelectorErrors(t *testing.T) {
	tests := []struct {
		sel      string
		pos      int
		expected string
		found    string
	}{
		{"zone ==", 7, `a quoted string ('...' or "...")`, "the end of the selector"},
		{"zone == a", 8, `a quoted string ('...' or "...")`, `"a"`},
		{"zone = 'a'", 5, `an operator (==, !=, in, not in, contains, starts with, ends with) after label key "zone"`, `"="`},
		{"zone", 4, `an operator (==, !=, in, not in, contains, starts with, ends with) after label key "zone"`, "the end of the selector"},
		{"zone == 'a", 8, "a closing ' for this string", `"'"`},
		{`zone == "a`, 8, `a closing " for this string`, `"\""`},
		{"zone in 'a'", 8, "'{' to start a set of values", `"'"`},
		{"zone in {'a' 'b'}", 13, "',' or '}' in a set of values", `"'"`},
		{"zone in {'a',}", 13, `a quoted string ('...' or "...")`, `"}"`},
		{"zone not 'a'", 9, "'in' after 'not'", `"'"`},
		{"zone starts 'a'", 12, "'with' after 'starts'", `"'"`},
		{"has()", 4, "a label key inside has(...)", `")"`},
		{"has(a", 5, "')' after has(a", "the end of the selector"},
		{"all(", 4, "')' after all(", "the end of the selector"},
		{"(has(a)", 7, "')', && or ||", "the end of the selector"},
		{"has(a))", 6, "&&, || or the end of the selector", `")"`},
		{"has(a) has(b)", 7, "&&, || or the end of the selector", `"has"`},
		{"has(a) &&", 9, termExpected, "the end of the selector"},
		{"has(a) & has(b)", 7, "&&, || or the end of the selector", `"&"`},
		{"|| has(a)", 0, termExpected, `"|"`},
		{"!", 1, termExpected, "the end of the selector"},
		{"!= 'a'", 0, termExpected, `"!"`},
		{"zöne == 'a'", 1, `an operator (==, !=, in, not in, contains, starts with, ends with) after label key "z"`, `"ö"`},
	}
	for _, tt := range tests {
		t.Run(tt.sel, func(t *testing.T) {
			s, err := ParseSelector(tt.sel)
			if err == nil {
				t.Fatalf("parsed as %q, want an error", s)
			}
			var se *SelectorError
			if !errors.As(err, &se) {
				t.Fatalf("got %T, want *SelectorError", err)
			}
			if se.Selector != tt.sel || se.Pos != tt.pos || se.Expected != tt.expected || se.Found != tt.found {
				t.Errorf("got %+v, want pos %d expected %q found %q", *se, tt.pos, tt.expected, tt.found)
			}
		})
	}
}

func TestParseSelectorDepthLimit(t *testing.T) {
	deep := ""
	for range maxSelectorDepth + 1 {
		deep += "("
	}
	_, err := ParseSelector(deep + "all()")
	var se *SelectorError
	if !errors.As(err, &se) || se.Pos != maxSelectorDepth {
		t.Fatalf("got %v, want a depth error at position %d", err, maxSelectorDepth)
	}
	ok := ""
	for range maxSelectorDepth - 1 {
		ok = "!" + ok
	}
	if _, err := ParseSelector(ok + "has(a)"); err != nil {
		t.Errorf("%d negations: %v", maxSelectorDepth-1, err)
	}
}
