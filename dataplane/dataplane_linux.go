package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"twill.dev/twill/plan"
)

// Reconciler makes one network namespace match plan.Dataplane values. Its
// methods are safe for concurrent use; writes are serialised.
type Reconciler struct {
	ns  netns.NsHandle
	h   *netlink.Handle
	log *slog.Logger

	// mu serialises netlink use and guards the fields below. A closed
	// netlink.Handle silently falls back to the current namespace, so h is
	// only used with mu held and non-nil.
	mu sync.Mutex
	// subs counts running Subscribe calls; ns stays open until Close was
	// called and subs is 0, because a closed NsHandle would make netlink
	// subscribe in the current namespace.
	subs int
	// deviceName is the VXLAN device's name: from the last non-nil plan,
	// else plan.DefaultVXLANDevice.
	deviceName string
	// nameFromPlan is set once a plan has named the device.
	nameFromPlan bool
	// fw is the last applied firewall, nil before the first; Subscribe's
	// nftables watcher compares the kernel with it.
	fw *fwWant

	// wmu guards watch, which Subscribe's event filter reads.
	wmu   sync.Mutex
	watch *watchState
}

// New opens the namespace at opts.NetnsPath ("" for the calling thread's)
// and a netlink handle in it. Close releases both.
func New(opts Options) (*Reconciler, error) {
	var ns netns.NsHandle
	var err error
	if opts.NetnsPath == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(opts.NetnsPath)
	}
	if err != nil {
		return nil, fmt.Errorf("dataplane: open network namespace %q (check the path and that the process may read it): %w", opts.NetnsPath, err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("dataplane: netlink socket in namespace %q (needs CAP_SYS_ADMIN to enter the namespace and CAP_NET_ADMIN to program it): %w", opts.NetnsPath, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.NetnsPath != "" {
		log = log.With("netns", opts.NetnsPath)
	}
	return &Reconciler{
		ns:         ns,
		h:          h,
		log:        log,
		deviceName: plan.DefaultVXLANDevice,
		watch:      newWatchState(),
	}, nil
}

// Close releases the netlink handle, and the namespace handle once every
// subscription has ended. Later calls fail; running subscriptions stop
// resubscribing but otherwise end with their context.
func (r *Reconciler) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return nil
	}
	r.h.Close()
	r.h = nil
	if r.subs == 0 {
		return r.ns.Close()
	}
	return nil
}

// releaseSub ends one Subscribe's hold on the namespace handle.
func (r *Reconciler) releaseSub() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs--
	if r.subs == 0 && r.h == nil {
		r.ns.Close()
	}
}

// errClosed is returned by methods called after Close.
var errClosed = errors.New("dataplane: reconciler is closed")

// maxDumpTries bounds retries of a netlink dump the kernel interrupted.
const maxDumpTries = 5

