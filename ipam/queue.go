package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// maxBatch bounds how many concurrent requests for one node are merged into
// one batch (a batch writes one handle per request, in parallel, then its
// blocks).
const maxBatch = 32

// nodeQueue serialises one IPAM's writes for one node and merges
// concurrent allocations for that node into one batch (group commit):
// whoever holds the node's lock takes every compatible waiting request
// along with its own. Since allocations for one node all contend for the
// same blocks, doing them one batch at a time costs little parallelism,
// and batching turns a burst of pod starts into one write per handle and a
// few block writes.
type nodeQueue struct {
	sem     chan struct{} // capacity 1: the node's write lock
	mu      sync.Mutex
	pending []*call
}

// call is one Allocate waiting in a queue. A call is taken from pending
// only by the lock holder, which completes it (closing done) or puts it
// back before releasing the lock.
type call struct {
	ctx   context.Context
	req   AllocateRequest
	start time.Time
	taken bool // guarded by nodeQueue.mu
	done  chan struct{}
	addrs []netip.Addr
	err   error
}

// lock takes the node's write lock, or gives up when ctx ends.
func (q *nodeQueue) lock(ctx context.Context) error {
	select {
	case q.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (q *nodeQueue) unlock() { <-q.sem }

// allocateQueued runs req through node's queue: either another caller's
// batch completes it, or this caller takes the lock and runs a batch that
// includes it.
func (m *IPAM) allocateQueued(ctx context.Context, req AllocateRequest) ([]netip.Addr, error) {
	q := m.queue(req.Node)
	c := &call{ctx: ctx, req: req, start: time.Now(), done: make(chan struct{})}
	q.mu.Lock()
	q.pending = append(q.pending, c)
	q.mu.Unlock()
	for {
		select {
		case <-c.done:
			return c.addrs, c.err
		case q.sem <- struct{}{}:
			select {
			case <-c.done:
				q.unlock()
				return c.addrs, c.err
			default:
			}
			if ctx.Err() != nil {
				// Not done and not taken: only the lock holder takes calls.
				q.mu.Lock()
				q.pending = slices.DeleteFunc(q.pending, func(x *call) bool { return x == c })
				q.mu.Unlock()
				q.unlock()
				return nil, fmt.Errorf("ipam: allocate for node %s, handle %q: %w", req.Node, req.Handle, ctx.Err())
			}
			m.lead(ctx, q, c)
			q.unlock()
		case <-ctx.Done():
			q.mu.Lock()
			if !c.taken {
				q.pending = slices.DeleteFunc(q.pending, func(x *call) bool { return x == c })
				q.mu.Unlock()
				return nil, fmt.Errorf("ipam: allocate for node %s, handle %q: %w", req.Node, req.Handle, ctx.Err())
			}
			q.mu.Unlock()
			<-c.done // in a batch already: its batch decides
			return c.addrs, c.err
		}
	}
}

// lead runs one batch: own first, then compatible waiting calls.
func (m *IPAM) lead(ctx context.Context, q *nodeQueue, own *call) {
	q.mu.Lock()
	batch := []*call{own}
	handles := map[string]bool{own.req.Handle: true}
	total := own.req.Count
	rest := q.pending[:0]
	for _, c := range q.pending {
		switch {
		case c == own:
			continue
		case len(batch) < maxBatch && c.ctx.Err() == nil && !handles[c.req.Handle] &&
			c.req.Use == own.req.Use && slices.Equal(c.req.Pools, own.req.Pools) && total+c.req.Count <= MaxCount:
			batch = append(batch, c)
			handles[c.req.Handle] = true
			total += c.req.Count
		default:
			rest = append(rest, c)
			continue
		}
	}
	clear(q.pending[len(rest):])
	q.pending = rest
	for _, c := range batch {
		c.taken = true
	}
	q.mu.Unlock()

	if len(batch) == 1 {
		own.addrs, own.err = m.allocateOne(ctx, own.req, own.start)
		close(own.done)
		return
	}
	// The batch carries other callers' requests: it must not be cut short
	// by this caller's context. The store bounds every call with its own
	// timeout and the retries are bounded.
	bctx := context.WithoutCancel(ctx)
	states := make([]*reqState, len(batch))
	for i, c := range batch {
		states[i] = newState(c.req, c.start)
	}
	err := m.allocateMany(bctx, states)
	var exh *ExhaustedError
	alone := errors.As(err, &exh)
	// Calls that got all their addresses are done, whatever happened to
	// the others.
	for i, c := range batch {
		if states[i].need() == 0 || !alone {
			c.addrs, c.err = m.settle(bctx, states[i], err)
			close(c.done)
		}
	}
	if !alone {
		return
	}
	// Not all fit: undo the partial ones, then give each its own answer.
	for i, c := range batch {
		if states[i].need() > 0 {
			m.settle(bctx, states[i], err)
			c.addrs, c.err = m.allocateOne(bctx, c.req, c.start)
			close(c.done)
		}
	}
}
