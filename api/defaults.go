package api

import "net/netip"

// Default block sizes, as in Calico.
const (
	DefaultBlockSizeIPv4 = 26
	DefaultBlockSizeIPv6 = 122
)

// DefaultNodeSelector is the nodeSelector of a pool that serves every node.
const DefaultNodeSelector = "all()"

// DefaultAllowedUses returns the uses a pool allows when it lists none.
func DefaultAllowedUses() []IPPoolUse {
	return []IPPoolUse{UseWorkload, UseTunnel}
}

// Default fills in the fields a pool document may leave out: apiVersion and
// kind, blockSize (26 for IPv4, 122 for IPv6; when the cidr does not parse
// the IPv4 size is used and Validate reports the cidr), vxlanMode and
// ipipMode (Never), nodeSelector (all()) and allowedUses (Workload, Tunnel).
// Fields already set are left alone; call Validate afterwards.
func (p *IPPool) Default() {
	p.APIVersion = Version
	p.Kind = KindIPPool
	if p.Spec.BlockSize == 0 {
		p.Spec.BlockSize = DefaultBlockSizeIPv4
		if pfx, err := netip.ParsePrefix(p.Spec.CIDR); err == nil && pfx.Addr().Is6() {
			p.Spec.BlockSize = DefaultBlockSizeIPv6
		}
	}
	if p.Spec.VXLANMode == "" {
		p.Spec.VXLANMode = EncapNever
	}
	if p.Spec.IPIPMode == "" {
		p.Spec.IPIPMode = EncapNever
	}
	if p.Spec.NodeSelector == "" {
		p.Spec.NodeSelector = DefaultNodeSelector
	}
	if len(p.Spec.AllowedUses) == 0 {
		p.Spec.AllowedUses = DefaultAllowedUses()
	}
}

// Default sets the node's apiVersion and kind.
func (n *Node) Default() {
	n.APIVersion = Version
	n.Kind = KindNode
}
