package api

import (
	"errors"
	"strings"
	"testing"
)

// seedPool is the pool of the reference cluster (seed-cluster.yaml).
func seedPool() IPPool {
	p := IPPool{
		Metadata: ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: IPPoolSpec{
			CIDR:         "172.16.0.0/16",
			BlockSize:    26,
			IPIPMode:     EncapNever,
			VXLANMode:    EncapCrossSubnet,
			NATOutgoing:  true,
			NodeSelector: "all()",
			AllowedUses:  []IPPoolUse{UseWorkload, UseTunnel},
		},
	}
	p.Default()
	return p
}

// wantFieldError is one field error a case must produce.
type wantFieldError struct {
	field  string
	reason Reason
	// rule, when set, must appear in the FieldError's Rule: the hints the
	// user relies on to fix the value.
	rule string
}

// checkValidation asserts that err lists exactly the wanted field errors
// (by field and reason), found through errors.As.
func checkValidation(t *testing.T, err error, kind, name string, want []wantFieldError) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("got error %v, want none", err)
		}
		return
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v (%T), want a *ValidationError", err, err)
	}
	if ve.Kind != kind || ve.Name != name {
		t.Errorf("ValidationError names %s %q, want %s %q", ve.Kind, ve.Name, kind, name)
	}
	if len(ve.Errors) != len(want) {
		t.Errorf("got %d field errors %v, want %d", len(ve.Errors), ve.Errors, len(want))
	}
	for _, w := range want {
		found := false
		for _, fe := range ve.Errors {
			if fe.Field != w.field || fe.Reason != w.reason {
				continue
			}
			found = true
			if fe.Rule == "" {
				t.Errorf("%s: empty rule", fe.Field)
			}
			if w.rule != "" && !strings.Contains(fe.Rule, w.rule) {
				t.Errorf("%s rule %q does not contain %q", fe.Field, fe.Rule, w.rule)
			}
			if !strings.Contains(err.Error(), fe.Error()) {
				t.Errorf("error %q does not list %q", err, fe.Error())
			}
		}
		if !found {
			t.Errorf("missing field error %s/%s in %v", w.field, w.reason, ve.Errors)
		}
	}
	// errors.As also reaches the first FieldError directly.
	var fe FieldError
	if !errors.As(err, &fe) || fe != ve.Errors[0] {
		t.Errorf("errors.As(FieldError) = %v, want %v", fe, ve.Errors[0])
	}
}

func TestIPPoolValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *IPPool)
		want   []wantFieldError
	}{
		// Valid pools.
		{"seed pool", func(*IPPool) {}, nil},
		{"vxlan always", func(p *IPPool) { p.Spec.VXLANMode = EncapAlways }, nil},
		{"no encapsulation", func(p *IPPool) { p.Spec.VXLANMode = EncapNever }, nil},
		{"smallest block size", func(p *IPPool) { p.Spec.BlockSize = 20 }, nil},
		{"largest block size", func(p *IPPool) { p.Spec.BlockSize = 32 }, nil},
		{"pool of exactly one block", func(p *IPPool) { p.Spec.CIDR = "10.0.0.0/26" }, nil},
		{"ipv6 pool", func(p *IPPool) { p.Spec.CIDR = "fd00:10::/48"; p.Spec.BlockSize = 122 }, nil},
		{"ipv6 block size bounds", func(p *IPPool) { p.Spec.CIDR = "fd00:10::/116"; p.Spec.BlockSize = 116 }, nil},
		{"tunnel only", func(p *IPPool) { p.Spec.AllowedUses = []IPPoolUse{UseTunnel} }, nil},
		{"selector", func(p *IPPool) { p.Spec.NodeSelector = "zone in {'a', 'b'} && !has(edge)" }, nil},
		{"empty selector is all()", func(p *IPPool) { p.Spec.NodeSelector = "" }, nil},
		{"dotted name", func(p *IPPool) { p.Metadata.Name = "my.pool-1" }, nil},
		{"disabled without nat", func(p *IPPool) { p.Spec.Disabled = true; p.Spec.NATOutgoing = false }, nil},

		// apiVersion and kind.
		{"wrong apiVersion", func(p *IPPool) { p.APIVersion = "v1" },
			[]wantFieldError{{"apiVersion", ReasonValue, "twill.dev/v1"}}},
		{"wrong kind", func(p *IPPool) { p.Kind = "Node" },
			[]wantFieldError{{"kind", ReasonValue, "IPPool"}}},

		// metadata.name.
		{"no name", func(p *IPPool) { p.Metadata.Name = "" },
			[]wantFieldError{{"metadata.name", ReasonRequired, ""}}},
		{"upper-case name", func(p *IPPool) { p.Metadata.Name = "Pool" },
			[]wantFieldError{{"metadata.name", ReasonFormat, "DNS-1123"}}},
		{"underscore in name", func(p *IPPool) { p.Metadata.Name = "my_pool" },
			[]wantFieldError{{"metadata.name", ReasonFormat, "DNS-1123"}}},
		{"name starts with dash", func(p *IPPool) { p.Metadata.Name = "-pool" },
			[]wantFieldError{{"metadata.name", ReasonFormat, ""}}},
		{"name ends with dash", func(p *IPPool) { p.Metadata.Name = "pool-" },
			[]wantFieldError{{"metadata.name", ReasonFormat, ""}}},
		{"empty name part", func(p *IPPool) { p.Metadata.Name = "a..b" },
			[]wantFieldError{{"metadata.name", ReasonFormat, ""}}},
		{"name too long", func(p *IPPool) { p.Metadata.Name = strings.Repeat("a", 254) },
			[]wantFieldError{{"metadata.name", ReasonFormat, "253"}}},

		// spec.cidr.
		{"no cidr", func(p *IPPool) { p.Spec.CIDR = "" },
			[]wantFieldError{{"spec.cidr", ReasonRequired, ""}}},
		{"cidr garbage", func(p *IPPool) { p.Spec.CIDR = "ten.0.0.0/8" },
			[]wantFieldError{{"spec.cidr", ReasonFormat, "CIDR"}}},
		{"cidr without prefix", func(p *IPPool) { p.Spec.CIDR = "10.0.0.0" },
			[]wantFieldError{{"spec.cidr", ReasonFormat, "prefix length"}}},
		{"cidr not masked", func(p *IPPool) { p.Spec.CIDR = "10.0.0.1/16" },
			[]wantFieldError{{"spec.cidr", ReasonNotMasked, "did you mean 10.0.0.0/16?"}}},
		{"cidr link-local", func(p *IPPool) { p.Spec.CIDR = "169.254.0.0/16" },
			[]wantFieldError{{"spec.cidr", ReasonReserved, "169.254.0.0/16"}}},
		{"cidr containing link-local", func(p *IPPool) { p.Spec.CIDR = "169.0.0.0/8" },
			[]wantFieldError{{"spec.cidr", ReasonReserved, "169.254.0.0/16"}}},
		{"cidr inside link-local", func(p *IPPool) { p.Spec.CIDR = "169.254.10.0/24" },
			[]wantFieldError{{"spec.cidr", ReasonReserved, "link-local"}}},
		{"cidr loopback", func(p *IPPool) { p.Spec.CIDR = "127.0.0.0/16" },
			[]wantFieldError{{"spec.cidr", ReasonReserved, "loopback"}}},
		{"cidr multicast", func(p *IPPool) { p.Spec.CIDR = "239.0.0.0/16" },
			[]wantFieldError{{"spec.cidr", ReasonReserved, "multicast"}}},
		{"ipv6 link-local", func(p *IPPool) { p.Spec.CIDR = "fe80::/64"; p.Spec.BlockSize = 122 },
			[]wantFieldError{{"spec.cidr", ReasonReserved, "fe80::/10"}}},
		{"ipv4-mapped ipv6", func(p *IPPool) { p.Spec.CIDR = "::ffff:10.0.0.0/112"; p.Spec.BlockSize = 122 },
			[]wantFieldError{{"spec.cidr", ReasonFormat, "IPv4"}}},

		// spec.blockSize.
		{"block size zero (not defaulted)", func(p *IPPool) { p.Spec.BlockSize = 0 },
			[]wantFieldError{{"spec.blockSize", ReasonRange, "between 20 and 32 for IPv4"}}},
		{"block size too small", func(p *IPPool) { p.Spec.BlockSize = 19 },
			[]wantFieldError{{"spec.blockSize", ReasonRange, "between 20 and 32 for IPv4"}}},
		{"block size too large", func(p *IPPool) { p.Spec.BlockSize = 33 },
			[]wantFieldError{{"spec.blockSize", ReasonRange, "between 20 and 32 for IPv4"}}},
		{"ipv6 block size too small", func(p *IPPool) { p.Spec.CIDR = "fd00::/48"; p.Spec.BlockSize = 115 },
			[]wantFieldError{{"spec.blockSize", ReasonRange, "between 116 and 128 for IPv6"}}},
		{"ipv6 block size too large", func(p *IPPool) { p.Spec.CIDR = "fd00::/48"; p.Spec.BlockSize = 129 },
			[]wantFieldError{{"spec.blockSize", ReasonRange, "between 116 and 128 for IPv6"}}},
		{"ipv4 block size on ipv6 pool", func(p *IPPool) { p.Spec.CIDR = "fd00::/48"; p.Spec.BlockSize = 26 },
			[]wantFieldError{{"spec.blockSize", ReasonRange, "IPv6"}}},
		{"block size without a cidr", func(p *IPPool) { p.Spec.CIDR = ""; p.Spec.BlockSize = 50 },
			[]wantFieldError{{"spec.cidr", ReasonRequired, ""}, {"spec.blockSize", ReasonRange, "IPv4 or"}}},

		// At least one block.
		{"pool smaller than a block", func(p *IPPool) { p.Spec.CIDR = "10.0.0.0/27" },
			[]wantFieldError{{"spec.cidr", ReasonTooSmall, "pool /27 is smaller than one /26 block"}}},
		{"ipv6 pool smaller than a block", func(p *IPPool) { p.Spec.CIDR = "fd00::/124"; p.Spec.BlockSize = 122 },
			[]wantFieldError{{"spec.cidr", ReasonTooSmall, "pool /124 is smaller than one /122 block"}}},

		// Modes.
		{"vxlan mode lower case", func(p *IPPool) { p.Spec.VXLANMode = "crosssubnet" },
			[]wantFieldError{{"spec.vxlanMode", ReasonValue, "did you mean CrossSubnet?"}}},
		{"vxlan mode unknown", func(p *IPPool) { p.Spec.VXLANMode = "Sometimes" },
			[]wantFieldError{{"spec.vxlanMode", ReasonValue, "Never, Always, CrossSubnet"}}},
		{"vxlan mode empty (not defaulted)", func(p *IPPool) { p.Spec.VXLANMode = "" },
			[]wantFieldError{{"spec.vxlanMode", ReasonRequired, ""}}},
		{"ipip mode unknown", func(p *IPPool) { p.Spec.IPIPMode = "bogus" },
			[]wantFieldError{{"spec.ipipMode", ReasonValue, ""}}},
		{"ipip mode lower case", func(p *IPPool) { p.Spec.IPIPMode = "never" },
			[]wantFieldError{{"spec.ipipMode", ReasonValue, "did you mean Never?"}}},
		{"ipip always", func(p *IPPool) { p.Spec.VXLANMode = EncapNever; p.Spec.IPIPMode = EncapAlways },
			[]wantFieldError{{"spec.ipipMode", ReasonUnsupported, "IPIP is not built in Twill; use vxlanMode"}}},
		{"ipip cross-subnet", func(p *IPPool) { p.Spec.VXLANMode = EncapNever; p.Spec.IPIPMode = EncapCrossSubnet },
			[]wantFieldError{{"spec.ipipMode", ReasonUnsupported, "IPIP is not built in Twill"}}},
		{"both encapsulations", func(p *IPPool) { p.Spec.VXLANMode = EncapAlways; p.Spec.IPIPMode = EncapCrossSubnet },
			[]wantFieldError{{"spec.ipipMode", ReasonUnsupported, ""}, {"spec.vxlanMode", ReasonConflict, "cannot both be enabled"}}},

		// nodeSelector.
		{"selector does not parse", func(p *IPPool) { p.Spec.NodeSelector = "zone ==" },
			[]wantFieldError{{"spec.nodeSelector", ReasonFormat, "position 7"}}},

		// allowedUses.
		{"no uses (not defaulted)", func(p *IPPool) { p.Spec.AllowedUses = nil },
			[]wantFieldError{{"spec.allowedUses", ReasonRequired, "Workload, Tunnel"}}},
		{"unknown use", func(p *IPPool) { p.Spec.AllowedUses = []IPPoolUse{UseWorkload, "LoadBalancer"} },
			[]wantFieldError{{"spec.allowedUses[1]", ReasonValue, "Workload or Tunnel"}}},
		{"duplicate use", func(p *IPPool) { p.Spec.AllowedUses = []IPPoolUse{UseTunnel, UseWorkload, UseTunnel} },
			[]wantFieldError{{"spec.allowedUses[2]", ReasonDuplicate, ""}}},

		// Every broken rule is listed.
		{"several errors", func(p *IPPool) {
			p.Metadata.Name = ""
			p.Spec.CIDR = "10.0.0.1/8"
			p.Spec.BlockSize = 40
			p.Spec.AllowedUses = []IPPoolUse{"x"}
		}, []wantFieldError{
			{"metadata.name", ReasonRequired, ""},
			{"spec.cidr", ReasonNotMasked, "10.0.0.0/8"},
			{"spec.blockSize", ReasonRange, ""},
			{"spec.allowedUses[0]", ReasonValue, ""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := seedPool()
			tt.mutate(&p)
			checkValidation(t, p.Validate(), KindIPPool, p.Metadata.Name, tt.want)
		})
	}
}

