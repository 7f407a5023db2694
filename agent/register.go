package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
)

// casAttempts bounds the compare-and-swap retries of a Node update.
const casAttempts = 10

// errNodeNotRegistered is wrapped by registration errors that mean the
// Kubernetes node object does not exist yet: the agent waits for the
// kubelet to create it.
var errNodeNotRegistered = errors.New("node not registered by the kubelet yet")

// register detects the host address, creates the default pool when no pool
// exists, writes the Node and makes sure it has a tunnel address. It
// retries with bounded backoff until it succeeds or ctx ends: a datastore
// that is down at boot, an interface that is not up yet, or (on
// Kubernetes) a node the kubelet has not registered yet, is waited for.
// A configuration no retry can fix (an invalid node, a bad default-pool
// environment) is returned at once; it wraps ErrConfig.
func (a *Agent) register(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := a.registerOnce(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrConfig) {
			a.setNotReady("registering node: " + err.Error())
			return fmt.Errorf("agent: register node %s: %w", a.cfg.NodeName, err)
		}
		d := backoff(attempt, relistMin, startupMax)
		if errors.Is(err, errNodeNotRegistered) {
			why := fmt.Sprintf("waiting for kubelet to register node %s", a.cfg.NodeName)
			a.setNotReady(why)
			a.log.Info(why, "err", err, "retry_in", d)
		} else {
			a.m.datastoreErrors.Inc()
			a.setNotReady("registering node: " + err.Error())
			a.log.Warn("node registration failed; retrying", "err", err, "in", d)
		}
		if !sleep(a.clock, d, ctx.Done()) {
			return ctx.Err()
		}
	}
}

func (a *Agent) detect(ctx context.Context) (HostAddress, error) {
	if a.cfg.DetectAddress != nil {
		return a.cfg.DetectAddress(ctx)
	}
	return DetectAddress(a.cfg.NetnsPath, a.cfg.IP, a.cfg.AutodetectMethod)
}

