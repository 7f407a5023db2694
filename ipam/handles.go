package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// Handles are an index from a handle id to the blocks holding its
// addresses, kept so that it may over-count but never under-count: counts
// are raised before addresses are taken and lowered after they are freed.

// handleValue is the stored document of handle id with counts.
func handleValue(id string, counts map[string]int) api.Handle {
	return api.Handle{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindHandle},
		ID:       id,
		Blocks:   counts,
	}
}

// readHandle reads handle id. found is false (and the handle empty) when it
// does not exist.
func (m *IPAM) readHandle(ctx context.Context, id string) (h api.Handle, rev string, found bool, err error) {
	o, err := datastore.GetObject[api.Handle](ctx, m.s, datastore.KindHandle, id)
	if errors.Is(err, datastore.ErrNotFound) {
		return handleValue(id, map[string]int{}), "", false, nil
	}
	if err != nil {
		return api.Handle{}, "", false, fmt.Errorf("ipam: read handle %q: %w", id, err)
	}
	h = o.Value
	if h.Blocks == nil {
		h.Blocks = map[string]int{}
	}
	return h, o.Revision, true, nil
}

// applyDelta returns counts plus delta, without the blocks whose count is
// zero or less.
func applyDelta(counts, delta map[string]int) map[string]int {
	out := make(map[string]int, len(counts)+len(delta))
	for c, n := range counts {
		if n > 0 {
			out[c] = n
		}
	}
	for c, d := range delta {
		if n := out[c] + d; n > 0 {
			out[c] = n
		} else {
			delete(out, c)
		}
	}
	return out
}

// handleGuess is what a caller believes a handle holds, to write it
// without reading it first; a wrong guess costs a conflict and a read.
type handleGuess struct {
	h     api.Handle
	rev   string
	found bool
}

// guessMissing guesses that a handle does not exist yet.
func guessMissing(id string) *handleGuess {
	return &handleGuess{h: handleValue(id, map[string]int{})}
}

// adjustHandle adds delta to handle id's counts with a compare-and-swap,
// creating the handle when it is missing and delta raises a count, and
// deleting it when no count is left. A handle that is missing is not
// lowered. The first attempt starts from guess when it is set (no read);
// later ones read the handle. With touch set the handle is written even
// when its counts do not change, to give it a new revision. Conflicts are
// retried up to attempts times.
func (m *IPAM) adjustHandle(ctx context.Context, id string, delta map[string]int, guess *handleGuess, touch bool, attempts int) error {
	verb := "raise"
	for _, d := range delta {
		if d < 0 {
			verb = "lower"
		}
	}
	return m.retryN(ctx, attempts, fmt.Sprintf("%s the counts of handle %q", verb, id), func(n int) error {
		var (
			cur   api.Handle
			rev   string
			found bool
		)
		if n == 0 && guess != nil {
			cur, rev, found = guess.h, guess.rev, guess.found
		} else {
			var err error
			if cur, rev, found, err = m.readHandle(ctx, id); err != nil {
				return err
			}
		}
		next := applyDelta(cur.Blocks, delta)
		switch {
		case !found && len(next) == 0:
			return nil
		case !found:
			kv, err := datastore.NewKV(datastore.KindHandle, id, handleValue(id, next))
			if err != nil {
				return err
			}
			if _, err := m.s.Create(ctx, kv); err != nil {
				return fmt.Errorf("ipam: create handle %q: %w", id, err)
			}
			return nil
		case len(next) == 0:
			err := m.s.Delete(ctx, datastore.KindHandle, id, rev)
			if errors.Is(err, datastore.ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("ipam: delete handle %q: %w", id, err)
			}
			return nil
		case !touch && maps.Equal(next, cur.Blocks):
			return nil
		default:
			kv, err := datastore.NewKV(datastore.KindHandle, id, handleValue(id, next))
			if err != nil {
				return err
			}
			kv.Revision = rev
			if _, err := m.s.Update(ctx, kv); err != nil {
				if errors.Is(err, datastore.ErrNotFound) {
					// Deleted meanwhile: read again (and create it).
					return fmt.Errorf("ipam: update handle %q: %w: %w", id, datastore.ErrConflict, err)
				}
				return fmt.Errorf("ipam: update handle %q: %w", id, err)
			}
			return nil
		}
	})
}

// lowerHandle lowers handle id's counts by freed (block CIDR → addresses
// freed there), starting from guess when set; it deletes the handle when
// nothing is left. Errors are
// returned for the caller to log: a count left too high is an over-count
// that RepairHandles repairs.
func (m *IPAM) lowerHandle(ctx context.Context, id string, freed map[string]int, guess *handleGuess) error {
	delta := map[string]int{}
	for c, n := range freed {
		if n > 0 {
			delta[c] = -n
		}
	}
	if len(delta) == 0 {
		return nil
	}
	return m.adjustHandle(ctx, id, delta, guess, false, m.maxAttempts)
}
