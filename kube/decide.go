package kube

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/ipam"
)

// Reasons the GC releases an address: the values of the reason label of
// twill_ipam_gc_released_total and of the reason field of its log lines.
const (
	// ReasonPodDeleted: the allocation names a pod that no longer exists.
	ReasonPodDeleted = "pod-deleted"
	// ReasonPodReplaced: a pod of the allocation's namespace and name
	// exists, but with another UID than the one the allocation recorded.
	ReasonPodReplaced = "pod-replaced"
	// ReasonNodeDeleted: the allocation's node no longer exists (tunnel
	// addresses, and pods of a deleted node).
	ReasonNodeDeleted = "node-deleted"
)

// podKey names a pod.
type podKey struct{ namespace, name string }

// endpointRef is a stored workload endpoint as the GC needs it.
type endpointRef struct {
	Name, Node, Handle, Revision string
}

// gcInput is what one pass saw. Allocations are read before Pods and Nodes,
// so that an allocation's pod, created before its address was allocated,
// is in Pods unless it was deleted since.
type gcInput struct {
	Now         time.Time
	Grace       time.Duration
	BlockMinAge time.Duration

	Allocations []ipam.AllocationInfo
	// Pods maps every live pod to its UID.
	Pods map[podKey]string
	// Nodes holds the names of the live Kubernetes nodes.
	Nodes map[string]bool
	// TrustNodes is false when Nodes misses the node running the GC: such a
	// list is not believed, and nothing is done about missing nodes.
	TrustNodes bool
	// AffineNodes holds the nodes that have at least one affine block.
	AffineNodes map[string]bool
	// Endpoints lists the stored workload endpoints.
	Endpoints []endpointRef
	// StoreNodes maps the datastore's node objects to their revisions.
	StoreNodes map[string]string
	// EmptyBlocks lists the empty blocks that are not pinned.
	EmptyBlocks []ipam.BlockRef
}

// blockSeen is when a block was first seen empty at a revision.
type blockSeen struct {
	Revision string
	Since    time.Time
}

// gcState is what passes remember: when each piece of garbage was first
// seen. Entries that are no longer garbage are dropped.
type gcState struct {
	// Allocs maps allocKey of an allocation to when it first looked leaked.
	Allocs map[string]time.Time
	// Nodes maps a missing node to when it was first seen missing.
	Nodes map[string]time.Time
	// Blocks maps an empty block to the revision it was first seen empty at.
	Blocks map[netip.Prefix]blockSeen
}

// release is one address to release with ReleaseIfOwned.
type release struct {
	IP        netip.Addr
	Handle    string
	Namespace string
	Pod       string
	Node      string
	Reason    string
}

// storeNode is a datastore node object to delete.
type storeNode struct {
	Name, Revision string
}

// gcPlan is what decide asks the pass to do, and the state to remember.
type gcPlan struct {
	Releases []release
	// DeleteEndpoints are workload endpoints of nodes gone for Grace.
	DeleteEndpoints []endpointRef
	// ReleaseNodes are nodes, gone for Grace, whose block affinities are
	// to be released.
	ReleaseNodes []string
	// DeleteNodes are datastore node objects of nodes gone for Grace.
	DeleteNodes []storeNode
	// Reclaim are blocks empty at the same revision for BlockMinAge.
	Reclaim []ipam.BlockRef
	// Pending counts garbage seen but not yet due.
	Pending int
	// NextDue is the earliest time pending garbage becomes due; zero when
	// nothing is pending.
	NextDue time.Time
	State   gcState
}

// allocKey identifies an allocation of one address to one handle: an
// address that is released and handed to another handle is a new
// allocation, whose grace starts afresh.
func allocKey(ip netip.Addr, handle string) string {
	return ip.String() + "|" + handle
}

func (p *gcPlan) due(at time.Time) {
	p.Pending++
	if p.NextDue.IsZero() || at.Before(p.NextDue) {
		p.NextDue = at
	}
}

