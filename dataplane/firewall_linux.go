package dataplane

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"twill.dev/twill/plan"
)

// fwTable is Twill's table; every nftables call names it.
var fwTable = &nftables.Table{Family: nftables.TableFamilyINet, Name: FirewallTable}

// fwObject names the table in errors.
const fwObject = "table inet " + FirewallTable

// nft opens an nftables connection in the reconciler's namespace; the
// caller closes it with CloseLasting. r.mu must be held.
func (r *Reconciler) nft() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(r.ns)), nftables.AsLasting())
	if err != nil {
		return nil, opErr(KindFirewall, fwObject, "open", fmt.Errorf("nftables netlink socket (needs CAP_NET_ADMIN and a kernel with nf_tables): %w", err))
	}
	return c, nil
}

// ApplyFirewall makes the namespace's nftables table inet twill match fw,
// updating set elements in place; see the package documentation. Unlike
// Apply it acts on a zero fw too: the table is then created (or repaired)
// with the last applied lists, or what the kernel holds.
func (r *Reconciler) ApplyFirewall(fw plan.Firewall) (Result, error) {
	return r.reconcile("apply firewall", func(res *Result) []error {
		return r.applyFirewall(fw, res)
	})
}

// applyFirewall reconciles the table, keeping the VXLAN local address of
// the last apply; r.mu must be held.
func (r *Reconciler) applyFirewall(fw plan.Firewall, res *Result) []error {
	var local netip.Addr
	if r.fw != nil {
		local = r.fw.local
	}
	return r.applyFirewallAt(fw, local, res)
}

// applyFirewallAt reconciles the table for a node whose VXLAN device has
// the local address local (the invalid Addr: no device, so no notrack
// rules; see vxlanLocal); r.mu must be held.
func (r *Reconciler) applyFirewallAt(fw plan.Firewall, local netip.Addr, res *Result) []error {
	checked, errs := wantFirewall(fw)
	checked.local = local
	c, err := r.nft()
	if err != nil {
		return append(errs, err)
	}
	defer c.CloseLasting()
	k, err := readFirewall(c)
	if err != nil {
		return append(errs, opErr(KindFirewall, fwObject, "list", err))
	}
	return append(errs, r.reconcileFirewall(c, fw, checked, k, res)...)
}

// reconcileFirewall brings the table from k, as read through c, to fw.
func (r *Reconciler) reconcileFirewall(c *nftables.Conn, fw plan.Firewall, checked fwWant, k fwKernel, res *Result) []error {
	var errs []error
	w := effectiveFirewall(fw, checked, r.fw, k)
	r.fw = &w // before writing, so the watcher takes our writes for what they are
	ch := diffFirewall(w, fwRuleWants(w), k)
	if ch.empty() {
		return errs
	}
	r.log.Debug("firewall differs from the plan", "drift", ch.Drift)
	// Turning natOutgoing on creates the nat chain in place, its UDP rule
	// first as the placeholder that drops (see upgradeRules). nat-pools
	// gets its elements only once the rule is upgraded, so that no packet
	// meets the placeholder: until then the pools are not masqueraded, as
	// they were not before.
	var held []fwElem
	if ch.Recreate == "" && slices.Contains(ch.CreateChains, ChainPostrouting) && !slices.Contains(ch.CreateSets, SetNATPools) {
		held = ch.AddElems[SetNATPools]
		delete(ch.AddElems, SetNATPools)
	}
	var delta Counts
	err := writeFirewall(c, w, k, ch, &delta)
	if err != nil && ch.Recreate == "" {
		r.log.Warn("firewall: the kernel refused the in-place update; rebuilding the table", "err", err)
		ch = fwChanges{Recreate: fmt.Sprintf("in-place update failed: %v", err)}
		delta = Counts{}
		// A fresh socket: the failed batch may have left replies unread.
		c.CloseLasting()
		if c, err = r.nft(); err != nil {
			return append(errs, err)
		}
		defer c.CloseLasting()
		err = writeFirewall(c, w, k, ch, &delta)
	}
	if err != nil {
		return append(errs, opErr(KindFirewall, fwObject, "write", err))
	}
	res.Firewall.add(delta)
	if err := r.upgradeRules(c, w, ch, res); err != nil {
		errs = append(errs, err)
	}
	if len(held) > 0 && ch.Recreate == "" {
		delta = Counts{}
		if err := writeFirewall(c, w, k, fwChanges{AddElems: map[string][]fwElem{SetNATPools: held}}, &delta); err != nil {
			return append(errs, opErr(KindFirewall, "set "+SetNATPools, "add elements", err))
		}
		res.Firewall.add(delta)
	}
	return errs
}