// dump retries f while the kernel reports an interrupted dump.
func dump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range maxDumpTries {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// Apply makes the kernel match dp: the host firewall (unless dp.Firewall is
// the zero value), device, device address, neighbours, FDB, then routes,
// pruning what Twill owns and dp no longer wants. It keeps going
// past failures and returns them joined.
func (r *Reconciler) Apply(dp plan.Dataplane) (Result, error) {
	return r.reconcile("apply", func(res *Result) []error {
		var errs []error
		if !firewallZero(dp.Firewall) {
			errs = append(errs, r.applyFirewallAt(dp.Firewall, vxlanLocal(dp.Device), res)...)
		}
		routes, rerrs := r.setWantRoutes(dp.Routes, true)
		errs = append(errs, rerrs...)

		devIdx, err := r.applyDevice(dp.Device, res)
		if err != nil {
			errs = append(errs, err)
		}
		// A device that failed is reported already; only a missing one is news.
		errs = append(errs, r.applyNeighbors(devIdx, dp.Device == nil, dp.Neighbors, res)...)
		errs = append(errs, r.applyFDB(devIdx, dp.Device == nil, dp.FDB, res)...)
		return append(errs, r.applyRoutes(routes, true, res)...)
	})
}

// ApplyDevice reconciles the VXLAN device and its address only; nil deletes
// the device.
func (r *Reconciler) ApplyDevice(d *plan.Device) (Result, error) {
	return r.reconcile("apply device", func(res *Result) []error {
		if _, err := r.applyDevice(d, res); err != nil {
			return []error{err}
		}
		return nil
	})
}

// ApplyNeighbors reconciles the permanent neighbour entries on the VXLAN
// device (named by the last plan) with ns, pruning the others.
func (r *Reconciler) ApplyNeighbors(ns []plan.Neighbor) (Result, error) {
	return r.reconcile("apply neighbors", func(res *Result) []error {
		idx, errs := r.currentDevice()
		return append(errs, r.applyNeighbors(idx, len(errs) == 0, ns, res)...)
	})
}

// ApplyFDB reconciles the permanent FDB entries on the VXLAN device with fs,
// pruning the others.
func (r *Reconciler) ApplyFDB(fs []plan.FDB) (Result, error) {
	return r.reconcile("apply fdb", func(res *Result) []error {
		idx, errs := r.currentDevice()
		return append(errs, r.applyFDB(idx, len(errs) == 0, fs, res)...)
	})
}

// ApplyRoutes reconciles the owned routes with routes, pruning the others.
func (r *Reconciler) ApplyRoutes(routes []plan.Route) (Result, error) {
	return r.routesOnly("apply routes", routes, true)
}

// UpdateRoutes adds or replaces routes without pruning anything: for
// incremental work such as a new pod. The routes join the wanted set that
// Subscribe watches.
func (r *Reconciler) UpdateRoutes(routes []plan.Route) (Result, error) {
	return r.routesOnly("update routes", routes, false)
}

func (r *Reconciler) routesOnly(what string, routes []plan.Route, prune bool) (Result, error) {
	return r.reconcile(what, func(res *Result) []error {
		ks, errs := r.setWantRoutes(routes, prune)
		return append(errs, r.applyRoutes(ks, prune, res)...)
	})
}

// DeleteRoutes deletes the owned routes (protocol plan.RouteProtocol) to
// dsts and drops them from the wanted set; other routes to dsts are left
// alone. For incremental work such as a deleted pod.
func (r *Reconciler) DeleteRoutes(dsts []netip.Prefix) (Result, error) {
	return r.reconcile("delete routes", func(res *Result) []error {
		del := make(map[netip.Prefix]bool, len(dsts))
		r.wmu.Lock()
		for _, d := range dsts {
			del[d] = true
			delete(r.watch.want.routes, d)
		}
		r.watch.reindex()
		r.wmu.Unlock()
		owned, _, _, err := r.kernelRoutes()
		if err != nil {
			return []error{err}
		}
		var errs []error
		for _, o := range owned {
			if !del[o.k.Dst] {
				continue
			}
			if err := r.h.RouteDel(&o.nl); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, opErr(KindRoute, o.k.String(), "delete", err))
				continue
			}
			r.log.Debug("route deleted", "route", o.k.String())
			res.Routes.Deleted++
		}
		return errs
	})
}

// reconcile runs f on an open reconciler with r.mu held, and logs and
// returns what f changed and the errors it met, joined, as what.
func (r *Reconciler) reconcile(what string, f func(res *Result) []error) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return Result{}, errClosed
	}
	var res Result
	errs := f(&res)
	return r.done(what, res, errs)
}

// done logs a summary and joins errors.
func (r *Reconciler) done(what string, res Result, errs []error) (Result, error) {
	err := errors.Join(errs...)
	if res.Changes() > 0 || err != nil {
		lvl := slog.LevelInfo
		if err != nil {
			lvl = slog.LevelWarn
		}
		r.log.Log(context.Background(), lvl, "dataplane "+what,
			"device", res.Device, "addresses", res.Addresses, "neighbors", res.Neighbors,
			"fdb", res.FDB, "routes", res.Routes, "firewall", res.Firewall, "pending", len(res.Pending),
			"conflicts", len(res.Conflicts), "errors", len(errs))
	}
	return res, err
}

// currentDevice returns the ifindex of the VXLAN device, 0 if it is missing.
func (r *Reconciler) currentDevice() (int, []error) {
	l, err := r.h.LinkByName(r.deviceName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return 0, nil
		}
		return 0, []error{opErr(KindDevice, r.deviceName, "get", err)}
	}
	if l.Type() != "vxlan" {
		return 0, nil
	}
	return l.Attrs().Index, nil
}

