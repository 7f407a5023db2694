// Package lab builds a Twill cluster on one Linux machine out of network
// namespaces: one namespace per node and per plain host, a router namespace
// that joins the subnets, the real datastore (embedded etcd) and the real
// node agents as child processes, and pods plumbed by the CNI plugin. It
// reads topology files (the seed's format), validates them before anything
// is built, records everything it creates in a state file so that Down can
// remove it even after a crash, and reports what the kernel ended up with:
// VTEPs, routes, pod-to-pod connectivity and, verified by packet capture,
// the path each node pair's traffic takes.
//
// Nothing is ever added to the root network namespace: every interface,
// address and route lives in a namespace the lab created, and the router
// namespace has no uplink, so lab traffic cannot leave the machine.
package lab

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"twill.dev/twill/api"
	"twill.dev/twill/plan"
)

//go:embed topologies/*.yaml
var builtinFS embed.FS

// DefaultTopology is the built-in topology `twill lab up` uses when none is
// named: the seed cluster.
const DefaultTopology = "seed"

// Limits that keep a lab small enough for one machine and its checks
// (the connectivity matrix grows with the square of the pod count).
const (
	MaxSubnets     = 32
	MaxMembers     = 64 // nodes and plain hosts together
	MaxPodsPerNode = 64
	MaxPods        = 256
	// MaxNameLen bounds node, host and subnet names, which become
	// namespace names.
	MaxNameLen = 40
	// maxTopologyBytes bounds the size of a topology file.
	maxTopologyBytes = 1 << 20
)

// RouterTarget is the exec target name of the router namespace; no node or
// host may be called so.
const RouterTarget = "router"

// Topology is a lab cluster as its file describes it: subnets joined by one
// router, IP pools, the VXLAN settings and the nodes with their pods. Parse
// returns it validated.
type Topology struct {
	// Name is where the topology came from: the built-in name or the file
	// path. It is not part of the file.
	Name    string   `json:"-"`
	Subnets []Subnet `json:"subnets"`
	Pools   []Pool   `json:"pools"`
	VXLAN   VXLAN    `json:"vxlan"`
	Nodes   []Node   `json:"nodes"`
	// Observed holds what the seed observed on the real cluster; it is
	// accepted and ignored (Parse drops it).
	Observed any `json:"observed,omitempty"`
}

// Subnet is one L2 segment, reached from the others through the router.
type Subnet struct {
	Name string `json:"name"`
	// CIDR is the subnet's network, for example 192.168.3.0/24.
	CIDR string `json:"cidr"`
	// Router is the router's address in this subnet, the default gateway
	// of its members.
	Router string `json:"router"`
	// Hosts are plain machines in this subnet that run no agent, such as
	// an outside server.
	Hosts []Host `json:"hosts,omitempty"`
}

// Host is a plain, non-node machine.
type Host struct {
	Name string `json:"name"`
	// Address is the host's address, bare (the subnet's prefix length is
	// used) or with the subnet's prefix length.
	Address string `json:"address"`
}

// Pool is an IP pool, with the fields of an IPPool spec.
type Pool struct {
	Name         string   `json:"name"`
	CIDR         string   `json:"cidr"`
	BlockSize    int      `json:"blockSize,omitempty"`
	IPIPMode     string   `json:"ipipMode,omitempty"`
	VXLANMode    string   `json:"vxlanMode,omitempty"`
	NATOutgoing  bool     `json:"natOutgoing,omitempty"`
	NodeSelector string   `json:"nodeSelector,omitempty"`
	AllowedUses  []string `json:"allowedUses,omitempty"`
}

// VXLAN holds the VXLAN device's settings; zero values mean the defaults of
// package plan.
type VXLAN struct {
	Device string `json:"device,omitempty"`
	VNI    int    `json:"vni,omitempty"`
	Port   int    `json:"port,omitempty"`
	MTU    int    `json:"mtu,omitempty"`
}

// Node is one Kubernetes node: a namespace running a node agent.
type Node struct {
	Name string `json:"name"`
	// Address is the node's eth0 address with the subnet's prefix length.
	Address string `json:"address"`
	// MAC, when set, is eth0's MAC address.
	MAC string `json:"mac,omitempty"`
	// Block, when set, is pinned to the node before its agent starts, so
	// that its tunnel and pod addresses are predictable.
	Block string `json:"block,omitempty"`
	// Pods are the node's pods: a list of addresses or a count.
	Pods Pods `json:"pods,omitempty"`
}

// Pods is a node's pods, written either as a list of addresses (each pod
// gets the address at its position) or as a count (IPAM picks).
type Pods struct {
	// Addresses is set when the file lists addresses.
	Addresses []string
	// Count is the number of pods when the file gives a count.
	Count int
}

