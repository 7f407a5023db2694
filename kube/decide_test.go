package kube

import (
	"maps"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"twill.dev/twill/api"
	"twill.dev/twill/ipam"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const (
	grace  = time.Minute
	minAge = 5 * time.Minute
)

// podAlloc is an allocation of ip to handle for pod ns/name on node, with
// the pod's UID when uid is not empty.
func podAlloc(ip, handle, node, ns, name, uid string) ipam.AllocationInfo {
	attrs := map[string]string{api.AttrNode: node, api.AttrNamespace: ns, api.AttrPod: name}
	if uid != "" {
		attrs[api.AttrPodUID] = uid
	}
	return ipam.AllocationInfo{IP: netip.MustParseAddr(ip), Handle: handle, Use: api.UseWorkload, Attrs: attrs}
}

// tunnelAlloc is node's tunnel address.
func tunnelAlloc(ip, node string) ipam.AllocationInfo {
	return ipam.AllocationInfo{
		IP: netip.MustParseAddr(ip), Handle: "vxlan-tunnel-addr-" + node, Use: api.UseTunnel,
		Attrs: map[string]string{api.AttrNode: node},
	}
}

func emptyBlock(cidr, affinity, rev string) ipam.BlockRef {
	return ipam.BlockRef{CIDR: netip.MustParsePrefix(cidr), Affinity: affinity, Revision: rev}
}

// baseInput is a cluster of nodes a and b (the GC runs on a) with the pod
// default/web (UID u1) on a.
func baseInput(now time.Time) gcInput {
	return gcInput{
		Now:         now,
		Grace:       grace,
		BlockMinAge: minAge,
		Pods:        map[podKey]string{{"default", "web"}: "u1"},
		Nodes:       map[string]bool{"a": true, "b": true},
		TrustNodes:  true,
		AffineNodes: map[string]bool{},
		StoreNodes:  map[string]string{},
	}
}

func emptyState() gcState {
	return gcState{Allocs: map[string]time.Time{}, Nodes: map[string]time.Time{}, Blocks: map[netip.Prefix]blockSeen{}}
}

func TestDecide(t *testing.T) {
	webAlloc := podAlloc("10.0.0.1", "c1.eth0", "a", "default", "web", "u1")
	goneAlloc := podAlloc("10.0.0.2", "c2.eth0", "a", "default", "gone", "")
	goneKey := allocKey(netip.MustParseAddr("10.0.0.2"), "c2.eth0")
	goneRelease := release{IP: netip.MustParseAddr("10.0.0.2"), Handle: "c2.eth0", Namespace: "default", Pod: "gone", Node: "a", Reason: ReasonPodDeleted}

	type want struct {
		releases   []release
		endpoints  []endpointRef
		relNodes   []string
		delNodes   []storeNode
		reclaim    []ipam.BlockRef
		pending    int
		nextDue    time.Time
		stateAlloc map[string]time.Time
		stateNodes map[string]time.Time
		stateBlock map[netip.Prefix]blockSeen
	}
	cases := []struct {
		name string
		in   func(in *gcInput)
		st   func(st *gcState)
		want want
	}{
		{
			name: "live pod keeps its address",
			in:   func(in *gcInput) { in.Allocations = []ipam.AllocationInfo{webAlloc} },
		},
		{
			name: "missing pod first seen starts the grace",
			in:   func(in *gcInput) { in.Allocations = []ipam.AllocationInfo{webAlloc, goneAlloc} },
			want: want{pending: 1, nextDue: t0.Add(grace), stateAlloc: map[string]time.Time{goneKey: t0}},
		},
		{
			name: "missing pod within the grace is kept",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace - time.Nanosecond)
				in.Allocations = []ipam.AllocationInfo{goneAlloc}
			},
			st:   func(st *gcState) { st.Allocs[goneKey] = t0 },
			want: want{pending: 1, nextDue: t0.Add(grace), stateAlloc: map[string]time.Time{goneKey: t0}},
		},
		{
			name: "missing pod past the grace is released",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace)
				in.Allocations = []ipam.AllocationInfo{webAlloc, goneAlloc}
			},
			st:   func(st *gcState) { st.Allocs[goneKey] = t0 },
			want: want{releases: []release{goneRelease}, stateAlloc: map[string]time.Time{goneKey: t0}},
		},
		{
			name: "pod that reappears is forgotten",
			in: func(in *gcInput) {
				in.Now = t0.Add(2 * grace)
				in.Pods[podKey{"default", "gone"}] = "u9"
				in.Allocations = []ipam.AllocationInfo{goneAlloc}
			},
			st: func(st *gcState) { st.Allocs[goneKey] = t0 },
		},
		{
			name: "pod replaced by one with another UID is released after the grace",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace)
				in.Allocations = []ipam.AllocationInfo{podAlloc("10.0.0.3", "c3.eth0", "a", "default", "web", "u0")}
			},
			st: func(st *gcState) { st.Allocs[allocKey(netip.MustParseAddr("10.0.0.3"), "c3.eth0")] = t0 },
			want: want{
				releases:   []release{{IP: netip.MustParseAddr("10.0.0.3"), Handle: "c3.eth0", Namespace: "default", Pod: "web", Node: "a", Reason: ReasonPodReplaced}},
				stateAlloc: map[string]time.Time{allocKey(netip.MustParseAddr("10.0.0.3"), "c3.eth0"): t0},
			},
		},
		{
			name: "allocation without a UID trusts a pod of the same name",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace)
				in.Allocations = []ipam.AllocationInfo{podAlloc("10.0.0.3", "c3.eth0", "a", "default", "web", "")}
			},
			st: func(st *gcState) { st.Allocs[allocKey(netip.MustParseAddr("10.0.0.3"), "c3.eth0")] = t0 },
		},
		{
			name: "re-assigned address starts a new grace",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace)
				// 10.0.0.2 was c2's, was released and now is c7's, whose pod
				// is missing too: that is new garbage.
				in.Allocations = []ipam.AllocationInfo{podAlloc("10.0.0.2", "c7.eth0", "a", "default", "gone2", "")}
			},
			st: func(st *gcState) { st.Allocs[goneKey] = t0 },
			want: want{
				pending: 1, nextDue: t0.Add(2 * grace),
				stateAlloc: map[string]time.Time{allocKey(netip.MustParseAddr("10.0.0.2"), "c7.eth0"): t0.Add(grace)},
			},
		},
		{
			name: "tunnel address of a deleted node is released after the grace",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace)
				in.Allocations = []ipam.AllocationInfo{tunnelAlloc("10.0.0.64", "c"), tunnelAlloc("10.0.0.128", "b")}
			},
			st: func(st *gcState) { st.Allocs[allocKey(netip.MustParseAddr("10.0.0.64"), "vxlan-tunnel-addr-c")] = t0 },
			want: want{
				releases:   []release{{IP: netip.MustParseAddr("10.0.0.64"), Handle: "vxlan-tunnel-addr-c", Node: "c", Reason: ReasonNodeDeleted}},
				stateAlloc: map[string]time.Time{allocKey(netip.MustParseAddr("10.0.0.64"), "vxlan-tunnel-addr-c"): t0},
				// Node c owns no block, endpoint or node object: nothing else.
			},
		},
		{
			name: "live pod on a deleted node is released as node-deleted",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace)
				in.Allocations = []ipam.AllocationInfo{podAlloc("10.0.0.1", "c1.eth0", "c", "default", "web", "u1")}
			},
			st: func(st *gcState) { st.Allocs[allocKey(netip.MustParseAddr("10.0.0.1"), "c1.eth0")] = t0 },
			want: want{
				releases:   []release{{IP: netip.MustParseAddr("10.0.0.1"), Handle: "c1.eth0", Namespace: "default", Pod: "web", Node: "c", Reason: ReasonNodeDeleted}},
				stateAlloc: map[string]time.Time{allocKey(netip.MustParseAddr("10.0.0.1"), "c1.eth0"): t0},
			},
		},
		{
			name: "untrusted node list: missing nodes are ignored, missing pods are not",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace)
				in.Nodes = map[string]bool{}
				in.TrustNodes = false
				in.AffineNodes["a"] = true
				in.StoreNodes["a"] = "r1"
				in.Allocations = []ipam.AllocationInfo{tunnelAlloc("10.0.0.64", "a"), webAlloc, goneAlloc}
			},
			st: func(st *gcState) {
				st.Allocs[goneKey] = t0
				st.Nodes["a"] = t0
			},
			want: want{releases: []release{goneRelease}, stateAlloc: map[string]time.Time{goneKey: t0}},
		},
		{
			name: "allocation with no pod and no node is never garbage",
			in: func(in *gcInput) {
				in.Now = t0.Add(10 * grace)
				in.Allocations = []ipam.AllocationInfo{{IP: netip.MustParseAddr("10.0.0.9"), Handle: "manual"}}
			},
		},
		{
			name: "deleted node first seen: nothing yet",
			in: func(in *gcInput) {
				in.AffineNodes["c"] = true
				in.StoreNodes["c"] = "r5"
				in.Endpoints = []endpointRef{{Name: "c-k8s-x-eth0", Node: "c", Revision: "r6"}}
			},
			want: want{pending: 1, nextDue: t0.Add(grace), stateNodes: map[string]time.Time{"c": t0}},
		},
		{
			name: "deleted node past the grace: affinities, endpoints and node object go",
			in: func(in *gcInput) {
				in.Now = t0.Add(grace + time.Second)
				in.AffineNodes["a"] = true
				in.AffineNodes["c"] = true
				in.StoreNodes["a"] = "r1"
				in.StoreNodes["c"] = "r5"
				in.Endpoints = []endpointRef{
					{Name: "a-k8s-web-eth0", Node: "a", Revision: "r2"},
					{Name: "c-k8s-x-eth0", Node: "c", Handle: "cx.eth0", Revision: "r6"},
				}
			},
			st: func(st *gcState) { st.Nodes["c"] = t0 },
			want: want{
				relNodes:   []string{"c"},
				delNodes:   []storeNode{{Name: "c", Revision: "r5"}},
				endpoints:  []endpointRef{{Name: "c-k8s-x-eth0", Node: "c", Handle: "cx.eth0", Revision: "r6"}},
				stateNodes: map[string]time.Time{"c": t0},
			},
		},
		{
			name: "node that comes back is forgotten",
			in: func(in *gcInput) {
				in.Now = t0.Add(2 * grace)
				in.AffineNodes["b"] = true
			},
			st: func(st *gcState) { st.Nodes["b"] = t0 },
		},
		{
			name: "empty block first seen starts its age",
			in:   func(in *gcInput) { in.EmptyBlocks = []ipam.BlockRef{emptyBlock("10.0.1.0/26", "a", "r1")} },
			want: want{
				pending: 1, nextDue: t0.Add(minAge),
				stateBlock: map[netip.Prefix]blockSeen{netip.MustParsePrefix("10.0.1.0/26"): {"r1", t0}},
			},
		},
		{
			name: "empty block at the same revision for the min age is reclaimed",
			in: func(in *gcInput) {
				in.Now = t0.Add(minAge)
				in.EmptyBlocks = []ipam.BlockRef{emptyBlock("10.0.1.0/26", "a", "r1")}
			},
			st: func(st *gcState) { st.Blocks[netip.MustParsePrefix("10.0.1.0/26")] = blockSeen{"r1", t0} },
			want: want{
				reclaim:    []ipam.BlockRef{emptyBlock("10.0.1.0/26", "a", "r1")},
				stateBlock: map[netip.Prefix]blockSeen{netip.MustParsePrefix("10.0.1.0/26"): {"r1", t0}},
			},
		},
		{
			name: "empty block at a new revision starts its age again",
			in: func(in *gcInput) {
				in.Now = t0.Add(minAge)
				in.EmptyBlocks = []ipam.BlockRef{emptyBlock("10.0.1.0/26", "a", "r2")}
			},
			st: func(st *gcState) { st.Blocks[netip.MustParsePrefix("10.0.1.0/26")] = blockSeen{"r1", t0} },
			want: want{
				pending: 1, nextDue: t0.Add(2 * minAge),
				stateBlock: map[netip.Prefix]blockSeen{netip.MustParsePrefix("10.0.1.0/26"): {"r2", t0.Add(minAge)}},
			},
		},
		{
			name: "block that got an allocation is not reclaimed and is forgotten",
			in: func(in *gcInput) {
				in.Now = t0.Add(minAge)
				in.Allocations = []ipam.AllocationInfo{webAlloc}
			},
			st: func(st *gcState) { st.Blocks[netip.MustParsePrefix("10.0.0.0/26")] = blockSeen{"r1", t0} },
		},
		{
			name: "next due is the earliest pending item",
			in: func(in *gcInput) {
				in.Now = t0.Add(30 * time.Second)
				in.Allocations = []ipam.AllocationInfo{goneAlloc}
				in.EmptyBlocks = []ipam.BlockRef{emptyBlock("10.0.1.0/26", "", "r1")}
			},
			st: func(st *gcState) {
				st.Allocs[goneKey] = t0.Add(20 * time.Second)
				st.Blocks[netip.MustParsePrefix("10.0.1.0/26")] = blockSeen{"r1", t0.Add(-minAge + 40*time.Second)}
			},
			want: want{
				pending: 2, nextDue: t0.Add(40 * time.Second),
				stateAlloc: map[string]time.Time{goneKey: t0.Add(20 * time.Second)},
				stateBlock: map[netip.Prefix]blockSeen{netip.MustParsePrefix("10.0.1.0/26"): {"r1", t0.Add(-minAge + 40*time.Second)}},
			},
		},
		{
			name: "a clock that went back restarts the grace",
			in: func(in *gcInput) {
				in.Allocations = []ipam.AllocationInfo{goneAlloc}
			},
			st:   func(st *gcState) { st.Allocs[goneKey] = t0.Add(time.Hour) },
			want: want{pending: 1, nextDue: t0.Add(grace), stateAlloc: map[string]time.Time{goneKey: t0}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := baseInput(t0)
			if tc.in != nil {
				tc.in(&in)
			}
			st := emptyState()
			if tc.st != nil {
				tc.st(&st)
			}
			before := cloneState(st)
			got := decide(in, st)
			if !reflect.DeepEqual(st, before) {
				t.Errorf("decide modified the state it was given: %+v, was %+v", st, before)
			}
			w := tc.want
			check := func(what string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %+v, want %+v", what, got, want)
				}
			}
			check("releases", got.Releases, w.releases)
			check("endpoint deletions", got.DeleteEndpoints, w.endpoints)
			check("node releases", got.ReleaseNodes, w.relNodes)
			check("node deletions", got.DeleteNodes, w.delNodes)
			check("reclaims", got.Reclaim, w.reclaim)
			check("pending", got.Pending, w.pending)
			check("next due", got.NextDue, w.nextDue)
			check("alloc state", got.State.Allocs, orEmpty(w.stateAlloc))
			check("node state", got.State.Nodes, orEmpty(w.stateNodes))
			check("block state", got.State.Blocks, orEmpty(w.stateBlock))
		})
	}
}

