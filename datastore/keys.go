package datastore

import "strings"

// Key layout. Every key lives under Prefix; each resource is one JSON
// document. docs/datastore.md describes the layout for operators.
//
//	/twill/v1/ippools/<name>                     api.IPPool
//	/twill/v1/nodes/<name>                       api.Node
//	/twill/v1/ipam/config                        api.IPAMConfig
//	/twill/v1/ipam/blocks/<a.b.c.d-len>          api.Block
//	/twill/v1/ipam/affinities/<node>/<a.b.c.d-len> api.BlockAffinity
//	/twill/v1/ipam/handles/<handle>              api.Handle
//	/twill/v1/workloads/<node>/<handle>          api.WorkloadEndpoint
const (
	Prefix           = "/twill/v1/"
	PoolsPrefix      = Prefix + "ippools/"
	NodesPrefix      = Prefix + "nodes/"
	IPAMConfigKey    = Prefix + "ipam/config"
	BlocksPrefix     = Prefix + "ipam/blocks/"
	AffinitiesPrefix = Prefix + "ipam/affinities/"
	HandlesPrefix    = Prefix + "ipam/handles/"
	WorkloadsPrefix  = Prefix + "workloads/"
)

// PoolKey is the key of the IPPool name.
func PoolKey(name string) string { return PoolsPrefix + name }

// NodeKey is the key of the Node name.
func NodeKey(name string) string { return NodesPrefix + name }

// CIDRSegment turns a CIDR into one key segment: "/" becomes "-".
func CIDRSegment(cidr string) string { return strings.ReplaceAll(cidr, "/", "-") }

// SegmentCIDR undoes CIDRSegment.
func SegmentCIDR(seg string) string {
	i := strings.LastIndex(seg, "-")
	if i < 0 {
		return seg
	}
	return seg[:i] + "/" + seg[i+1:]
}

// BlockKey is the key of the block with the given CIDR.
func BlockKey(cidr string) string { return BlocksPrefix + CIDRSegment(cidr) }

// AffinityPrefix is the prefix of all affinities of node.
func AffinityPrefix(node string) string { return AffinitiesPrefix + node + "/" }

// AffinityKey is the key of node's affinity to the block cidr.
func AffinityKey(node, cidr string) string { return AffinityPrefix(node) + CIDRSegment(cidr) }

// HandleKey is the key of the allocation handle id. Handles are escaped so
// that any string (container IDs, "ns/pod") makes one key segment.
func HandleKey(id string) string { return HandlesPrefix + EscapeSegment(id) }

// WorkloadPrefix is the prefix of node's workload endpoints.
func WorkloadPrefix(node string) string { return WorkloadsPrefix + node + "/" }

// WorkloadKey is the key of node's workload endpoint with the given handle.
func WorkloadKey(node, handle string) string { return WorkloadPrefix(node) + EscapeSegment(handle) }

// EscapeSegment makes s safe as one key segment: '%' and '/' are
// percent-encoded.
func EscapeSegment(s string) string {
	if !strings.ContainsAny(s, "%/") {
		return s
	}
	r := strings.NewReplacer("%", "%25", "/", "%2F")
	return r.Replace(s)
}

// UnescapeSegment undoes EscapeSegment.
func UnescapeSegment(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	r := strings.NewReplacer("%2F", "/", "%25", "%")
	return r.Replace(s)
}
