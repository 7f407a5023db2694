//go:build linux

package nettest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named namespaces are bind-mounted, as `ip netns` does.
const NetnsDir = "/var/run/netns"

// NS is a named network namespace with a netlink handle inside it.
type NS struct {
	// Name is the namespace's name under NetnsDir.
	Name string
	// Path is the namespace's file, for --netns and dataplane.Options.
	Path string
	// H is a netlink handle in the namespace.
	H       *netlink.Handle
	ns      netns.NsHandle
	deleted bool
}

// RandomSuffix returns n random hex characters.
func RandomSuffix(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)[:n]
}

// New creates the namespace "tw" + role + "-" + a random suffix, brings its
// loopback up and deletes it when the test ends.
func New(t testing.TB, role string) *NS {
	t.Helper()
	return Named(t, "tw"+role+"-"+RandomSuffix(6))
}

// Named creates the namespace name, which must start with "tw" (callers
// that need a name of a given shape, such as a lab member's, choose it),
// brings its loopback up and deletes it when the test ends, whether the
// test passes or not.
func Named(t testing.TB, name string) *NS {
	t.Helper()
	if !strings.HasPrefix(name, "tw") {
		t.Fatalf("nettest: namespace name %q must start with \"tw\"", name)
	}
	ns, err := newNamed(name)
	if err != nil {
		t.Fatalf("nettest: create namespace %s: %v", name, err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		netns.DeleteNamed(name)
		t.Fatalf("nettest: netlink handle in %s: %v", name, err)
	}
	n := &NS{Name: name, Path: filepath.Join(NetnsDir, name), H: h, ns: ns}
	t.Cleanup(func() { n.Delete(t) })
	if err := n.LinkUp("lo"); err != nil {
		t.Fatal(err)
	}
	return n
}

// newNamed creates a named namespace from a locked thread and returns that
// thread to its namespace; a thread that cannot be restored is left locked
// so that the runtime discards it.
func newNamed(name string) (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if rerr := netns.Set(orig); rerr != nil {
			ch <- result{err: fmt.Errorf("restore the thread's namespace: %w", rerr)}
			return // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		ch <- result{ns: ns, err: err}
	}()
	r := <-ch
	return r.ns, r.err
}

// Delete closes the handles and removes the namespace; its links go with it.
func (n *NS) Delete(t testing.TB) {
	if n.H != nil {
		n.H.Close()
		n.H = nil
	}
	if n.ns.IsOpen() {
		n.ns.Close()
		n.ns = netns.None()
	}
	if n.deleted {
		return
	}
	n.deleted = true
	if err := netns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.EINVAL) {
		t.Errorf("nettest: delete namespace %s: %v", n.Name, err)
	}
}

// Do runs f on a thread switched into the namespace (for sysctls, which
// netlink cannot reach, and for sockets and processes that must live in
// it), then switches the thread back.
func (n *NS) Do(f func() error) error {
	return do(n.ns, f)
}

// InNetns runs f on a thread switched into the namespace at path, then
// switches the thread back. Sockets f opens and processes it starts belong
// to that namespace.
func InNetns(path string, f func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("nettest: open namespace %s: %w", path, err)
	}
	defer ns.Close()
	return do(ns, f)
}

// do runs f on a locked thread switched into target; a thread that cannot
// be switched back stays locked so that the runtime discards it.
func do(target netns.NsHandle, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			ch <- fmt.Errorf("restore the thread's namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}

// Sysctl writes value to /proc/sys/<key> (key with slashes, e.g.
// net/ipv4/ip_forward) inside the namespace.
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// Link returns the named link.
func (n *NS) Link(name string) (netlink.Link, error) {
	l, err := n.H.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("nettest: %s: link %s: %w", n.Name, name, err)
	}
	return l, nil
}

// LinkUp sets the named link up.
func (n *NS) LinkUp(name string) error {
	l, err := n.Link(name)
	if err != nil {
		return err
	}
	if err := n.H.LinkSetUp(l); err != nil {
		return fmt.Errorf("nettest: %s: set %s up: %w", n.Name, name, err)
	}
	return nil
}

// Veth creates a veth pair with MTU 1500: name in n and peerName in peer
// (which may be n), both up.
func (n *NS) Veth(name string, peer *NS, peerName string) error {
	return n.VethMTU(name, peer, peerName, 1500)
}

// VethMTU is Veth with both ends' MTU set to mtu.
func (n *NS) VethMTU(name string, peer *NS, peerName string, mtu int) error {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: peerName}
	if peer != n {
		v.PeerNamespace = netlink.NsFd(int(peer.ns))
	}
	if err := n.H.LinkAdd(v); err != nil {
		return fmt.Errorf("nettest: %s: add veth %s/%s: %w", n.Name, name, peerName, err)
	}
	if err := n.LinkUp(name); err != nil {
		return err
	}
	return peer.LinkUp(peerName)
}

// Bridge creates an up bridge.
func (n *NS) Bridge(name string) error {
	if err := n.H.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		return fmt.Errorf("nettest: %s: add bridge %s: %w", n.Name, name, err)
	}
	return n.LinkUp(name)
}

// SetMaster attaches link to bridge.
func (n *NS) SetMaster(link, bridge string) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	b, err := n.Link(bridge)
	if err != nil {
		return err
	}
	if err := n.H.LinkSetMaster(l, b); err != nil {
		return fmt.Errorf("nettest: %s: attach %s to %s: %w", n.Name, link, bridge, err)
	}
	return nil
}