// fwSetSpec is the set Twill creates under name.
func fwSetSpec(name string) *nftables.Set {
	return &nftables.Set{Table: fwTable, Name: name, KeyType: nftables.TypeIPAddr, Interval: name != SetVXLANPeers}
}

// fwChainSpec is the chain Twill creates under name.
func fwChainSpec(name string) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	c := &nftables.Chain{Table: fwTable, Name: name, Policy: &accept}
	switch name {
	case ChainPostrouting:
		c.Type, c.Hooknum, c.Priority = nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource
	case ChainPrerouting:
		c.Type, c.Hooknum, c.Priority = nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw
	case ChainOutput:
		c.Type, c.Hooknum, c.Priority = nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityRaw
	}
	return c
}

// setOK reports whether a kernel set is what fwSetSpec creates.
func setOK(s *nftables.Set) bool {
	w := fwSetSpec(s.Name)
	return s.KeyType.Name == w.KeyType.Name && s.KeyType.Bytes == 4 && s.Interval == w.Interval &&
		!s.IsMap && !s.Anonymous && !s.Constant && !s.HasTimeout && !s.Concatenation && !s.Dynamic && s.Timeout == 0
}

// chainOK reports whether a kernel chain is what fwChainSpec creates.
func chainOK(c *nftables.Chain) bool {
	w := fwChainSpec(c.Name)
	return c.Type == w.Type && c.Hooknum != nil && *c.Hooknum == *w.Hooknum &&
		c.Priority != nil && *c.Priority == *w.Priority && c.Policy != nil && *c.Policy == *w.Policy
}

// fwRule is one wanted rule.
type fwRule struct {
	comment string
	exprs   []expr.Any
	// interim, when set, is a placeholder the nftables library writes
	// where it cannot write exprs; upgradeRules then replaces it in place.
	interim []expr.Any
}

func (f fwRule) userData() []byte { return userdata.AppendString(nil, userdata.TypeComment, f.comment) }

