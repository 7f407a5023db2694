// Package dataplane makes a network namespace's kernel state match a
// plan.Dataplane: the VXLAN device and its address, the permanent neighbour
// (ARP) and FDB entries on that device, and the routes in the main table.
//
// # Ownership
//
// Twill only ever touches what it owns, and ownership is marked in the kernel
// itself so that it survives restarts:
//
//   - the VXLAN device is the vxlan-type link with the configured name
//     (plan.Device.Name; the name of the last non-nil plan is remembered,
//     default plan.DefaultVXLANDevice). A link of another type with that name
//     is reported as ErrForeignLink and left alone;
//   - addresses: only IPv4 addresses on that device;
//   - neighbours and FDB entries: only permanent entries on that device
//     (FDB entries carrying NTF_SELF and a destination); entries on any other
//     link are never read for pruning, let alone changed;
//   - routes: only IPv4 routes in the main table whose protocol is
//     plan.RouteProtocol (80). A route with another protocol is never changed,
//     even when it holds a destination Twill wants: that destination is then
//     reported in Result.Conflicts.
//
// # Update, delete, prune
//
// Reconciler.Apply is a full reconcile, in this order: host firewall (see
// below; skipped when the plan's Firewall is the zero value), device, device
// address, neighbours, FDB, routes. For each kind it updates (adds or
// replaces) what is missing or different, and prunes what Twill owns and the
// plan no longer wants. Applying the same plan twice changes nothing the
// second time. A failure on one object does not stop the others: Apply keeps
// going and returns every failure joined (errors.Join), each an *OpError.
// A route whose device does not exist yet, or is down (a pod's veth before
// the CNI plugin brings it up), is skipped without error and listed in
// Result.Pending. The per-kind methods (ApplyFirewall, ApplyDevice,
// ApplyNeighbors, ApplyFDB, ApplyRoutes, UpdateRoutes, DeleteRoutes) do the
// same for one kind, for incremental work.
//
// Device drift is fixed in place when the kernel allows it (MTU, MAC,
// administrative state) and by deleting and recreating the device otherwise
// (VNI, port, local address, parent, learning, a group or flow-based mode).
//
// # Healing
//
// Reconciler.Subscribe listens to the namespace's route, link, address and
// neighbour events and sends a coalesced "look again" signal when an event
// moves the kernel away from the last applied plan: an owned route deleted or
// changed, a foreign route taking a wanted destination, any drift of the
// VXLAN device, its address changed, a wanted neighbour or FDB entry deleted
// or changed, a stray permanent one added, or a link that a wanted route
// names appearing, disappearing or changing state. Events that move the
// kernel towards the plan (Twill's own writes) are ignored, so applying does
// not wake the loop again; extra wake-ups are harmless, missed ones are not.
// (Creating the device costs one extra wake-up: the kernel announces it
// before it is up, and that event cannot be told from a device set down.)
// When a subscription dies it signals and resubscribes with bounded backoff.
// The agent calls Apply on each signal: healing is simply event → Apply.
//
// Reconciler.Observe reads back what the kernel holds for Twill, as plan-like
// values, and Reconciler.ObserveFirewall the firewall table, for
// `twill routes --live` and for tests.
//
// # Host firewall
//
// Reconciler.ApplyFirewall makes the namespace's table "inet twill" match a
// plan.Firewall. Twill never reads for pruning, let alone changes, any other
// table; inside its own table everything is Twill's, and anything it did not
// create there (another chain, set or object) makes it rebuild the table.
//
//	table inet twill {
//		counter vxlan-dropped {}
//		set nat-pools   { type ipv4_addr; flags interval; }  # plan NATPools
//		set all-pools   { type ipv4_addr; flags interval; }  # plan AllPools ∪ NATPools
//		set vxlan-peers { type ipv4_addr; }                  # plan VXLANPeers
//		chain prerouting {
//			type filter hook prerouting priority raw; policy accept;
//			udp dport 4789 ip daddr 192.168.3.241 ip saddr @vxlan-peers notrack accept comment "twill:vxlan-notrack-in"
//			udp dport 4789 ip saddr != @vxlan-peers fib daddr type != unicast counter name "vxlan-dropped" drop comment "twill:vxlan-allow"
//		}
//		chain output {
//			type filter hook output priority raw; policy accept;
//			udp dport 4789 ip saddr 192.168.3.241 ip daddr @vxlan-peers notrack comment "twill:vxlan-notrack-out"
//		}
//		chain postrouting {  # only while some pool has natOutgoing
//			type nat hook postrouting priority srcnat; policy accept;
//			meta l4proto udp ip saddr @nat-pools ip daddr != @all-pools masquerade to :4790-65535 random,fully-random comment "twill:masq-udp"
//			ip saddr @nat-pools ip daddr != @all-pools masquerade random,fully-random comment "twill:masq"
//		}
//	}
//
// Traffic from a natOutgoing pool to anywhere outside all pools is
// masqueraded with fully random ports; traffic between pools keeps its
// source. Masquerade must never pick the VXLAN port as a source port: a
// reply to it would reach the host's VXLAN socket (or, once conntrack has
// forgotten the flow, the allow-list's drop rule) instead of the pod. One
// port cannot be cut out of a masquerade range, so UDP, the only protocol
// concerned, is masqueraded into the larger side of the port space around
// the VXLAN port (4790-65535 for 4789; see masqPorts) and everything else
// into the kernel's default range. VXLAN from an address that is not a
// known node is dropped and counted, whichever interface and local address
// (broadcast and multicast included) it arrives on.
//
// The nat chain turns on connection tracking, and NAT's hooks, for every
// packet of the namespace, so it exists only while some pool needs it.
// With a VXLAN device (Apply with a plan.Device; the 192.168.3.241 above is
// its local address) the VXLAN packets between this node's VTEP address and
// a peer's are left untracked in both directions: on the receiving side
// each of them is MTU-sized, and tracking them was most of the firewall's
// cost on the VXLAN path. The allow-list sits in the same raw-priority
// chain, so a peer's packet meets one Twill chain on its way in. The
// tunnelled traffic itself stays tracked (encapsulation and decapsulation
// give it conntrack state of its own), and so does all pod traffic:
// kube-proxy's Services need it (see fwRules). ApplyFirewall keeps the
// local address of the last Apply. Other firewalls on the host must accept
// VXLAN by port and address, not as an established connection.
//
// google/nftables v0.3.0 cannot write that UDP rule: with a port range,
// expr.Masq sends no flags at all, not even NF_NAT_RANGE_PROTO_SPECIFIED,
// without which the kernel ignores the range. The rule is therefore written
// by a raw netlink batch. Where the library writes the table (created,
// rebuilt, or the chain refilled) it first writes a placeholder that drops
// the traffic the rule would masquerade, then the rule replaces it in place
// right after: for that moment new UDP flows from NAT pools lose their first
// packet rather than take the VXLAN port or leave unmasqueraded. Should the
// replacement keep failing, they stay dropped and every apply reports it.
// When natOutgoing is turned on, the nat chain is created while nat-pools is
// still empty and the pools are added once the rule is replaced, so turning
// it on drops nothing.
//
// # Host firewall updates
//
// Set elements are added and removed one by one, never flushed and
// refilled; pool CIDRs are merged into disjoint intervals first, since an
// interval set rejects overlaps. A chain whose rules differ from the wanted
// ones is flushed and refilled in one transaction, and a chain no longer
// wanted (the nat chain) is deleted. A table that cannot be
// fixed in place (a set or chain of the wrong type, a stray object, or an
// in-place update the kernel refused) is deleted and created again in one
// transaction, keeping the drop counter's values. Every change is one atomic
// nftables transaction, so packets never see a half-written table.
//
// # Host firewall and empty lists
//
// A plan.Firewall without Complete (the zero value, or a plan made without
// the local node) never empties a set that has elements: an empty list keeps
// the last applied one (after a restart, what the kernel holds). A datastore
// hiccup that momentarily lists no nodes therefore cannot cut real peers
// off, while a pool change arriving at the same time still applies. Apply
// leaves the firewall alone entirely when the plan's Firewall is the zero
// value.
//
// # Host firewall healing
//
// Subscribe also listens to nftables events (a google/nftables Monitor) and,
// when one touches the table (or is a set element event, which does not name
// its table), reads the table back and signals only if it no longer matches
// the last applied firewall; Twill's own writes therefore do not signal.
// When the monitor cannot be opened or dies, Subscribe logs it, signals,
// and retries with the same backoff as the netlink subscriptions; in the
// meantime only the agent's periodic resync repairs the table.
//
// The types and the decision logic live in this file and firewall.go and
// build everywhere; the netlink and nftables calls live in the _linux.go files.
package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"

	"twill.dev/twill/plan"
)