func TestFieldErrorMessage(t *testing.T) {
	p := seedPool()
	p.Spec.BlockSize = 33
	err := p.Validate()
	want := "spec.blockSize: 33: must be between 20 and 32 for IPv4"
	var fe FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("no FieldError in %v", err)
	}
	if fe.Error() != want {
		t.Errorf("FieldError = %q, want %q", fe.Error(), want)
	}
	if got := err.Error(); got != `IPPool "default-ipv4-ippool" is invalid: `+want {
		t.Errorf("ValidationError = %q", got)
	}
}

func TestDefaultThenValidate(t *testing.T) {
	for _, cidr := range []string{"10.244.0.0/16", "fd00:1::/64"} {
		p := IPPool{Metadata: ObjectMeta{Name: "p"}, Spec: IPPoolSpec{CIDR: cidr}}
		p.Default()
		if err := p.Validate(); err != nil {
			t.Errorf("%s: defaulted pool invalid: %v", cidr, err)
		}
		wantBlock := DefaultBlockSizeIPv4
		if strings.Contains(cidr, ":") {
			wantBlock = DefaultBlockSizeIPv6
		}
		if p.Spec.BlockSize != wantBlock || p.Spec.VXLANMode != EncapNever || p.Spec.IPIPMode != EncapNever ||
			p.Spec.NodeSelector != "all()" || len(p.Spec.AllowedUses) != 2 ||
			p.APIVersion != Version || p.Kind != KindIPPool {
			t.Errorf("%s: Default gave %+v", cidr, p)
		}
	}
	// Default keeps what is set.
	p := IPPool{Spec: IPPoolSpec{CIDR: "10.0.0.0/8", BlockSize: 24, VXLANMode: EncapAlways,
		NodeSelector: "has(a)", AllowedUses: []IPPoolUse{UseTunnel}}}
	p.Default()
	if p.Spec.BlockSize != 24 || p.Spec.VXLANMode != EncapAlways || p.Spec.NodeSelector != "has(a)" ||
		len(p.Spec.AllowedUses) != 1 {
		t.Errorf("Default overwrote set fields: %+v", p.Spec)
	}
	var n Node
	n.Default()
	if n.APIVersion != Version || n.Kind != KindNode {
		t.Errorf("Node.Default gave %+v", n.TypeMeta)
	}
}

