package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Resubscription backoff: doubles from minBackoff up to maxBackoff, and
// starts over once a subscription has lived stableAfter.
const (
	minBackoff  = 50 * time.Millisecond
	maxBackoff  = 5 * time.Second
	stableAfter = 30 * time.Second
)

// rcvBuf is the receive buffer asked for on event sockets, so that a burst
// (a full Apply of thousands of routes) does not overflow it. Without
// CAP_NET_ADMIN the kernel caps it at net.core.rmem_max; an overflow still
// only costs a resubscribe and a signal.
const rcvBuf = 4 << 20

// eventBuf is the depth of each subscription's update channel.
const eventBuf = 1024

// Subscribe listens to route, link, address and neighbour events, and to
// nftables events for the firewall table, in the namespace and returns a
// channel that receives a coalesced "look again" signal (it holds at most
// one) whenever an event moves the kernel away from the last applied plan;
// see the package documentation for which events count. One signal is sent
// right away, since anything may have happened before subscribing. A
// subscription that dies is retried with bounded backoff, with a signal
// each time; the nftables one is optional and only logged when it cannot
// start. The channel is closed once ctx is done and every subscription has
// stopped.
//
// The caller is expected to call Apply (or the per-kind methods) on each
// signal; events caused by those writes do not signal again.
func (r *Reconciler) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return nil, errClosed
	}
	sig := make(chan struct{}, 1)
	notify := func() {
		select {
		case sig <- struct{}{}:
		default:
		}
	}
	ws := []watcher{r.linkWatcher(), r.routeWatcher(), r.addrWatcher(), r.neighWatcher()}
	for i, w := range ws {
		if err := w.start(true); err != nil {
			for _, s := range ws[:i] {
				s.stop()
			}
			return nil, fmt.Errorf("dataplane: subscribe to %s events (needs CAP_NET_ADMIN in the namespace): %w", w.name(), err)
		}
	}
	// The firewall's monitor is optional: without it the agent's periodic
	// resync still repairs the table.
	fw := r.nftWatcher()
	if err := fw.start(true); err != nil {
		r.log.Warn("nftables monitor unavailable; only periodic resyncs repair the firewall until it is back", "err", err)
		fw.warned = true
	}
	ws = append(ws, fw)
	// Learn the links present now; later link events keep this current.
	ls, err := dump(r.h.LinkList)
	if err != nil {
		for _, s := range ws {
			s.stop()
		}
		return nil, opErr(KindDevice, "*", "list links", err)
	}
	r.wmu.Lock()
	for _, l := range ls {
		r.watch.onLink(linkEvent{State: vxlanState(l)})
	}
	r.wmu.Unlock()
	notify()

	r.subs++
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Go(func() { w.run(ctx, notify) })
	}
	go func() {
		wg.Wait()
		r.releaseSub()
		close(sig)
	}()
	return sig, nil
}

// watcher is one netlink event subscription.
type watcher interface {
	name() string
	// start subscribes; locked says whether the caller holds r.mu.
	start(locked bool) error
	// stop ends a subscription that start opened and run never took over.
	stop()
	// run consumes events until ctx is done, resubscribing when needed.
	run(ctx context.Context, notify func())
}

// subOpts are the options every netlink subscription takes.
type subOpts struct {
	ns    *netns.NsHandle
	errCb func(error)
	force bool
}

// nlWatcher adapts one netlink subscription of updates of type T.
type nlWatcher[T any] struct {
	r    *Reconciler
	kind string
	// subscribe opens the subscription.
	subscribe func(ch chan T, done chan struct{}, o subOpts) error
	// matters reports whether an update needs a new look.
	matters func(T) bool
	// noForce is set once forcing the receive buffer size failed.
	noForce bool

	ch   chan T
	done chan struct{}
	// errs carries error callbacks; it is never closed, because netlink may
	// call back after the subscription ended.
	errs chan error
}

func (w *nlWatcher[T]) name() string { return w.kind }

func (w *nlWatcher[T]) start(locked bool) error {
	if !locked {
		w.r.mu.Lock()
		defer w.r.mu.Unlock()
	}
	if w.r.h == nil {
		return errClosed
	}
	w.ch = make(chan T, eventBuf)
	w.done = make(chan struct{})
	errs := make(chan error, 1)
	w.errs = errs
	o := subOpts{
		ns: &w.r.ns,
		errCb: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
		force: !w.noForce,
	}
	err := w.subscribe(w.ch, w.done, o)
	if err != nil && o.force {
		// Forcing the buffer size needs CAP_NET_ADMIN; netlink keeps the
		// socket of this failed attempt open, so try it once per kind only.
		w.noForce = true
		o.force = false
		err = w.subscribe(w.ch, w.done, o)
	}
	if err != nil {
		close(w.done)
		return err
	}
	return nil
}

func (w *nlWatcher[T]) stop() {
	close(w.done)
	for range w.ch { // netlink closes ch once its socket is closed
	}
}