// wantedRoute is a checked route with the plan.Route it came from.
type wantedRoute struct {
	k kroute
	p plan.Route
}

// setWantRoutes checks routes and records them as wanted (replacing the
// wanted set, or adding to it).
func (r *Reconciler) setWantRoutes(routes []plan.Route, replace bool) ([]wantedRoute, []error) {
	var errs []error
	ks := make([]wantedRoute, 0, len(routes))
	seen := make(map[netip.Prefix]bool, len(routes))
	for _, rt := range routes {
		k, err := wantRoute(rt)
		if err != nil {
			errs = append(errs, opErr(KindRoute, rt.Dst.String(), "check", err))
			continue
		}
		if seen[k.Dst] {
			errs = append(errs, opErr(KindRoute, rt.Dst.String(), "check", fmt.Errorf("%w: destination listed twice", ErrInvalid)))
			continue
		}
		seen[k.Dst] = true
		ks = append(ks, wantedRoute{k: k, p: rt})
	}
	r.wmu.Lock()
	if replace {
		r.watch.want.routes = make(map[netip.Prefix]kroute, len(ks))
	}
	for _, w := range ks {
		r.watch.want.routes[w.k.Dst] = w.k
	}
	r.watch.reindex()
	r.wmu.Unlock()
	return ks, errs
}

// vxlanState reads a link into a devState.
func vxlanState(l netlink.Link) devState {
	a := l.Attrs()
	s := devState{
		Index: a.Index,
		Name:  a.Name,
		Type:  l.Type(),
		Up:    a.Flags&net.FlagUp != 0,
		MTU:   a.MTU,
		MAC:   a.HardwareAddr.String(),
	}
	if v, ok := l.(*netlink.Vxlan); ok {
		s.VNI = v.VxlanId
		s.Port = v.Port
		s.Local = addrOf(v.SrcAddr)
		s.ParentIndex = v.VtepDevIndex
		s.Learning = v.Learning
		s.Group = len(v.Group) > 0 && !v.Group.IsUnspecified()
		s.FlowBased = v.FlowBased
	}
	return s
}

// addrOf converts a net.IP, unmapping IPv4-in-IPv6; nil gives the zero Addr.
func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

// applyDevice reconciles the VXLAN device and its address, returning its
// ifindex (0 when there is none).
func (r *Reconciler) applyDevice(d *plan.Device, res *Result) (int, error) {
	if d == nil {
		r.wmu.Lock()
		r.watch.want.deviceName = r.deviceName
		r.watch.want.device = nil
		r.watch.want.neighbors = map[netip.Addr]string{}
		r.watch.want.fdb = map[fdbKey]bool{}
		r.watch.reindex()
		r.wmu.Unlock()
		l, err := r.h.LinkByName(r.deviceName)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return 0, nil
			}
			return 0, opErr(KindDevice, r.deviceName, "get", err)
		}
		if l.Type() != "vxlan" {
			return 0, nil // not ours
		}
		if err := r.h.LinkDel(l); err != nil {
			return 0, opErr(KindDevice, r.deviceName, "delete", err)
		}
		r.log.Debug("device deleted: no longer wanted", "device", r.deviceName)
		res.Device.Deleted++
		return 0, nil
	}

	w, err := wantDevice(*d)
	if err != nil {
		return 0, opErr(KindDevice, d.Name, "check", err)
	}
	var errs []error
	if r.nameFromPlan && r.deviceName != w.Name {
		// The plan renamed the device: the old one is ours and unwanted.
		if old, err := r.h.LinkByName(r.deviceName); err == nil && old.Type() == "vxlan" {
			if err := r.h.LinkDel(old); err != nil {
				errs = append(errs, opErr(KindDevice, r.deviceName, "delete (renamed)", err))
			} else {
				res.Device.Deleted++
			}
		}
	}
	r.deviceName, r.nameFromPlan = w.Name, true
	r.wmu.Lock()
	r.watch.want.deviceName = w.Name
	wd := w
	r.watch.want.device = &wd
	r.watch.reindex()
	r.wmu.Unlock()

	idx, err := r.ensureDevice(w, res)
	if err != nil {
		errs = append(errs, err)
	}
	if idx != 0 {
		r.wmu.Lock()
		r.watch.devIndex = idx
		r.wmu.Unlock()
		if err := r.ensureAddress(idx, w, res); err != nil {
			errs = append(errs, err)
		}
	}
	return idx, errors.Join(errs...)
}