// Options configure a Reconciler.
type Options struct {
	// NetnsPath is the network namespace to manage, e.g. /var/run/netns/node1
	// or /proc/1234/ns/net; "" means the calling thread's namespace.
	NetnsPath string
	// Logger receives one line per change at debug level and a summary per
	// reconcile; nil means slog.Default().
	Logger *slog.Logger
}

// Kind names a kind of kernel object the Reconciler manages.
type Kind string

// The kinds of kernel object.
const (
	KindDevice   Kind = "device"
	KindAddress  Kind = "address"
	KindNeighbor Kind = "neighbor"
	KindFDB      Kind = "fdb"
	KindRoute    Kind = "route"
)

// Counts are the changes made to one kind of object.
type Counts struct {
	Added   int
	Updated int
	Deleted int
}

// Total is the number of changes.
func (c Counts) Total() int { return c.Added + c.Updated + c.Deleted }

func (c *Counts) add(o Counts) {
	c.Added += o.Added
	c.Updated += o.Updated
	c.Deleted += o.Deleted
}

// Result says what a reconcile changed. A device recreated because of drift
// counts as one deletion and one addition.
type Result struct {
	Device    Counts
	Addresses Counts
	Neighbors Counts
	FDB       Counts
	Routes    Counts
	// Firewall counts nftables objects in the twill table: the table, sets,
	// elements, chains, rules and the counter. A chain refilled counts its
	// old rules deleted and new ones added, a rule replaced in place one
	// update, a table rebuilt one deletion and everything created.
	Firewall Counts
	// Pending are wanted routes skipped because their device does not exist
	// or is down; a link event for that device triggers a new look.
	Pending []plan.Route
	// Conflicts are wanted routes whose destination is held by a route with
	// another protocol, which Twill never changes.
	Conflicts []plan.Route
}

