package cni

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"twill.dev/twill/agentapi"
)

// RouteProtocol marks the host route to a pod as the agent's own (the
// agent's dataplane owns routes of this protocol), so that the agent's
// reconciler neither reports it as a conflict nor creates a second one.
const RouteProtocol = 80

// dumpAttempts bounds the retries of a netlink dump interrupted by a
// concurrent change (other pods being plumbed at the same time).
const dumpAttempts = 10

// The namespaces are never entered: the plugin runs in the node's network
// namespace and reaches the pod's through a netlink handle bound to it
// (netlink.NewHandleAt opens its socket on a locked OS thread that it
// switches in and back, with no goroutine in between). The veth is created
// from the node's side with its peer placed straight into the pod's
// namespace, so no thread of the plugin ever runs in the pod's namespace.

// handles are the netlink handles of one command.
type handles struct {
	host   *netlink.Handle
	pod    *netlink.Handle // nil when the pod namespace is gone
	podNS  netns.NsHandle  // -1 when the pod namespace is gone
	nsPath string
}

func (h *handles) close() {
	if h.host != nil {
		h.host.Close()
	}
	if h.pod != nil {
		h.pod.Close()
	}
	if h.podNS.IsOpen() {
		h.podNS.Close()
	}
}

// openHandles opens the node's handle and, when nsPath can be opened, the
// pod's.
func openHandles(nsPath string) (*handles, error) {
	h, nsErr := openNS(nsPath)
	if err := h.dial(); err != nil {
		return nil, err
	}
	return h, nsErr
}

// openNS opens the pod namespace at nsPath, if any; a namespace that cannot
// be opened is an *nsError, with handles that have none.
func openNS(nsPath string) (*handles, error) {
	h := &handles{podNS: netns.None(), nsPath: nsPath}
	if nsPath == "" {
		return h, nil
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return h, &nsError{path: nsPath, err: err}
	}
	h.podNS = ns
	return h, nil
}

// dial opens the netlink handles: the node's, and the pod's when its
// namespace is open. On failure it closes everything.
func (h *handles) dial() error {
	var err error
	if h.host, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		h.close()
		return fmt.Errorf("open a netlink socket in the node's namespace (the plugin needs CAP_NET_ADMIN): %w", err)
	}
	if !h.podNS.IsOpen() {
		return nil
	}
	if h.pod, err = netlink.NewHandleAt(h.podNS, unix.NETLINK_ROUTE); err != nil {
		h.close()
		return fmt.Errorf("open a netlink socket in the pod namespace %s: %w", h.nsPath, err)
	}
	return nil
}

// nsError reports a pod namespace that cannot be opened.
type nsError struct {
	path string
	err  error
}

func (e *nsError) Error() string {
	return fmt.Sprintf("open the pod network namespace %s: %v", e.path, e.err)
}

func (e *nsError) Unwrap() error { return e.err }

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// dump retries a netlink dump interrupted by concurrent changes.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	for i := 1; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < dumpAttempts {
			continue
		}
		return v, err
	}
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