// ensureDevice creates, fixes or recreates the device; it returns the
// ifindex, or 0 when the device could not be made.
func (r *Reconciler) ensureDevice(w plan.Device, res *Result) (int, error) {
	parentIdx := 0
	if w.Parent != "" {
		p, err := r.h.LinkByName(w.Parent)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return 0, opErr(KindDevice, w.Name, "check", fmt.Errorf("%w: %q (the host interface carrying %v must exist before the device)", ErrParentNotFound, w.Parent, w.LocalIP))
			}
			return 0, opErr(KindDevice, w.Name, "get parent", err)
		}
		parentIdx = p.Attrs().Index
	}

	l, err := r.h.LinkByName(w.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return 0, opErr(KindDevice, w.Name, "get", err)
		}
		l = nil
	}
	if l != nil && l.Type() != "vxlan" {
		return 0, opErr(KindDevice, w.Name, "check", fmt.Errorf("%w: it is a %s link; delete it or configure another VXLAN device name", ErrForeignLink, l.Type()))
	}
	if l != nil {
		got := vxlanState(l)
		recreate, fix := drift(w, parentIdx, got)
		if len(recreate) > 0 {
			r.log.Info("recreating VXLAN device: settings drifted", "device", w.Name, "drift", recreate)
			if err := r.h.LinkDel(l); err != nil {
				return 0, opErr(KindDevice, w.Name, "delete (drifted)", err)
			}
			res.Device.Deleted++
			l = nil
		} else if len(fix) > 0 {
			var errs []error
			fixed := 0
			for _, f := range fix {
				var err error
				switch f {
				case "mtu":
					err = r.h.LinkSetMTU(l, w.MTU)
				case "mac":
					hw, _ := net.ParseMAC(w.MAC) // checked by wantDevice
					err = r.h.LinkSetHardwareAddr(l, hw)
				case "down":
					err = r.h.LinkSetUp(l)
				}
				if err != nil {
					errs = append(errs, opErr(KindDevice, w.Name, "fix "+f, err))
					continue
				}
				fixed++
			}
			if fixed > 0 {
				r.log.Debug("device fixed in place", "device", w.Name, "drift", fix)
				res.Device.Updated++
			}
			return got.Index, errors.Join(errs...)
		} else {
			return got.Index, nil
		}
	}

	v := &netlink.Vxlan{
		LinkAttrs:    netlink.NewLinkAttrs(),
		VxlanId:      w.VNI,
		VtepDevIndex: parentIdx,
		Port:         w.Port,
		Learning:     false,
	}
	v.Name = w.Name
	v.MTU = w.MTU
	v.Flags = net.FlagUp
	if w.MAC != "" {
		v.HardwareAddr, _ = net.ParseMAC(w.MAC)
	}
	if w.LocalIP.IsValid() {
		v.SrcAddr = net.IP(w.LocalIP.AsSlice())
	}
	if err := r.h.LinkAdd(v); err != nil {
		return 0, opErr(KindDevice, w.Name, "create", err)
	}
	res.Device.Added++
	r.log.Debug("device created", "device", w.Name, "vni", w.VNI, "port", w.Port, "parent", w.Parent)
	nl, err := r.h.LinkByName(w.Name)
	if err != nil {
		return 0, opErr(KindDevice, w.Name, "get after create", err)
	}
	if nl.Attrs().Flags&net.FlagUp == 0 {
		if err := r.h.LinkSetUp(nl); err != nil {
			return nl.Attrs().Index, opErr(KindDevice, w.Name, "set up", err)
		}
	}
	return nl.Attrs().Index, nil
}

