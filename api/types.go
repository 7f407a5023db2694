// Package api holds Twill's resource types: IP pools, nodes, IPAM blocks,
// block affinities, allocation handles and workload endpoints, together with
// their defaults, validation, the nodeSelector language and the import of
// Calico's projectcalico.org/v3 IPPool documents.
//
// Package api is part of Twill's pure core: it imports no netlink, no etcd,
// no clock and starts no goroutines.
package api

// Version is the apiVersion of every Twill resource document.
const Version = "twill.dev/v1"

// CalicoVersion is the apiVersion of Calico documents that Twill accepts and
// converts (IPPool only).
const CalicoVersion = "projectcalico.org/v3"

// Resource kinds.
const (
	KindIPPool           = "IPPool"
	KindNode             = "Node"
	KindBlock            = "IPAMBlock"
	KindBlockAffinity    = "BlockAffinity"
	KindHandle           = "IPAMHandle"
	KindWorkloadEndpoint = "WorkloadEndpoint"
)

// EncapMode says when traffic to a remote block is encapsulated: Never,
// Always, or CrossSubnet (only when the peer is outside the local subnet).
type EncapMode string

// Encapsulation modes, spelled as in Calico.
const (
	EncapNever       EncapMode = "Never"
	EncapAlways      EncapMode = "Always"
	EncapCrossSubnet EncapMode = "CrossSubnet"
)

// IPPoolUse is what an address of a pool may be used for.
type IPPoolUse string

// Intended uses of pool addresses.
const (
	UseWorkload IPPoolUse = "Workload"
	UseTunnel   IPPoolUse = "Tunnel"
)

// TypeMeta carries apiVersion and kind, as in Kubernetes documents.
type TypeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// ObjectMeta is the metadata every named resource carries.
type ObjectMeta struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	// ResourceVersion is the datastore revision the object was read at. It is
	// output only; a document applied with it set is applied as a
	// compare-and-swap against that revision.
	ResourceVersion string `json:"resourceVersion,omitempty"`
}

// IPPool is a range of pod addresses, cut into blocks of BlockSize.
type IPPool struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     IPPoolSpec `json:"spec"`
}

// IPPoolSpec holds an IPPool's settings, with Calico's field names.
type IPPoolSpec struct {
	CIDR         string      `json:"cidr"`
	BlockSize    int         `json:"blockSize,omitempty"`
	VXLANMode    EncapMode   `json:"vxlanMode,omitempty"`
	IPIPMode     EncapMode   `json:"ipipMode,omitempty"`
	NATOutgoing  bool        `json:"natOutgoing,omitempty"`
	Disabled     bool        `json:"disabled,omitempty"`
	NodeSelector string      `json:"nodeSelector,omitempty"`
	AllowedUses  []IPPoolUse `json:"allowedUses,omitempty"`
}

// Node is one host of the cluster as the agent registered it.
type Node struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     NodeSpec   `json:"spec"`
}

// NodeSpec holds what peers need to reach a node's pods.
type NodeSpec struct {
	// Address is the node's host address with its prefix length, for example
	// 192.168.3.241/24. The prefix decides which peers share its subnet.
	Address string `json:"address"`
	// Interface is the host interface that holds Address (informational).
	Interface string `json:"interface,omitempty"`
	// MTU is the MTU of Interface; 0 when unknown.
	MTU int `json:"mtu,omitempty"`
	// VTEPMAC is the MAC address of the node's VXLAN device.
	VTEPMAC string `json:"vtepMAC,omitempty"`
	// TunnelAddress is the address of the node's VXLAN device (no prefix).
	TunnelAddress string `json:"tunnelAddress,omitempty"`
}

// Block is one slice of a pool, with an affinity to at most one node, and the
// addresses allocated from it.
type Block struct {
	TypeMeta `json:",inline"`
	// CIDR is the block's range, for example 172.16.159.128/26.
	CIDR string `json:"cidr"`
	// Affinity is the name of the node the block belongs to; empty when the
	// block is not claimed (its addresses then all belong to borrowers).
	Affinity string `json:"affinity,omitempty"`
	// Pinned marks a block assigned to its node by an administrator. Pinned
	// blocks keep their affinity when they become empty.
	Pinned bool `json:"pinned,omitempty"`
	// Allocations lists the used addresses, sorted by Ordinal.
	Allocations []Allocation `json:"allocations,omitempty"`
}

// Allocation is one address handed out from a block.
type Allocation struct {
	// Ordinal is the address's offset from the start of the block.
	Ordinal int `json:"ordinal"`
	// Handle identifies the owner (for a pod: container ID + "." + ifname).
	Handle string `json:"handle"`
	// Use is the intended use the address was allocated for.
	Use IPPoolUse `json:"use,omitempty"`
	// Attrs records who uses it: namespace, pod, node.
	Attrs map[string]string `json:"attrs,omitempty"`
}

// Allocation attribute keys.
const (
	AttrNode      = "node"
	AttrNamespace = "namespace"
	AttrPod       = "pod"
	AttrContainer = "containerID"
	AttrIfName    = "ifname"
)

// BlockAffinity indexes blocks by node: one exists for every block whose
// Affinity is set, written in the same transaction as the block.
type BlockAffinity struct {
	TypeMeta `json:",inline"`
	Node     string `json:"node"`
	CIDR     string `json:"cidr"`
}

// Handle records which blocks hold a handle's addresses, so that release by
// handle touches only those blocks.
type Handle struct {
	TypeMeta `json:",inline"`
	ID       string `json:"id"`
	// Blocks maps block CIDR to the number of the handle's addresses in it.
	Blocks map[string]int `json:"blocks"`
}

// WorkloadEndpoint is a pod interface plumbed by the CNI plugin on a node.
// The node's agent owns the pod's /32 route from the moment it is recorded.
type WorkloadEndpoint struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta           `json:"metadata"`
	Spec     WorkloadEndpointSpec `json:"spec"`
}

// WorkloadEndpointSpec describes one pod interface.
type WorkloadEndpointSpec struct {
	Node        string `json:"node"`
	Namespace   string `json:"namespace,omitempty"`
	Pod         string `json:"pod,omitempty"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// Handle is the IPAM handle that holds Addresses.
	Handle string `json:"handle"`
	// HostIface is the host side of the veth, cali + 11 hex characters.
	HostIface string `json:"hostIface"`
	// Addresses are the pod's addresses, each a /32.
	Addresses []string `json:"addresses"`
	// MAC is the pod-side interface's MAC address.
	MAC string `json:"mac,omitempty"`
	// Netns is the pod's network namespace path, when known.
	Netns string `json:"netns,omitempty"`
}

// IPAMConfig holds cluster-wide IPAM settings.
type IPAMConfig struct {
	TypeMeta `json:",inline"`
	// StrictAffinity forbids borrowing addresses from other nodes' blocks.
	StrictAffinity bool `json:"strictAffinity"`
	// MaxBlocksPerNode caps the blocks one node may claim; 0 = no cap.
	MaxBlocksPerNode int `json:"maxBlocksPerNode,omitempty"`
}