func (a *Agent) registerOnce(ctx context.Context) error {
	host, err := a.detect(ctx)
	if err != nil {
		return err
	}
	if host.Prefix.Bits() == 32 {
		a.log.Warn("THE NODE ADDRESS HAS PREFIX LENGTH /32: no peer can be in this node's subnet, so EVERY peer will be reached over VXLAN. Give the address its real prefix length (--ip ADDR/LEN) or fix the interface's address",
			"address", host.Prefix, "interface", host.Interface)
	}
	a.log.Info("node address", "address", host.Prefix, "interface", host.Interface, "mtu", host.MTU)
	if err := a.ensureDefaultPool(ctx); err != nil {
		return err
	}
	mac := a.cfg.VTEPMAC
	if mac == "" {
		mac = api.VTEPMAC(a.cfg.NodeName)
	}
	node, err := a.updateNode(ctx, func(n *api.Node) {
		n.Spec.Address = host.Prefix.String()
		n.Spec.Interface = host.Interface
		n.Spec.MTU = host.MTU
		n.Spec.VTEPMAC = mac
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.host = host
	a.mu.Unlock()
	if err := a.ensureTunnel(ctx); err != nil {
		// Direct paths work without it; the reconcile loop tries again.
		a.log.Warn("no VXLAN tunnel address yet; peers in other subnets cannot reach this node's pods until one is allocated", "err", err)
	}
	a.mu.Lock()
	a.registered = true
	a.notReady = "waiting for the first reconcile"
	a.mu.Unlock()
	a.log.Info("node registered", "address", node.Spec.Address, "vtep_mac", node.Spec.VTEPMAC)
	return nil
}

// ensureDefaultPool creates the default pool from the environment when no
// pool exists. Another agent creating one first is fine.
func (a *Agent) ensureDefaultPool(ctx context.Context) error {
	kvs, _, err := a.store.List(ctx, datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		return fmt.Errorf("list IP pools: %w", err)
	}
	if len(kvs) > 0 {
		return nil
	}
	p, err := api.PoolFromEnv(a.cfg.Getenv)
	if err != nil {
		return fmt.Errorf("%w: no IP pool exists and the default pool cannot be built from the environment (fix the CALICO_IPV4POOL_*/TWILL_IPV4POOL_* variables or create a pool with `twill apply`): %w", ErrConfig, err)
	}
	kv, err := datastore.NewKV(datastore.KindIPPool, p.Metadata.Name, p)
	if err != nil {
		return err
	}
	_, err = a.store.Create(ctx, kv)
	switch {
	case errors.Is(err, datastore.ErrExists):
		a.log.Info("another agent created the default IP pool first", "pool", p.Metadata.Name)
		return nil
	case err != nil:
		return fmt.Errorf("create the default IP pool %s: %w", p.Metadata.Name, err)
	}
	a.log.Info("created the default IP pool from the environment", "pool", p.Metadata.Name, "cidr", p.Spec.CIDR,
		"block_size", p.Spec.BlockSize, "vxlan", p.Spec.VXLANMode, "nat_outgoing", p.Spec.NATOutgoing)
	return nil
}

// updateNode reads the local Node (or starts a new one), applies mutate and
// writes it back: a Create when it does not exist, else an Update as a
// compare-and-swap against the revision read, retrying on conflicts.
// Labels and fields mutate does not touch are preserved. On Kubernetes the
// Node is the cluster's v1.Node, which only the kubelet creates: a Create
// that finds no v1.Node fails with datastore.ErrNotFound, returned wrapped
// in errNodeNotRegistered.
func (a *Agent) updateNode(ctx context.Context, mutate func(*api.Node)) (api.Node, error) {
	name := a.cfg.NodeName
	for attempt := 1; attempt <= casAttempts; attempt++ {
		var n api.Node
		exists := false
		o, err := datastore.GetObject[api.Node](ctx, a.store, datastore.KindNode, name)
		switch {
		case err == nil:
			n, exists = o.Value, true
		case errors.Is(err, datastore.ErrNotFound):
			n.Metadata.Name = name
		default:
			return api.Node{}, fmt.Errorf("read Node %s: %w", name, err)
		}
		before := n
		n.Default()
		n.Metadata.Name = name
		n.Metadata.ResourceVersion = ""
		mutate(&n)
		if err := n.Validate(); err != nil {
			return api.Node{}, fmt.Errorf("%w: node %s: %w", ErrConfig, name, err)
		}
		if exists && nodeSpecEqual(before, n) {
			return n, nil
		}
		kv, err := datastore.NewKV(datastore.KindNode, name, n)
		if err != nil {
			return api.Node{}, err
		}
		kv.Labels = o.Labels
		var stored datastore.KV
		if exists {
			kv.Revision = o.Revision
			stored, err = a.store.Update(ctx, kv)
		} else {
			stored, err = a.store.Create(ctx, kv)
			if errors.Is(err, datastore.ErrNotFound) {
				return api.Node{}, fmt.Errorf("create Node %s: %w: %w", name, errNodeNotRegistered, err)
			}
		}
		if errors.Is(err, datastore.ErrConflict) || (exists && errors.Is(err, datastore.ErrNotFound)) {
			continue // changed, created or deleted meanwhile: read again
		}
		if err != nil {
			return api.Node{}, fmt.Errorf("write Node %s: %w", name, err)
		}
		if stored.Kind == "" {
			stored.Kind, stored.Name = datastore.KindNode, name
		}
		if stored.Value == nil {
			stored.Value = kv.Value
		}
		a.mu.Lock()
		a.cache.putOwn(stored, a.clock.Now())
		a.mu.Unlock()
		a.markDirty(reasonLocal)
		return n, nil
	}
	return api.Node{}, fmt.Errorf("write Node %s: still conflicting after %d attempts: %w", name, casAttempts, datastore.ErrConflict)
}

// nodeSpecEqual reports whether writing b over a would change nothing.
func nodeSpecEqual(a, b api.Node) bool {
	return a.APIVersion == b.APIVersion && a.Kind == b.Kind && a.Spec == b.Spec
}

// tunnelHandle is the IPAM handle of the local node's tunnel address.
func (a *Agent) tunnelHandle() string { return TunnelHandlePrefix + a.cfg.NodeName }

// ensureTunnel makes sure the node has a tunnel address when a VXLAN pool
// exists: the address its handle already holds (a restart reuses it), else
// a new one of use Tunnel from the node's block, recorded on the Node.
func (a *Agent) ensureTunnel(ctx context.Context) error {
	objs, _, err := datastore.ListObjects[api.IPPool](ctx, a.store, datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		return fmt.Errorf("list IP pools: %w", err)
	}
	pools := make([]api.IPPool, 0, len(objs))
	for _, o := range objs {
		p := o.Value
		p.Default()
		pools = append(pools, p)
	}
	names := vxlanPools(pools)
	if len(names) == 0 {
		return nil
	}
	handle := a.tunnelHandle()
	addrs, err := a.ipam.HandleAddrs(ctx, handle)
	if err != nil {
		return fmt.Errorf("look up tunnel address handle %s: %w", handle, err)
	}
	if len(addrs) == 0 {
		addrs, err = a.ipam.Allocate(ctx, ipam.AllocateRequest{
			Handle: handle,
			Node:   a.cfg.NodeName,
			Use:    api.UseTunnel,
			Attrs:  map[string]string{api.AttrNode: a.cfg.NodeName},
			Pools:  names,
		})
		if err != nil {
			return fmt.Errorf("allocate the VXLAN tunnel address: %w", err)
		}
		a.log.Info("allocated the VXLAN tunnel address", "address", addrs[0], "handle", handle)
	}
	if len(addrs) == 0 {
		return fmt.Errorf("allocate the VXLAN tunnel address: IPAM returned none")
	}
	tunnel := pickTunnel(addrs)
	_, err = a.updateNode(ctx, func(n *api.Node) { n.Spec.TunnelAddress = tunnel.String() })
	return err
}

// pickTunnel returns the lowest IPv4 address of the handle.
func pickTunnel(addrs []netip.Addr) netip.Addr {
	best := addrs[0]
	for _, a := range addrs[1:] {
		if a.Is4() && (!best.Is4() || a.Less(best)) {
			best = a
		}
	}
	return best
}