// fwRules builds the wanted rules per chain; setID gives the ID of a set
// created in the same batch (0 for one that exists).
func fwRules(w fwWant, setID func(string) uint32) map[string][]fwRule {
	reg := func(k expr.MetaKey, v byte) []expr.Any {
		return []expr.Any{&expr.Meta{Key: k, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{v}}}
	}
	ipv4 := reg(expr.MetaKeyNFPROTO, unix.NFPROTO_IPV4)
	udp := reg(expr.MetaKeyL4PROTO, unix.IPPROTO_UDP)
	saddr := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
	daddr := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
	pools := []expr.Any{
		saddr, &expr.Lookup{SourceRegister: 1, SetName: SetNATPools, SetID: setID(SetNATPools)},
		daddr, &expr.Lookup{SourceRegister: 1, SetName: SetAllPools, SetID: setID(SetAllPools), Invert: true},
	}
	cat := func(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }
	lo, hi := masqPorts(w.port)
	ports := []expr.Any{
		&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, lo)},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, hi)},
	}
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], uint16(w.port))
	rules := map[string][]fwRule{
		ChainPostrouting: {
			{
				comment: ruleMasqUDP,
				exprs:   cat(ipv4, udp, pools, ports, []expr.Any{&expr.Masq{ToPorts: true, RegProtoMin: 1, RegProtoMax: 2, Random: true, FullyRandom: true}}),
				// Until replaced, new UDP flows it would masquerade are
				// dropped (the first packet; the sender retries): neither
				// masqueraded into the VXLAN port nor leaving unmasqueraded
				// with a conntrack entry that would outlive the rule.
				interim: cat(ipv4, udp, pools, []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}),
			},
			{comment: ruleMasq, exprs: cat(ipv4, pools, []expr.Any{&expr.Masq{Random: true, FullyRandom: true}})},
		},
	}
	// The VXLAN rules test the cheapest things first: most packets are not
	// UDP, and most UDP is not for the VXLAN port.
	vxlan := cat(udp, []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port[:]},
	}, ipv4)
	peers := func(invert bool) *expr.Lookup {
		return &expr.Lookup{SourceRegister: 1, SetName: SetVXLANPeers, SetID: setID(SetVXLANPeers), Invert: invert}
	}
	// Delivered to this host: fib daddr type != unicast. The address type
	// comes from the local table only (local, broadcast or multicast, else
	// unicast), in host byte order; these are what the input hook sees.
	var unicast [4]byte
	binary.NativeEndian.PutUint32(unicast[:], unix.RTN_UNICAST)
	toHost := []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: unicast[:]},
	}
	allow := fwRule{comment: ruleVXLANAllow, exprs: cat(vxlan, []expr.Any{
		saddr, peers(true),
	}, toHost, []expr.Any{
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: CounterVXLANDropped},
		&expr.Verdict{Kind: expr.VerdictDrop},
	})}
	rules[ChainPrerouting] = []fwRule{allow}
	rules[ChainOutput] = nil
	if l := w.local; l.Is4() {
		a := l.As4()
		// Node-to-node VXLAN is left untracked. Connection tracking, on for
		// the whole namespace as soon as the nat chain (or kube-proxy)
		// exists, would otherwise look up every outer packet, and on the
		// receiving side each is MTU-sized unless the NIC aggregates them
		// (GRO): that was most of the firewall's cost on the VXLAN path.
		// The rules are exact: the VXLAN port, between this node's VTEP
		// address and a peer's. Traffic that merely uses the port (say a
		// peer host's to a pod, or a pod's to anywhere) is not between the
		// two VTEPs and stays tracked, so its reply is never taken for a
		// new flow and masqueraded. The tunnelled packets are tracked as
		// before: encapsulation and decapsulation scrub the skb's conntrack
		// state, so the inner flow gets its own entry, on which kube-proxy's
		// DNAT and the masquerade work.
		//
		// Pod-to-pod traffic itself is never left untracked: with
		// kube-proxy, a backend pod's reply to a Service client is
		// pod-to-pod by address yet must meet the DNAT entry to be
		// rewritten back, and no rule on addresses can tell it apart.
		//
		// The allow-list sits in this chain too, ahead of connection
		// tracking, rather than at the input hook: a peer's packet meets
		// one Twill rule and leaves the chain. (It is thereby also checked
		// before kube-proxy's DNAT: a Service on the VXLAN port of the
		// host's addresses would clash with VXLAN anyway.) Other firewalls
		// on the host must accept VXLAN by port and address, not as part of
		// an established connection.
		rules[ChainPrerouting] = []fwRule{{comment: ruleNotrackIn, exprs: cat(vxlan, []expr.Any{
			daddr, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
			saddr, peers(false),
			&expr.Notrack{},
			// Accept ends this chain only (later hooks still run): the
			// common packet skips the allow-list rule.
			&expr.Verdict{Kind: expr.VerdictAccept},
		})}, allow}
		rules[ChainOutput] = []fwRule{{comment: ruleNotrackOut, exprs: cat(vxlan, []expr.Any{
			saddr, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
			daddr, peers(false),
			&expr.Notrack{},
		})}}
	}
	return rules
}

