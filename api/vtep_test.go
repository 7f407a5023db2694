package api

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestVTEPMAC(t *testing.T) {
	// The VTEP MACs observed on the reference cluster (seed-cluster.yaml).
	for node, want := range map[string]string{
		"k8s-master1": "66:04:84:48:ab:6a",
		"k8s-master2": "66:6c:9e:74:3f:25",
		"k8s-master3": "66:71:16:28:d9:6c",
		"k8s-node1":   "66:8c:73:5a:90:99",
	} {
		if got := VTEPMAC(node); got != want {
			t.Errorf("VTEPMAC(%q) = %s, want %s", node, got, want)
		}
	}
	// Every derived MAC passes node validation.
	n := Node{Metadata: ObjectMeta{Name: "any-node"}, Spec: NodeSpec{Address: "10.0.0.1/24", VTEPMAC: VTEPMAC("any-node")}}
	n.Default()
	if err := n.Validate(); err != nil {
		t.Errorf("derived MAC refused: %v", err)
	}
}

func TestParseNodeAddress(t *testing.T) {
	tests := []struct {
		in, want string
		rule     string // substring of the AddressError rule when an error is wanted
	}{
		{"192.168.3.241/24", "192.168.3.241/24", ""},
		{"192.168.32.105/24", "192.168.32.105/24", ""},
		{"10.1.2.3/32", "10.1.2.3/32", ""},
		{"fd00::5/64", "fd00::5/64", ""},
		{"192.168.3.241", "", "add the prefix length of the node's subnet, for example 192.168.3.241/24"},
		{"fd00::5", "", "fd00::5/64"},
		{"", "", "is required"},
		{"eth0", "", "with its prefix length"},
		{"192.168.3.241/33", "", "with its prefix length"},
	}
	for _, tt := range tests {
		got, err := ParseNodeAddress(tt.in)
		if tt.rule == "" {
			if err != nil || got.String() != tt.want {
				t.Errorf("ParseNodeAddress(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
			}
			continue
		}
		var ae *AddressError
		if !errors.As(err, &ae) || ae.Value != tt.in || !strings.Contains(ae.Rule, tt.rule) {
			t.Errorf("ParseNodeAddress(%q) error = %v, want an AddressError saying %q", tt.in, err, tt.rule)
		}
	}
	n := Node{Spec: NodeSpec{Address: "192.168.3.241/24"}}
	p, err := n.Prefix()
	if err != nil || p.Addr() != netip.MustParseAddr("192.168.3.241") || p.Bits() != 24 {
		t.Errorf("Node.Prefix = %v, %v", p, err)
	}
}

func TestPoolAndBlockPrefix(t *testing.T) {
	p := IPPool{Spec: IPPoolSpec{CIDR: "172.16.0.0/16"}}
	if got, err := p.Prefix(); err != nil || got != netip.MustParsePrefix("172.16.0.0/16") {
		t.Errorf("IPPool.Prefix = %v, %v", got, err)
	}
	b := Block{CIDR: "172.16.159.128/26"}
	if got, err := b.Prefix(); err != nil || got != netip.MustParsePrefix("172.16.159.128/26") {
		t.Errorf("Block.Prefix = %v, %v", got, err)
	}
	var ae *AddressError
	_, err := Block{CIDR: "172.16.159.130/26"}.Prefix()
	if !errors.As(err, &ae) || !strings.Contains(ae.Rule, "did you mean 172.16.159.128/26?") {
		t.Errorf("unmasked block: %v", err)
	}
	if _, err := (IPPool{Spec: IPPoolSpec{CIDR: "nope"}}).Prefix(); !errors.As(err, &ae) {
		t.Errorf("bad pool cidr: %v", err)
	}
}

func TestIPPoolAllows(t *testing.T) {
	tests := []struct {
		uses             []IPPoolUse
		workload, tunnel bool
	}{
		{nil, true, true},
		{[]IPPoolUse{UseWorkload, UseTunnel}, true, true},
		{[]IPPoolUse{UseWorkload}, true, false},
		{[]IPPoolUse{UseTunnel}, false, true},
	}
	for _, tt := range tests {
		p := IPPool{Spec: IPPoolSpec{AllowedUses: tt.uses}}
		if p.Allows(UseWorkload) != tt.workload || p.Allows(UseTunnel) != tt.tunnel {
			t.Errorf("uses %v: Allows(Workload)=%v Allows(Tunnel)=%v", tt.uses, p.Allows(UseWorkload), p.Allows(UseTunnel))
		}
	}
}
