package bench

import (
	"math"
	"slices"
	"time"
)

// Stats summarises latency samples. Percentiles are nearest-rank on the
// sorted samples: Pp is the smallest sample such that at least p% of the
// samples are less than or equal to it, always one of the real samples.
type Stats struct {
	N        int
	P50, P99 time.Duration
	Min, Max time.Duration
}

// Summarize returns the statistics of samples (which it does not modify);
// the zero Stats for none.
func Summarize(samples []time.Duration) Stats {
	if len(samples) == 0 {
		return Stats{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return Stats{N: len(s), P50: Percentile(s, 50), P99: Percentile(s, 99), Min: s[0], Max: s[len(s)-1]}
}

// Percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of
// sorted samples: sorted[⌈p/100·n⌉-1]. It returns 0 for no samples.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	return sorted[min(max(rank, 1), n)-1]
}

// Median returns the middle value of vs (the lower one of the two middle
// values for an even count); 0 for none.
func Median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// ms converts a duration to milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