// fwRuleWants are the wanted rules' canonical forms, for diffFirewall.
func fwRuleWants(w fwWant) map[string][]ruleWant {
	out := map[string][]ruleWant{}
	for chain, rs := range fwRules(w, func(string) uint32 { return 0 }) {
		for _, f := range rs {
			rw := ruleWant{Comment: f.comment, Sig: ruleSig(f.exprs, f.userData())}
			if f.interim != nil {
				rw.Interim = ruleSig(f.interim, f.userData())
			}
			out[chain] = append(out[chain], rw)
		}
	}
	return out
}

// ruleSig is a rule's canonical form. Set IDs only matter within a batch
// and the kernel does not report them, so they are left out.
func ruleSig(es []expr.Any, ud []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%q", ud)
	for _, e := range es {
		if l, ok := e.(*expr.Lookup); ok {
			c := *l
			c.SetID = 0
			e = &c
		}
		fmt.Fprintf(&b, "|%T%+v", e, e)
	}
	return b.String()
}

// readFirewall reads Twill's table. It reads other tables' names (and, to
// find its own chains, their chains), never their content. What it cannot
// parse in its own table counts as drift, not as an error.
func readFirewall(c *nftables.Conn) (fwKernel, error) {
	var k fwKernel
	tabs, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return k, fmt.Errorf("list tables: %w", err)
	}
	if !slices.ContainsFunc(tabs, func(t *nftables.Table) bool { return t.Name == FirewallTable }) {
		return k, nil
	}
	k.Table = true
	k.Sets = map[string]fwSetState{}
	k.Chains = map[string]fwChainState{}
	sets, err := c.GetSets(fwTable)
	if err != nil {
		return k, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		if !slices.Contains(fwSets, s.Name) {
			k.Stray = append(k.Stray, "set "+s.Name)
			continue
		}
		st := fwSetState{OK: setOK(s)}
		els, err := c.GetSetElements(s)
		if err != nil {
			// Elements this library cannot read are not Twill's: rebuild.
			st.OK = false
		}
		for _, e := range els {
			a, ok := netip.AddrFromSlice(e.Key)
			if !ok || !a.Is4() {
				st.OK = false
				continue
			}
			st.Elems = append(st.Elems, fwElem{Key: a, End: e.IntervalEnd})
		}
		k.Sets[s.Name] = st
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return k, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != FirewallTable {
			continue
		}
		if !slices.Contains(fwChains, ch.Name) {
			k.Stray = append(k.Stray, "chain "+ch.Name)
			continue
		}
		cs := fwChainState{OK: chainOK(ch)}
		rules, err := c.GetRules(fwTable, ch)
		if err != nil {
			// Rules this library cannot read are not Twill's: refill.
			cs.Rules = []fwRuleState{{Sig: "unreadable: " + err.Error()}}
		}
		for _, rl := range rules {
			cs.Rules = append(cs.Rules, fwRuleState{Handle: rl.Handle, Sig: ruleSig(rl.Exprs, rl.UserData)})
		}
		k.Chains[ch.Name] = cs
	}
	objs, err := c.GetNamedObjects(fwTable)
	if err != nil {
		// Objects this library cannot read are not Twill's: rebuild.
		k.Stray = append(k.Stray, "objects ("+err.Error()+")")
	}
	for _, o := range objs {
		no, ok := o.(*nftables.NamedObj)
		if !ok {
			k.Stray = append(k.Stray, fmt.Sprintf("object %T", o))
			continue
		}
		cnt, isCounter := no.Obj.(*expr.Counter)
		if no.Name == CounterVXLANDropped {
			k.Counter = true
			if no.Type == nftables.ObjTypeCounter && isCounter {
				k.CounterOK = true
				k.Dropped = CounterValue{Packets: cnt.Packets, Bytes: cnt.Bytes}
				continue
			}
		}
		k.Stray = append(k.Stray, fmt.Sprintf("object %s (type %d)", no.Name, no.Type))
	}
	slices.Sort(k.Stray)
	return k, nil
}

