package crd

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"twill.dev/twill/api"
)

// Group and Version of every Twill custom resource; together they are
// api.Version (twill.dev/v1).
const (
	Group   = "twill.dev"
	Version = "v1"
)

// Resource (plural) names of the custom resources.
const (
	ResourceIPPool           = "ippools"
	ResourceIPAMBlock        = "ipamblocks"
	ResourceIPAMHandle       = "ipamhandles"
	ResourceIPAMConfig       = "ipamconfigs"
	ResourceWorkloadEndpoint = "workloadendpoints"
)

// Kinds of the custom resources that have no constant in package api.
const (
	// KindIPAMConfig is the kind of the IPAMConfig resource and of
	// api.IPAMConfig documents.
	KindIPAMConfig = "IPAMConfig"
)

// Resources lists the plural names of every custom resource, in the order
// of the manifests' file names.
var Resources = []string{ResourceIPAMBlock, ResourceIPAMConfig, ResourceIPAMHandle, ResourceIPPool, ResourceWorkloadEndpoint}

// IPPool is a range of pod addresses, cut into blocks of spec.blockSize
// addresses. Its spec is api.IPPoolSpec, with Calico's field names.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,path=ippools,singular=ippool,categories=twill
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=".spec.cidr"
// +kubebuilder:printcolumn:name="BlockSize",type=integer,JSONPath=".spec.blockSize"
// +kubebuilder:printcolumn:name="VXLANMode",type=string,JSONPath=".spec.vxlanMode"
// +kubebuilder:printcolumn:name="NATOutgoing",type=boolean,JSONPath=".spec.natOutgoing"
// +kubebuilder:printcolumn:name="Disabled",type=boolean,JSONPath=".spec.disabled"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec api.IPPoolSpec `json:"spec"`
}

// IPAMBlock is one slice of a pool: its affinity to a node and the
// addresses allocated from it. Its spec is api.Block without apiVersion and
// kind.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,path=ipamblocks,singular=ipamblock,categories=twill
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=".spec.cidr"
// +kubebuilder:printcolumn:name="Affinity",type=string,JSONPath=".spec.affinity"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type IPAMBlock struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec BlockSpec `json:"spec"`
}

// BlockSpec is api.Block's fields without apiVersion and kind
// (TestSpecsMirrorAPI keeps the two in step).
type BlockSpec struct {
	// CIDR is the block's range, for example 172.16.159.128/26.
	CIDR string `json:"cidr"`
	// Affinity is the name of the node the block belongs to; empty when the
	// block is not claimed (its addresses then all belong to borrowers).
	// The object carries the same node name in the label twill.dev/node.
	Affinity string `json:"affinity,omitempty"`
	// Pinned marks a block assigned to its node by an administrator. Pinned
	// blocks keep their affinity when their node is deleted and are never
	// reclaimed while empty.
	Pinned bool `json:"pinned,omitempty"`
	// Allocations lists the used addresses, sorted by Ordinal.
	Allocations []api.Allocation `json:"allocations,omitempty"`
}

// IPAMHandle records which blocks hold one allocation handle's addresses.
// Its spec is api.Handle without apiVersion and kind.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,path=ipamhandles,singular=ipamhandle,categories=twill
// +kubebuilder:printcolumn:name="Handle",type=string,JSONPath=".spec.id"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type IPAMHandle struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec HandleSpec `json:"spec"`
}

// HandleSpec is api.Handle's fields without apiVersion and kind
// (TestSpecsMirrorAPI keeps the two in step).
type HandleSpec struct {
	// ID is the allocation handle: for a pod, its container ID, a dot and the
	// interface name (for example 0123abcd.eth0).
	ID string `json:"id"`
	// Blocks maps block CIDR to the number of the handle's addresses in it.
	// +optional
	Blocks map[string]int `json:"blocks"`
}

// IPAMConfig holds the cluster-wide IPAM settings; the one object is named
// default. Its spec is api.IPAMConfig without apiVersion and kind.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,path=ipamconfigs,singular=ipamconfig,categories=twill
// +kubebuilder:printcolumn:name="StrictAffinity",type=boolean,JSONPath=".spec.strictAffinity"
// +kubebuilder:printcolumn:name="MaxBlocksPerNode",type=integer,JSONPath=".spec.maxBlocksPerNode"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type IPAMConfig struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPAMConfigSpec `json:"spec"`
}

// IPAMConfigSpec is api.IPAMConfig's fields without apiVersion and kind
// (TestSpecsMirrorAPI keeps the two in step).
type IPAMConfigSpec struct {
	// StrictAffinity forbids borrowing addresses from other nodes' blocks.
	StrictAffinity bool `json:"strictAffinity"`
	// MaxBlocksPerNode caps the blocks one node may claim; 0 = no cap.
	// +kubebuilder:validation:Minimum=0
	MaxBlocksPerNode int `json:"maxBlocksPerNode,omitempty"`
}

// WorkloadEndpoint is a pod interface plumbed by the CNI plugin on a node,
// labelled twill.dev/node=<node>. Its spec is api.WorkloadEndpointSpec.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,path=workloadendpoints,singular=workloadendpoint,categories=twill
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=".spec.node"
// +kubebuilder:printcolumn:name="PodNamespace",type=string,JSONPath=".spec.namespace"
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=".spec.pod"
// +kubebuilder:printcolumn:name="Addresses",type=string,JSONPath=".spec.addresses"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type WorkloadEndpoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec api.WorkloadEndpointSpec `json:"spec"`
}
