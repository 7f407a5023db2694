package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// EventKind is the kind of kernel object a netlink event is about.
type EventKind string

// Kinds of events a Watcher reports.
const (
	KindRoute EventKind = "route"
	KindNeigh EventKind = "neighbour"
	KindFDB   EventKind = "fdb"
	KindLink  EventKind = "link"
)

// Key names one kernel event: an object of Kind identified by ID (a route's
// destination prefix, a neighbour's IP, an FDB entry's MAC, a link's name)
// being added (Add) or removed. A link is only "added" once it is up.
type Key struct {
	Kind EventKind
	Add  bool
	ID   string
}

func (k Key) String() string {
	op := "del"
	if k.Add {
		op = "add"
	}
	return fmt.Sprintf("%s %s %s", op, k.Kind, k.ID)
}

// RouteKey is the event of a main-table IPv4 route to dst.
func RouteKey(dst string, add bool) Key { return Key{Kind: KindRoute, Add: add, ID: dst} }

// NeighKey is the event of a permanent IPv4 neighbour entry for ip.
func NeighKey(ip string, add bool) Key { return Key{Kind: KindNeigh, Add: add, ID: ip} }

// FDBKey is the event of a bridge FDB entry for mac.
func FDBKey(mac string, add bool) Key { return Key{Kind: KindFDB, Add: add, ID: mac} }

// LinkKey is the event of the link called name (up, for an add).
func LinkKey(name string, add bool) Key { return Key{Kind: KindLink, Add: add, ID: name} }

// Event is one kernel event a Watcher saw.
type Event struct {
	Key
	// At is when the Watcher read it.
	At time.Time
}

// Watcher merges route, neighbour (with FDB) and link events of one
// network namespace, read from netlink subscriptions opened in it.
type Watcher struct {
	events chan Event
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup

	mu  sync.Mutex
	err error
}

// ErrWatch: a netlink subscription failed (the socket overflowed or
// closed), so events may have been lost.
var ErrWatch = errors.New("netlink subscription failed")

// Watch subscribes to the namespace at nsPath. Close ends it.
func Watch(nsPath string) (*Watcher, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	w := &Watcher{events: make(chan Event, 65536), done: make(chan struct{})}
	onErr := func(err error) {
		w.mu.Lock()
		if w.err == nil {
			w.err = fmt.Errorf("%w in %s: %w", ErrWatch, nsPath, err)
		}
		w.mu.Unlock()
	}
	const buf = 8 << 20
	routes := make(chan netlink.RouteUpdate, 4096)
	neighs := make(chan netlink.NeighUpdate, 4096)
	links := make(chan netlink.LinkUpdate, 1024)
	if err := netlink.RouteSubscribeWithOptions(routes, w.done, netlink.RouteSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr, ReceiveBufferSize: buf}); err != nil {
		w.Close()
		return nil, fmt.Errorf("subscribe to routes in %s: %w", nsPath, err)
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, w.done, netlink.NeighSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr, ReceiveBufferSize: buf}); err != nil {
		w.Close()
		return nil, fmt.Errorf("subscribe to neighbours in %s: %w", nsPath, err)
	}
	if err := netlink.LinkSubscribeWithOptions(links, w.done, netlink.LinkSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr, ReceiveBufferSize: buf}); err != nil {
		w.Close()
		return nil, fmt.Errorf("subscribe to links in %s: %w", nsPath, err)
	}
	w.wg.Add(3)
	go func() {
		defer w.wg.Done()
		for u := range routes {
			if u.Table != unix.RT_TABLE_MAIN || u.Dst == nil || u.Family == unix.AF_INET6 {
				continue
			}
			w.send(Key{Kind: KindRoute, Add: u.Type == unix.RTM_NEWROUTE, ID: u.Dst.String()})
		}
	}()
	go func() {
		defer w.wg.Done()
		for u := range neighs {
			add := u.Type == unix.RTM_NEWNEIGH
			switch {
			case u.Family == unix.AF_BRIDGE && u.HardwareAddr != nil:
				w.send(Key{Kind: KindFDB, Add: add, ID: u.HardwareAddr.String()})
			case u.Family == unix.AF_INET && u.IP != nil:
				if add && u.State&netlink.NUD_PERMANENT == 0 {
					continue
				}
				w.send(Key{Kind: KindNeigh, Add: add, ID: u.IP.String()})
			}
		}
	}()
	go func() {
		defer w.wg.Done()
		for u := range links {
			if u.Link == nil {
				continue
			}
			a := u.Link.Attrs()
			add := u.Header.Type == unix.RTM_NEWLINK
			if add && a.Flags&net.FlagUp == 0 {
				continue
			}
			w.send(Key{Kind: KindLink, Add: add, ID: a.Name})
		}
	}()
	return w, nil
}

func (w *Watcher) send(k Key) {
	select {
	case w.events <- Event{Key: k, At: time.Now()}:
	case <-w.done:
	}
}

// Err returns the first subscription error, if any.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close ends the subscriptions.
func (w *Watcher) Close() {
	w.once.Do(func() { close(w.done) })
}

// Settle discards events until none has come for quiet, or max has passed.
func (w *Watcher) Settle(quiet, maxWait time.Duration) {
	deadline := time.Now().Add(maxWait)
	t := time.NewTimer(quiet)
	defer t.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-w.events:
			t.Reset(quiet)
		case <-t.C:
			return
		}
	}
}

// ErrTimeout: the awaited events did not all come in time.
var ErrTimeout = errors.New("timed out waiting for kernel events")

// Await waits until, after the trigger event (when trigger is not nil),
// every key of want has been seen, and returns when the last one came. Keys
// of want seen before the trigger do not count.
func (w *Watcher) Await(ctx context.Context, trigger *Key, want []Key, timeout time.Duration) (time.Time, error) {
	pending := make(map[Key]bool, len(want))
	for _, k := range want {
		pending[k] = true
	}
	triggered := trigger == nil
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		if triggered && len(pending) == 0 {
			return time.Now(), nil
		}
		select {
		case ev := <-w.events:
			if !triggered {
				triggered = ev.Key == *trigger
				continue
			}
			delete(pending, ev.Key)
			if len(pending) == 0 {
				return ev.At, nil
			}
		case <-t.C:
			var missing []string
			if !triggered {
				missing = append(missing, trigger.String())
			}
			for k := range pending {
				missing = append(missing, k.String())
			}
			err := fmt.Errorf("%w after %s: still missing %v", ErrTimeout, timeout, missing)
			if werr := w.Err(); werr != nil {
				err = errors.Join(err, werr)
			}
			return time.Time{}, err
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}