// Len is the number of pods.
func (p Pods) Len() int {
	if p.Addresses != nil {
		return len(p.Addresses)
	}
	return p.Count
}

// UnmarshalJSON reads a count or a list of addresses.
func (p *Pods) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*p = Pods{}
		return nil
	case len(b) > 0 && b[0] == '[':
		var l []string
		if err := json.Unmarshal(b, &l); err != nil {
			return fmt.Errorf("pods: %w", err)
		}
		*p = Pods{Addresses: l}
		if p.Addresses == nil {
			p.Addresses = []string{}
		}
		return nil
	}
	n, err := strconv.Atoi(string(b))
	if err != nil {
		return fmt.Errorf("pods: %s is neither a count nor a list of addresses", b)
	}
	*p = Pods{Count: n}
	return nil
}

// MarshalJSON writes the list or the count, as read.
func (p Pods) MarshalJSON() ([]byte, error) {
	if p.Addresses != nil {
		return json.Marshal(p.Addresses)
	}
	return json.Marshal(p.Count)
}

// Reason classifies a topology problem, so that callers and tests can tell
// rules apart without reading messages.
type Reason string

// Reasons a topology is refused.
const (
	ReasonSyntax       Reason = "Syntax"       // not well-formed YAML or JSON
	ReasonUnknownField Reason = "UnknownField" // a key the format does not have
	ReasonType         Reason = "Type"         // a value of the wrong type
	ReasonRequired     Reason = "Required"     // a missing value
	ReasonFormat       Reason = "Format"       // a value that does not parse
	ReasonRange        Reason = "Range"        // a number or count out of bounds
	ReasonName         Reason = "Name"         // a name that cannot name a namespace or interface
	ReasonReserved     Reason = "Reserved"     // an address or range the lab cannot use
	ReasonOutside      Reason = "Outside"      // an address outside its subnet, pool or block
	ReasonMismatch     Reason = "Mismatch"     // a prefix length that differs from the subnet's
	ReasonOverlap      Reason = "Overlap"      // two ranges that share addresses
	ReasonDuplicate    Reason = "Duplicate"    // a name or address given twice
	ReasonAlign        Reason = "Align"        // a block that is not one block of its pool
	ReasonPool         Reason = "Pool"         // a pool that IPPool validation refuses
)

// Problem is one thing wrong with a topology.
type Problem struct {
	// Path is the key path, for example nodes[3].block.
	Path string
	// Value is the offending value as written ("" when absent).
	Value string
	// Rule says what the value must be, and how to fix it.
	Rule   string
	Reason Reason
	// Err is the underlying error, if any (for pools an api.FieldError).
	Err error
}

// Error implements error: "nodes[3].block: 172.16.36.65/26: has host bits
// set; ...".
func (p Problem) Error() string {
	var b strings.Builder
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	if p.Value != "" {
		b.WriteString(p.Value)
		b.WriteString(": ")
	}
	b.WriteString(p.Rule)
	return b.String()
}

// Unwrap returns the underlying error.
func (p Problem) Unwrap() error { return p.Err }

// Error lists everything wrong with one topology.
type Error struct {
	// Source is the topology's name or file.
	Source   string
	Problems []Problem
}

