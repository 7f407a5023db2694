package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are bind-mounted, as by
// `ip netns add`, so that `ip netns exec` finds them.
const NetnsDir = "/var/run/netns"

// NetnsPath is the path of the named namespace.
func NetnsPath(name string) string { return filepath.Join(NetnsDir, name) }

// netnsExists reports whether the named namespace is there.
func netnsExists(name string) bool {
	_, err := os.Stat(NetnsPath(name))
	return err == nil
}

// onNewThread runs fn on a fresh goroutine locked to its OS thread. fn
// returns whether the thread is still clean (in the namespaces it started
// in); a dirty thread stays locked, so that the runtime discards it when
// the goroutine ends instead of reusing it.
func onNewThread(fn func() (clean bool, err error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		clean, err := fn()
		if clean {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// createNetns creates the named namespace, bind-mounted under NetnsDir.
// The calling thread's namespace is never changed.
func createNetns(name string) error {
	if netnsExists(name) {
		return fmt.Errorf("network namespace %s already exists (left from an earlier lab?): remove it with `ip netns delete %s`: %w", name, name, fs.ErrExist)
	}
	return onNewThread(func() (bool, error) {
		orig, err := netns.Get()
		if err != nil {
			return true, fmt.Errorf("create namespace %s: read the current namespace: %w", name, err)
		}
		defer orig.Close()
		ns, nerr := netns.NewNamed(name)
		if nerr == nil {
			ns.Close()
		}
		if err := netns.Set(orig); err != nil {
			return false, fmt.Errorf("create namespace %s: return to the original namespace: %w", name, err)
		}
		if nerr != nil {
			// NewNamed may have left the mount point file behind.
			_ = os.Remove(NetnsPath(name))
			return true, fmt.Errorf("create namespace %s: %w", name, nerr)
		}
		return true, nil
	})
}

// deleteNetns removes the named namespace; one already gone is fine. The
// namespace itself disappears once no process or open file holds it.
func deleteNetns(name string) error {
	p := NetnsPath(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete namespace %s: unmount %s: %w", name, p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}

// inNetns runs fn on a locked OS thread inside the namespace at path, and
// returns the thread to its original namespace (or discards it).
func inNetns(path string, fn func() error) error {
	return onNewThread(func() (bool, error) {
		orig, err := netns.Get()
		if err != nil {
			return true, fmt.Errorf("read the current namespace: %w", err)
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			return true, fmt.Errorf("open namespace %s: %w", path, err)
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return true, fmt.Errorf("enter namespace %s: %w", path, err)
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return false, errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", path, err))
		}
		return true, ferr
	})
}

// withHandle runs fn with a netlink handle whose socket lives in the named
// namespace; the calling thread does not move.
func withHandle(name string, fn func(h *netlink.Handle, ns netns.NsHandle) error) error {
	ns, err := netns.GetFromPath(NetnsPath(name))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in namespace %s: %w", name, err)
	}
	defer h.Close()
	return fn(h, ns)
}

// setSysctls writes sysctls (keys like net.ipv4.ip_forward) inside the
// named namespace. Keys whose file is missing are skipped when optional.
func setSysctls(name string, kv [][2]string, optional bool) error {
	return inNetns(NetnsPath(name), func() error {
		for _, e := range kv {
			p := "/proc/sys/" + strings.ReplaceAll(e[0], ".", "/")
			if err := os.WriteFile(p, []byte(e[1]), 0o644); err != nil {
				if optional && errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return fmt.Errorf("set %s=%s in namespace %s: %w", e[0], e[1], name, err)
			}
		}
		return nil
	})
}

// quietIPv6 turns IPv6 off in a lab namespace: the lab is IPv4 only, and
// router solicitations and DAD would only add noise to the captures.
var quietIPv6 = [][2]string{
	{"net.ipv6.conf.all.disable_ipv6", "1"},
	{"net.ipv6.conf.default.disable_ipv6", "1"},
}

var ipForward = [][2]string{{"net.ipv4.ip_forward", "1"}}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// buildRouter creates the router namespace: one bridge per subnet holding
// the router's address, forwarding on. It has no uplink.
func buildRouter(l *Layout, record func(ns string) error) error {
	if err := record(l.Router); err != nil {
		return err
	}
	if err := createNetns(l.Router); err != nil {
		return err
	}
	if err := setSysctls(l.Router, quietIPv6, true); err != nil {
		return err
	}
	if err := setSysctls(l.Router, ipForward, false); err != nil {
		return err
	}
	return withHandle(l.Router, func(h *netlink.Handle, _ netns.NsHandle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		for _, s := range l.Subnets {
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.Bridge, MTU: 1500}}
			if err := h.LinkAdd(br); err != nil {
				return fmt.Errorf("router: add bridge %s for subnet %s: %w", s.Bridge, s.Name, err)
			}
			link, err := h.LinkByName(s.Bridge)
			if err != nil {
				return fmt.Errorf("router: find bridge %s: %w", s.Bridge, err)
			}
			addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(s.Router, s.CIDR.Bits()))}
			if err := h.AddrAdd(link, addr); err != nil {
				return fmt.Errorf("router: address %s on %s: %w", addr.IPNet, s.Bridge, err)
			}
			if err := h.LinkSetUp(link); err != nil {
				return fmt.Errorf("router: bring %s up: %w", s.Bridge, err)
			}
		}
		return nil
	})
}