// leakReason says why an allocation looks leaked, or "" when it does not.
func leakReason(in *gcInput, a ipam.AllocationInfo) string {
	if node := a.Attrs[api.AttrNode]; node != "" && in.TrustNodes && !in.Nodes[node] {
		return ReasonNodeDeleted
	}
	ns, pod := a.Attrs[api.AttrNamespace], a.Attrs[api.AttrPod]
	if ns == "" || pod == "" {
		return ""
	}
	uid, ok := in.Pods[podKey{ns, pod}]
	if !ok {
		return ReasonPodDeleted
	}
	if want := a.Attrs[api.AttrPodUID]; want != "" && uid != "" && uid != want {
		return ReasonPodReplaced
	}
	return ""
}

// decide turns one pass's observations and the remembered state into the
// actions to take. It is pure: it reads its arguments only and modifies
// neither.
func decide(in gcInput, st gcState) gcPlan {
	plan := gcPlan{State: gcState{
		Allocs: map[string]time.Time{},
		Nodes:  map[string]time.Time{},
		Blocks: map[netip.Prefix]blockSeen{},
	}}
	now := in.Now

	// Allocations whose pod or node is gone.
	for _, a := range in.Allocations {
		reason := leakReason(&in, a)
		if reason == "" {
			continue
		}
		k := allocKey(a.IP, a.Handle)
		since, ok := st.Allocs[k]
		if !ok || since.After(now) {
			since = now
		}
		plan.State.Allocs[k] = since
		if now.Sub(since) < in.Grace {
			plan.due(since.Add(in.Grace))
			continue
		}
		plan.Releases = append(plan.Releases, release{
			IP:        a.IP,
			Handle:    a.Handle,
			Namespace: a.Attrs[api.AttrNamespace],
			Pod:       a.Attrs[api.AttrPod],
			Node:      a.Attrs[api.AttrNode],
			Reason:    reason,
		})
	}

	// Nodes that are gone but still own blocks, endpoints or a node object.
	if in.TrustNodes {
		missing := map[string]bool{}
		note := func(n string) {
			if n != "" && !in.Nodes[n] {
				missing[n] = true
			}
		}
		for n := range in.AffineNodes {
			note(n)
		}
		for _, e := range in.Endpoints {
			note(e.Node)
		}
		for n := range in.StoreNodes {
			note(n)
		}
		dueNodes := map[string]bool{}
		for _, n := range sortedKeys(missing) {
			since, ok := st.Nodes[n]
			if !ok || since.After(now) {
				since = now
			}
			plan.State.Nodes[n] = since
			if now.Sub(since) < in.Grace {
				plan.due(since.Add(in.Grace))
				continue
			}
			dueNodes[n] = true
			if in.AffineNodes[n] {
				plan.ReleaseNodes = append(plan.ReleaseNodes, n)
			}
			if rev, ok := in.StoreNodes[n]; ok {
				plan.DeleteNodes = append(plan.DeleteNodes, storeNode{Name: n, Revision: rev})
			}
		}
		for _, e := range in.Endpoints {
			if dueNodes[e.Node] {
				plan.DeleteEndpoints = append(plan.DeleteEndpoints, e)
			}
		}
	}

	// Empty blocks, reclaimed once empty at one revision for BlockMinAge.
	for _, b := range in.EmptyBlocks {
		seen, ok := st.Blocks[b.CIDR]
		if !ok || seen.Revision != b.Revision || seen.Since.After(now) {
			seen = blockSeen{Revision: b.Revision, Since: now}
		}
		plan.State.Blocks[b.CIDR] = seen
		if now.Sub(seen.Since) < in.BlockMinAge {
			plan.due(seen.Since.Add(in.BlockMinAge))
			continue
		}
		plan.Reclaim = append(plan.Reclaim, b)
	}
	return plan
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, strings.Compare)
	return out
}