// Error implements error.
func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return fmt.Sprintf("topology %s: %v", e.Source, e.Problems[0])
	}
	var b strings.Builder
	fmt.Fprintf(&b, "topology %s has %d problems:", e.Source, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap returns the problems, so that errors.As finds a Problem.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

// Has reports whether the error lists a problem at path with reason.
func (e *Error) Has(path string, reason Reason) bool {
	return slices.ContainsFunc(e.Problems, func(p Problem) bool {
		return p.Path == path && p.Reason == reason
	})
}

// Builtin returns the names of the built-in topologies, sorted.
func Builtin() []string {
	entries, err := fs.ReadDir(builtinFS, "topologies")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	slices.Sort(names)
	return names
}

// BuiltinSource returns the file of a built-in topology as written.
func BuiltinSource(name string) ([]byte, error) {
	b, err := builtinFS.ReadFile("topologies/" + name + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("no built-in topology %q; built-in are %s, or give a file path: %w",
			name, strings.Join(Builtin(), ", "), fs.ErrNotExist)
	}
	return b, nil
}

// Load reads and validates a topology: a built-in name (see Builtin) or the
// path of a file. A name without a path separator or .yaml/.yml/.json
// extension is looked up among the built-in ones.
func Load(nameOrPath string) (*Topology, error) {
	if nameOrPath == "" {
		nameOrPath = DefaultTopology
	}
	ext := filepath.Ext(nameOrPath)
	if !strings.ContainsRune(nameOrPath, filepath.Separator) && ext != ".yaml" && ext != ".yml" && ext != ".json" {
		b, err := BuiltinSource(nameOrPath)
		if err != nil {
			return nil, err
		}
		return Parse(nameOrPath, b)
	}
	b, err := os.ReadFile(nameOrPath)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	return Parse(nameOrPath, b)
}

// Parse decodes a topology file strictly (unknown keys, duplicate keys and
// values of the wrong type are errors naming the key path) and validates it.
// Every error is an *Error; source names the topology in messages.
func Parse(source string, data []byte) (*Topology, error) {
	t, p := decode(data)
	if p != nil {
		return nil, &Error{Source: source, Problems: []Problem{*p}}
	}
	t.Name = source
	if err := t.Validate(); err != nil {
		var te *Error
		if errors.As(err, &te) {
			te.Source = source
		}
		return nil, err
	}
	return t, nil
}

func decode(data []byte) (*Topology, *Problem) {
	if len(data) > maxTopologyBytes {
		return nil, &Problem{Reason: ReasonRange, Rule: fmt.Sprintf("the file is %d bytes; a topology may be at most %d", len(data), maxTopologyBytes)}
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, &Problem{Reason: ReasonSyntax, Rule: "is not valid YAML: " + err.Error(), Err: err}
	}
	d := json.NewDecoder(bytes.NewReader(j))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, &Problem{Reason: ReasonSyntax, Rule: "is not valid YAML: " + err.Error(), Err: err}
	}
	if v == nil {
		return nil, &Problem{Reason: ReasonRequired, Rule: "the topology is empty: it needs subnets, pools and nodes"}
	}
	if p := checkValue(v, reflect.TypeFor[Topology](), ""); p != nil {
		return nil, p
	}
	var t Topology
	if err := json.Unmarshal(j, &t); err != nil {
		return nil, &Problem{Reason: ReasonType, Rule: err.Error(), Err: err}
	}
	t.Observed = nil
	return &t, nil
}

// describe names the JSON type of v for messages.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// jsonFields maps the JSON field names of struct type t to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

var podsType = reflect.TypeFor[Pods]()

// checkValue checks that the untyped value v fits type t, strictly, and
// names the key path of the first misfit.
func checkValue(v any, t reflect.Type, path string) *Problem {
	if v == nil || t.Kind() == reflect.Interface {
		return nil // null leaves the zero value; `observed` takes anything
	}
	typeErr := func(want string) *Problem {
		rule := fmt.Sprintf("is %s; want %s", describe(v), want)
		return &Problem{Path: path, Reason: ReasonType, Rule: rule}
	}
	if t == podsType {
		switch x := v.(type) {
		case json.Number:
			if _, err := strconv.ParseInt(x.String(), 10, 32); err != nil {
				return typeErr("a whole number of pods or a list of pod addresses")
			}
			return nil
		case []any:
			return checkValue(x, reflect.TypeFor[[]string](), path)
		}
		return typeErr("a number of pods or a list of pod addresses")
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return typeErr("a mapping")
		}
		fields := jsonFields(t)
		for _, k := range slices.Sorted(maps.Keys(m)) {
			ft, ok := fields[k]
			if !ok {
				rule := "unknown key; known keys here are " + strings.Join(slices.Sorted(maps.Keys(fields)), ", ")
				for f := range fields {
					if strings.EqualFold(f, k) {
						rule = fmt.Sprintf("unknown key; did you mean %q?", f)
					}
				}
				return &Problem{Path: joinPath(path, k), Reason: ReasonUnknownField, Rule: rule}
			}
			if p := checkValue(m[k], ft, joinPath(path, k)); p != nil {
				return p
			}
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			want := "a string"
			if _, num := v.(json.Number); num {
				want += " (quote the value)"
			}
			return typeErr(want)
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return typeErr("true or false")
		}
	case reflect.Int:
		n, ok := v.(json.Number)
		if !ok {
			return typeErr("a whole number")
		}
		if _, err := strconv.ParseInt(n.String(), 10, 32); err != nil {
			return typeErr("a whole number that fits in 32 bits")
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			return typeErr("a list")
		}
		for i, e := range l {
			if p := checkValue(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); p != nil {
				return p
			}
		}
	default:
		return &Problem{Path: path, Reason: ReasonType, Rule: fmt.Sprintf("fields of Go type %s cannot be decoded", t)}
	}
	return nil
}

// problems collects Problems.
type problems []Problem

func (ps *problems) add(path, value string, reason Reason, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Value: value, Reason: reason, Rule: fmt.Sprintf(format, args...)})
}