// Changes is the number of kernel objects the reconcile changed.
func (r Result) Changes() int {
	return r.Device.Total() + r.Addresses.Total() + r.Neighbors.Total() + r.FDB.Total() + r.Routes.Total() + r.Firewall.Total()
}

func (r *Result) merge(o Result) {
	r.Device.add(o.Device)
	r.Addresses.add(o.Addresses)
	r.Neighbors.add(o.Neighbors)
	r.FDB.add(o.FDB)
	r.Routes.add(o.Routes)
	r.Firewall.add(o.Firewall)
	r.Pending = append(r.Pending, o.Pending...)
	r.Conflicts = append(r.Conflicts, o.Conflicts...)
}

// Errors matched with errors.Is; each comes wrapped in an *OpError.
var (
	// ErrInvalid: the plan holds an object the kernel cannot take; fix the planner.
	ErrInvalid = errors.New("invalid dataplane object")
	// ErrForeignLink: a link of another type holds the VXLAN device's name;
	// delete it or configure another device name.
	ErrForeignLink = errors.New("link with the VXLAN device's name is not a VXLAN device")
	// ErrParentNotFound: the device's parent interface does not exist.
	ErrParentNotFound = errors.New("parent interface not found")
	// ErrNoDevice: neighbour or FDB entries were given but there is no VXLAN device.
	ErrNoDevice = errors.New("no VXLAN device")
)