func seedNode() Node {
	n := Node{
		Metadata: ObjectMeta{Name: "k8s-master1"},
		Spec: NodeSpec{
			Address:       "192.168.3.241/24",
			Interface:     "eth0",
			MTU:           1500,
			VTEPMAC:       "66:04:84:48:ab:6a",
			TunnelAddress: "172.16.159.128",
		},
	}
	n.Default()
	return n
}

func TestNodeValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(n *Node)
		want   []wantFieldError
	}{
		{"seed node", func(*Node) {}, nil},
		{"address only", func(n *Node) { n.Spec = NodeSpec{Address: "10.0.0.5/16"} }, nil},
		{"ipv6 node", func(n *Node) { n.Spec.Address = "fd00::5/64"; n.Spec.TunnelAddress = "fd00:10::1" }, nil},
		{"host /32 is valid (decode warns)", func(n *Node) { n.Spec.Address = "192.168.3.241/32" }, nil},
		{"upper-case MAC", func(n *Node) { n.Spec.VTEPMAC = "66:04:84:48:AB:6A" }, nil},

		{"wrong kind", func(n *Node) { n.Kind = KindIPPool }, []wantFieldError{{"kind", ReasonValue, ""}}},
		{"wrong apiVersion", func(n *Node) { n.APIVersion = CalicoVersion }, []wantFieldError{{"apiVersion", ReasonValue, ""}}},
		{"no name", func(n *Node) { n.Metadata.Name = "" }, []wantFieldError{{"metadata.name", ReasonRequired, ""}}},
		{"bad name", func(n *Node) { n.Metadata.Name = "Node_1" }, []wantFieldError{{"metadata.name", ReasonFormat, "DNS-1123"}}},
		{"no address", func(n *Node) { n.Spec.Address = "" },
			[]wantFieldError{{"spec.address", ReasonRequired, "prefix length"}}},
		{"bare address", func(n *Node) { n.Spec.Address = "192.168.3.241" },
			[]wantFieldError{{"spec.address", ReasonFormat, "add the prefix length"}}},
		{"address garbage", func(n *Node) { n.Spec.Address = "node1" },
			[]wantFieldError{{"spec.address", ReasonFormat, "192.168.3.241/24"}}},
		{"unspecified address", func(n *Node) { n.Spec.Address = "0.0.0.0/0" },
			[]wantFieldError{{"spec.address", ReasonReserved, ""}}},
		{"loopback address", func(n *Node) { n.Spec.Address = "127.0.0.1/8" },
			[]wantFieldError{{"spec.address", ReasonReserved, ""}}},
		{"negative mtu", func(n *Node) { n.Spec.MTU = -1 }, []wantFieldError{{"spec.mtu", ReasonRange, ""}}},
		{"huge mtu", func(n *Node) { n.Spec.MTU = 70000 }, []wantFieldError{{"spec.mtu", ReasonRange, ""}}},
		{"MAC garbage", func(n *Node) { n.Spec.VTEPMAC = "66:04:84" },
			[]wantFieldError{{"spec.vtepMAC", ReasonFormat, "66:04:84:48:ab:6a"}}},
		{"MAC of 8 bytes", func(n *Node) { n.Spec.VTEPMAC = "66:04:84:48:ab:6a:00:01" },
			[]wantFieldError{{"spec.vtepMAC", ReasonFormat, "6-byte"}}},
		{"multicast MAC", func(n *Node) { n.Spec.VTEPMAC = "01:00:5e:00:00:01" },
			[]wantFieldError{{"spec.vtepMAC", ReasonValue, "multicast"}}},
		{"zero MAC", func(n *Node) { n.Spec.VTEPMAC = "00:00:00:00:00:00" },
			[]wantFieldError{{"spec.vtepMAC", ReasonValue, "zeros"}}},
		{"tunnel address with prefix", func(n *Node) { n.Spec.TunnelAddress = "172.16.159.128/32" },
			[]wantFieldError{{"spec.tunnelAddress", ReasonFormat, "write 172.16.159.128"}}},
		{"tunnel address garbage", func(n *Node) { n.Spec.TunnelAddress = "tunnel" },
			[]wantFieldError{{"spec.tunnelAddress", ReasonFormat, ""}}},
		{"tunnel address other family", func(n *Node) { n.Spec.TunnelAddress = "fd00::1" },
			[]wantFieldError{{"spec.tunnelAddress", ReasonFamily, "same IP family"}}},
		{"tunnel address with zone", func(n *Node) { n.Spec.Address = "fd00::5/64"; n.Spec.TunnelAddress = "fe80::1%eth0" },
			[]wantFieldError{{"spec.tunnelAddress", ReasonFormat, "zone"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := seedNode()
			tt.mutate(&n)
			checkValidation(t, n.Validate(), KindNode, n.Metadata.Name, tt.want)
		})
	}
}