// ensureAddress leaves exactly w.Address as the device's IPv4 address.
func (r *Reconciler) ensureAddress(idx int, w plan.Device, res *Result) error {
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: idx, Name: w.Name}}
	addrs, err := dump(func() ([]netlink.Addr, error) { return r.h.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return opErr(KindAddress, w.Name, "list", err)
	}
	var errs []error
	have := false
	for _, a := range addrs {
		p := prefixOf(a.IPNet)
		if p == w.Address {
			have = true
			continue
		}
		if err := r.h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, opErr(KindAddress, p.String(), "delete", err))
			continue
		}
		r.log.Debug("address deleted", "device", w.Name, "address", p)
		res.Addresses.Deleted++
	}
	if !have && w.Address.IsValid() {
		a := &netlink.Addr{IPNet: ipNet(w.Address)}
		switch err := r.h.AddrAdd(link, a); {
		case errors.Is(err, unix.EEXIST): // added meanwhile
		case err != nil:
			errs = append(errs, opErr(KindAddress, w.Address.String(), "add", err))
		default:
			r.log.Debug("address added", "device", w.Name, "address", w.Address)
			res.Addresses.Added++
		}
	}
	return errors.Join(errs...)
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addrOf(n.IP), ones)
}

func ipNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}

// applyNeighbors reconciles permanent ARP entries on the device.
// With devIdx 0 nothing is written; reportMissing says whether wanted
// entries then make an ErrNoDevice error.
func (r *Reconciler) applyNeighbors(devIdx int, reportMissing bool, ns []plan.Neighbor, res *Result) []error {
	wantN, errs := wantNeighbors(r.deviceName, ns)
	r.wmu.Lock()
	r.watch.want.neighbors = wantN
	r.wmu.Unlock()
	if devIdx == 0 {
		if reportMissing && len(wantN) > 0 {
			errs = append(errs, opErr(KindNeighbor, "*", "check", fmt.Errorf("%w: %d neighbour entries but VXLAN device %q does not exist; plan a device or no entries", ErrNoDevice, len(wantN), r.deviceName)))
		}
		return errs
	}
	have, err := dump(func() ([]netlink.Neigh, error) { return r.h.NeighList(devIdx, netlink.FAMILY_V4) })
	if err != nil {
		return append(errs, opErr(KindNeighbor, r.deviceName, "list", err))
	}
	byIP := make(map[netip.Addr]netlink.Neigh, len(have))
	for _, n := range have {
		if n.LinkIndex == devIdx {
			byIP[addrOf(n.IP)] = n
		}
	}
	for _, ip := range sortedAddrs(wantN) {
		mac := wantN[ip]
		old, exists := byIP[ip]
		if exists && old.State&unix.NUD_PERMANENT != 0 && old.HardwareAddr.String() == mac {
			continue
		}
		hw, _ := net.ParseMAC(mac) // checked by wantNeighbors
		n := &netlink.Neigh{LinkIndex: devIdx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: net.IP(ip.AsSlice()), HardwareAddr: hw}
		if err := r.h.NeighSet(n); err != nil {
			errs = append(errs, opErr(KindNeighbor, ip.String(), "replace", err))
			continue
		}
		if exists {
			res.Neighbors.Updated++
		} else {
			res.Neighbors.Added++
		}
		r.log.Debug("neighbor set", "ip", ip, "mac", mac)
	}
	for ip, n := range byIP {
		if _, ok := wantN[ip]; ok || n.State&unix.NUD_PERMANENT == 0 {
			continue
		}
		if err := r.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, opErr(KindNeighbor, ip.String(), "delete", err))
			continue
		}
		res.Neighbors.Deleted++
		r.log.Debug("neighbor deleted", "ip", ip)
	}
	return errs
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// fdbEntry builds the netlink form of an FDB entry on the device.
func fdbEntry(devIdx int, k fdbKey) *netlink.Neigh {
	hw, _ := net.ParseMAC(k.MAC) // checked by wantFDB
	return &netlink.Neigh{LinkIndex: devIdx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: net.IP(k.Dst.AsSlice()), HardwareAddr: hw}
}