func (w *nlWatcher[T]) run(ctx context.Context, notify func()) {
	backoff := minBackoff
	for {
		began := time.Now()
		if !w.consume(ctx, notify) {
			return
		}
		w.r.log.Warn("netlink subscription ended; resubscribing", "events", w.kind)
		notify()
		if time.Since(began) > stableAfter {
			backoff = minBackoff
		}
		if !resubscribe(ctx, &backoff, w.start, func(err error) {
			w.r.log.Warn("netlink resubscribe failed", "events", w.kind, "err", err, "retry_in", backoff)
		}) {
			return
		}
		// Events may have been lost while unsubscribed.
		notify()
	}
}

// resubscribe calls start(false) after *backoff, doubling *backoff up to
// maxBackoff after each try, until a try succeeds (true) or ctx is done or
// the reconciler is closed (false). failed hears of each failed try, with
// *backoff already set to the wait before the next one.
func resubscribe(ctx context.Context, backoff *time.Duration, start func(locked bool) error, failed func(error)) bool {
	for {
		t := time.NewTimer(*backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		*backoff = min(*backoff*2, maxBackoff)
		err := start(false)
		if err == nil {
			return true
		}
		if errors.Is(err, errClosed) {
			return false
		}
		failed(err)
	}
}

// consume handles updates until ctx is done (false) or the subscription
// dies (true).
func (w *nlWatcher[T]) consume(ctx context.Context, notify func()) bool {
	for {
		select {
		case <-ctx.Done():
			w.stop()
			return false
		case u, ok := <-w.ch:
			if !ok {
				close(w.done) // closes the socket netlink left open
				return true
			}
			if w.matters(u) {
				notify()
			}
		case err := <-w.errs:
			if ctx.Err() != nil {
				continue
			}
			// Errors may mean lost events (an overflow, an interrupted
			// dump): look again.
			w.r.log.Debug("netlink subscription error; looking again", "events", w.kind, "err", err)
			notify()
		}
	}
}

func (r *Reconciler) routeWatcher() watcher {
	return &nlWatcher[netlink.RouteUpdate]{
		r:    r,
		kind: "route",
		subscribe: func(ch chan netlink.RouteUpdate, done chan struct{}, o subOpts) error {
			return netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
				Namespace: o.ns, ErrorCallback: o.errCb,
				ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: o.force,
			})
		},
		matters: func(u netlink.RouteUpdate) bool {
			if u.Family != netlink.FAMILY_V4 || u.Dst == nil {
				return false
			}
			ev := routeEvent{Deleted: u.Type == unix.RTM_DELROUTE, Route: kernelRoute(u.Route, nil)}
			r.wmu.Lock()
			defer r.wmu.Unlock()
			return r.watch.onRoute(ev)
		},
	}
}

func (r *Reconciler) linkWatcher() watcher {
	return &nlWatcher[netlink.LinkUpdate]{
		r:    r,
		kind: "link",
		subscribe: func(ch chan netlink.LinkUpdate, done chan struct{}, o subOpts) error {
			return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
				Namespace: o.ns, ErrorCallback: o.errCb,
				ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: o.force,
			})
		},
		matters: func(u netlink.LinkUpdate) bool {
			if u.Link == nil {
				return false
			}
			ev := linkEvent{Deleted: u.Header.Type == unix.RTM_DELLINK, State: vxlanState(u.Link)}
			r.wmu.Lock()
			defer r.wmu.Unlock()
			return r.watch.onLink(ev)
		},
	}
}

func (r *Reconciler) addrWatcher() watcher {
	return &nlWatcher[netlink.AddrUpdate]{
		r:    r,
		kind: "address",
		subscribe: func(ch chan netlink.AddrUpdate, done chan struct{}, o subOpts) error {
			return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
				Namespace: o.ns, ErrorCallback: o.errCb,
				ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: o.force,
			})
		},
		matters: func(u netlink.AddrUpdate) bool {
			ev := addrEvent{Deleted: !u.NewAddr, LinkIndex: u.LinkIndex, Prefix: prefixOf(&u.LinkAddress)}
			r.wmu.Lock()
			defer r.wmu.Unlock()
			return r.watch.onAddr(ev)
		},
	}
}

func (r *Reconciler) neighWatcher() watcher {
	return &nlWatcher[netlink.NeighUpdate]{
		r:    r,
		kind: "neighbor",
		subscribe: func(ch chan netlink.NeighUpdate, done chan struct{}, o subOpts) error {
			return netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{
				Namespace: o.ns, ErrorCallback: o.errCb,
				ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: o.force,
			})
		},
		matters: func(u netlink.NeighUpdate) bool {
			ev := neighEvent{
				Deleted:   u.Type == unix.RTM_DELNEIGH,
				LinkIndex: u.LinkIndex,
				Bridge:    u.Family == unix.AF_BRIDGE,
				Self:      u.Flags&netlink.NTF_SELF != 0,
				Permanent: u.State&netlink.NUD_PERMANENT != 0,
				IP:        addrOf(u.IP),
				MAC:       u.HardwareAddr.String(),
			}
			r.wmu.Lock()
			defer r.wmu.Unlock()
			return r.watch.onNeigh(ev)
		},
	}
}