func TestValidatePoolUpdate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *IPPool)
		want   []wantFieldError
	}{
		{"no change", func(*IPPool) {}, nil},
		{"mutable fields", func(p *IPPool) {
			p.Spec.VXLANMode = EncapAlways
			p.Spec.NATOutgoing = false
			p.Spec.Disabled = true
			p.Spec.NodeSelector = "has(a)"
			p.Spec.AllowedUses = []IPPoolUse{UseWorkload}
		}, nil},
		{"block size left to default", func(p *IPPool) { p.Spec.BlockSize = 0 }, nil},
		{"cidr changed", func(p *IPPool) { p.Spec.CIDR = "172.17.0.0/16" },
			[]wantFieldError{{"spec.cidr", ReasonImmutable, "was 172.16.0.0/16"}}},
		{"block size changed", func(p *IPPool) { p.Spec.BlockSize = 24 },
			[]wantFieldError{{"spec.blockSize", ReasonImmutable, "was 26"}}},
		{"both changed", func(p *IPPool) { p.Spec.CIDR = "10.0.0.0/8"; p.Spec.BlockSize = 28 },
			[]wantFieldError{{"spec.cidr", ReasonImmutable, ""}, {"spec.blockSize", ReasonImmutable, ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := seedPool()
			upd := seedPool()
			tt.mutate(&upd)
			checkValidation(t, ValidatePoolUpdate(old, upd), KindIPPool, upd.Metadata.Name, tt.want)
		})
	}
	// The same IPv6 network written two ways is not a change.
	a, b := seedPool(), seedPool()
	a.Spec.CIDR, a.Spec.BlockSize = "fd00:0:0::/48", 122
	b.Spec.CIDR, b.Spec.BlockSize = "fd00::/48", 122
	if err := ValidatePoolUpdate(a, b); err != nil {
		t.Errorf("equivalent IPv6 cidrs: %v", err)
	}
}

