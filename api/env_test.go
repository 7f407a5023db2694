package api

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func envFunc(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestPoolFromEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want IPPoolSpec
	}{
		{"nothing set: Calico's cidr, VXLAN instead of IPIP", nil, IPPoolSpec{
			CIDR: "192.168.0.0/16", BlockSize: 26, VXLANMode: EncapAlways, IPIPMode: EncapNever,
			NATOutgoing: true, NodeSelector: "all()", AllowedUses: []IPPoolUse{UseWorkload, UseTunnel}}},
		{"the seed's settings", map[string]string{
			"CALICO_IPV4POOL_CIDR":  "172.16.0.0/16",
			"CALICO_IPV4POOL_IPIP":  "Never",
			"CALICO_IPV4POOL_VXLAN": "CrossSubnet",
		}, IPPoolSpec{
			CIDR: "172.16.0.0/16", BlockSize: 26, VXLANMode: EncapCrossSubnet, IPIPMode: EncapNever,
			NATOutgoing: true, NodeSelector: "all()", AllowedUses: []IPPoolUse{UseWorkload, UseTunnel}}},
		{"case-insensitive modes, other settings", map[string]string{
			"CALICO_IPV4POOL_CIDR":          "10.244.0.0/16",
			"CALICO_IPV4POOL_BLOCK_SIZE":    "24",
			"CALICO_IPV4POOL_VXLAN":         "ALWAYS",
			"CALICO_IPV4POOL_IPIP":          "never",
			"CALICO_IPV4POOL_NAT_OUTGOING":  "false",
			"CALICO_IPV4POOL_NODE_SELECTOR": "role != 'edge'",
		}, IPPoolSpec{
			CIDR: "10.244.0.0/16", BlockSize: 24, VXLANMode: EncapAlways, IPIPMode: EncapNever,
			NATOutgoing: false, NodeSelector: "role != 'edge'", AllowedUses: []IPPoolUse{UseWorkload, UseTunnel}}},
		{"only IPIP=never: no encapsulation, as in Calico", map[string]string{
			"CALICO_IPV4POOL_IPIP": "NEVER",
		}, IPPoolSpec{
			CIDR: "192.168.0.0/16", BlockSize: 26, VXLANMode: EncapNever, IPIPMode: EncapNever,
			NATOutgoing: true, NodeSelector: "all()", AllowedUses: []IPPoolUse{UseWorkload, UseTunnel}}},
		{"only VXLAN set", map[string]string{
			"CALICO_IPV4POOL_VXLAN": "crosssubnet",
		}, IPPoolSpec{
			CIDR: "192.168.0.0/16", BlockSize: 26, VXLANMode: EncapCrossSubnet, IPIPMode: EncapNever,
			NATOutgoing: true, NodeSelector: "all()", AllowedUses: []IPPoolUse{UseWorkload, UseTunnel}}},
		{"TWILL_ spelling alone", map[string]string{
			"TWILL_IPV4POOL_CIDR":         "10.1.0.0/16",
			"TWILL_IPV4POOL_BLOCK_SIZE":   "28",
			"TWILL_IPV4POOL_VXLAN":        "CrossSubnet",
			"TWILL_IPV4POOL_NAT_OUTGOING": "FALSE",
		}, IPPoolSpec{
			CIDR: "10.1.0.0/16", BlockSize: 28, VXLANMode: EncapCrossSubnet, IPIPMode: EncapNever,
			NATOutgoing: false, NodeSelector: "all()", AllowedUses: []IPPoolUse{UseWorkload, UseTunnel}}},
		{"TWILL_ wins over CALICO_", map[string]string{
			"CALICO_IPV4POOL_CIDR":          "10.1.0.0/16",
			"TWILL_IPV4POOL_CIDR":           "10.2.0.0/16",
			"CALICO_IPV4POOL_BLOCK_SIZE":    "bogus",
			"TWILL_IPV4POOL_BLOCK_SIZE":     "27",
			"CALICO_IPV4POOL_VXLAN":         "Always",
			"TWILL_IPV4POOL_VXLAN":          "Never",
			"CALICO_IPV4POOL_IPIP":          "Always",
			"TWILL_IPV4POOL_IPIP":           "Never",
			"CALICO_IPV4POOL_NAT_OUTGOING":  "true",
			"TWILL_IPV4POOL_NAT_OUTGOING":   "false",
			"CALICO_IPV4POOL_NODE_SELECTOR": "has(a)",
			"TWILL_IPV4POOL_NODE_SELECTOR":  "has(b)",
		}, IPPoolSpec{
			CIDR: "10.2.0.0/16", BlockSize: 27, VXLANMode: EncapNever, IPIPMode: EncapNever,
			NATOutgoing: false, NodeSelector: "has(b)", AllowedUses: []IPPoolUse{UseWorkload, UseTunnel}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PoolFromEnv(envFunc(tt.env))
			if err != nil {
				t.Fatalf("PoolFromEnv: %v", err)
			}
			if p.Metadata.Name != DefaultPoolName || p.APIVersion != Version || p.Kind != KindIPPool {
				t.Errorf("pool identity = %q %s %s", p.Metadata.Name, p.APIVersion, p.Kind)
			}
			if !reflect.DeepEqual(p.Spec, tt.want) {
				t.Errorf("spec = %+v\nwant   %+v", p.Spec, tt.want)
			}
			if err := p.Validate(); err != nil {
				t.Errorf("result does not validate: %v", err)
			}
		})
	}
}

func TestPoolFromEnvErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		// vars are the variables the error must name, each with a piece of
		// the rule it must state.
		vars map[string]string
	}{
		{"block size not a number", map[string]string{"CALICO_IPV4POOL_BLOCK_SIZE": "big"},
			map[string]string{"CALICO_IPV4POOL_BLOCK_SIZE": "whole number between 20 and 32"}},
		{"block size out of range", map[string]string{"CALICO_IPV4POOL_BLOCK_SIZE": "33"},
			map[string]string{"CALICO_IPV4POOL_BLOCK_SIZE": "between 20 and 32"}},
		{"bad vxlan mode", map[string]string{"CALICO_IPV4POOL_VXLAN": "sometimes"},
			map[string]string{"CALICO_IPV4POOL_VXLAN": "never, crosssubnet, always"}},
		{"bad ipip mode", map[string]string{"TWILL_IPV4POOL_IPIP": "maybe"},
			map[string]string{"TWILL_IPV4POOL_IPIP": "never, crosssubnet, always"}},
		{"ipip enabled (Calico's manifest default)", map[string]string{"CALICO_IPV4POOL_IPIP": "Always"},
			map[string]string{"CALICO_IPV4POOL_IPIP": "IPIP is not built in Twill"}},
		{"bad nat", map[string]string{"CALICO_IPV4POOL_NAT_OUTGOING": "sure"},
			map[string]string{"CALICO_IPV4POOL_NAT_OUTGOING": "true or false"}},
		{"cidr not masked", map[string]string{"CALICO_IPV4POOL_CIDR": "10.0.0.1/16"},
			map[string]string{"CALICO_IPV4POOL_CIDR": "did you mean 10.0.0.0/16?"}},
		{"cidr garbage", map[string]string{"TWILL_IPV4POOL_CIDR": "pods"},
			map[string]string{"TWILL_IPV4POOL_CIDR": "CIDR"}},
		{"cidr ipv6", map[string]string{"CALICO_IPV4POOL_CIDR": "fd00::/48"},
			map[string]string{"CALICO_IPV4POOL_CIDR": "IPv4"}},
		{"bad selector", map[string]string{"CALICO_IPV4POOL_NODE_SELECTOR": "role = 'x'"},
			map[string]string{"CALICO_IPV4POOL_NODE_SELECTOR": "position 5"}},
		{"TWILL_ value wins even when bad", map[string]string{
			"CALICO_IPV4POOL_VXLAN": "Always", "TWILL_IPV4POOL_VXLAN": "bad"},
			map[string]string{"TWILL_IPV4POOL_VXLAN": "never, crosssubnet, always"}},
		{"several bad variables", map[string]string{
			"CALICO_IPV4POOL_VXLAN": "x", "CALICO_IPV4POOL_NAT_OUTGOING": "y"},
			map[string]string{"CALICO_IPV4POOL_VXLAN": "never", "CALICO_IPV4POOL_NAT_OUTGOING": "true or false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := PoolFromEnv(envFunc(tt.env))
			if err == nil {
				t.Fatal("no error")
			}
			got := map[string]*EnvError{}
			var walk func(error)
			walk = func(e error) {
				var ee *EnvError
				if errors.As(e, &ee) {
					got[ee.Variable] = ee
				}
				if j, ok := e.(interface{ Unwrap() []error }); ok {
					for _, e := range j.Unwrap() {
						walk(e)
					}
				}
			}
			walk(err)
			if len(got) != len(tt.vars) {
				t.Errorf("error names variables %v, want %v (error: %v)", keysOf(got), tt.vars, err)
			}
			for v, rule := range tt.vars {
				ee, ok := got[v]
				if !ok {
					t.Errorf("error does not name %s: %v", v, err)
					continue
				}
				if ee.Value != tt.env[v] || !strings.Contains(ee.Rule, rule) {
					t.Errorf("%s: got value %q rule %q, want value %q and rule containing %q", v, ee.Value, ee.Rule, tt.env[v], rule)
				}
				if !strings.Contains(err.Error(), v) {
					t.Errorf("message %q does not name %s", err, v)
				}
			}
		})
	}
}

func keysOf(m map[string]*EnvError) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