// OpError describes one failed operation on one kernel object.
type OpError struct {
	Kind Kind
	// Object identifies the object, e.g. "172.16.36.64/26" or "vxlan.calico".
	Object string
	// Op is what was attempted: "create", "replace", "delete", "list", ...
	Op  string
	Err error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("%s %s: %s: %v", e.Kind, e.Object, e.Op, e.Err)
}

// Unwrap returns the underlying error.
func (e *OpError) Unwrap() error { return e.Err }

func opErr(kind Kind, object, op string, err error) error {
	return &OpError{Kind: kind, Object: object, Op: op, Err: err}
}

// ObservedDevice is the link holding the VXLAN device's name, as the kernel
// has it. For a vxlan link the embedded plan.Device is filled in (Parent is
// the name of the parent link, Address the first IPv4 address); for a link
// of another type only Name, MTU and MAC are.
type ObservedDevice struct {
	plan.Device
	Type     string
	Index    int
	Up       bool
	Learning bool
	// Addresses are all IPv4 addresses on the device.
	Addresses []netip.Prefix
}

// Observed is what the kernel holds for Twill, as plan-like values.
type Observed struct {
	// Device is nil when no link has the device's name.
	Device *ObservedDevice
	// Routes are the IPv4 main-table routes with protocol plan.RouteProtocol,
	// sorted by destination; Kind and Peer are empty.
	Routes []plan.Route
	// Odd describes owned routes no plan.Route can express (another type, a
	// metric, a TOS, multipath), in `ip route` style; Apply deletes them.
	Odd []string
	// Neighbors are the permanent IPv4 neighbour entries on the device.
	Neighbors []plan.Neighbor
	// FDB are the permanent self FDB entries with a destination on the device.
	FDB []plan.FDB
}

// mainTable is the kernel's main routing table (RT_TABLE_MAIN).
const mainTable = 254

// maxVNI is the largest 24-bit VXLAN network identifier.
const maxVNI = 1<<24 - 1

// ifNameMax is the longest interface name the kernel accepts (IFNAMSIZ-1).
const ifNameMax = 15

// kroute is a route reduced to what Twill compares. Wanted routes and
// kernel routes both take this form.
type kroute struct {
	Dst       netip.Prefix
	Type      plan.RouteType
	Gateway   netip.Addr
	Device    string // "" for blackholes
	OnLink    bool
	ScopeLink bool
	Protocol  int
	Table     int
	Priority  int
	Tos       int
	// Odd marks a kernel route plan.Route cannot express (another route
	// type, multipath, another scope); it never equals a wanted route.
	Odd bool
	// LinkIndex is the kernel's output interface; not compared.
	LinkIndex int
}

// same reports whether the kernel route k is exactly the wanted route w.
func (w kroute) same(k kroute) bool {
	return !w.Odd && !k.Odd &&
		w.Dst == k.Dst && w.Type == k.Type && w.Gateway == k.Gateway &&
		w.Device == k.Device && w.OnLink == k.OnLink && w.ScopeLink == k.ScopeLink &&
		w.Protocol == k.Protocol && w.Table == k.Table && w.Priority == k.Priority && w.Tos == k.Tos
}

// sameKey reports whether installing w with a replace would overwrite k:
// the kernel identifies an IPv4 route by table, destination, TOS and metric.
func (w kroute) sameKey(k kroute) bool {
	return w.Table == k.Table && w.Dst == k.Dst && w.Tos == k.Tos && w.Priority == k.Priority
}