// applyFDB reconciles permanent self FDB entries on the device.
func (r *Reconciler) applyFDB(devIdx int, reportMissing bool, fs []plan.FDB, res *Result) []error {
	wantF, errs := wantFDB(r.deviceName, fs)
	r.wmu.Lock()
	r.watch.want.fdb = wantF
	r.wmu.Unlock()
	if devIdx == 0 {
		if reportMissing && len(wantF) > 0 {
			errs = append(errs, opErr(KindFDB, "*", "check", fmt.Errorf("%w: %d FDB entries but VXLAN device %q does not exist; plan a device or no entries", ErrNoDevice, len(wantF), r.deviceName)))
		}
		return errs
	}
	have, err := dump(func() ([]netlink.Neigh, error) { return r.h.NeighList(devIdx, unix.AF_BRIDGE) })
	if err != nil {
		return append(errs, opErr(KindFDB, r.deviceName, "list", err))
	}
	byKey := make(map[fdbKey]netlink.Neigh, len(have))
	for _, n := range have {
		if n.LinkIndex != devIdx || n.Flags&netlink.NTF_SELF == 0 || len(n.IP) == 0 {
			continue
		}
		byKey[fdbKey{MAC: n.HardwareAddr.String(), Dst: addrOf(n.IP)}] = n
	}
	keys := make([]fdbKey, 0, len(wantF))
	for k := range wantF {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].MAC != keys[j].MAC {
			return keys[i].MAC < keys[j].MAC
		}
		return keys[i].Dst.Less(keys[j].Dst)
	})
	// Prune first: a unicast MAC holds one destination only, so appending
	// a peer's new address is a silent no-op while the old one is there,
	// and deleting the old one afterwards would drop the entry entirely.
	for k, n := range byKey {
		if wantF[k] || n.State&unix.NUD_PERMANENT == 0 {
			continue
		}
		if err := r.h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, opErr(KindFDB, k.MAC+"→"+k.Dst.String(), "delete", err))
			continue
		}
		res.FDB.Deleted++
		r.log.Debug("fdb deleted", "mac", k.MAC, "dst", k.Dst)
	}
	for _, k := range keys {
		old, exists := byKey[k]
		if exists && old.State&unix.NUD_PERMANENT != 0 {
			continue
		}
		e := fdbEntry(devIdx, k)
		var err error
		if exists {
			err = r.h.NeighSet(e) // same MAC and destination: fix the state
		} else {
			err = r.h.NeighAppend(e) // like `bridge fdb append ... self permanent`
		}
		if err != nil {
			errs = append(errs, opErr(KindFDB, k.MAC+"→"+k.Dst.String(), "add", err))
			continue
		}
		if exists {
			res.FDB.Updated++
		} else {
			res.FDB.Added++
		}
		r.log.Debug("fdb set", "mac", k.MAC, "dst", k.Dst)
	}
	return errs
}

// ownedRoute is a kernel route with protocol plan.RouteProtocol.
type ownedRoute struct {
	k  kroute
	nl netlink.Route
}

// kernelRoute converts a netlink route; names maps ifindex → name.
func kernelRoute(rt netlink.Route, names map[int]string) kroute {
	k := kroute{
		Dst:       prefixOf(rt.Dst),
		Protocol:  int(rt.Protocol),
		Table:     rt.Table,
		Priority:  rt.Priority,
		Tos:       rt.Tos,
		LinkIndex: rt.LinkIndex,
		Gateway:   addrOf(rt.Gw),
		OnLink:    rt.Flags&int(netlink.FLAG_ONLINK) != 0,
	}
	if rt.LinkIndex != 0 {
		k.Device = names[rt.LinkIndex]
	}
	switch {
	case len(rt.MultiPath) > 0 || rt.Encap != nil || rt.Via != nil:
		k.Odd = true
	case rt.Type == unix.RTN_BLACKHOLE:
		k.Type = plan.RouteBlackhole
		k.Odd = rt.Scope != netlink.SCOPE_UNIVERSE || k.Gateway.IsValid() || rt.LinkIndex != 0
	case rt.Type == unix.RTN_UNICAST:
		k.Type = plan.RouteUnicast
		switch rt.Scope {
		case netlink.SCOPE_LINK:
			k.ScopeLink = true
			k.Odd = k.Gateway.IsValid()
		case netlink.SCOPE_UNIVERSE:
			k.Odd = !k.Gateway.IsValid()
		default:
			k.Odd = true
		}
	default:
		k.Odd = true
	}
	return k
}

