// Package agentapi is the local API between the Twill CNI plugin and the
// node agent: JSON over HTTP on a unix socket. It holds the request and
// response types, the error codes and a small client. It imports the
// standard library only, so that the plugin binary that embeds it stays
// small.
//
// Endpoints (all bodies JSON):
//
//	POST   /v1/allocate          AllocateRequest → AllocateResponse
//	                             (optionally recording the endpoint too)
//	POST   /v1/sync              SyncRequest → Endpoint, once recorded
//	PUT    /v1/endpoints/{handle} Endpoint → Endpoint (as stored)
//	GET    /v1/endpoints/{handle} → EndpointStatus
//	DELETE /v1/endpoints/{handle} → DeleteResponse (missing = success)
//	GET    /v1/status            → Status
//	POST   /v1/gc                GCRequest → GCResponse
//
// A failed request answers with a non-2xx status and an Error body; the
// Client returns it as *Error, matched with errors.As on its Code.
package agentapi

import (
	"errors"
	"fmt"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/var/run/twill/agent.sock"

// Paths of the API's endpoints. EndpointsPath is followed by the escaped
// handle.
const (
	AllocatePath  = "/v1/allocate"
	EndpointsPath = "/v1/endpoints/"
	StatusPath    = "/v1/status"
	GCPath        = "/v1/gc"
	SyncPath      = "/v1/sync"
)

// Error codes carried by Error.Code.
const (
	// CodePoolExhausted: no eligible pool has a free address for the node.
	CodePoolExhausted = "pool-exhausted"
	// CodeNotInPool: the requested address is outside every enabled pool.
	CodeNotInPool = "not-in-pool"
	// CodeAddressInUse: the requested address is allocated to another handle.
	CodeAddressInUse = "address-in-use"
	// CodeUnavailable: the datastore cannot be reached, or the agent is not
	// registered yet; retrying later may succeed.
	CodeUnavailable = "unavailable"
	// CodeInvalid: the request is malformed; the message says which field.
	CodeInvalid = "invalid"
	// CodeInternal: anything else.
	CodeInternal = "internal"
)

// Error is a failure reported by the agent. Match it with errors.As and
// switch on Code.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("twill agent: %s: %s", e.Code, e.Message)
}

// ErrAgentUnreachable is wrapped by the Client's errors when the agent's
// socket cannot be connected to (no agent running, wrong path, no
// permission). The error's message names the socket path.
var ErrAgentUnreachable = errors.New("twill agent unreachable")

// HandleID is the IPAM handle of one pod attachment: the container ID, a
// dot, and the interface name inside the pod (CNI_IFNAME).
func HandleID(containerID, ifName string) string {
	return containerID + "." + ifName
}

