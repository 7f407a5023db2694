package plan_test

import (
	"fmt"
	"net/netip"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/plan"
)

// bigCluster is a local node plus remote nodes, one /26 block each from a
// CrossSubnet pool: half of the peers share the local /16, the rest are
// spread over other subnets; the local node runs 100 pods.
func bigCluster(remotes int) plan.Input {
	in := plan.Input{
		LocalNode: "local",
		Pools:     []api.IPPool{mkPool("default", "172.16.0.0/12", api.EncapCrossSubnet)},
	}
	block := func(i int) netip.Prefix {
		v := uint32(172)<<24 | uint32(16)<<16 + uint32(i)*64
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 26)
	}
	for i := 0; i <= remotes; i++ {
		name, second := "local", 0
		if i > 0 {
			name = fmt.Sprintf("node-%05d", i)
			second = i % 2 * (1 + i%7) // 0: the local /16; else one of 7 others
		}
		addr := fmt.Sprintf("10.%d.%d.%d/16", second, i/250, 1+i%250)
		b := block(i)
		in.Nodes = append(in.Nodes, mkNode(name, addr, b.Addr().String(), fmt.Sprintf("66:00:00:%02x:%02x:%02x", i>>16, i>>8&0xff, i&0xff)))
		in.Blocks = append(in.Blocks, mkBlock(b.String(), name, api.Allocation{
			Ordinal: 0, Handle: "tunnel-" + name, Use: api.UseTunnel, Attrs: map[string]string{api.AttrNode: name},
		}))
	}
	local := block(0).Addr().As4()
	for i := 1; i <= 60; i++ {
		a := local
		a[3] += byte(i)
		ip := netip.AddrFrom4(a).String()
		in.Workloads = append(in.Workloads, mkWorkload(fmt.Sprintf("pod-%d", i), "local", fmt.Sprintf("cali%011d", i), ip+"/32"))
	}
	return in
}

// BenchmarkPlan5000 plans a node in a cluster of 5,000 remote nodes.
func BenchmarkPlan5000(b *testing.B) {
	in := bigCluster(5000)
	dp := plan.Plan(in)
	if len(dp.Status) != 0 || len(dp.Routes) != 5000+1+60 || len(dp.Neighbors) != 5000 {
		b.Fatalf("unexpected plan: %d routes, %d neighbours, status %q", len(dp.Routes), len(dp.Neighbors), dp.Status)
	}
	b.ReportAllocs()
	for b.Loop() {
		plan.Plan(in)
	}
}