// setSysctl writes value to /proc/sys/<key with dots as slashes>; it runs
// in the plugin's (the node's) namespace. It uses the system calls
// directly: three per key, where os.WriteFile adds the poller's.
func setSysctl(path, value string) error {
	fail := func(err error) error {
		return fmt.Errorf("set %s=%s: %w", strings.ReplaceAll(path, "/", "."), value, err)
	}
	var fd int
	err := retryEINTR(func() (err error) {
		fd, err = unix.Open("/proc/sys/"+path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return fail(&os.PathError{Op: "open", Path: "/proc/sys/" + path, Err: err})
	}
	defer unix.Close(fd)
	var n int
	err = retryEINTR(func() (err error) {
		n, err = unix.Write(fd, []byte(value))
		return err
	})
	if err == nil && n != len(value) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fail(&os.PathError{Op: "write", Path: "/proc/sys/" + path, Err: err})
	}
	return nil
}

// retryEINTR runs f again while it fails with EINTR.
func retryEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func cmdAdd(args *skel.CmdArgs) error {
	start := time.Now()
	inv, done, err := begin(args, "ADD")
	if err != nil {
		return err
	}
	defer done()
	want, err := requested(inv.conf, inv.k8s)
	if err != nil {
		return err
	}
	h, err := openNS(args.Netns)
	if err != nil {
		return types.NewError(CodeInvalidNetNS, err.Error(), "")
	}
	podMAC, err := randomMAC()
	if err != nil {
		h.close()
		return internal(err)
	}

	// The endpoint is recorded with the allocation, in one request: the
	// agent treats the pod's route as pending until the veth is up, and
	// owns it from then on.
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	ep := agentapi.Endpoint{
		ContainerID: args.ContainerID, IfName: args.IfName,
		Namespace: string(inv.k8s.K8S_POD_NAMESPACE), Pod: string(inv.k8s.K8S_POD_NAME), PodUID: string(inv.k8s.K8S_POD_UID),
		HostIface: inv.hostVeth, MAC: podMAC.String(), Netns: args.Netns,
	}
	req := agentapi.AllocateRequest{
		Handle: inv.handle, ContainerID: args.ContainerID, IfName: args.IfName,
		Namespace: ep.Namespace, Pod: ep.Pod, PodUID: ep.PodUID, Record: &ep,
	}
	if want.IsValid() {
		req.IP = want.String()
	}
	// The netlink handles open while the agent allocates.
	type answer struct {
		alloc agentapi.AllocateResponse
		err   error
	}
	answered := make(chan answer, 1)
	go func() {
		alloc, err := inv.client.Allocate(ctx, req)
		answered <- answer{alloc, err}
	}()
	dialErr := h.dial()
	ans := <-answered
	alloc, err := ans.alloc, ans.err
	if err != nil {
		var ae *agentapi.Error
		if !errors.As(err, &ae) && !errors.Is(err, agentapi.ErrAgentUnreachable) {
			// No answer (a timeout, a dropped connection): the agent
			// may have allocated and recorded all the same.
			inv.release()
		}
		if dialErr == nil {
			h.close()
		}
		return agentError("allocate the pod's address", err)
	}
	if dialErr != nil {
		inv.release()
		return internal(dialErr)
	}
	defer h.close()
	allocated := time.Since(start)

	// From here on, a failure undoes everything: the veth and the address.
	created, ok := false, false
	defer func() {
		if ok {
			return
		}
		if created {
			// This ADD created the veth; it may have failed before the
			// veth got its alias.
			if l, err := h.host.LinkByName(inv.hostVeth); err == nil && (l.Attrs().Alias == vethAlias(inv.handle) || l.Attrs().Alias == "") {
				if err := h.host.LinkDel(l); err != nil && !isNotFound(err) {
					inv.log.Error("delete the veth after a failed ADD", "iface", inv.hostVeth, "err", err)
				}
			}
		}
		inv.release()
	}()

	addr, err := hostAddr(alloc.Addresses)
	if err != nil {
		return internal(err)
	}
	mtu := inv.conf.MTU
	if mtu == 0 {
		mtu = alloc.MTU
	}
	if mtu < MinMTU || mtu > MaxMTU {
		mtu = 1500
	}
	at := attachment{hostVeth: inv.hostVeth, ifName: args.IfName, netns: args.Netns, addr: addr, mtu: mtu, podMAC: podMAC.String()}

	// While the veth is plumbed, the agent records the endpoint (or, when
	// it predates AllocateRequest.Record, the plugin does). The request
	// runs in its own goroutine; the plumbing never leaves this one (and
	// never enters another namespace). Both finish before the route is
	// added.
	recordDone := make(chan error, 1)
	if alloc.Recording {
		go func() {
			_, err := inv.client.Sync(ctx, inv.handle)
			recordDone <- err
		}()
	} else {
		ep.Addresses = []string{netip.PrefixFrom(addr, 32).String()}
		go func() {
			_, err := inv.client.PutEndpoint(ctx, inv.handle, ep)
			recordDone <- err
		}()
	}
	hostIdx, plumbErr := plumb(inv, h, at, podMAC, &created)
	plumbed := time.Since(start)
	recordErr := <-recordDone
	recorded := time.Since(start)
	if plumbErr != nil {
		return internal(fmt.Errorf("plumb %s (host %s, pod %s in %s): %w", addr, inv.hostVeth, args.IfName, args.Netns, plumbErr))
	}
	if recordErr != nil {
		return agentError("record the endpoint with the agent", recordErr)
	}
	// The agent owns this route from now on; adding it here (with the
	// agent's protocol) makes the pod reachable before the agent's next
	// reconcile. Replace: the agent may have been faster.
	rt := &netlink.Route{
		LinkIndex: hostIdx, Dst: hostNet(addr), Scope: netlink.SCOPE_LINK,
		Protocol: netlink.RouteProtocol(RouteProtocol), Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Family: netlink.FAMILY_V4,
	}
	if err := h.host.RouteReplace(rt); err != nil {
		return internal(fmt.Errorf("add the route %s dev %s: %w", addr, inv.hostVeth, err))
	}
	// The result is in the configuration's version, converted before the
	// attachment is kept: a result the runtime cannot read would leave the
	// pod attached while the runtime counts the ADD as failed.
	res, err := at.resultAs(inv.conf.CNIVersion)
	if err != nil {
		return err
	}
	ok = true
	inv.log.Info("pod attached", "address", addr, "iface", inv.hostVeth, "mtu", mtu, "cniVersion", res.Version(),
		"allocated", allocated.Round(time.Microsecond), "plumbed", plumbed.Round(time.Microsecond),
		"recorded", recorded.Round(time.Microsecond), "duration", time.Since(start).Round(time.Microsecond))
	return res.Print()
}

// randomMAC returns a random unicast, locally administered MAC for the pod
// side (what the kernel would pick, chosen here so that the endpoint can be
// recorded before the veth exists).
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("draw a MAC address: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

// plumb creates the veth and configures both sides. It sets *created once
// the veth exists, so that the caller removes it on failure. It returns the
// host side's index.
//
// It spends few netlink round trips: the veth is created straight away (its
// names are checked only when the kernel refuses them), up on the node's
// side from the start, and the index the creation looked up is reused.
func plumb(inv *invocation, h *handles, at attachment, podMAC net.HardwareAddr, created *bool) (int, error) {
	newVeth := func() *netlink.Veth {
		la := netlink.NewLinkAttrs()
		la.Name = at.hostVeth
		la.MTU = at.mtu
		la.HardwareAddr = hostMAC
		la.Flags = net.FlagUp
		return &netlink.Veth{LinkAttrs: la, PeerName: at.ifName, PeerMTU: uint32(at.mtu), PeerHardwareAddr: podMAC, PeerNamespace: netlink.NsFd(int(h.podNS))}
	}
	veth := newVeth()
	err := h.host.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		// A name is taken: a stale veth on the node, or the interface in
		// the pod. Clear what may be cleared and try once more.
		if err := clearNames(inv, h, at); err != nil {
			return 0, err
		}
		veth = newVeth()
		err = h.host.LinkAdd(veth)
	}
	if err != nil {
		return 0, fmt.Errorf("create the veth %s with peer %s in the pod namespace: %w", at.hostVeth, at.ifName, err)
	}
	*created = true
	var host netlink.Link = veth
	if veth.Index == 0 {
		// LinkAdd looks the new link up for its index; that lookup failed.
		if host, err = h.host.LinkByName(at.hostVeth); err != nil {
			return 0, fmt.Errorf("look up the new veth %s: %w", at.hostVeth, err)
		}
	}
	if err := h.host.LinkSetAlias(host, vethAlias(inv.handle)); err != nil {
		return 0, fmt.Errorf("label the veth %s: %w", at.hostVeth, err)
	}
	for _, s := range [][2]string{
		{"net/ipv4/conf/" + at.hostVeth + "/proxy_arp", "1"},
		{"net/ipv4/neigh/" + at.hostVeth + "/proxy_delay", "0"},
		{"net/ipv4/conf/" + at.hostVeth + "/forwarding", "1"},
	} {
		if err := setSysctl(s[0], s[1]); err != nil {
			return 0, err
		}
	}

	pod, err := h.pod.LinkByName(at.ifName)
	if err != nil {
		return 0, fmt.Errorf("look up the new %s in the pod namespace: %w", at.ifName, err)
	}
	if got := pod.Attrs().HardwareAddr.String(); got != podMAC.String() {
		return 0, fmt.Errorf("%s in the pod namespace has MAC %s, not the %s it was created with", at.ifName, got, podMAC)
	}
	if err := h.pod.AddrAdd(pod, &netlink.Addr{IPNet: hostNet(at.addr)}); err != nil {
		return 0, fmt.Errorf("add %s/32 to %s: %w", at.addr, at.ifName, err)
	}
	if err := h.pod.LinkSetUp(pod); err != nil {
		return 0, fmt.Errorf("set %s up in the pod namespace: %w", at.ifName, err)
	}
	idx := pod.Attrs().Index
	gw := net.IP(gateway.AsSlice())
	if err := h.pod.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: hostNet(gateway), Scope: netlink.SCOPE_LINK}); err != nil {
		return 0, fmt.Errorf("add the route %s dev %s in the pod namespace: %w", gateway, at.ifName, err)
	}
	if err := h.pod.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}); err != nil {
		return 0, fmt.Errorf("add the route default via %s dev %s in the pod namespace: %w", gateway, at.ifName, err)
	}
	return host.Attrs().Index, nil
}