// reservedV4 are ranges no subnet may use.
var reservedV4 = []struct {
	pfx  netip.Prefix
	what string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "the 'this network' range 0.0.0.0/8"},
	{netip.MustParsePrefix("127.0.0.0/8"), "the loopback range 127.0.0.0/8"},
	{netip.MustParsePrefix("169.254.0.0/16"), "the link-local range 169.254.0.0/16 (pods route through 169.254.1.1)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "the multicast range 224.0.0.0/4"},
	{netip.MustParsePrefix("240.0.0.0/4"), "the reserved range 240.0.0.0/4"},
}

// nameRule returns why s cannot name a lab member or subnet, or "".
func nameRule(s string) string {
	const rule = "must be lower-case letters, digits and '-', starting and ending with a letter or digit, because it names a network namespace"
	if s == "" {
		return "is required"
	}
	if len(s) > MaxNameLen {
		return fmt.Sprintf("is %d characters; at most %d are allowed, because it names a network namespace", len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return rule
		}
	}
	return ""
}

// ifNameRule returns why s cannot name a Linux interface, or "".
func ifNameRule(s string) string {
	if len(s) > 15 {
		return "is longer than 15 bytes, the limit of Linux interface names"
	}
	if s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n") {
		return "is not a valid Linux interface name: no '/', ':' or spaces"
	}
	return ""
}

// subnetInfo is a subnet whose cidr parsed.
type subnetInfo struct {
	idx    int
	name   string
	cidr   netip.Prefix
	router netip.Addr
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= ^uint32(0) >> p.Bits()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// parseBareOrPrefixed parses "a.b.c.d" or "a.b.c.d/len"; bits is -1 for a
// bare address.
func parseBareOrPrefixed(s string) (netip.Addr, int, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a, -1, true
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), p.Bits(), true
	}
	return netip.Addr{}, 0, false
}

// Validate checks the whole topology and returns an *Error listing every
// problem, or nil. Nothing is built from a topology that fails it.
func (t *Topology) Validate() error {
	var ps problems
	subnets := t.validateSubnets(&ps)
	pools := t.validatePools(&ps, subnets)
	t.validateVXLAN(&ps)
	t.validateMembers(&ps, subnets, pools)
	if len(ps) == 0 {
		// Names derived from valid names can still collide, e.g. node
		// "a-pod-1" and pod 1 of node "a".
		t.validateDerivedNames(&ps)
	}
	if len(ps) == 0 {
		return nil
	}
	return &Error{Source: t.Name, Problems: ps}
}

func (t *Topology) validateSubnets(ps *problems) []subnetInfo {
	if len(t.Subnets) == 0 {
		ps.add("subnets", "", ReasonRequired, "list at least one subnet (name, cidr, router)")
	}
	if len(t.Subnets) > MaxSubnets {
		ps.add("subnets", strconv.Itoa(len(t.Subnets)), ReasonRange, "a lab has at most %d subnets", MaxSubnets)
	}
	var out []subnetInfo
	names := map[string]int{}
	for i, s := range t.Subnets {
		path := fmt.Sprintf("subnets[%d]", i)
		if r := nameRule(s.Name); r != "" {
			reason := ReasonName
			if s.Name == "" {
				reason = ReasonRequired
			}
			ps.add(path+".name", s.Name, reason, "%s", r)
		} else if j, dup := names[s.Name]; dup {
			ps.add(path+".name", s.Name, ReasonDuplicate, "is also the name of subnets[%d]; give each subnet its own name", j)
		} else {
			names[s.Name] = i
		}
		if s.CIDR == "" {
			ps.add(path+".cidr", "", ReasonRequired, "is required, for example 192.168.3.0/24")
			continue
		}
		cidr, err := netip.ParsePrefix(s.CIDR)
		if err != nil || !cidr.Addr().Is4() {
			ps.add(path+".cidr", s.CIDR, ReasonFormat, "must be an IPv4 network in CIDR notation, for example 192.168.3.0/24 (the lab is IPv4 only)")
			continue
		}
		if m := cidr.Masked(); m != cidr {
			ps.add(path+".cidr", s.CIDR, ReasonFormat, "has host bits set; did you mean %s?", m)
			continue
		}
		if cidr.Bits() < 8 || cidr.Bits() > 30 {
			ps.add(path+".cidr", s.CIDR, ReasonRange, "must be between /8 and /30: a subnet needs room for its router and members")
			continue
		}
		reserved := false
		for _, r := range reservedV4 {
			if cidr.Overlaps(r.pfx) {
				ps.add(path+".cidr", s.CIDR, ReasonReserved, "overlaps %s, which the lab cannot use", r.what)
				reserved = true
				break
			}
		}
		if reserved {
			continue
		}
		overlap := false
		for _, o := range out {
			if o.cidr.Overlaps(cidr) {
				ps.add(path+".cidr", s.CIDR, ReasonOverlap, "overlaps subnets[%d] (%s, %s); subnets must not share addresses", o.idx, o.name, o.cidr)
				overlap = true
			}
		}
		info := subnetInfo{idx: i, name: s.Name, cidr: cidr}
		switch r, err := netip.ParseAddr(s.Router); {
		case s.Router == "":
			ps.add(path+".router", "", ReasonRequired, "is required: the router's address in %s, for example %s", cidr, cidr.Addr().Next())
		case err != nil || !r.Is4():
			ps.add(path+".router", s.Router, ReasonFormat, "must be an IPv4 address without prefix length, for example %s", cidr.Addr().Next())
		case !cidr.Contains(r):
			ps.add(path+".router", s.Router, ReasonOutside, "is outside the subnet %s; the router needs an address inside it", cidr)
		case r == cidr.Addr() || r == lastAddr(cidr):
			ps.add(path+".router", s.Router, ReasonReserved, "is the network or broadcast address of %s; pick another address inside it", cidr)
		default:
			info.router = r
		}
		if !overlap {
			out = append(out, info)
		}
	}
	return out
}