// kernelRoutes lists the IPv4 main table once and splits it into owned
// routes and the keys held by foreign routes.
func (r *Reconciler) kernelRoutes() ([]ownedRoute, []kroute, map[string]netlink.Link, error) {
	ls, err := dump(r.h.LinkList)
	if err != nil {
		return nil, nil, nil, opErr(KindRoute, "*", "list links", err)
	}
	names := make(map[int]string, len(ls))
	byName := make(map[string]netlink.Link, len(ls))
	for _, l := range ls {
		names[l.Attrs().Index] = l.Attrs().Name
		byName[l.Attrs().Name] = l
	}
	rts, err := dump(func() ([]netlink.Route, error) {
		return r.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, nil, nil, opErr(KindRoute, "*", "list", err)
	}
	var owned []ownedRoute
	var foreign []kroute
	for _, rt := range rts {
		k := kernelRoute(rt, names)
		if k.Table != mainTable {
			continue
		}
		if k.Protocol == plan.RouteProtocol {
			owned = append(owned, ownedRoute{k: k, nl: rt})
		} else {
			foreign = append(foreign, k)
		}
	}
	return owned, foreign, byName, nil
}

// applyRoutes installs wanted routes and, with prune, deletes the owned
// routes not wanted.
func (r *Reconciler) applyRoutes(wantR []wantedRoute, prune bool, res *Result) []error {
	owned, foreign, byName, err := r.kernelRoutes()
	if err != nil {
		return []error{err}
	}
	var errs []error
	foreignKeys := make(map[netip.Prefix][]kroute)
	for _, f := range foreign {
		foreignKeys[f.Dst] = append(foreignKeys[f.Dst], f)
	}
	ownedByDst := make(map[netip.Prefix][]int)
	for i, o := range owned {
		ownedByDst[o.k.Dst] = append(ownedByDst[o.k.Dst], i)
	}
	keep := make([]bool, len(owned))

	for _, wr := range wantR {
		w := wr.k
		matched, overwritten := false, false
		for _, i := range ownedByDst[w.Dst] {
			switch {
			case w.same(owned[i].k):
				keep[i], matched = true, true
			case w.sameKey(owned[i].k):
				keep[i], overwritten = true, true // the replace below overwrites it
			}
		}
		if matched {
			continue
		}
		conflict := false
		for _, f := range foreignKeys[w.Dst] {
			if w.sameKey(f) {
				conflict = true
			}
		}
		if conflict {
			res.Conflicts = append(res.Conflicts, wr.p)
			r.log.Warn("route destination held by a route Twill does not own; leaving it", "route", w.String())
			continue
		}
		nl := netlink.Route{
			Dst:      ipNet(w.Dst),
			Table:    unix.RT_TABLE_MAIN,
			Protocol: netlink.RouteProtocol(plan.RouteProtocol),
			Family:   netlink.FAMILY_V4,
			Type:     unix.RTN_UNICAST,
			Scope:    netlink.SCOPE_UNIVERSE,
		}
		switch {
		case w.Type == plan.RouteBlackhole:
			nl.Type = unix.RTN_BLACKHOLE
		default:
			l, ok := byName[w.Device]
			if !ok || (w.Device == r.deviceName && l.Type() != "vxlan") {
				// No such link yet, or a foreign link holds the VXLAN
				// device's name (reported by the device step).
				res.Pending = append(res.Pending, wr.p)
				continue
			}
			nl.LinkIndex = l.Attrs().Index
			if w.ScopeLink {
				nl.Scope = netlink.SCOPE_LINK
			} else {
				nl.Gw = net.IP(w.Gateway.AsSlice())
				if w.OnLink {
					nl.Flags = int(netlink.FLAG_ONLINK)
				}
			}
		}
		if err := r.h.RouteReplace(&nl); err != nil {
			if errors.Is(err, unix.ENETDOWN) || errors.Is(err, unix.ENODEV) {
				res.Pending = append(res.Pending, wr.p)
				continue
			}
			errs = append(errs, opErr(KindRoute, w.String(), "replace", err))
			continue
		}
		if overwritten {
			res.Routes.Updated++
		} else {
			res.Routes.Added++
		}
		r.log.Debug("route set", "route", w.String())
	}
	if !prune {
		return errs
	}
	for i, o := range owned {
		if keep[i] {
			continue
		}
		if err := r.h.RouteDel(&o.nl); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, opErr(KindRoute, o.k.String(), "delete", err))
			continue
		}
		res.Routes.Deleted++
		r.log.Debug("route deleted: no longer wanted", "route", o.k.String())
	}
	return errs
}