// clearNames makes way for the veth after its creation failed on a name in
// use: a veth of the host side's name is left from an earlier sandbox of
// the same pod (or an earlier try of this one) and is removed, as the pod
// has moved on; an interface of the pod side's name in the pod's namespace
// is an error.
func clearNames(inv *invocation, h *handles, at attachment) error {
	if l, err := h.host.LinkByName(at.hostVeth); err == nil {
		if l.Type() != "veth" {
			return fmt.Errorf("a %s link named %s exists in the node's namespace; remove it (twill only replaces veths)", l.Type(), at.hostVeth)
		}
		inv.log.Warn("removing a stale host veth of the same name", "iface", at.hostVeth, "owner", l.Attrs().Alias)
		if err := h.host.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("remove the stale veth %s: %w", at.hostVeth, err)
		}
	} else if !isNotFound(err) {
		return fmt.Errorf("look up %s: %w", at.hostVeth, err)
	}
	if _, err := h.pod.LinkByName(at.ifName); err == nil {
		return fmt.Errorf("the pod namespace already has an interface %s: DEL the attachment first", at.ifName)
	} else if !isNotFound(err) {
		return fmt.Errorf("look up %s in the pod namespace: %w", at.ifName, err)
	}
	return nil
}

func cmdDel(args *skel.CmdArgs) error {
	inv, done, err := begin(args, "DEL")
	if err != nil {
		return err
	}
	defer done()
	h, err := openHandles(args.Netns)
	var nse *nsError
	switch {
	case errors.As(err, &nse):
		inv.log.Debug("pod namespace gone; nothing to remove inside it", "netns", args.Netns, "err", err)
	case err != nil:
		return internal(err)
	}
	defer h.close()

	// The pod side first: deleting it deletes the pair.
	if h.pod != nil {
		l, err := h.pod.LinkByName(args.IfName)
		switch {
		case err == nil && l.Type() == "veth":
			if err := h.pod.LinkDel(l); err != nil && !isNotFound(err) {
				return internal(fmt.Errorf("delete %s in the pod namespace %s: %w", args.IfName, args.Netns, err))
			}
		case err == nil:
			inv.log.Warn("pod interface is not a veth; leaving it", "iface", args.IfName, "type", l.Type())
		case !isNotFound(err):
			return internal(fmt.Errorf("look up %s in the pod namespace %s: %w", args.IfName, args.Netns, err))
		}
	}
	// The host side by name, when it is this attachment's.
	l, err := h.host.LinkByName(inv.hostVeth)
	switch {
	case err == nil && l.Attrs().Alias == vethAlias(inv.handle):
		if err := h.host.LinkDel(l); err != nil && !isNotFound(err) {
			return internal(fmt.Errorf("delete the host veth %s: %w", inv.hostVeth, err))
		}
	case err == nil:
		inv.log.Info("host veth belongs to another attachment; leaving it", "iface", inv.hostVeth, "owner", l.Attrs().Alias)
	case !isNotFound(err):
		return internal(fmt.Errorf("look up the host veth %s: %w", inv.hostVeth, err))
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := inv.client.DeleteEndpoint(ctx, inv.handle)
	if err != nil {
		return agentError("release the pod's address", err)
	}
	inv.log.Info("pod detached", "released", resp.Released, "endpointDeleted", resp.EndpointDeleted)
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	inv, done, err := begin(args, "CHECK")
	if err != nil {
		return err
	}
	defer done()
	if inv.conf.PrevResult == nil {
		return types.NewError(CodeInvalidConfig, "CHECK needs prevResult (the result of ADD)", "")
	}
	prev, err := current.NewResultFromResult(inv.conf.PrevResult)
	if err != nil {
		return types.NewError(CodeDecode, fmt.Sprintf("convert prevResult: %v", err), "")
	}
	h, err := openHandles(args.Netns)
	if err != nil {
		if h != nil {
			h.close()
			return types.NewError(CodeInvalidNetNS, err.Error(), "")
		}
		return internal(err)
	}
	defer h.close()

	var c checker
	addr, podMAC := c.prevResult(prev, inv.hostVeth, args.IfName, args.Netns)
	c.pod(h.pod, args.IfName, addr, podMAC)
	c.host(h.host, inv.hostVeth, inv.handle, addr)

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	st, err := inv.client.GetEndpoint(ctx, inv.handle)
	if err != nil {
		return agentError("ask the agent for the endpoint", err)
	}
	c.agent(st, inv.hostVeth, addr)
	if len(c.problems) > 0 {
		return types.NewError(CodeCheckFailed, fmt.Sprintf("twill CHECK of %s failed: %s", inv.handle, strings.Join(c.problems, "; ")), "")
	}
	inv.log.Debug("check passed", "address", addr)
	return nil
}

// checker collects what CHECK finds wrong.
type checker struct {
	problems []string
}

func (c *checker) bad(format string, a ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, a...))
}