func setElems(es []fwElem) []nftables.SetElement {
	out := make([]nftables.SetElement, len(es))
	for i, e := range es {
		k := e.Key.As4()
		out[i] = nftables.SetElement{Key: k[:], IntervalEnd: e.End}
	}
	return out
}

// writeFirewall applies ch in one nftables transaction, counting into delta.
func writeFirewall(c *nftables.Conn, w fwWant, k fwKernel, ch fwChanges, delta *Counts) error {
	sets := map[string]*nftables.Set{}
	addSet := func(name string) error {
		s := fwSetSpec(name)
		es := w.elems(name)
		if err := c.AddSet(s, setElems(es)); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		sets[name] = s
		delta.Added += 1 + len(es)
		return nil
	}
	setID := func(name string) uint32 {
		if s := sets[name]; s != nil {
			return s.ID
		}
		return 0
	}
	addRules := func(name string) {
		chain := fwChainSpec(name)
		for _, f := range fwRules(w, setID)[name] {
			exprs := f.exprs
			if f.interim != nil {
				exprs = f.interim
			}
			c.AddRule(&nftables.Rule{Table: fwTable, Chain: chain, Exprs: exprs, UserData: f.userData()})
			delta.Added++
		}
	}
	counter := func(v CounterValue) {
		c.AddObj(&nftables.NamedObj{Table: fwTable, Name: CounterVXLANDropped, Type: nftables.ObjTypeCounter,
			Obj: &expr.Counter{Packets: v.Packets, Bytes: v.Bytes}})
		delta.Added++
	}

	if ch.Recreate != "" {
		if k.Table {
			c.DelTable(fwTable)
			delta.Deleted++
		}
		c.AddTable(fwTable)
		delta.Added++
		for _, name := range fwSets {
			if err := addSet(name); err != nil {
				return err
			}
		}
		counter(k.Dropped) // the old table's counts carry over
		for _, name := range w.chains() {
			c.AddChain(fwChainSpec(name))
			delta.Added++
			addRules(name)
		}
		return c.Flush()
	}

	for _, name := range ch.DeleteChains {
		c.DelChain(fwChainSpec(name)) // with its rules
		delta.Deleted += 1 + len(k.Chains[name].Rules)
	}
	for _, name := range fwSets {
		if slices.Contains(ch.CreateSets, name) {
			if err := addSet(name); err != nil {
				return err
			}
			continue
		}
		s := fwSetSpec(name)
		if del := ch.DelElems[name]; len(del) > 0 {
			if err := c.SetDeleteElements(s, setElems(del)); err != nil {
				return fmt.Errorf("set %s: %w", name, err)
			}
			delta.Deleted += len(del)
		}
		if add := ch.AddElems[name]; len(add) > 0 {
			if err := c.SetAddElements(s, setElems(add)); err != nil {
				return fmt.Errorf("set %s: %w", name, err)
			}
			delta.Added += len(add)
		}
	}
	if ch.CreateCounter {
		counter(CounterValue{})
	}
	for _, name := range ch.Refill {
		if slices.Contains(ch.CreateChains, name) {
			c.AddChain(fwChainSpec(name))
			delta.Added++
		} else {
			c.FlushChain(fwChainSpec(name))
			delta.Deleted += len(k.Chains[name].Rules)
		}
		addRules(name)
	}
	return c.Flush()
}

