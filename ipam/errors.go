package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"twill.dev/twill/api"
)

// Errors returned by IPAM, matched with errors.Is. Store errors
// (datastore.ErrUnavailable, datastore.ErrConflict after the retries ran out)
// come back wrapped as well.
var (
	// ErrPoolExhausted: no eligible pool has a free address for the request.
	ErrPoolExhausted = errors.New("no free address in the eligible pools")
	// ErrNotInPool: a requested address lies outside every enabled pool.
	ErrNotInPool = errors.New("address is not in an enabled IP pool")
	// ErrAddressInUse: a requested address is already allocated.
	ErrAddressInUse = errors.New("address already in use")
	// ErrNotAllocated: an address to release is not allocated.
	ErrNotAllocated = errors.New("address not allocated")
	// ErrNotABlock: a CIDR is not exactly one block of a pool.
	ErrNotABlock = errors.New("not a block of any IP pool")
	// ErrBlockInUse: a block to pin holds addresses of another node, or
	// overlaps an existing block.
	ErrBlockInUse = errors.New("block in use")
	// ErrInvalidRequest: a request misses a required field or sets an
	// invalid one.
	ErrInvalidRequest = errors.New("invalid IPAM request")
)

// ExhaustedError reports that no eligible pool could give Node an address
// for Use. It matches ErrPoolExhausted.
type ExhaustedError struct {
	Node string
	// Pools are the pools that were eligible for the request (enabled,
	// nodeSelector matching the node, allowing Use); empty when none was.
	Pools []string
	Use   api.IPPoolUse
	// Strict is set when strict affinity kept IPAM from borrowing addresses
	// from other nodes' blocks.
	Strict bool
	// MaxBlocksPerNode is set when the node already holds that many blocks,
	// the configured cap.
	MaxBlocksPerNode int
}

// Error implements error and says what to do about the exhaustion.
func (e *ExhaustedError) Error() string {
	if len(e.Pools) == 0 {
		return fmt.Sprintf("ipam: no IP pool serves node %q for %s addresses: add a pool (or fix one) that is enabled, whose nodeSelector matches the node's labels and whose allowedUses include %s",
			e.Node, e.Use, e.Use)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ipam: no free %s address for node %q in pools %s", e.Use, e.Node, strings.Join(e.Pools, ", "))
	if e.MaxBlocksPerNode > 0 {
		fmt.Fprintf(&b, " (the node holds maxBlocksPerNode=%d blocks)", e.MaxBlocksPerNode)
	}
	if e.Strict {
		b.WriteString(" (strict affinity forbids borrowing from other nodes' blocks)")
	}
	b.WriteString(": add a pool or enlarge the existing ones, or release unused addresses")
	if e.MaxBlocksPerNode > 0 {
		b.WriteString(", or raise maxBlocksPerNode in the IPAM config")
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrPoolExhausted) hold.
func (e *ExhaustedError) Unwrap() error { return ErrPoolExhausted }

// OutsidePoolsError reports a requested address outside every enabled pool
// (or outside the pools the request was restricted to). It matches
// ErrNotInPool.
type OutsidePoolsError struct {
	IP netip.Addr
	// Pools, when set, are the pools the request was restricted to.
	Pools []string
}

// Error implements error.
func (e *OutsidePoolsError) Error() string {
	if len(e.Pools) > 0 {
		return fmt.Sprintf("ipam: %s is not inside the enabled pools %s: request an address from one of their CIDRs", e.IP, strings.Join(e.Pools, ", "))
	}
	return fmt.Sprintf("ipam: %s is not inside any enabled IP pool: request an address from a pool's CIDR, or add or enable a pool that holds it", e.IP)
}

// Unwrap makes errors.Is(err, ErrNotInPool) hold.
func (e *OutsidePoolsError) Unwrap() error { return ErrNotInPool }

// InUseError reports a requested address that Handle already holds. It
// matches ErrAddressInUse.
type InUseError struct {
	IP     netip.Addr
	Handle string
}

// Error implements error.
func (e *InUseError) Error() string {
	return fmt.Sprintf("ipam: %s is already allocated to handle %q: release it first or request another address", e.IP, e.Handle)
}

// Unwrap makes errors.Is(err, ErrAddressInUse) hold.
func (e *InUseError) Unwrap() error { return ErrAddressInUse }