// poolInfo is a pool that passed validation.
type poolInfo struct {
	idx  int
	name string
	cidr netip.Prefix
	bits int
}

// IPPool returns the pool as a defaulted twill.dev/v1 IPPool.
func (p Pool) IPPool() api.IPPool {
	uses := make([]api.IPPoolUse, 0, len(p.AllowedUses))
	for _, u := range p.AllowedUses {
		uses = append(uses, api.IPPoolUse(u))
	}
	ip := api.IPPool{
		Metadata: api.ObjectMeta{Name: p.Name},
		Spec: api.IPPoolSpec{
			CIDR:         p.CIDR,
			BlockSize:    p.BlockSize,
			VXLANMode:    api.EncapMode(p.VXLANMode),
			IPIPMode:     api.EncapMode(p.IPIPMode),
			NATOutgoing:  p.NATOutgoing,
			NodeSelector: p.NodeSelector,
			AllowedUses:  uses,
		},
	}
	ip.Default()
	return ip
}

func (t *Topology) validatePools(ps *problems, subnets []subnetInfo) []poolInfo {
	if len(t.Pools) == 0 {
		ps.add("pools", "", ReasonRequired, "list at least one IP pool (name, cidr, blockSize, vxlanMode, ...)")
	}
	var out []poolInfo
	var prev []api.IPPool
	names := map[string]int{}
	for i, p := range t.Pools {
		path := fmt.Sprintf("pools[%d]", i)
		if j, dup := names[p.Name]; dup && p.Name != "" {
			ps.add(path+".name", p.Name, ReasonDuplicate, "is also the name of pools[%d]; give each pool its own name", j)
			continue
		}
		names[p.Name] = i
		ip := p.IPPool()
		if err := ip.Validate(); err != nil {
			var ve *api.ValidationError
			if !errors.As(err, &ve) {
				ps.add(path, p.Name, ReasonPool, "%v", err)
				continue
			}
			for _, fe := range ve.Errors {
				field := strings.TrimPrefix(strings.TrimPrefix(fe.Field, "spec."), "metadata.")
				*ps = append(*ps, Problem{Path: path + "." + field, Value: fe.Value, Reason: ReasonPool, Rule: fe.Rule, Err: fe})
			}
			continue
		}
		cidr, err := ip.Prefix()
		if err != nil || !cidr.Addr().Is4() {
			ps.add(path+".cidr", p.CIDR, ReasonFormat, "must be an IPv4 network (the lab is IPv4 only)")
			continue
		}
		if err := api.CheckPoolOverlap(ip, prev); err != nil {
			var ve *api.ValidationError
			if errors.As(err, &ve) {
				for _, fe := range ve.Errors {
					*ps = append(*ps, Problem{Path: path + ".cidr", Value: p.CIDR, Reason: ReasonOverlap, Rule: fe.Rule, Err: fe})
				}
			}
			continue
		}
		bad := false
		for _, s := range subnets {
			if s.cidr.Overlaps(cidr) {
				ps.add(path+".cidr", p.CIDR, ReasonOverlap, "overlaps subnets[%d] (%s, %s); pod and host addresses must not share a range", s.idx, s.name, s.cidr)
				bad = true
			}
		}
		if bad {
			continue
		}
		prev = append(prev, ip)
		out = append(out, poolInfo{idx: i, name: p.Name, cidr: cidr, bits: ip.Spec.BlockSize})
	}
	return out
}