// Observe reads back what the kernel holds for Twill: the device and its
// IPv4 addresses, the owned routes, and the permanent neighbour and FDB
// entries on the device.
func (r *Reconciler) Observe() (Observed, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := r.deviceName
	h := r.h
	if h == nil {
		return Observed{}, errClosed
	}
	var obs Observed
	ls, err := dump(h.LinkList)
	if err != nil {
		return obs, opErr(KindDevice, "*", "list links", err)
	}
	names := make(map[int]string, len(ls))
	var dev netlink.Link
	for _, l := range ls {
		names[l.Attrs().Index] = l.Attrs().Name
		if l.Attrs().Name == name {
			dev = l
		}
	}
	var errs []error
	if dev != nil {
		s := vxlanState(dev)
		od := &ObservedDevice{Type: s.Type, Index: s.Index, Up: s.Up, Learning: s.Learning}
		od.Name, od.MTU, od.MAC = s.Name, s.MTU, s.MAC
		if s.Type == "vxlan" {
			od.VNI, od.Port, od.LocalIP = s.VNI, s.Port, s.Local
			od.Parent = names[s.ParentIndex]
		}
		addrs, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(dev, netlink.FAMILY_V4) })
		if err != nil {
			errs = append(errs, opErr(KindAddress, name, "list", err))
		}
		for _, a := range addrs {
			od.Addresses = append(od.Addresses, prefixOf(a.IPNet))
		}
		if len(od.Addresses) > 0 {
			od.Address = od.Addresses[0]
		}
		obs.Device = od

		if s.Type == "vxlan" {
			ns, err := dump(func() ([]netlink.Neigh, error) { return h.NeighList(s.Index, netlink.FAMILY_V4) })
			if err != nil {
				errs = append(errs, opErr(KindNeighbor, name, "list", err))
			}
			for _, n := range ns {
				if n.LinkIndex == s.Index && n.State&unix.NUD_PERMANENT != 0 {
					obs.Neighbors = append(obs.Neighbors, plan.Neighbor{Device: name, IP: addrOf(n.IP), MAC: n.HardwareAddr.String()})
				}
			}
			sort.Slice(obs.Neighbors, func(i, j int) bool { return obs.Neighbors[i].IP.Less(obs.Neighbors[j].IP) })
			fs, err := dump(func() ([]netlink.Neigh, error) { return h.NeighList(s.Index, unix.AF_BRIDGE) })
			if err != nil {
				errs = append(errs, opErr(KindFDB, name, "list", err))
			}
			for _, n := range fs {
				if n.LinkIndex == s.Index && n.State&unix.NUD_PERMANENT != 0 && n.Flags&netlink.NTF_SELF != 0 && len(n.IP) > 0 {
					obs.FDB = append(obs.FDB, plan.FDB{Device: name, MAC: n.HardwareAddr.String(), Dst: addrOf(n.IP)})
				}
			}
			sort.Slice(obs.FDB, func(i, j int) bool {
				if obs.FDB[i].MAC != obs.FDB[j].MAC {
					return obs.FDB[i].MAC < obs.FDB[j].MAC
				}
				return obs.FDB[i].Dst.Less(obs.FDB[j].Dst)
			})
		}
	}
	rts, err := dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: netlink.RouteProtocol(plan.RouteProtocol)},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		errs = append(errs, opErr(KindRoute, "*", "list", err))
	}
	for _, rt := range rts {
		k := kernelRoute(rt, names)
		if k.Odd || k.Priority != 0 || k.Tos != 0 {
			obs.Odd = append(obs.Odd, k.String())
			continue
		}
		obs.Routes = append(obs.Routes, k.planRoute())
	}
	sortRoutes(obs.Routes)
	sort.Strings(obs.Odd)
	return obs, errors.Join(errs...)
}