func (k kroute) String() string {
	var b strings.Builder
	switch {
	case k.Odd:
		b.WriteString("odd ")
	case k.Type == plan.RouteBlackhole:
		b.WriteString("blackhole ")
	}
	b.WriteString(k.Dst.String())
	if k.Gateway.IsValid() {
		fmt.Fprintf(&b, " via %s", k.Gateway)
	}
	if k.Device != "" {
		fmt.Fprintf(&b, " dev %s", k.Device)
	} else if k.LinkIndex != 0 {
		fmt.Fprintf(&b, " dev if%d", k.LinkIndex)
	}
	fmt.Fprintf(&b, " proto %d", k.Protocol)
	if k.ScopeLink {
		b.WriteString(" scope link")
	}
	if k.Priority != 0 {
		fmt.Fprintf(&b, " metric %d", k.Priority)
	}
	if k.Tos != 0 {
		fmt.Fprintf(&b, " tos %d", k.Tos)
	}
	if k.OnLink {
		b.WriteString(" onlink")
	}
	return b.String()
}

// planRoute turns a kernel route back into a plan.Route.
func (k kroute) planRoute() plan.Route {
	return plan.Route{Dst: k.Dst, Type: k.Type, Gateway: k.Gateway, Device: k.Device, OnLink: k.OnLink, ScopeLink: k.ScopeLink}
}

// wantRoute checks a planned route and reduces it to the kernel form:
// unicast without a gateway is a scope-link route.
func wantRoute(r plan.Route) (kroute, error) {
	bad := func(format string, a ...any) (kroute, error) {
		return kroute{}, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
	}
	if !r.Dst.IsValid() || !r.Dst.Addr().Is4() {
		return bad("destination %v is not an IPv4 prefix; Twill programs IPv4 routes only", r.Dst)
	}
	if r.Dst != r.Dst.Masked() {
		return bad("destination %s has host bits set; use %s", r.Dst, r.Dst.Masked())
	}
	k := kroute{Dst: r.Dst, Type: r.Type, Protocol: plan.RouteProtocol, Table: mainTable}
	switch r.Type {
	case plan.RouteBlackhole:
		if r.Gateway.IsValid() || r.Device != "" || r.OnLink || r.ScopeLink {
			return bad("blackhole route %s must have no gateway, device, onlink or scope", r.Dst)
		}
	case plan.RouteUnicast:
		if r.Device == "" {
			return bad("route %s has no device", r.Dst)
		}
		if len(r.Device) > ifNameMax {
			return bad("route %s: device name %q is longer than %d bytes", r.Dst, r.Device, ifNameMax)
		}
		k.Device = r.Device
		if r.Gateway.IsValid() {
			if r.ScopeLink {
				return bad("route %s: a scope-link route cannot have a gateway", r.Dst)
			}
			if !r.Gateway.Is4() {
				return bad("route %s: gateway %s is not IPv4", r.Dst, r.Gateway)
			}
			k.Gateway = r.Gateway
			k.OnLink = r.OnLink
		} else {
			if r.OnLink {
				return bad("route %s: onlink needs a gateway", r.Dst)
			}
			k.ScopeLink = true
		}
	default:
		return bad("route %s has unknown type %d", r.Dst, r.Type)
	}
	return k, nil
}

