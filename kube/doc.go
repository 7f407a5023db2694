// Package kube holds the agent's Kubernetes-side controllers: PodSource,
// which reads a pod's UID and its address and pool annotations for the CNI
// server, and GC, the cluster-wide garbage collector of addresses, workload
// endpoints, node affinities and empty blocks, run by one agent at a time
// under a coordination.k8s.io Lease.
//
// The GC is split in two: decide, a pure function from what one pass saw
// (allocations, live pods and nodes, empty blocks) and what earlier passes
// remembered (when each piece of garbage was first seen) to the actions to
// take; and GC.Pass, which reads the inputs, calls decide and performs its
// actions through ipam and the datastore. Nothing is released the first
// time it looks like garbage: it must still look so on a later pass at
// least Grace (for blocks: BlockMinAge, at the same revision) after it was
// first seen, and every release is a compare-and-swap that leaves a
// re-assigned address or a re-used block alone.
package kube