// AllocateRequest asks for one pod address. Handle may be left empty when
// ContainerID and IfName are set: it is then HandleID(ContainerID, IfName).
// Allocating for a handle that already holds addresses returns those
// addresses again (a retried ADD does not leak).
type AllocateRequest struct {
	Handle      string `json:"handle,omitempty"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// Namespace and Pod are recorded with the allocation. In Kubernetes
	// mode the agent also reads the pod's address and pool annotations.
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// PodUID is the pod's UID (CNI_ARGS K8S_POD_UID), recorded with the
	// allocation when set.
	PodUID string `json:"podUID,omitempty"`
	// IP optionally requests a specific address (no prefix length).
	IP string `json:"ip,omitempty"`
	// Record, when set, asks the agent to record the pod's endpoint too, as
	// PUT /v1/endpoints/{handle} would with Record as its body: the
	// addresses are the handle's (Record.Addresses is ignored), and empty
	// ContainerID, IfName, Namespace, Pod and PodUID are taken from the
	// request.
	// The agent writes the record after its answer, which then says
	// Recording, so that the plugin plumbs the veth meanwhile; the plugin
	// calls Sync before it adds the pod's route, and Sync reports the
	// outcome. When recording fails, the agent undoes an allocation this
	// request made (record and addresses), so that a failed request leaves
	// nothing behind. It takes the record off the ADD's critical path and
	// saves the agent a read of the allocation. An agent that predates
	// Record ignores it and does not say Recording: the plugin then PUTs
	// the endpoint itself.
	Record *Endpoint `json:"record,omitempty"`
}

// AllocateResponse carries the allocated addresses and the MTUs to use.
type AllocateResponse struct {
	// Handle is the handle the addresses were allocated to.
	Handle string `json:"handle"`
	// Addresses are the pod's addresses as /32 prefixes, e.g.
	// "172.16.159.145/32".
	Addresses []string `json:"addresses"`
	// MTU is the MTU the pod's interface should have: the host interface's
	// MTU, so that direct (same-subnet) paths pay no encapsulation tax.
	// Encapsulated paths rely on path-MTU discovery against the VXLAN
	// device's smaller MTU (TunnelMTU).
	MTU int `json:"mtu"`
	// TunnelMTU is the VXLAN device's MTU; 0 when the node has no VXLAN.
	TunnelMTU int `json:"tunnelMTU,omitempty"`
	// Gateway is the address pods route through (169.254.1.1, proxy ARP).
	Gateway string `json:"gateway,omitempty"`
	// Recording reports that the agent is recording the endpoint of
	// AllocateRequest.Record with the addresses above; Sync waits for it.
	Recording bool `json:"recording,omitempty"`
}

// SyncRequest names the handle whose endpoint, recorded after an allocate
// answer (AllocateResponse.Recording), to wait for. POST /v1/sync answers
// with the Endpoint as stored once it is recorded (and no reconcile that
// planned without it is still running), or with the error that kept it
// from being recorded.
type SyncRequest struct {
	Handle string `json:"handle"`
}

// Endpoint describes a plumbed pod interface, as PUT to
// /v1/endpoints/{handle}. The agent records it and owns the pod's /32
// routes from then on.
type Endpoint struct {
	// Handle is filled in by the agent from the path.
	Handle      string `json:"handle,omitempty"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Namespace   string `json:"namespace,omitempty"`
	Pod         string `json:"pod,omitempty"`
	PodUID      string `json:"podUID,omitempty"`
	// HostIface is the host side of the veth (at most 15 bytes).
	HostIface string `json:"hostIface"`
	// Addresses are the pod's addresses, each a /32 ("172.16.159.145/32";
	// a bare address is taken as /32).
	Addresses []string `json:"addresses"`
	MAC       string   `json:"mac,omitempty"`
	Netns     string   `json:"netns,omitempty"`
}

// EndpointStatus answers GET /v1/endpoints/{handle}.
type EndpointStatus struct {
	Handle string `json:"handle"`
	// Endpoint is the recorded endpoint; nil when none is recorded.
	Endpoint *Endpoint `json:"endpoint,omitempty"`
	// Allocated reports whether IPAM holds addresses for the handle.
	Allocated bool `json:"allocated"`
	// Addresses are the addresses IPAM holds for the handle, as /32s.
	Addresses []string `json:"addresses,omitempty"`
}

// DeleteResponse answers DELETE /v1/endpoints/{handle}.
type DeleteResponse struct {
	Handle string `json:"handle"`
	// Released are the addresses that were released; empty when the handle
	// held none (already deleted).
	Released []string `json:"released,omitempty"`
	// EndpointDeleted reports whether an endpoint record was removed.
	EndpointDeleted bool `json:"endpointDeleted"`
}

// Status answers GET /v1/status.
type Status struct {
	// Ready is set once the node is registered and the first reconcile of
	// the kernel succeeded.
	Ready bool `json:"ready"`
	// Reason says why the agent is not ready (empty when ready).
	Reason string `json:"reason,omitempty"`
	// PoolHasRoom reports whether some pool eligible for this node still has
	// a free workload address (an own block with room, an unclaimed block,
	// or a borrowable address unless strict affinity is on).
	PoolHasRoom bool `json:"poolHasRoom"`
	// Node is the node's name.
	Node string `json:"node,omitempty"`
}

// Attachment identifies one pod attachment, as CNI GC lists them.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// GCRequest lists the attachments that are still valid; the agent releases
// this node's workload allocations of every other handle.
type GCRequest struct {
	ValidAttachments []Attachment `json:"validAttachments"`
}

// GCResponse lists what a GC released.
type GCResponse struct {
	// Released are the handles whose addresses were released (sorted).
	Released []string `json:"released"`
	// EndpointsDeleted are the handles whose endpoint records were deleted
	// (sorted); it includes records left without an allocation.
	EndpointsDeleted []string `json:"endpointsDeleted,omitempty"`
	// Deferred are stale handles left alone this time because the agent
	// allocated or recorded them within its GC grace period (default one
	// minute) or a request for them was running; a later GC releases them.
	Deferred []string `json:"deferred,omitempty"`
}