// upgradeRules replaces rules held in their interim form by their wanted
// form, through a raw netlink batch (see replaceRule). Rules already in
// the kernel before this reconcile count as updated.
func (r *Reconciler) upgradeRules(c *nftables.Conn, w fwWant, ch fwChanges, res *Result) error {
	for name, rules := range fwRules(w, func(string) uint32 { return 0 }) {
		if !slices.Contains(w.chains(), name) || !slices.ContainsFunc(rules, func(f fwRule) bool { return f.interim != nil }) {
			continue
		}
		written := ch.Recreate != "" || slices.Contains(ch.Refill, name)
		upgrading := slices.ContainsFunc(ch.Upgrade, func(u upgrade) bool { return u.Chain == name })
		if !written && !upgrading {
			continue
		}
		got, err := c.GetRules(fwTable, fwChainSpec(name))
		if err != nil {
			return opErr(KindFirewall, "chain "+name, "list rules", err)
		}
		for i, g := range got {
			if i >= len(rules) || rules[i].interim == nil || ruleSig(g.Exprs, g.UserData) != ruleSig(rules[i].interim, rules[i].userData()) {
				continue
			}
			if err := r.replaceRule(name, g.Handle, rules[i]); err != nil {
				return opErr(KindFirewall, "rule "+rules[i].comment, "replace", err)
			}
			if !written {
				res.Firewall.Updated++
			}
		}
	}
	return nil
}

// replaceRule replaces the rule with the given handle by f.exprs in one
// transaction of its own. It builds the netlink messages itself because
// google/nftables v0.3.0 writes a masquerade with a port range without any
// flags, not even NF_NAT_RANGE_PROTO_SPECIFIED, so the kernel would ignore
// the range; every other expression is marshalled by the library.
func (r *Reconciler) replaceRule(chain string, handle uint64, f fwRule) error {
	fam := byte(fwTable.Family)
	var list []netlink.Attribute
	for _, e := range f.exprs {
		var b []byte
		var err error
		if m, ok := e.(*expr.Masq); ok {
			b, err = marshalMasq(m)
		} else {
			b, err = expr.Marshal(fam, e)
		}
		if err != nil {
			return fmt.Errorf("marshal %T: %w", e, err)
		}
		list = append(list, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: b})
	}
	exprs, err := netlink.MarshalAttributes(list)
	if err != nil {
		return err
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(FirewallTable + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		{Type: unix.NFTA_RULE_HANDLE, Data: binary.BigEndian.AppendUint64(nil, handle)},
		{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: exprs},
		{Type: unix.NFTA_RULE_USERDATA, Data: f.userData()},
	})
	if err != nil {
		return err
	}
	nfgen := func(family byte, resID uint16) []byte {
		return []byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
	}
	msgs := []netlink.Message{
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
			Data: nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)},
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE),
			Flags: netlink.Request | netlink.Acknowledge | netlink.Replace},
			Data: append(nfgen(fam, 0), attrs...)},
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
			Data: nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)},
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(r.ns)})
	if err != nil {
		return fmt.Errorf("netfilter netlink socket: %w", err)
	}
	defer conn.Close()
	if _, err := conn.SendMessages(msgs); err != nil {
		return err
	}
	// The one message asking for an acknowledgement gets it, or an error.
	_, err = conn.Receive()
	return err
}

// marshalMasq encodes a masquerade expression with its flags and, when it
// has one, its port range, flagged as given as nft does (the kernel ignores
// the range otherwise).
func marshalMasq(m *expr.Masq) ([]byte, error) {
	var flags uint32
	if m.ToPorts {
		flags |= unix.NF_NAT_RANGE_PROTO_SPECIFIED
	}
	if m.Random {
		flags |= unix.NF_NAT_RANGE_PROTO_RANDOM
	}
	if m.FullyRandom {
		flags |= unix.NF_NAT_RANGE_PROTO_RANDOM_FULLY
	}
	if m.Persistent {
		flags |= unix.NF_NAT_RANGE_PERSISTENT
	}
	attrs := []netlink.Attribute{{Type: unix.NFTA_MASQ_FLAGS, Data: binary.BigEndian.AppendUint32(nil, flags)}}
	if m.ToPorts {
		attrs = append(attrs,
			netlink.Attribute{Type: unix.NFTA_MASQ_REG_PROTO_MIN, Data: binary.BigEndian.AppendUint32(nil, m.RegProtoMin)},
			netlink.Attribute{Type: unix.NFTA_MASQ_REG_PROTO_MAX, Data: binary.BigEndian.AppendUint32(nil, m.RegProtoMax)})
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	return netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_EXPR_NAME, Data: []byte("masq\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: data},
	})
}