// wantDevice checks a planned device and fills in defaults: empty name →
// plan.DefaultVXLANDevice, zero VNI → plan.DefaultVNI, zero port →
// plan.DefaultVXLANPort. A zero MTU or empty MAC leaves that attribute to
// the kernel; a zero address means no IPv4 address on the device.
func wantDevice(d plan.Device) (plan.Device, error) {
	bad := func(format string, a ...any) (plan.Device, error) {
		return plan.Device{}, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
	}
	if d.Name == "" {
		d.Name = plan.DefaultVXLANDevice
	}
	if len(d.Name) > ifNameMax || strings.ContainsAny(d.Name, "/ \t\n") {
		return bad("device name %q must be at most %d bytes without '/' or spaces", d.Name, ifNameMax)
	}
	if d.VNI == 0 {
		d.VNI = plan.DefaultVNI
	}
	if d.VNI < 0 || d.VNI > maxVNI {
		return bad("device %s: VNI %d is outside 1-%d", d.Name, d.VNI, maxVNI)
	}
	if d.Port == 0 {
		d.Port = plan.DefaultVXLANPort
	}
	if d.Port < 0 || d.Port > 65535 {
		return bad("device %s: port %d is outside 1-65535", d.Name, d.Port)
	}
	if d.MTU < 0 || d.MTU > 65535 {
		return bad("device %s: MTU %d is outside 68-65535", d.Name, d.MTU)
	}
	if d.MTU != 0 && d.MTU < 68 {
		return bad("device %s: MTU %d is below the IPv4 minimum 68", d.Name, d.MTU)
	}
	if len(d.Parent) > ifNameMax {
		return bad("device %s: parent name %q is longer than %d bytes", d.Name, d.Parent, ifNameMax)
	}
	if d.LocalIP.IsValid() && !d.LocalIP.Is4() {
		return bad("device %s: local address %s is not IPv4", d.Name, d.LocalIP)
	}
	if d.MAC != "" {
		mac, err := canonMAC(d.MAC)
		if err != nil {
			return bad("device %s: %v", d.Name, err)
		}
		d.MAC = mac
	}
	if d.Address.IsValid() && !d.Address.Addr().Is4() {
		return bad("device %s: address %s is not IPv4", d.Name, d.Address)
	}
	return d, nil
}

// canonMAC parses an Ethernet MAC and returns it lower-case, colon-separated.
func canonMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("MAC %q is not a 6-byte Ethernet address like 66:04:84:48:ab:6a", s)
	}
	return hw.String(), nil
}

// devState is the kernel's view of the link holding the device's name.
type devState struct {
	Index       int
	Name        string
	Type        string
	Up          bool
	MTU         int
	MAC         string
	VNI         int
	Port        int
	Local       netip.Addr
	ParentIndex int
	Learning    bool
	// Group is set when the device has a multicast group or remote.
	Group     bool
	FlowBased bool
}

// drift compares a vxlan link with the wanted device. recreate lists the
// differences only deleting the link can fix; fix lists those fixed in place
// ("mtu", "mac", "down"). parentIndex is the wanted parent's ifindex (0 for
// none, -1 when the parent is not known).
func drift(want plan.Device, parentIndex int, got devState) (recreate, fix []string) {
	if got.VNI != want.VNI {
		recreate = append(recreate, fmt.Sprintf("vni %d, want %d", got.VNI, want.VNI))
	}
	if got.Port != want.Port {
		recreate = append(recreate, fmt.Sprintf("port %d, want %d", got.Port, want.Port))
	}
	if got.Local != want.LocalIP {
		recreate = append(recreate, fmt.Sprintf("local %v, want %v", got.Local, want.LocalIP))
	}
	if got.ParentIndex != parentIndex {
		recreate = append(recreate, fmt.Sprintf("parent ifindex %d, want %d (%q)", got.ParentIndex, parentIndex, want.Parent))
	}
	if got.Learning {
		recreate = append(recreate, "learning on, want off")
	}
	if got.Group {
		recreate = append(recreate, "has a group or remote, want none")
	}
	if got.FlowBased {
		recreate = append(recreate, "flow-based, want a fixed VNI")
	}
	if want.MTU != 0 && got.MTU != want.MTU {
		fix = append(fix, "mtu")
	}
	if want.MAC != "" && got.MAC != want.MAC {
		fix = append(fix, "mac")
	}
	if !got.Up {
		fix = append(fix, "down")
	}
	return recreate, fix
}

// fdbKey identifies one FDB destination: a MAC may have several.
type fdbKey struct {
	MAC string
	Dst netip.Addr
}