func TestCheckPoolOverlap(t *testing.T) {
	pool := func(name, cidr string) IPPool {
		p := seedPool()
		p.Metadata.Name = name
		p.Spec.CIDR = cidr
		return p
	}
	existing := []IPPool{
		pool("default-ipv4-ippool", "172.16.0.0/16"),
		pool("lab", "10.10.0.0/16"),
		pool("wide", "10.0.0.0/8"),
		pool("v6", "fd00::/48"),
		pool("broken", "not-a-cidr"),
	}
	tests := []struct {
		name      string
		p         IPPool
		overlaps  []string // pool names the error must name
		wantError bool
	}{
		{"itself (same name)", pool("default-ipv4-ippool", "172.16.0.0/16"), nil, false},
		{"disjoint", pool("new", "192.168.0.0/16"), nil, false},
		{"inside another", pool("new", "172.16.4.0/24"), []string{"default-ipv4-ippool"}, true},
		{"covering another", pool("new", "172.0.0.0/8"), []string{"default-ipv4-ippool"}, true},
		{"overlapping two", pool("new", "10.10.1.0/24"), []string{"lab", "wide"}, true},
		{"renamed copy", pool("copy", "172.16.0.0/16"), []string{"default-ipv4-ippool"}, true},
		{"ipv6 overlap", pool("new6", "fd00:0:0:1::/64"), []string{"v6"}, true},
		{"unparsable new cidr", pool("new", "x"), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPoolOverlap(tt.p, existing)
			if (err != nil) != tt.wantError {
				t.Fatalf("CheckPoolOverlap = %v, want error %v", err, tt.wantError)
			}
			if err == nil {
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %T, want *ValidationError", err)
			}
			if len(tt.overlaps) == 0 {
				if !ve.Has("spec.cidr", ReasonFormat) {
					t.Errorf("want a spec.cidr format error, got %v", ve.Errors)
				}
				return
			}
			if len(ve.Errors) != len(tt.overlaps) {
				t.Errorf("got %d errors %v, want %d", len(ve.Errors), ve.Errors, len(tt.overlaps))
			}
			for i, name := range tt.overlaps {
				fe := ve.Errors[i]
				if fe.Field != "spec.cidr" || fe.Reason != ReasonOverlap || !strings.Contains(fe.Rule, `"`+name+`"`) {
					t.Errorf("error %d = %+v, want an overlap naming %q", i, fe, name)
				}
			}
		})
	}
}
