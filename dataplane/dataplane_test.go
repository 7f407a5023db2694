package dataplane

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"twill.dev/twill/plan"
)

var (
	mp = netip.MustParsePrefix
	ma = netip.MustParseAddr
)

func TestWantRoute(t *testing.T) {
	cases := []struct {
		name string
		in   plan.Route
		want kroute // zero when an error is expected
	}{
		{"blackhole", plan.Route{Dst: mp("172.16.159.128/26"), Type: plan.RouteBlackhole},
			kroute{Dst: mp("172.16.159.128/26"), Type: plan.RouteBlackhole, Protocol: 80, Table: mainTable}},
		{"onlink via gateway", plan.Route{Dst: mp("172.16.224.0/26"), Gateway: ma("192.168.3.242"), Device: "eth0", OnLink: true},
			kroute{Dst: mp("172.16.224.0/26"), Gateway: ma("192.168.3.242"), Device: "eth0", OnLink: true, Protocol: 80, Table: mainTable}},
		{"no gateway means scope link", plan.Route{Dst: mp("172.16.159.145/32"), Device: "cali1"},
			kroute{Dst: mp("172.16.159.145/32"), Device: "cali1", ScopeLink: true, Protocol: 80, Table: mainTable}},
		{"ipv6", plan.Route{Dst: mp("fd00::/64"), Device: "eth0"}, kroute{}},
		{"host bits", plan.Route{Dst: mp("172.16.159.129/26"), Type: plan.RouteBlackhole}, kroute{}},
		{"blackhole with device", plan.Route{Dst: mp("10.0.0.0/24"), Type: plan.RouteBlackhole, Device: "eth0"}, kroute{}},
		{"unicast without device", plan.Route{Dst: mp("10.0.0.0/24"), Gateway: ma("10.1.1.1")}, kroute{}},
		{"scope link with gateway", plan.Route{Dst: mp("10.0.0.0/24"), Gateway: ma("10.1.1.1"), Device: "eth0", ScopeLink: true}, kroute{}},
		{"onlink without gateway", plan.Route{Dst: mp("10.0.0.0/24"), Device: "eth0", OnLink: true}, kroute{}},
		{"unknown type", plan.Route{Dst: mp("10.0.0.0/24"), Type: plan.RouteType(7)}, kroute{}},
		{"zero dst", plan.Route{Device: "eth0"}, kroute{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := wantRoute(c.in)
			if c.want == (kroute{}) {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("wantRoute(%+v) = %v, %v; want ErrInvalid", c.in, got, err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("wantRoute(%+v) = %+v, %v; want %+v", c.in, got, err, c.want)
			}
		})
	}
}

func TestWantDevice(t *testing.T) {
	got, err := wantDevice(plan.Device{MAC: "66:04:84:48:AB:6A", MTU: 1450})
	if err != nil {
		t.Fatal(err)
	}
	want := plan.Device{Name: plan.DefaultVXLANDevice, VNI: plan.DefaultVNI, Port: plan.DefaultVXLANPort, MTU: 1450, MAC: "66:04:84:48:ab:6a"}
	if got != want {
		t.Fatalf("defaults: got %+v, want %+v", got, want)
	}
	bad := []plan.Device{
		{Name: "a-name-longer-than-15"},
		{VNI: 1 << 24},
		{Port: 70000},
		{MTU: 40},
		{MAC: "66:04:84"},
		{LocalIP: ma("fd00::1")},
		{Address: mp("fd00::1/128")},
	}
	for _, d := range bad {
		if _, err := wantDevice(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("wantDevice(%+v) error = %v, want ErrInvalid", d, err)
		}
	}
}

func TestDrift(t *testing.T) {
	w := plan.Device{Name: "vxlan.calico", VNI: 4096, Port: 4789, MTU: 1450, Parent: "eth0",
		LocalIP: ma("192.168.3.241"), MAC: "66:04:84:48:ab:6a"}
	good := devState{Index: 9, Name: "vxlan.calico", Type: "vxlan", Up: true, MTU: 1450, MAC: "66:04:84:48:ab:6a",
		VNI: 4096, Port: 4789, Local: ma("192.168.3.241"), ParentIndex: 2}
	if re, fix := drift(w, 2, good); len(re)+len(fix) != 0 {
		t.Fatalf("matching device drifted: %v %v", re, fix)
	}
	inPlace := good
	inPlace.MTU, inPlace.MAC, inPlace.Up = 1400, "66:00:00:00:00:01", false
	if re, fix := drift(w, 2, inPlace); len(re) != 0 || !slices.Equal(fix, []string{"mtu", "mac", "down"}) {
		t.Fatalf("in-place drift: recreate %v fix %v", re, fix)
	}
	for name, mod := range map[string]func(*devState){
		"vni":      func(s *devState) { s.VNI = 4097 },
		"port":     func(s *devState) { s.Port = 8472 },
		"local":    func(s *devState) { s.Local = ma("192.168.3.9") },
		"parent":   func(s *devState) { s.ParentIndex = 3 },
		"learning": func(s *devState) { s.Learning = true },
		"group":    func(s *devState) { s.Group = true },
	} {
		s := good
		mod(&s)
		if re, _ := drift(w, 2, s); len(re) != 1 {
			t.Errorf("%s drift: recreate = %v, want one reason", name, re)
		}
	}
	// Unmanaged MTU and MAC never drift.
	w.MTU, w.MAC = 0, ""
	if _, fix := drift(w, 2, inPlace); !slices.Equal(fix, []string{"down"}) {
		t.Errorf("unmanaged MTU/MAC: fix = %v, want [down]", fix)
	}
}

func TestWantNeighborsAndFDB(t *testing.T) {
	ns, errs := wantNeighbors("vxlan.calico", []plan.Neighbor{
		{Device: "vxlan.calico", IP: ma("172.16.36.64"), MAC: "66:8C:73:5A:90:99"},
		{Device: "eth0", IP: ma("172.16.1.1"), MAC: "66:00:00:00:00:01"},
		{IP: ma("172.16.2.1"), MAC: "bogus"},
		{IP: ma("172.16.36.64"), MAC: "66:00:00:00:00:02"},
	})
	if len(ns) != 1 || ns[ma("172.16.36.64")] != "66:8c:73:5a:90:99" {
		t.Fatalf("neighbors = %v", ns)
	}
	if len(errs) != 3 {
		t.Fatalf("got %d errors, want 3: %v", len(errs), errs)
	}
	for _, err := range errs {
		var oe *OpError
		if !errors.As(err, &oe) || oe.Kind != KindNeighbor || !errors.Is(err, ErrInvalid) {
			t.Errorf("error %v is not an *OpError for a neighbor wrapping ErrInvalid", err)
		}
	}
	fs, errs := wantFDB("vxlan.calico", []plan.FDB{
		{MAC: "66:8c:73:5a:90:99", Dst: ma("192.168.32.105")},
		{MAC: "66:8c:73:5a:90:99", Dst: ma("fd00::1")},
	})
	if len(fs) != 1 || !fs[fdbKey{"66:8c:73:5a:90:99", ma("192.168.32.105")}] || len(errs) != 1 {
		t.Fatalf("fdb = %v, errors %v", fs, errs)
	}
}

// watched returns a watch state as after applying the seed-like plan with
// the VXLAN device at ifindex 9, eth0 at 2 and pod veth cali1 at 5.
func watched(t *testing.T) *watchState {
	t.Helper()
	s := newWatchState()
	d, err := wantDevice(plan.Device{Name: "vxlan.calico", VNI: 4096, Port: 4789, MTU: 1450, Parent: "eth0",
		LocalIP: ma("192.168.3.241"), MAC: "66:04:84:48:ab:6a", Address: mp("172.16.159.128/32")})
	if err != nil {
		t.Fatal(err)
	}
	s.want.device = &d
	for _, r := range []plan.Route{
		{Dst: mp("172.16.36.64/26"), Gateway: ma("172.16.36.64"), Device: "vxlan.calico", OnLink: true},
		{Dst: mp("172.16.159.128/26"), Type: plan.RouteBlackhole},
		{Dst: mp("172.16.159.145/32"), Device: "cali1"},
		{Dst: mp("172.16.159.146/32"), Device: "cali2"}, // pending: no link yet
	} {
		k, err := wantRoute(r)
		if err != nil {
			t.Fatal(err)
		}
		s.want.routes[k.Dst] = k
	}
	s.want.neighbors[ma("172.16.36.64")] = "66:8c:73:5a:90:99"
	s.want.fdb[fdbKey{"66:8c:73:5a:90:99", ma("192.168.32.105")}] = true
	s.reindex()
	s.onLink(linkEvent{State: devState{Index: 2, Name: "eth0", Type: "veth", Up: true}})
	s.onLink(linkEvent{State: devState{Index: 5, Name: "cali1", Type: "veth", Up: true}})
	s.onLink(linkEvent{State: devState{Index: 9, Name: "vxlan.calico", Type: "vxlan", Up: true, MTU: 1450,
		MAC: "66:04:84:48:ab:6a", VNI: 4096, Port: 4789, Local: ma("192.168.3.241"), ParentIndex: 2}})
	return s
}

func TestOnRoute(t *testing.T) {
	s := watched(t)
	vx := kroute{Dst: mp("172.16.36.64/26"), Gateway: ma("172.16.36.64"), LinkIndex: 9, OnLink: true, Protocol: 80, Table: mainTable}
	cases := []struct {
		name string
		ev   routeEvent
		want bool
	}{
		{"own write of a wanted route", routeEvent{Route: vx}, false},
		{"wanted route deleted", routeEvent{Deleted: true, Route: vx}, true},
		{"wanted route changed", routeEvent{Route: func() kroute { k := vx; k.Gateway = ma("172.16.36.65"); return k }()}, true},
		{"stray owned route added", routeEvent{Route: kroute{Dst: mp("10.9.0.0/24"), Type: plan.RouteBlackhole, Protocol: 80, Table: mainTable}}, true},
		{"stray owned route pruned", routeEvent{Deleted: true, Route: kroute{Dst: mp("10.9.0.0/24"), Type: plan.RouteBlackhole, Protocol: 80, Table: mainTable}}, false},
		{"foreign route elsewhere", routeEvent{Route: kroute{Dst: mp("10.9.0.0/24"), Gateway: ma("192.168.3.1"), LinkIndex: 2, Protocol: 4, Table: mainTable}}, false},
		{"foreign route takes a wanted key", routeEvent{Route: kroute{Dst: mp("172.16.36.64/26"), Gateway: ma("192.168.3.1"), LinkIndex: 2, Protocol: 4, Table: mainTable}}, true},
		{"foreign route on a wanted dst, other metric", routeEvent{Route: kroute{Dst: mp("172.16.36.64/26"), LinkIndex: 2, Protocol: 4, Table: mainTable, Priority: 100}}, false},
		{"owned route in another table", routeEvent{Deleted: true, Route: func() kroute { k := vx; k.Table = 100; return k }()}, false},
	}
	for _, c := range cases {
		if got := s.onRoute(c.ev); got != c.want {
			t.Errorf("%s: onRoute = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestOnRouteBeforeLinkEvent(t *testing.T) {
	s := watched(t)
	// Apply recreated the device at ifindex 12; its link event is not in yet.
	s.devIndex = 12
	vx := kroute{Dst: mp("172.16.36.64/26"), Gateway: ma("172.16.36.64"), LinkIndex: 12, OnLink: true, Protocol: 80, Table: mainTable}
	if s.onRoute(routeEvent{Route: vx}) {
		t.Error("own write via the just-created device signalled")
	}
	vx.LinkIndex = 13
	if !s.onRoute(routeEvent{Route: vx}) {
		t.Error("wanted route via an unknown link did not signal")
	}
}

func TestOnLink(t *testing.T) {
	s := watched(t)
	dev := devState{Index: 9, Name: "vxlan.calico", Type: "vxlan", Up: true, MTU: 1450,
		MAC: "66:04:84:48:ab:6a", VNI: 4096, Port: 4789, Local: ma("192.168.3.241"), ParentIndex: 2}
	steps := []struct {
		name string
		ev   linkEvent
		want bool
	}{
		{"device as wanted", linkEvent{State: dev}, false},
		{"device MTU drifted", linkEvent{State: func() devState { d := dev; d.MTU = 1400; return d }()}, true},
		{"device down", linkEvent{State: func() devState { d := dev; d.Up = false; return d }()}, true},
		{"device deleted", linkEvent{Deleted: true, State: dev}, true},
		{"device recreated as wanted", linkEvent{State: func() devState { d := dev; d.Index = 12; return d }()}, false},
		{"unrelated link appears", linkEvent{State: devState{Index: 20, Name: "docker0", Type: "bridge"}}, false},
		{"pending pod link appears", linkEvent{State: devState{Index: 21, Name: "cali2", Type: "veth"}}, true},
		{"pending pod link unchanged", linkEvent{State: devState{Index: 21, Name: "cali2", Type: "veth"}}, false},
		{"pending pod link comes up", linkEvent{State: devState{Index: 21, Name: "cali2", Type: "veth", Up: true}}, true},
		{"pod link goes away", linkEvent{Deleted: true, State: devState{Index: 5, Name: "cali1", Type: "veth"}}, true},
		{"parent goes down", linkEvent{State: devState{Index: 2, Name: "eth0", Type: "veth"}}, true},
	}
	for _, st := range steps {
		if got := s.onLink(st.ev); got != st.want {
			t.Errorf("%s: onLink = %v, want %v", st.name, got, st.want)
		}
	}
	if s.devIndex != 12 {
		t.Errorf("devIndex = %d, want 12 after the device was recreated", s.devIndex)
	}
}

func TestOnAddrAndNeigh(t *testing.T) {
	s := watched(t)
	addr := []struct {
		ev   addrEvent
		want bool
	}{
		{addrEvent{LinkIndex: 9, Prefix: mp("172.16.159.128/32")}, false},
		{addrEvent{Deleted: true, LinkIndex: 9, Prefix: mp("172.16.159.128/32")}, true},
		{addrEvent{LinkIndex: 9, Prefix: mp("10.0.0.1/32")}, true},
		{addrEvent{Deleted: true, LinkIndex: 9, Prefix: mp("10.0.0.1/32")}, false},
		{addrEvent{Deleted: true, LinkIndex: 2, Prefix: mp("192.168.3.241/24")}, false},
	}
	for _, c := range addr {
		if got := s.onAddr(c.ev); got != c.want {
			t.Errorf("onAddr(%+v) = %v, want %v", c.ev, got, c.want)
		}
	}
	const mac = "66:8c:73:5a:90:99"
	neigh := []struct {
		name string
		ev   neighEvent
		want bool
	}{
		{"own neighbour write", neighEvent{LinkIndex: 9, Permanent: true, IP: ma("172.16.36.64"), MAC: mac}, false},
		{"wanted neighbour deleted", neighEvent{Deleted: true, LinkIndex: 9, IP: ma("172.16.36.64"), MAC: mac}, true},
		{"wanted neighbour with wrong MAC", neighEvent{LinkIndex: 9, Permanent: true, IP: ma("172.16.36.64"), MAC: "66:00:00:00:00:01"}, true},
		{"stray permanent neighbour", neighEvent{LinkIndex: 9, Permanent: true, IP: ma("172.16.9.9"), MAC: mac}, true},
		{"stray dynamic neighbour", neighEvent{LinkIndex: 9, IP: ma("172.16.9.9"), MAC: mac}, false},
		{"neighbour on another link", neighEvent{Deleted: true, LinkIndex: 2, IP: ma("172.16.36.64"), MAC: mac}, false},
		{"own fdb write", neighEvent{LinkIndex: 9, Bridge: true, Self: true, Permanent: true, IP: ma("192.168.32.105"), MAC: mac}, false},
		{"wanted fdb deleted", neighEvent{Deleted: true, LinkIndex: 9, Bridge: true, Self: true, IP: ma("192.168.32.105"), MAC: mac}, true},
		{"stray permanent fdb", neighEvent{LinkIndex: 9, Bridge: true, Self: true, Permanent: true, IP: ma("192.168.32.9"), MAC: mac}, true},
		{"stray fdb pruned", neighEvent{Deleted: true, LinkIndex: 9, Bridge: true, Self: true, IP: ma("192.168.32.9"), MAC: mac}, false},
		{"bridge master's fdb", neighEvent{Deleted: true, LinkIndex: 9, Bridge: true, IP: ma("192.168.32.105"), MAC: mac}, false},
	}
	for _, c := range neigh {
		if got := s.onNeigh(c.ev); got != c.want {
			t.Errorf("%s: onNeigh = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestResultChanges(t *testing.T) {
	var r Result
	r.merge(Result{Device: Counts{Added: 1}, Routes: Counts{Updated: 2, Deleted: 3}, Pending: []plan.Route{{}}})
	r.merge(Result{FDB: Counts{Added: 4}})
	if r.Changes() != 10 || len(r.Pending) != 1 {
		t.Fatalf("merged result = %+v, Changes %d", r, r.Changes())
	}
}
