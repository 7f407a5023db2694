package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

// Addresses of ScaleCluster.
var (
	// ScalePool is the pool every block of a scale cluster comes from.
	ScalePool = netip.MustParsePrefix("172.16.0.0/12")
	// ScaleLocalAddress is the local node's address: its /16 is the
	// subnet that half of the peers share.
	ScaleLocalAddress = netip.MustParsePrefix("192.168.0.1/16")
)

// ScaleBlockSize is the block size of ScalePool.
const ScaleBlockSize = 26

// Cluster is a synthetic cluster, as objects of the datastore.
type Cluster struct {
	Local string
	Pool  api.IPPool
	// Nodes holds the local node first, then the peers.
	Nodes []api.Node
	// Blocks holds one block per node, in Nodes' order, affine to it,
	// with its allocations: the tunnel address and one per workload.
	Blocks  []api.Block
	Handles []api.Handle
	// Workloads are the peers' pods (the local node has none).
	Workloads []api.WorkloadEndpoint
}

// nthBlock returns block i of size bits in pool.
func nthBlock(pool netip.Prefix, bits, i int) netip.Prefix {
	b := pool.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i) << (32 - bits)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), bits)
}

// ScaleBlock returns block i of ScalePool.
func ScaleBlock(i int) netip.Prefix { return nthBlock(ScalePool, ScaleBlockSize, i) }

func addrAt(p netip.Prefix, off int) netip.Addr {
	b := p.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(off)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ScaleCluster returns a cluster of the local node (ScaleLocalAddress,
// block 0) and peers remote nodes, each with block i of ScalePool: the
// even-numbered peers share the local /16 (direct routes), the odd ones
// are in 10.1.0.0/16 (VXLAN). Every peer runs podsPerPeer pods (at most
// 62): a workload endpoint, an IPAM handle and an allocation in its block
// each. Every node is a VTEP.
func ScaleCluster(local string, peers, podsPerPeer int) *Cluster {
	podsPerPeer = max(0, min(podsPerPeer, 62))
	c := &Cluster{Local: local}
	c.Pool = api.IPPool{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindIPPool},
		Metadata: api.ObjectMeta{Name: "scale"},
		Spec:     api.IPPoolSpec{CIDR: ScalePool.String(), BlockSize: ScaleBlockSize, VXLANMode: api.EncapCrossSubnet}}
	c.Pool.Default()
	add := func(name string, addr netip.Prefix, i, pods int) {
		block := ScaleBlock(i)
		c.Nodes = append(c.Nodes, api.Node{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindNode},
			Metadata: api.ObjectMeta{Name: name},
			Spec: api.NodeSpec{Address: addr.String(), Interface: "eth0", MTU: 1500, VTEPMAC: api.VTEPMAC(name),
				TunnelAddress: block.Addr().String()}})
		b := api.Block{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindBlock}, CIDR: block.String(), Affinity: name,
			Allocations: []api.Allocation{{Ordinal: 0, Handle: "vxlan-tunnel-addr-" + name, Use: api.UseTunnel,
				Attrs: map[string]string{api.AttrNode: name}}}}
		for j := range pods {
			pod := fmt.Sprintf("pod-%d", j)
			cid := fmt.Sprintf("%s-c%d", name, j)
			handle := cid + ".eth0"
			a := addrAt(block, j+1)
			b.Allocations = append(b.Allocations, api.Allocation{Ordinal: j + 1, Handle: handle, Use: api.UseWorkload,
				Attrs: map[string]string{api.AttrNode: name, api.AttrNamespace: "default", api.AttrPod: pod}})
			c.Handles = append(c.Handles, api.Handle{TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindHandle},
				ID: handle, Blocks: map[string]int{block.String(): 1}})
			c.Workloads = append(c.Workloads, api.WorkloadEndpoint{
				TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
				Metadata: api.ObjectMeta{Name: handle},
				Spec: api.WorkloadEndpointSpec{Node: name, Namespace: "default", Pod: pod, ContainerID: cid, IfName: "eth0",
					Handle: handle, HostIface: fmt.Sprintf("cali%011x", uint64(i)<<8|uint64(j)),
					Addresses: []string{netip.PrefixFrom(a, 32).String()},
					MAC:       fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", byte(i>>16), byte(i>>8), byte(i), byte(j))}})
		}
		c.Blocks = append(c.Blocks, b)
	}
	add(local, ScaleLocalAddress, 0, 0)
	for i := 1; i <= peers; i++ {
		addr := netip.MustParsePrefix(fmt.Sprintf("192.168.%d.%d/16", i/250, 2+i%250))
		if i%2 == 1 {
			addr = netip.MustParsePrefix(fmt.Sprintf("10.1.%d.%d/16", i/250, 2+i%250))
		}
		add(fmt.Sprintf("node-%05d", i), addr, i, podsPerPeer)
	}
	return c
}

// Input is the planner's input for the local node.
func (c *Cluster) Input(vx plan.VXLANConfig) plan.Input {
	return plan.Input{LocalNode: c.Local, Nodes: c.Nodes, Pools: []api.IPPool{c.Pool}, Blocks: c.Blocks, VXLAN: vx}
}

// KVs returns every object of the cluster, encoded and named as stored,
// each with revision rev: the pool, nodes, blocks (labelled with their
// node), handles and workload endpoints (named by handle, labelled with
// their node).
func (c *Cluster) KVs(rev string) ([]datastore.KV, error) {
	var kvs []datastore.KV
	var errs []error
	put := func(kind datastore.Kind, name, node string, v any) {
		kv, err := datastore.NewKV(kind, name, v)
		if err != nil {
			errs = append(errs, err)
			return
		}
		if node != "" {
			kv.Labels = map[string]string{datastore.LabelNode: node}
		}
		kv.Revision = rev
		kvs = append(kvs, kv)
	}
	put(datastore.KindIPPool, c.Pool.Metadata.Name, "", c.Pool)
	for _, n := range c.Nodes {
		put(datastore.KindNode, n.Metadata.Name, "", n)
	}
	for _, b := range c.Blocks {
		put(datastore.KindBlock, datastore.BlockName(b.CIDR), b.Affinity, b)
	}
	for _, h := range c.Handles {
		put(datastore.KindHandle, h.ID, "", h)
	}
	for _, w := range c.Workloads {
		put(datastore.KindWorkload, w.Spec.Handle, w.Spec.Node, w)
	}
	return kvs, errors.Join(errs...)
}

// writeWorkers bounds the creates Write has in flight.
const writeWorkers = 16

// Write creates the cluster's objects in store, one object per write,
// writeWorkers at a time; skip, when not nil, leaves out the objects it
// reports true for (those the store already holds). It stops at the first
// failure and returns every failure seen.
func (c *Cluster) Write(ctx context.Context, store datastore.Store, skip func(kind datastore.Kind, name string) bool) error {
	kvs, err := c.KVs("")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan datastore.KV)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range writeWorkers {
		wg.Go(func() {
			for kv := range work {
				if ctx.Err() != nil {
					continue
				}
				if _, err := store.Create(ctx, kv); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("create %s %s: %w", kv.Kind, kv.Name, err))
					mu.Unlock()
					cancel()
				}
			}
		})
	}
	written := 0
	for _, kv := range kvs {
		if skip != nil && skip(kv.Kind, kv.Name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		work <- kv
		written++
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("write the scale cluster (%d objects): %w", written, errors.Join(errs...))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write the scale cluster: %w", err)
	}
	return nil
}