// MaxVXLANMTU is the largest VXLAN MTU the lab allows: eth0 has MTU 1500
// and VXLAN over IPv4 adds plan.VXLANOverhead bytes.
const MaxVXLANMTU = plan.DefaultHostMTU - plan.VXLANOverhead

func (t *Topology) validateVXLAN(ps *problems) {
	v := t.VXLAN
	if v.Device != "" {
		if r := ifNameRule(v.Device); r != "" {
			ps.add("vxlan.device", v.Device, ReasonName, "%s", r)
		}
	}
	if v.VNI < 0 || v.VNI >= 1<<24 {
		ps.add("vxlan.vni", strconv.Itoa(v.VNI), ReasonRange, "must be between 1 and 16777215 (or left out for %d)", plan.DefaultVNI)
	}
	if v.Port < 0 || v.Port > 65535 {
		ps.add("vxlan.port", strconv.Itoa(v.Port), ReasonRange, "must be between 1 and 65535 (or left out for %d)", plan.DefaultVXLANPort)
	}
	if v.MTU != 0 && (v.MTU < 68 || v.MTU > MaxVXLANMTU) {
		ps.add("vxlan.mtu", strconv.Itoa(v.MTU), ReasonRange, "must be between 68 and %d: eth0 has MTU %d and VXLAN adds %d bytes (or left out)", MaxVXLANMTU, plan.DefaultHostMTU, plan.VXLANOverhead)
	}
}

// Config returns the settings with defaults filled in.
func (v VXLAN) Config() plan.VXLANConfig {
	c := plan.VXLANConfig{Device: v.Device, VNI: v.VNI, Port: v.Port, MTU: v.MTU}
	if c.Device == "" {
		c.Device = plan.DefaultVXLANDevice
	}
	if c.VNI == 0 {
		c.VNI = plan.DefaultVNI
	}
	if c.Port == 0 {
		c.Port = plan.DefaultVXLANPort
	}
	if c.MTU == 0 {
		c.MTU = MaxVXLANMTU
	}
	return c
}

// memberAddr checks a member's address against its subnet and the other
// addresses; owner describes the member for duplicate messages.
type addrOwners map[netip.Addr]string