// TestDecideOverPasses runs decide pass after pass as the GC does, feeding
// each pass the state of the one before: a missing pod's address goes
// exactly at the first pass at least Grace after it was first seen.
func TestDecideOverPasses(t *testing.T) {
	gone := podAlloc("10.0.0.2", "c2.eth0", "a", "default", "gone", "")
	st := emptyState()
	var releasedAt time.Time
	for i := range 10 {
		now := t0.Add(time.Duration(i) * 25 * time.Second)
		in := baseInput(now)
		if releasedAt.IsZero() {
			in.Allocations = []ipam.AllocationInfo{gone}
		}
		plan := decide(in, st)
		st = plan.State
		if len(plan.Releases) > 0 {
			if !releasedAt.IsZero() {
				t.Fatalf("pass %d released again: %+v", i, plan.Releases)
			}
			releasedAt = now
		}
	}
	// Seen first at t0; passes at 0, 25 s, 50 s, 75 s: 75 s is the first
	// at least a minute later.
	if want := t0.Add(75 * time.Second); !releasedAt.Equal(want) {
		t.Fatalf("released at %v, want %v", releasedAt, want)
	}
	if len(st.Allocs) != 0 {
		t.Fatalf("state still remembers released allocations: %v", st.Allocs)
	}
}

func cloneState(st gcState) gcState {
	return gcState{Allocs: maps.Clone(st.Allocs), Nodes: maps.Clone(st.Nodes), Blocks: maps.Clone(st.Blocks)}
}

func orEmpty[K comparable, V any](m map[K]V) map[K]V {
	if m == nil {
		return map[K]V{}
	}
	return m
}
