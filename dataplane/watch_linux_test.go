package dataplane

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// TestWatcherResubscribes drives one watcher with a fake subscription that
// reports an error and dies, then fails to come back twice: the watcher must
// signal and keep resubscribing until it succeeds.
func TestWatcherResubscribes(t *testing.T) {
	// A non-nil handle that is never used: the fake never touches netlink.
	r := &Reconciler{h: &netlink.Handle{}, log: slog.New(slog.DiscardHandler), watch: newWatchState()}
	var attempts, forced atomic.Int32
	w := &nlWatcher[int]{
		r:    r,
		kind: "fake",
		subscribe: func(ch chan int, done chan struct{}, o subOpts) error {
			n := attempts.Add(1)
			if o.force {
				forced.Add(1)
			}
			if n == 2 || n == 3 {
				return errors.New("transient")
			}
			go func() {
				defer close(ch)
				select {
				case ch <- int(n):
				case <-done:
					return
				}
				if n == 1 {
					o.errCb(errors.New("overflow"))
					return // the subscription dies
				}
				<-done
			}()
			return nil
		},
		matters: func(int) bool { return false },
	}
	if err := w.start(false); err != nil {
		t.Fatal(err)
	}
	sig := make(chan struct{}, 1)
	var signals atomic.Int32
	notify := func() {
		signals.Add(1)
		select {
		case sig <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	ended := make(chan struct{})
	go func() {
		w.run(ctx, notify)
		close(ended)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for attempts.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// Give the successful resubscribe's signal time to land.
	for signals.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("watcher did not stop within 5s of cancelling")
	}
	if got := attempts.Load(); got != 4 {
		t.Errorf("subscribe attempts = %d, want 4 (ok, fail, fail, ok)", got)
	}
	// Forcing the buffer size is tried until it fails once, then never again.
	if got := forced.Load(); got != 2 {
		t.Errorf("forced attempts = %d, want 2", got)
	}
	if got := signals.Load(); got < 2 {
		t.Errorf("signals = %d, want at least 2 (death and resubscription)", got)
	}
}

func TestClosedReconciler(t *testing.T) {
	ns := newTestNS(t)
	r, err := New(Options{NetnsPath: ns.path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	sig, err := r.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(seedPlan()); !errors.Is(err, errClosed) {
		t.Errorf("Apply after Close: err = %v, want errClosed", err)
	}
	if _, err := r.Observe(); !errors.Is(err, errClosed) {
		t.Errorf("Observe after Close: err = %v, want errClosed", err)
	}
	if _, err := r.Subscribe(ctx); !errors.Is(err, errClosed) {
		t.Errorf("Subscribe after Close: err = %v, want errClosed", err)
	}
	cancel()
	awaitClosed(t, sig)
	if r.ns.IsOpen() {
		t.Error("namespace handle still open after Close and the last subscription ended")
	}
}

func TestNewBadPath(t *testing.T) {
	if _, err := New(Options{NetnsPath: "/nonexistent/twdp-none"}); err == nil {
		t.Fatal("New with a missing namespace path succeeded")
	}
}
