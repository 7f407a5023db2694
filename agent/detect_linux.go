package agent

import (
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nlHandle opens a netlink handle in the namespace at path ("" for the
// calling thread's), without switching any thread into it.
func nlHandle(path string) (*netlink.Handle, func(), error) {
	var ns netns.NsHandle
	var err error
	if path == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: open network namespace %q (check --netns): %v", ErrDetect, path, err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("%w: netlink socket in namespace %q: %v", ErrDetect, path, err)
	}
	return h, func() { h.Close(); ns.Close() }, nil
}

// listLinks reads every link with its IPv4 addresses, sorted by index.
func listLinks(h *netlink.Handle) ([]linkInfo, error) {
	ls, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("%w: list links: %v", ErrDetect, err)
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("%w: list addresses: %v", ErrDetect, err)
	}
	byIndex := map[int][]netip.Prefix{}
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		byIndex[a.LinkIndex] = append(byIndex[a.LinkIndex], netip.PrefixFrom(ip, bits))
	}
	out := make([]linkInfo, 0, len(ls))
	for _, l := range ls {
		at := l.Attrs()
		up := at.Flags&net.FlagUp != 0 && at.OperState != netlink.OperDown && at.OperState != netlink.OperLowerLayerDown
		out = append(out, linkInfo{Name: at.Name, Index: at.Index, Type: l.Type(), Up: up, MTU: at.MTU, Addrs: byIndex[at.Index]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, nil
}

// DetectAddress finds the node's host address in the network namespace at
// netnsPath ("" for the calling thread's): ip when set (see resolveIP),
// else by method (see ParseAutodetectMethod). The lookup uses a netlink
// handle opened in that namespace; no thread switches namespace.
func DetectAddress(netnsPath, ip, method string) (HostAddress, error) {
	var m AutodetectMethod
	if ip == "" || ip == "autodetect" {
		var err error
		if m, err = ParseAutodetectMethod(method); err != nil {
			return HostAddress{}, fmt.Errorf("%w: %w", ErrDetect, err)
		}
	}
	h, done, err := nlHandle(netnsPath)
	if err != nil {
		return HostAddress{}, err
	}
	defer done()
	links, err := listLinks(h)
	if err != nil {
		return HostAddress{}, err
	}
	if ip != "" && ip != "autodetect" {
		return resolveIP(ip, links)
	}
	if m.Kind != MethodCanReach {
		return selectAddress(m, links)
	}
	routes, err := h.RouteGet(net.IP(m.Target.AsSlice()))
	if err != nil || len(routes) == 0 {
		return HostAddress{}, fmt.Errorf("%w: no route to %s (can-reach): %v", ErrDetect, m.Target, err)
	}
	var src netip.Addr
	if s, ok := netip.AddrFromSlice(routes[0].Src.To4()); ok {
		src = s
	}
	return addressOnLink(links, routes[0].LinkIndex, src, m.Target)
}