// AddrAdd adds cidr (host address with prefix length) to link.
func (n *NS) AddrAdd(link, cidr string) error {
	return n.addr(link, cidr, "add %s to %s", n.H.AddrAdd)
}

// AddrDel removes cidr from link.
func (n *NS) AddrDel(link, cidr string) error {
	return n.addr(link, cidr, "delete %s from %s", n.H.AddrDel)
}

// addr applies op to cidr on link; what describes it for errors.
func (n *NS) addr(link, cidr, what string, op func(netlink.Link, *netlink.Addr) error) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("nettest: address %q: %w", cidr, err)
	}
	if err := op(l, a); err != nil {
		return fmt.Errorf("nettest: %s: %s: %w", n.Name, fmt.Sprintf(what, cidr, link), err)
	}
	return nil
}

// DefaultRoute sets (replaces) the default route via gw.
func (n *NS) DefaultRoute(gw string) error {
	g := net.ParseIP(gw)
	if g == nil {
		return fmt.Errorf("nettest: gateway %q is not an address", gw)
	}
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	if err := n.H.RouteReplace(&netlink.Route{Dst: all, Gw: g}); err != nil {
		return fmt.Errorf("nettest: %s: default via %s: %w", n.Name, gw, err)
	}
	return nil
}

// Routes returns the IPv4 routes of the main table.
func (n *NS) Routes() ([]netlink.Route, error) {
	rs, err := n.H.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("nettest: %s: list routes: %w", n.Name, err)
	}
	return rs, nil
}

// Route returns the main-table route to dst, if any.
func (n *NS) Route(dst netip.Prefix) (*netlink.Route, error) {
	rs, err := n.Routes()
	if err != nil {
		return nil, err
	}
	for i := range rs {
		if rs[i].Dst != nil && rs[i].Dst.String() == dst.String() {
			return &rs[i], nil
		}
	}
	return nil, nil
}

// LinkName returns the name of the link with index idx ("" if unknown).
func (n *NS) LinkName(idx int) string {
	l, err := n.H.LinkByIndex(idx)
	if err != nil {
		return ""
	}
	return l.Attrs().Name
}

// Dump describes the namespace's links, addresses, main-table routes and
// permanent neighbour and FDB entries, one object per line, sorted, for
// before/after comparisons. Link indexes are included so that a recreated
// device shows.
func (n *NS) Dump() (string, error) {
	var lines []string
	links, err := n.H.LinkList()
	if err != nil {
		return "", err
	}
	for _, l := range links {
		a := l.Attrs()
		line := fmt.Sprintf("link %d %s %s mtu %d mac %s up=%v", a.Index, a.Name, l.Type(), a.MTU, a.HardwareAddr, a.Flags&net.FlagUp != 0)
		if v, ok := l.(*netlink.Vxlan); ok {
			line += fmt.Sprintf(" vni %d port %d local %s parent %d learning %v", v.VxlanId, v.Port, v.SrcAddr, v.VtepDevIndex, v.Learning)
		}
		lines = append(lines, line)
		addrs, err := n.H.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return "", err
		}
		for _, ad := range addrs {
			lines = append(lines, fmt.Sprintf("addr %s %s", a.Name, ad.IPNet))
		}
		neighs, err := n.H.NeighList(a.Index, netlink.FAMILY_V4)
		if err != nil {
			return "", err
		}
		for _, ne := range neighs {
			if ne.State&netlink.NUD_PERMANENT != 0 {
				lines = append(lines, fmt.Sprintf("neigh %s %s lladdr %s", a.Name, ne.IP, ne.HardwareAddr))
			}
		}
		fdb, err := n.H.NeighList(a.Index, unix.AF_BRIDGE)
		if err != nil {
			return "", err
		}
		for _, ne := range fdb {
			if ne.State&netlink.NUD_PERMANENT != 0 && ne.IP != nil {
				lines = append(lines, fmt.Sprintf("fdb %s %s dst %s", a.Name, ne.HardwareAddr, ne.IP))
			}
		}
	}
	rs, err := n.Routes()
	if err != nil {
		return "", err
	}
	for _, r := range rs {
		lines = append(lines, fmt.Sprintf("route %v via %v dev %s proto %d scope %d type %d flags %d", r.Dst, r.Gw, n.LinkName(r.LinkIndex), r.Protocol, r.Scope, r.Type, r.Flags))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), nil
}

// SubscribeRoutes streams the namespace's route changes until done is
// closed.
func (n *NS) SubscribeRoutes(done <-chan struct{}) (<-chan netlink.RouteUpdate, error) {
	ch := make(chan netlink.RouteUpdate, 4096)
	ns := n.ns
	if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &ns}); err != nil {
		return nil, fmt.Errorf("nettest: %s: subscribe to routes: %w", n.Name, err)
	}
	return ch, nil
}

// WaitRoute reads updates until dst is added (or, with deleted, removed),
// for at most timeout.
func WaitRoute(updates <-chan netlink.RouteUpdate, dst netip.Prefix, deleted bool, timeout time.Duration) error {
	want := uint16(unix.RTM_NEWROUTE)
	if deleted {
		want = unix.RTM_DELROUTE
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case u, ok := <-updates:
			if !ok {
				return errors.New("nettest: route subscription closed")
			}
			if u.Type == want && u.Dst != nil && u.Dst.String() == dst.String() {
				return nil
			}
		case <-timer.C:
			return fmt.Errorf("nettest: route %s not %s within %s", dst, map[bool]string{false: "added", true: "deleted"}[deleted], timeout)
		}
	}
}