// prevResult checks the shape of the previous result and returns the pod's
// address and MAC as it recorded them.
func (c *checker) prevResult(prev *current.Result, hostVeth, ifName, nsPath string) (netip.Addr, string) {
	podIdx, hostSeen := -1, false
	var podMAC string
	for i, itf := range prev.Interfaces {
		switch {
		case itf.Name == ifName && itf.Sandbox != "":
			podIdx, podMAC = i, itf.Mac
			if itf.Sandbox != nsPath {
				c.bad("prevResult puts %s in sandbox %s, not %s", ifName, itf.Sandbox, nsPath)
			}
		case itf.Name == hostVeth && itf.Sandbox == "":
			hostSeen = true
			if !strings.EqualFold(itf.Mac, hostMAC.String()) {
				c.bad("prevResult gives host veth %s MAC %s, want %s", hostVeth, itf.Mac, hostMAC)
			}
		}
	}
	if podIdx < 0 {
		c.bad("prevResult has no interface %s with a sandbox", ifName)
	}
	if !hostSeen {
		c.bad("prevResult has no host interface %s", hostVeth)
	}
	var addr netip.Addr
	for _, ip := range prev.IPs {
		if ip.Interface == nil || *ip.Interface != podIdx {
			continue
		}
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		ones, bits := ip.Address.Mask.Size()
		if !ok || !a.Unmap().Is4() || ones != 32 || bits != 32 {
			c.bad("prevResult gives %s the address %s; twill gives one IPv4 /32", ifName, ip.Address.String())
			continue
		}
		if addr.IsValid() {
			c.bad("prevResult gives %s more than one address", ifName)
			continue
		}
		addr = a.Unmap()
		if gw, ok := netip.AddrFromSlice(ip.Gateway); !ok || gw.Unmap() != gateway {
			c.bad("prevResult gives %s gateway %v, want %s", ifName, ip.Gateway, gateway)
		}
	}
	if !addr.IsValid() && podIdx >= 0 {
		c.bad("prevResult has no IPv4 address for %s", ifName)
	}
	hasDefault := false
	for _, r := range prev.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.GW.Equal(net.IP(gateway.AsSlice())) {
			hasDefault = true
		}
	}
	if !hasDefault {
		c.bad("prevResult has no route default via %s", gateway)
	}
	return addr, podMAC
}