// ObserveFirewall reads back Twill's table: its sets' elements, its chains,
// the vxlan-dropped counter, and how it differs from the last applied
// firewall.
func (r *Reconciler) ObserveFirewall() (ObservedFirewall, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return ObservedFirewall{}, errClosed
	}
	c, err := r.nft()
	if err != nil {
		return ObservedFirewall{}, err
	}
	defer c.CloseLasting()
	k, err := readFirewall(c)
	if err != nil {
		return ObservedFirewall{}, opErr(KindFirewall, fwObject, "list", err)
	}
	var o ObservedFirewall
	if r.fw != nil {
		o.Drift = diffFirewall(*r.fw, fwRuleWants(*r.fw), k).Drift
	}
	if !k.Table {
		return o, nil
	}
	o.Table = true
	o.Dropped = k.Dropped
	pools := func(name string) []netip.Prefix {
		var out []netip.Prefix
		rs, ok := elemsToRanges(k.Sets[name].Elems)
		if !ok {
			o.Drift = append(o.Drift, "set "+name+" holds elements that are not well-formed intervals")
		}
		for _, rg := range rs {
			out = append(out, rangePrefixes(rg)...)
		}
		return out
	}
	o.NATPools = pools(SetNATPools)
	o.AllPools = pools(SetAllPools)
	for _, e := range k.Sets[SetVXLANPeers].Elems {
		o.VXLANPeers = append(o.VXLANPeers, e.Key)
	}
	slices.SortFunc(o.VXLANPeers, netip.Addr.Compare)
	for name := range k.Sets {
		o.Sets = append(o.Sets, name)
	}
	for name := range k.Chains {
		o.Chains = append(o.Chains, name)
	}
	for _, s := range k.Stray {
		if n, ok := strings.CutPrefix(s, "set "); ok {
			o.Sets = append(o.Sets, n)
		}
		if n, ok := strings.CutPrefix(s, "chain "); ok {
			o.Chains = append(o.Chains, n)
		}
	}
	slices.Sort(o.Sets)
	slices.Sort(o.Chains)
	return o, nil
}

// firewallDrifted reports whether the table no longer matches the last
// applied firewall; false before the first apply. A failed read counts as
// drift, to make the caller look again.
func (r *Reconciler) firewallDrifted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil || r.fw == nil {
		return false
	}
	c, err := r.nft()
	if err != nil {
		return true
	}
	defer c.CloseLasting()
	k, err := readFirewall(c)
	if err != nil {
		r.log.Debug("firewall read failed; looking again", "err", err)
		return true
	}
	return !diffFirewall(*r.fw, fwRuleWants(*r.fw), k).empty()
}

// monitorBuf is the depth of the nftables monitor's event channel.
const monitorBuf = 256

// nftWatcher follows nftables events through a google/nftables Monitor. An
// event batch that touches Twill's table makes it read the table back and
// signal if it drifted from the last applied firewall.
type nftWatcher struct {
	r      *Reconciler
	mon    *nftables.Monitor
	events chan *nftables.MonitorEvents
	// warned is set once a failure to subscribe was logged at warning level.
	warned bool
}

func (r *Reconciler) nftWatcher() *nftWatcher { return &nftWatcher{r: r} }

func (w *nftWatcher) name() string { return "nftables" }

func (w *nftWatcher) start(locked bool) error {
	if !locked {
		w.r.mu.Lock()
		defer w.r.mu.Unlock()
	}
	if w.r.h == nil {
		return errClosed
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(w.r.ns)))
	if err != nil {
		return err
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(monitorBuf))
	events, err := c.AddGenerationalMonitor(mon)
	if err != nil {
		return err
	}
	w.mon, w.events = mon, events
	return nil
}

