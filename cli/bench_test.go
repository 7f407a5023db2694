package cli_test

import (
	"strings"
	"testing"
)

// Usage errors of `twill bench` are caught before anything is built, as
// root or not.
func TestBenchUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--only", "latency"}, "self-heal, convergence, cni-add, pod-burst, throughput, scale, ipam"},
		{[]string{"bench", "-o", "yaml"}, "use table or json"},
		{[]string{"bench", "extra"}, ""},
	} {
		r := twill(t, "http://127.0.0.1:1", "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("twill %v: exit %d, stderr %q; want exit 2 mentioning %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	r := twill(t, "http://127.0.0.1:1", "", "bench", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "--quick") || !strings.Contains(r.stdout, "docs/benchmarks.md") {
		t.Errorf("twill bench --help: exit %d, stdout %q", r.code, r.stdout)
	}
}
