package agent

import "time"

// Clock is the agent's source of time: the retry backoff, the periodic
// resync and the CNI GC grace read it. Tests inject a fake.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d; the returned stop
	// function cancels the call and reports whether it did.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Backoff bounds of the reconcile retries and of the datastore re-lists.
const (
	retryMin   = 10 * time.Millisecond
	retryMax   = 5 * time.Second
	relistMin  = 100 * time.Millisecond
	relistMax  = 5 * time.Second
	startupMax = 5 * time.Second
)

// backoff returns the delay before attempt n (n ≥ 1) of an exponential
// backoff from min doubling up to max.
func backoff(n int, min, max time.Duration) time.Duration {
	d := min
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}

// sleep waits d on clock, or until done is closed; false means done.
func sleep(clock Clock, d time.Duration, done <-chan struct{}) bool {
	ch := make(chan struct{})
	stop := clock.AfterFunc(d, func() { close(ch) })
	select {
	case <-ch:
		return true
	case <-done:
		stop()
		return false
	}
}