// pod checks the pod side: the interface, its address and its two routes.
func (c *checker) pod(h *netlink.Handle, ifName string, addr netip.Addr, mac string) {
	if h == nil {
		c.bad("the pod network namespace is gone")
		return
	}
	l, err := h.LinkByName(ifName)
	if err != nil {
		c.bad("pod interface %s: %v", ifName, err)
		return
	}
	if l.Type() != "veth" {
		c.bad("pod interface %s is a %s, not a veth", ifName, l.Type())
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		c.bad("pod interface %s is down", ifName)
	}
	if mac != "" && !strings.EqualFold(l.Attrs().HardwareAddr.String(), mac) {
		c.bad("pod interface %s has MAC %s, prevResult says %s", ifName, l.Attrs().HardwareAddr, mac)
	}
	idx := l.Attrs().Index
	addrs, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		c.bad("list the addresses of pod interface %s: %v", ifName, err)
	} else if addr.IsValid() {
		found := false
		for _, a := range addrs {
			ones, _ := a.Mask.Size()
			if ad, ok := netip.AddrFromSlice(a.IP); ok && ad.Unmap() == addr && ones == 32 {
				found = true
			}
		}
		if !found {
			c.bad("pod interface %s lacks the address %s/32", ifName, addr)
		}
	}
	routes, err := dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		c.bad("list the pod's routes: %v", err)
		return
	}
	gw := net.IP(gateway.AsSlice())
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.LinkIndex == idx && r.Scope == netlink.SCOPE_LINK && r.Gw == nil && r.Dst != nil && r.Dst.String() == gateway.String()+"/32"
	}) {
		c.bad("the pod lacks the route %s dev %s scope link", gateway, ifName)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		ones := -1
		if r.Dst != nil {
			ones, _ = r.Dst.Mask.Size()
		}
		return r.LinkIndex == idx && r.Gw.Equal(gw) && (r.Dst == nil || ones == 0)
	}) {
		c.bad("the pod lacks the route default via %s dev %s", gateway, ifName)
	}
}