func linkUp(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// buildMember creates a node's or host's namespace with eth0 plugged into
// its subnet's bridge. The veth is created inside the router namespace
// with its peer placed straight into the member's, so neither end ever
// exists in the root namespace.
func buildMember(l *Layout, m Member, record func(ns string) error) error {
	if err := record(m.Netns); err != nil {
		return err
	}
	if err := createNetns(m.Netns); err != nil {
		return err
	}
	if err := setSysctls(m.Netns, quietIPv6, true); err != nil {
		return err
	}
	if m.Role == RoleNode {
		if err := setSysctls(m.Netns, ipForward, false); err != nil {
			return err
		}
	}
	sub := l.Subnets[m.Subnet]
	err := withHandle(m.Netns, func(mh *netlink.Handle, mns netns.NsHandle) error {
		err := withHandle(l.Router, func(rh *netlink.Handle, _ netns.NsHandle) error {
			br, err := rh.LinkByName(sub.Bridge)
			if err != nil {
				return fmt.Errorf("find bridge %s: %w", sub.Bridge, err)
			}
			veth := &netlink.Veth{
				LinkAttrs:     netlink.LinkAttrs{Name: m.RouterIface, MTU: 1500},
				PeerName:      "eth0",
				PeerNamespace: netlink.NsFd(int(mns)),
				PeerMTU:       1500,
			}
			if m.MAC != nil {
				veth.PeerHardwareAddr = m.MAC
			}
			if err := rh.LinkAdd(veth); err != nil {
				return fmt.Errorf("add veth %s (router) / eth0 (%s): %w", m.RouterIface, m.Name, err)
			}
			leg, err := rh.LinkByName(m.RouterIface)
			if err != nil {
				return fmt.Errorf("find %s: %w", m.RouterIface, err)
			}
			if err := rh.LinkSetMaster(leg, br); err != nil {
				return fmt.Errorf("plug %s into bridge %s: %w", m.RouterIface, sub.Bridge, err)
			}
			if err := rh.LinkSetUp(leg); err != nil {
				return fmt.Errorf("bring %s up: %w", m.RouterIface, err)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("router: %w", err)
		}
		if err := linkUp(mh, "lo"); err != nil {
			return err
		}
		eth0, err := mh.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("find eth0: %w", err)
		}
		if err := mh.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(m.Address)}); err != nil {
			return fmt.Errorf("address %s on eth0: %w", m.Address, err)
		}
		if err := mh.LinkSetUp(eth0); err != nil {
			return fmt.Errorf("bring eth0 up: %w", err)
		}
		def := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: m.Gateway.AsSlice()}
		if err := mh.RouteAdd(def); err != nil {
			return fmt.Errorf("default route via %s: %w", m.Gateway, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s %s (namespace %s): %w", m.Role, m.Name, m.Netns, err)
	}
	return nil
}

// buildNetwork creates the router and every member. record is called with
// each namespace name before it is created.
func buildNetwork(l *Layout, record func(ns string) error, progress func(string, ...any)) error {
	if err := buildRouter(l, record); err != nil {
		return err
	}
	for _, s := range l.Subnets {
		progress("subnet %s %s: bridge %s in %s, router %s", s.Name, s.CIDR, s.Bridge, l.Router, s.Router)
	}
	for _, m := range l.Members {
		if err := buildMember(l, m, record); err != nil {
			return err
		}
		progress("%s %s: namespace %s, eth0 %s, default via %s", m.Role, m.Name, m.Netns, m.Address, m.Gateway)
	}
	return nil
}
