package bench

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"twill.dev/twill/lab"
)

// podGateway is the pods' default gateway, answered by proxy ARP on the
// host side of the veth (as the twill plugin and Calico do).
var podGateway = net.IPv4(169, 254, 1, 1).To4()

// hostVethMAC is the host side's MAC, as the twill plugin sets it.
var hostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// Plumbing is one pod's interface set up directly with netlink, in-process:
// the CNI ADD baseline.
type Plumbing struct {
	// NodeNetns and PodNetns are the namespaces' paths.
	NodeNetns, PodNetns string
	// HostIface is the host side's name, at most 15 characters.
	HostIface string
	Addr      netip.Addr
	MTU       int
}

// Plumb does, directly with netlink from a thread in the node's namespace,
// what the twill plugin does to attach a pod: the veth created with its
// peer (eth0) in the pod's namespace, the host side's MAC and alias, its
// proxy_arp/proxy_delay/forwarding sysctls, both ends up, the pod's /32,
// its route to the gateway and its default route, and the host route to
// the pod (protocol static: the agent leaves it alone). It is what an ADD
// costs without exec, IPAM, the agent and libcni.
func (p Plumbing) Plumb() error {
	return lab.InNetns(p.NodeNetns, func() error {
		host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink in the node's namespace: %w", err)
		}
		defer host.Close()
		podNS, err := netns.GetFromPath(p.PodNetns)
		if err != nil {
			return fmt.Errorf("open the pod namespace %s: %w", p.PodNetns, err)
		}
		defer podNS.Close()
		pod, err := netlink.NewHandleAt(podNS, unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink in the pod namespace %s: %w", p.PodNetns, err)
		}
		defer pod.Close()
		// The plugin first checks that neither name is taken.
		var nf netlink.LinkNotFoundError
		if _, err := host.LinkByName(p.HostIface); !errors.As(err, &nf) {
			return fmt.Errorf("%s exists already in the node's namespace (or the lookup failed: %v)", p.HostIface, err)
		}
		if _, err := pod.LinkByName("eth0"); !errors.As(err, &nf) {
			return fmt.Errorf("eth0 exists already in %s (or the lookup failed: %v)", p.PodNetns, err)
		}
		podMAC := make(net.HardwareAddr, 6)
		if _, err := rand.Read(podMAC); err != nil {
			return err
		}
		podMAC[0] = podMAC[0]&^0x01 | 0x02
		veth := &netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: p.HostIface, MTU: p.MTU, HardwareAddr: hostVethMAC},
			PeerName:  "eth0", PeerMTU: uint32(p.MTU), PeerHardwareAddr: podMAC, PeerNamespace: netlink.NsFd(int(podNS)),
		}
		if err := host.LinkAdd(veth); err != nil {
			return fmt.Errorf("add the veth %s: %w", p.HostIface, err)
		}
		hl, err := host.LinkByName(p.HostIface)
		if err != nil {
			return err
		}
		if err := host.LinkSetAlias(hl, "twill-bench:"+p.HostIface); err != nil {
			return err
		}
		for _, s := range [][2]string{
			{"net/ipv4/conf/" + p.HostIface + "/proxy_arp", "1"},
			{"net/ipv4/neigh/" + p.HostIface + "/proxy_delay", "0"},
			{"net/ipv4/conf/" + p.HostIface + "/forwarding", "1"},
		} {
			if err := os.WriteFile("/proc/sys/"+s[0], []byte(s[1]), 0o644); err != nil {
				return fmt.Errorf("set %s: %w", s[0], err)
			}
		}
		if err := host.LinkSetUp(hl); err != nil {
			return err
		}
		pl, err := pod.LinkByName("eth0")
		if err != nil {
			return err
		}
		addr := &net.IPNet{IP: p.Addr.AsSlice(), Mask: net.CIDRMask(32, 32)}
		if err := pod.AddrAdd(pl, &netlink.Addr{IPNet: addr}); err != nil {
			return err
		}
		if err := pod.LinkSetUp(pl); err != nil {
			return err
		}
		idx := pl.Attrs().Index
		if err := pod.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: podGateway, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		if err := pod.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: podGateway, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}); err != nil {
			return err
		}
		return host.RouteReplace(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: addr, Scope: netlink.SCOPE_LINK,
			Protocol: unix.RTPROT_STATIC, Table: unix.RT_TABLE_MAIN})
	})
}

// Unplumb removes what Plumb made: deleting the host side deletes the
// pair and the host route.
func (p Plumbing) Unplumb() error {
	h, err := handleAt(p.NodeNetns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(p.HostIface)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return err
	}
	return h.LinkDel(l)
}