// host checks the host side: the veth, its settings and the route to the
// pod.
func (c *checker) host(h *netlink.Handle, name, handle string, addr netip.Addr) {
	l, err := h.LinkByName(name)
	if err != nil {
		c.bad("host veth %s: %v", name, err)
		return
	}
	a := l.Attrs()
	switch {
	case l.Type() != "veth":
		c.bad("host interface %s is a %s, not a veth", name, l.Type())
	case a.Alias != vethAlias(handle):
		c.bad("host veth %s belongs to %q, not %q", name, strings.TrimPrefix(a.Alias, aliasPrefix), handle)
	}
	if a.Flags&net.FlagUp == 0 {
		c.bad("host veth %s is down", name)
	}
	if a.HardwareAddr.String() != hostMAC.String() {
		c.bad("host veth %s has MAC %s, want %s", name, a.HardwareAddr, hostMAC)
	}
	for _, s := range []string{"conf/" + name + "/proxy_arp", "conf/" + name + "/forwarding"} {
		b, err := os.ReadFile("/proc/sys/net/ipv4/" + s)
		if err != nil || strings.TrimSpace(string(b)) != "1" {
			c.bad("net.ipv4.%s is not 1", strings.ReplaceAll(s, "/", "."))
		}
	}
	if !addr.IsValid() {
		return
	}
	routes, err := dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: a.Index}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	})
	if err != nil {
		c.bad("list the routes via %s: %v", name, err)
		return
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.Dst != nil && r.Dst.String() == addr.String()+"/32" && r.Scope == netlink.SCOPE_LINK && r.Gw == nil
	}) {
		c.bad("the node lacks the route %s dev %s scope link", addr, name)
	}
}

// agent checks what the agent holds for the attachment.
func (c *checker) agent(st agentapi.EndpointStatus, hostVeth string, addr netip.Addr) {
	want := ""
	if addr.IsValid() {
		want = netip.PrefixFrom(addr, 32).String()
	}
	if !st.Allocated {
		c.bad("the agent holds no address for the attachment")
	} else if want != "" && !slices.Contains(st.Addresses, want) {
		c.bad("the agent holds %v for the attachment, not %s", st.Addresses, want)
	}
	switch {
	case st.Endpoint == nil:
		c.bad("the agent has no endpoint record for the attachment")
	case st.Endpoint.HostIface != hostVeth:
		c.bad("the agent's endpoint record names host interface %s, not %s", st.Endpoint.HostIface, hostVeth)
	case want != "" && !slices.Contains(st.Endpoint.Addresses, want):
		c.bad("the agent's endpoint record has addresses %v, not %s", st.Endpoint.Addresses, want)
	}
}