// wantNeighbors checks planned neighbours against the device name and
// returns IP → MAC, plus one error per entry it had to drop.
func wantNeighbors(dev string, ns []plan.Neighbor) (map[netip.Addr]string, []error) {
	out := make(map[netip.Addr]string, len(ns))
	var errs []error
	for _, n := range ns {
		obj := n.IP.String()
		fail := func(format string, a ...any) {
			errs = append(errs, opErr(KindNeighbor, obj, "check", fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)))
		}
		if n.Device != "" && n.Device != dev {
			fail("entry names device %q but the VXLAN device is %q; Twill manages neighbours on its device only", n.Device, dev)
			continue
		}
		if !n.IP.Is4() {
			fail("%v is not an IPv4 address", n.IP)
			continue
		}
		mac, err := canonMAC(n.MAC)
		if err != nil {
			fail("%v", err)
			continue
		}
		if old, dup := out[n.IP]; dup && old != mac {
			fail("listed twice, with MACs %s and %s", old, mac)
			continue
		}
		out[n.IP] = mac
	}
	return out, errs
}

// wantFDB checks planned FDB entries against the device name.
func wantFDB(dev string, fs []plan.FDB) (map[fdbKey]bool, []error) {
	out := make(map[fdbKey]bool, len(fs))
	var errs []error
	for _, f := range fs {
		obj := f.MAC + "→" + f.Dst.String()
		fail := func(format string, a ...any) {
			errs = append(errs, opErr(KindFDB, obj, "check", fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)))
		}
		if f.Device != "" && f.Device != dev {
			fail("entry names device %q but the VXLAN device is %q; Twill manages FDB entries on its device only", f.Device, dev)
			continue
		}
		mac, err := canonMAC(f.MAC)
		if err != nil {
			fail("%v", err)
			continue
		}
		if !f.Dst.Is4() {
			fail("destination %v is not an IPv4 address", f.Dst)
			continue
		}
		out[fdbKey{MAC: mac, Dst: f.Dst}] = true
	}
	return out, errs
}

// want is the desired state Subscribe compares events with: the last
// applied plan, checked and indexed.
type want struct {
	deviceName string
	// device is nil when no device is wanted.
	device    *plan.Device
	routes    map[netip.Prefix]kroute
	neighbors map[netip.Addr]string
	fdb       map[fdbKey]bool
}

// watchState is what the event filter knows: the wanted state and the links
// it has seen. Its methods are called with mu held by the caller.
type watchState struct {
	want want
	// routeDevs are the link names wanted routes use, plus the parent.
	routeDevs map[string]bool
	// names maps ifindex → name for every link seen.
	names map[int]string
	// up maps ifindex → administratively up, for links seen.
	up map[int]bool
	// devIndex is the ifindex of the VXLAN device, 0 if none.
	devIndex int
}

func newWatchState() *watchState {
	return &watchState{
		want: want{
			deviceName: plan.DefaultVXLANDevice,
			routes:     map[netip.Prefix]kroute{},
			neighbors:  map[netip.Addr]string{},
			fdb:        map[fdbKey]bool{},
		},
		routeDevs: map[string]bool{},
		names:     map[int]string{},
		up:        map[int]bool{},
	}
}

// reindex recomputes routeDevs after the wanted routes or device changed.
func (s *watchState) reindex() {
	devs := make(map[string]bool)
	for _, r := range s.want.routes {
		if r.Device != "" {
			devs[r.Device] = true
		}
	}
	if s.want.device != nil && s.want.device.Parent != "" {
		devs[s.want.device.Parent] = true
	}
	s.routeDevs = devs
}

// indexOf returns the ifindex of the named link, 0 if name is "", -1 if unknown.
func (s *watchState) indexOf(name string) int {
	if name == "" {
		return 0
	}
	for i, n := range s.names {
		if n == name {
			return i
		}
	}
	return -1
}

// routeEvent is a route added, changed or deleted.
type routeEvent struct {
	Deleted bool
	Route   kroute
}

// onRoute reports whether a route event needs a new look.
func (s *watchState) onRoute(ev routeEvent) bool {
	r := ev.Route
	if r.Table != mainTable || !r.Dst.Addr().Is4() {
		return false
	}
	if r.Device == "" && r.LinkIndex != 0 {
		r.Device = s.names[r.LinkIndex]
		if r.Device == "" && r.LinkIndex == s.devIndex {
			// The device's link event may not have arrived yet.
			r.Device = s.want.deviceName
		}
	}
	w, wanted := s.want.routes[r.Dst]
	if r.Protocol != plan.RouteProtocol {
		// A foreign route on a wanted key overwrote ours, or freed the key.
		return wanted && w.sameKey(r)
	}
	if ev.Deleted {
		return wanted
	}
	return !wanted || !w.same(r)
}