// stop closes the monitor and drains its channel, which the library closes
// once its reader has stopped.
func (w *nftWatcher) stop() {
	if w.mon == nil {
		return
	}
	w.mon.Close()
	for range w.events {
	}
	w.mon, w.events = nil, nil
}

func (w *nftWatcher) run(ctx context.Context, notify func()) {
	backoff := minBackoff
	for {
		if w.mon != nil {
			began := time.Now()
			if !w.consume(ctx, notify) {
				return
			}
			w.r.log.Warn("nftables monitor ended; resubscribing", "events", w.name())
			notify()
			if time.Since(began) > stableAfter {
				backoff = minBackoff
			}
		}
		if !resubscribe(ctx, &backoff, w.start, func(err error) {
			lvl := slog.LevelDebug
			if !w.warned {
				lvl, w.warned = slog.LevelWarn, true
			}
			w.r.log.Log(ctx, lvl, "nftables monitor unavailable; only periodic resyncs repair the firewall until it is back",
				"err", err, "retry_in", backoff)
		}) {
			return
		}
		w.warned = false
		// Events may have been lost while unsubscribed.
		notify()
	}
}

// consume handles event batches until ctx is done (false) or the monitor
// dies (true). Batches already queued are handled together, with one read
// of the table at most.
func (w *nftWatcher) consume(ctx context.Context, notify func()) bool {
	for {
		select {
		case <-ctx.Done():
			w.stop()
			return false
		case b, ok := <-w.events:
			if !ok {
				w.stop()
				return true
			}
			look, died := fwBatchMatters(b)
			for drained := false; !drained && !died; {
				select {
				case b, ok := <-w.events:
					if !ok {
						died = true
						break
					}
					l, d := fwBatchMatters(b)
					look, died = look || l, died || d
				default:
					drained = true
				}
			}
			if died || (look && w.r.firewallDrifted()) {
				notify()
			}
			if died {
				w.stop()
				return true
			}
		}
	}
}

// fwBatchMatters reports whether an event batch may have changed Twill's
// table, and whether the monitor died (after an out-of-band error the
// library closes the channel; events may have been lost).
func fwBatchMatters(b *nftables.MonitorEvents) (look, died bool) {
	if b == nil {
		return false, false
	}
	if g := b.GeneratedBy; g != nil && g.Type == nftables.MonitorEventTypeOOB {
		return true, true
	}
	for _, e := range b.Changes {
		if fwEventMatters(e) {
			return true, false
		}
	}
	return false, false
}

// fwEventMatters reports whether one event may concern Twill's table. Set
// element events do not name their table: any with an IPv4 key counts.
func fwEventMatters(e *nftables.MonitorEvent) bool {
	if e == nil {
		return false
	}
	if e.Error != nil || e.Type == nftables.MonitorEventTypeOOB {
		return true
	}
	ours := func(t *nftables.Table) bool {
		return t != nil && t.Name == FirewallTable && (t.Family == fwTable.Family || t.Family == nftables.TableFamilyUnspecified)
	}
	switch d := e.Data.(type) {
	case *nftables.Table:
		return ours(d)
	case *nftables.Chain:
		return d != nil && ours(d.Table)
	case *nftables.Rule:
		return d != nil && ours(d.Table)
	case *nftables.Set:
		return d != nil && ours(d.Table)
	case []nftables.SetElement:
		return slices.ContainsFunc(d, func(el nftables.SetElement) bool { return len(el.Key) == 4 })
	case *nftables.NamedObj:
		return d != nil && ours(d.Table)
	case *nftables.CounterObj:
		return d != nil && ours(d.Table)
	case *nftables.QuotaObj:
		return d != nil && ours(d.Table)
	}
	return true // something this version cannot tell apart: look
}