func (t *Topology) validateMembers(ps *problems, subnets []subnetInfo, pools []poolInfo) {
	owners := addrOwners{}
	for _, s := range subnets {
		if s.router.IsValid() {
			owners[s.router] = fmt.Sprintf("subnets[%d] (%s)'s router", s.idx, s.name)
		}
	}
	names := map[string]string{}
	claimName := func(path, name, what string) {
		if r := nameRule(name); r != "" {
			reason := ReasonName
			if name == "" {
				reason = ReasonRequired
			}
			ps.add(path, name, reason, "%s", r)
			return
		}
		if name == RouterTarget {
			ps.add(path, name, ReasonName, "is reserved for the router namespace; pick another name")
			return
		}
		if prev, dup := names[name]; dup {
			ps.add(path, name, ReasonDuplicate, "is also the name of %s; nodes and hosts need distinct names", prev)
			return
		}
		names[name] = what
	}
	macs := map[string]string{}

	// Plain hosts, subnet by subnet.
	for i, s := range t.Subnets {
		var sub *subnetInfo
		for k := range subnets {
			if subnets[k].idx == i {
				sub = &subnets[k]
			}
		}
		for j, h := range s.Hosts {
			path := fmt.Sprintf("subnets[%d].hosts[%d]", i, j)
			claimName(path+".name", h.Name, path)
			if h.Address == "" {
				ps.add(path+".address", "", ReasonRequired, "is required: the host's address in subnet %s", s.Name)
				continue
			}
			a, bits, ok := parseBareOrPrefixed(h.Address)
			if !ok || !a.Is4() {
				ps.add(path+".address", h.Address, ReasonFormat, "must be an IPv4 address, for example 192.168.3.10")
				continue
			}
			if sub == nil {
				continue // the subnet itself is invalid and reported
			}
			if bits >= 0 && bits != sub.cidr.Bits() {
				ps.add(path+".address", h.Address, ReasonMismatch, "has prefix /%d but subnet %s is %s; write %s or %s/%d", bits, sub.name, sub.cidr, a, a, sub.cidr.Bits())
				continue
			}
			checkMemberAddr(ps, path+".address", h.Address, a, sub, owners, path+" ("+h.Name+")")
		}
	}

	if len(t.Nodes) == 0 {
		ps.add("nodes", "", ReasonRequired, "list at least one node (name, address)")
	}
	members := len(t.Nodes)
	for _, s := range t.Subnets {
		members += len(s.Hosts)
	}
	if members > MaxMembers {
		ps.add("nodes", strconv.Itoa(members), ReasonRange, "the lab holds at most %d nodes and hosts together", MaxMembers)
	}
	type blockOwner struct {
		path string
		cidr netip.Prefix
	}
	var blocks []blockOwner
	podOwners := map[netip.Addr]string{}
	total := 0
	for i, n := range t.Nodes {
		path := fmt.Sprintf("nodes[%d]", i)
		who := fmt.Sprintf("%s (%s)", path, n.Name)
		claimName(path+".name", n.Name, path)

		t.validateNodeAddress(ps, path+".address", n.Address, subnets, owners, who)

		if n.MAC != "" {
			hw, err := net.ParseMAC(n.MAC)
			switch {
			case err != nil || len(hw) != 6:
				ps.add(path+".mac", n.MAC, ReasonFormat, "must be a 6-byte Ethernet MAC address such as 00:15:5d:03:0b:0a")
			case hw[0]&1 == 1:
				ps.add(path+".mac", n.MAC, ReasonFormat, "is a multicast MAC address: the lowest bit of the first byte must be 0, e.g. 02:...")
			case slices.Equal(hw, net.HardwareAddr{0, 0, 0, 0, 0, 0}):
				ps.add(path+".mac", n.MAC, ReasonFormat, "must not be all zeros")
			default:
				if prev, dup := macs[hw.String()]; dup {
					ps.add(path+".mac", n.MAC, ReasonDuplicate, "is also the MAC of %s; MACs on one segment must differ", prev)
				} else {
					macs[hw.String()] = who
				}
			}
		}

		var block netip.Prefix
		if n.Block != "" {
			block = validateBlock(ps, path+".block", n.Block, pools)
			if block.IsValid() {
				for _, o := range blocks {
					if o.cidr.Overlaps(block) {
						ps.add(path+".block", n.Block, ReasonDuplicate, "is also the block of %s; a block belongs to one node", o.path)
						block = netip.Prefix{}
						break
					}
				}
				if block.IsValid() {
					blocks = append(blocks, blockOwner{path: who, cidr: block})
				}
			}
		}

		total += n.Pods.Len()
		if n.Pods.Addresses != nil {
			if len(n.Pods.Addresses) > MaxPodsPerNode {
				ps.add(path+".pods", strconv.Itoa(len(n.Pods.Addresses)), ReasonRange, "a node holds at most %d lab pods", MaxPodsPerNode)
				continue
			}
			if n.Block == "" && len(n.Pods.Addresses) > 0 {
				ps.add(path+".block", "", ReasonRequired, "pods given as addresses need the node's block pinned: add block: <the pool block that holds them>, or give a pod count instead")
				continue
			}
			for k, s := range n.Pods.Addresses {
				ppath := fmt.Sprintf("%s.pods[%d]", path, k)
				a, bits, ok := parseBareOrPrefixed(s)
				if !ok || !a.Is4() || (bits >= 0 && bits != 32) {
					ps.add(ppath, s, ReasonFormat, "must be an IPv4 address such as 172.16.159.145")
					continue
				}
				if !block.IsValid() {
					continue // the block is invalid and reported
				}
				if !block.Contains(a) {
					ps.add(ppath, s, ReasonOutside, "is outside the node's block %s; pods take addresses of their node's block", block)
					continue
				}
				if a == block.Addr() {
					ps.add(ppath, s, ReasonReserved, "is the first address of block %s, which the node's VXLAN tunnel takes; pick another", block)
					continue
				}
				if prev, dup := podOwners[a]; dup {
					ps.add(ppath, s, ReasonDuplicate, "is also the address of %s", prev)
					continue
				}
				podOwners[a] = ppath
			}
			continue
		}
		switch c := n.Pods.Count; {
		case c < 0 || c > MaxPodsPerNode:
			ps.add(path+".pods", strconv.Itoa(c), ReasonRange, "must be between 0 and %d pods", MaxPodsPerNode)
		case block.IsValid() && c > (1<<(32-block.Bits()))-1:
			ps.add(path+".pods", strconv.Itoa(c), ReasonRange, "block %s holds at most %d pods besides the tunnel address", block, (1<<(32-block.Bits()))-1)
		}
	}
	if total > MaxPods {
		ps.add("nodes", strconv.Itoa(total), ReasonRange, "the lab holds at most %d pods in all", MaxPods)
	}
}