// linkEvent is a link added, changed or deleted.
type linkEvent struct {
	Deleted bool
	State   devState
}

// onLink records the link and reports whether the event needs a new look.
func (s *watchState) onLink(ev linkEvent) bool {
	l := ev.State
	oldName, known := s.names[l.Index]
	oldUp := s.up[l.Index]
	if ev.Deleted {
		delete(s.names, l.Index)
		delete(s.up, l.Index)
	} else {
		s.names[l.Index] = l.Name
		s.up[l.Index] = l.Up
	}

	if l.Name == s.want.deviceName || (s.devIndex != 0 && l.Index == s.devIndex) {
		if ev.Deleted {
			if l.Index == s.devIndex {
				s.devIndex = 0
			}
			return s.want.device != nil
		}
		if l.Name != s.want.deviceName {
			// Our device was renamed away.
			s.devIndex = 0
			return true
		}
		s.devIndex = l.Index
		if s.want.device == nil {
			return l.Type == "vxlan" // Apply deletes it
		}
		if l.Type != "vxlan" {
			return true
		}
		recreate, fix := drift(*s.want.device, s.indexOf(s.want.device.Parent), l)
		return len(recreate)+len(fix) > 0
	}
	if s.routeDevs[l.Name] || (known && s.routeDevs[oldName]) {
		return ev.Deleted || !known || oldName != l.Name || oldUp != l.Up
	}
	return false
}

// addrEvent is an address added or deleted.
type addrEvent struct {
	Deleted   bool
	LinkIndex int
	Prefix    netip.Prefix
}

// onAddr reports whether an address event needs a new look.
func (s *watchState) onAddr(ev addrEvent) bool {
	if s.devIndex == 0 || ev.LinkIndex != s.devIndex || !ev.Prefix.Addr().Is4() || s.want.device == nil {
		return false
	}
	if ev.Deleted {
		return ev.Prefix == s.want.device.Address
	}
	return ev.Prefix != s.want.device.Address
}

// neighEvent is a neighbour or FDB entry added, changed or deleted.
type neighEvent struct {
	Deleted   bool
	LinkIndex int
	// Bridge marks an FDB entry (family AF_BRIDGE); Self that it is the
	// device's own entry (NTF_SELF) rather than a bridge master's.
	Bridge    bool
	Self      bool
	Permanent bool
	IP        netip.Addr
	MAC       string
}

// onNeigh reports whether a neighbour or FDB event needs a new look.
func (s *watchState) onNeigh(ev neighEvent) bool {
	if s.devIndex == 0 || ev.LinkIndex != s.devIndex {
		return false
	}
	if ev.Bridge {
		if !ev.Self || !ev.IP.IsValid() {
			return false
		}
		wanted := s.want.fdb[fdbKey{MAC: ev.MAC, Dst: ev.IP}]
		if ev.Deleted {
			return wanted
		}
		if wanted {
			return !ev.Permanent
		}
		return ev.Permanent
	}
	if !ev.IP.Is4() {
		return false
	}
	mac, wanted := s.want.neighbors[ev.IP]
	if ev.Deleted {
		return wanted
	}
	if wanted {
		return !ev.Permanent || ev.MAC != mac
	}
	return ev.Permanent
}

// sortRoutes orders routes by destination, as plan output is.
func sortRoutes(rs []plan.Route) {
	sort.Slice(rs, func(i, j int) bool { return prefixLess(rs[i].Dst, rs[j].Dst) })
}

func prefixLess(a, b netip.Prefix) bool {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c < 0
	}
	return a.Bits() < b.Bits()
}