func (t *Topology) validateNodeAddress(ps *problems, path, s string, subnets []subnetInfo, owners addrOwners, who string) {
	pfx, err := api.ParseNodeAddress(s)
	if err != nil {
		reason := ReasonFormat
		if s == "" {
			reason = ReasonRequired
		}
		rule := err.Error()
		var ae *api.AddressError
		if errors.As(err, &ae) {
			rule = ae.Rule
		}
		ps.add(path, s, reason, "%s", rule)
		return
	}
	a := pfx.Addr()
	if !a.Is4() {
		ps.add(path, s, ReasonFormat, "must be an IPv4 address with prefix length (the lab is IPv4 only)")
		return
	}
	var sub *subnetInfo
	for k := range subnets {
		if subnets[k].cidr.Contains(a) {
			sub = &subnets[k]
		}
	}
	if sub == nil {
		var list []string
		for _, sn := range subnets {
			list = append(list, fmt.Sprintf("%s %s", sn.name, sn.cidr))
		}
		if len(list) == 0 && len(t.Subnets) > 0 {
			return // every subnet is invalid and reported
		}
		ps.add(path, s, ReasonOutside, "is in no subnet of the topology (%s); move it into one", strings.Join(list, ", "))
		return
	}
	if pfx.Bits() != sub.cidr.Bits() {
		ps.add(path, s, ReasonMismatch, "has prefix /%d but subnet %s is %s; write %s/%d", pfx.Bits(), sub.name, sub.cidr, a, sub.cidr.Bits())
		return
	}
	checkMemberAddr(ps, path, s, a, sub, owners, who)
}

// checkMemberAddr checks that a is usable in sub and not taken.
func checkMemberAddr(ps *problems, path, s string, a netip.Addr, sub *subnetInfo, owners addrOwners, who string) {
	if !sub.cidr.Contains(a) {
		ps.add(path, s, ReasonOutside, "is outside its subnet %s (%s)", sub.name, sub.cidr)
		return
	}
	if a == sub.cidr.Addr() || a == lastAddr(sub.cidr) {
		ps.add(path, s, ReasonReserved, "is the network or broadcast address of %s; pick another", sub.cidr)
		return
	}
	if prev, dup := owners[a]; dup {
		ps.add(path, s, ReasonDuplicate, "is also the address of %s", prev)
		return
	}
	owners[a] = who
}

// validateBlock checks that s is exactly one block of a pool.
func validateBlock(ps *problems, path, s string, pools []poolInfo) netip.Prefix {
	b, err := netip.ParsePrefix(s)
	if err != nil || !b.Addr().Is4() {
		ps.add(path, s, ReasonFormat, "must be an IPv4 block in CIDR notation, for example 172.16.159.128/26")
		return netip.Prefix{}
	}
	var pool *poolInfo
	for k := range pools {
		if pools[k].cidr.Contains(b.Addr()) {
			pool = &pools[k]
		}
	}
	if pool == nil {
		var list []string
		for _, p := range pools {
			list = append(list, fmt.Sprintf("%s %s", p.name, p.cidr))
		}
		ps.add(path, s, ReasonOutside, "is in no pool (%s); pin a block of a pool", strings.Join(list, ", "))
		return netip.Prefix{}
	}
	want := netip.PrefixFrom(b.Addr(), pool.bits).Masked()
	if b.Bits() != pool.bits || b.Masked() != b {
		ps.add(path, s, ReasonAlign, "is not a block of pool %s (%s), whose blocks are /%d aligned on /%d; did you mean %s?",
			pool.name, pool.cidr, pool.bits, pool.bits, want)
		return netip.Prefix{}
	}
	return b
}

// validateDerivedNames checks that exec targets and namespace names derived
// from valid names are unique.
func (t *Topology) validateDerivedNames(ps *problems) {
	targets := map[string]string{RouterTarget: "the router"}
	nsNames := map[string]string{}
	claim := func(path, target, ns string) {
		if prev, dup := targets[target]; dup {
			ps.add(path, target, ReasonDuplicate, "names the same lab target as %s; rename one of them", prev)
		} else {
			targets[target] = path
		}
		if prev, dup := nsNames[ns]; dup {
			ps.add(path, target, ReasonName, "gets the same namespace name %s as %s; rename one of them", ns, prev)
		} else {
			nsNames[ns] = path
		}
	}
	nsNames[routerNetns(DefaultPrefix)] = "the router"
	for i, s := range t.Subnets {
		for j, h := range s.Hosts {
			claim(fmt.Sprintf("subnets[%d].hosts[%d].name", i, j), h.Name, memberNetns(DefaultPrefix, h.Name))
		}
	}
	for i, n := range t.Nodes {
		claim(fmt.Sprintf("nodes[%d].name", i), n.Name, memberNetns(DefaultPrefix, n.Name))
	}
	for i, n := range t.Nodes {
		for k := 1; k <= n.Pods.Len(); k++ {
			claim(fmt.Sprintf("nodes[%d].pods", i), PodName(n.Name, k), podNetns(DefaultPrefix, n.Name, k))
		}
	}
}
