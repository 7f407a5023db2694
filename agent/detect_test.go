package agent

import (
	"errors"
	"net/netip"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// testLinks is a host with the usual virtual clutter before its real NIC.
var testLinks = []linkInfo{
	{Name: "lo", Index: 1, Type: "device", Up: true, MTU: 65536, Addrs: []netip.Prefix{pfx("127.0.0.1/8")}},
	{Name: "docker0", Index: 2, Type: "bridge", Up: true, MTU: 1500, Addrs: []netip.Prefix{pfx("172.17.0.1/16")}},
	{Name: "br-lan", Index: 3, Type: "bridge", Up: true, MTU: 1500, Addrs: []netip.Prefix{pfx("10.10.0.1/24")}},
	{Name: "eth1", Index: 4, Type: "device", Up: false, MTU: 1500, Addrs: []netip.Prefix{pfx("10.20.0.5/24")}},
	{Name: "cali64d6bf8fbc2", Index: 5, Type: "veth", Up: true, MTU: 1500, Addrs: []netip.Prefix{pfx("169.254.1.1/32")}},
	{Name: "vxlan.calico", Index: 6, Type: "vxlan", Up: true, MTU: 1450, Addrs: []netip.Prefix{pfx("172.16.159.128/32")}},
	{Name: "veth12", Index: 7, Type: "veth", Up: true, MTU: 1500, Addrs: []netip.Prefix{pfx("10.30.0.1/24")}},
	{Name: "eth0", Index: 8, Type: "veth", Up: true, MTU: 1500, Addrs: []netip.Prefix{pfx("fe80::1/64"), pfx("169.254.9.9/16"), pfx("192.168.3.241/24")}},
	{Name: "ens5", Index: 9, Type: "device", Up: true, MTU: 9001, Addrs: []netip.Prefix{pfx("192.168.32.105/24"), pfx("192.168.33.1/24")}},
}

func TestParseAutodetectMethod(t *testing.T) {
	good := map[string]string{
		"":                                "first-found",
		"first-found":                     "first-found",
		"interface=eth.*":                 "interface=eth.*",
		"interface=eth0,ens.*":            "interface=eth0,ens.*",
		"skip-interface=eth0":             "skip-interface=eth0",
		"cidr=192.168.3.0/24":             "cidr=192.168.3.0/24",
		"cidr=192.168.3.7/24, 10.0.0.0/8": "cidr=192.168.3.0/24,10.0.0.0/8",
		"can-reach=192.168.32.1":          "can-reach=192.168.32.1",
	}
	for in, want := range good {
		m, err := ParseAutodetectMethod(in)
		if err != nil {
			t.Errorf("ParseAutodetectMethod(%q): %v", in, err)
			continue
		}
		if m.String() != want {
			t.Errorf("ParseAutodetectMethod(%q) = %s, want %s", in, m, want)
		}
	}
	for _, in := range []string{"interface=", "interface=(", "cidr=10.0.0.0", "can-reach=example.com", "can-reach=::1", "nearest", "first"} {
		if _, err := ParseAutodetectMethod(in); err == nil {
			t.Errorf("ParseAutodetectMethod(%q) succeeded, want an error", in)
		}
	}
}

func TestSelectAddress(t *testing.T) {
	cases := []struct {
		method string
		want   HostAddress
	}{
		{"first-found", HostAddress{Prefix: pfx("192.168.3.241/24"), Interface: "eth0", MTU: 1500}},
		{"interface=ens.*", HostAddress{Prefix: pfx("192.168.32.105/24"), Interface: "ens5", MTU: 9001}},
		{"interface=nomatch,ens5", HostAddress{Prefix: pfx("192.168.32.105/24"), Interface: "ens5", MTU: 9001}},
		{"skip-interface=eth0", HostAddress{Prefix: pfx("192.168.32.105/24"), Interface: "ens5", MTU: 9001}},
		{"cidr=192.168.33.0/24", HostAddress{Prefix: pfx("192.168.33.1/24"), Interface: "ens5", MTU: 9001}},
		{"cidr=10.99.0.0/16,192.168.3.0/24", HostAddress{Prefix: pfx("192.168.3.241/24"), Interface: "eth0", MTU: 1500}},
	}
	for _, tc := range cases {
		m, err := ParseAutodetectMethod(tc.method)
		if err != nil {
			t.Fatal(err)
		}
		got, err := selectAddress(m, testLinks)
		if err != nil {
			t.Errorf("%s: %v", tc.method, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.method, got, tc.want)
		}
	}
	// cidr= considers every up link, whatever its name or kind...
	for method, iface := range map[string]string{"cidr=10.30.0.0/16": "veth12", "cidr=172.17.0.0/16": "docker0"} {
		m, _ := ParseAutodetectMethod(method)
		if got, err := selectAddress(m, testLinks); err != nil || got.Interface != iface {
			t.Errorf("%s: got %+v, %v; want %s", method, got, err, iface)
		}
	}
	// ...but never a down one.
	m, _ := ParseAutodetectMethod("cidr=10.20.0.0/16")
	if got, err := selectAddress(m, testLinks); !errors.Is(err, ErrDetect) {
		t.Errorf("cidr= picked the down link: %+v, %v", got, err)
	}
	m, _ = ParseAutodetectMethod("first-found")
	only := []linkInfo{testLinks[0], testLinks[1], testLinks[5]}
	if _, err := selectAddress(m, only); !errors.Is(err, ErrDetect) {
		t.Errorf("first-found on lo, docker0 and vxlan.calico: err = %v, want ErrDetect", err)
	}
}

func TestResolveIP(t *testing.T) {
	got, err := resolveIP("192.168.32.105", testLinks)
	if err != nil || got != (HostAddress{Prefix: pfx("192.168.32.105/24"), Interface: "ens5", MTU: 9001}) {
		t.Errorf("bare address: %+v, %v; want the interface's /24", got, err)
	}
	got, err = resolveIP("192.168.3.241/23", testLinks)
	if err != nil || got != (HostAddress{Prefix: pfx("192.168.3.241/23"), Interface: "eth0", MTU: 1500}) {
		t.Errorf("address with prefix: %+v, %v; want the given prefix on eth0", got, err)
	}
	got, err = resolveIP("10.1.2.3/16", testLinks)
	if err != nil || got != (HostAddress{Prefix: pfx("10.1.2.3/16")}) {
		t.Errorf("foreign address with prefix: %+v, %v; want it as given", got, err)
	}
	for _, bad := range []string{"10.1.2.3", "not-an-ip", "fd00::1"} {
		if _, err := resolveIP(bad, testLinks); !errors.Is(err, ErrDetect) {
			t.Errorf("resolveIP(%q): err = %v, want ErrDetect", bad, err)
		}
	}
}

func TestAddressOnLink(t *testing.T) {
	got, err := addressOnLink(testLinks, 9, netip.MustParseAddr("192.168.33.1"), netip.MustParseAddr("192.168.33.9"))
	if err != nil || got.Prefix != pfx("192.168.33.1/24") {
		t.Errorf("with source: %+v, %v", got, err)
	}
	got, err = addressOnLink(testLinks, 9, netip.Addr{}, netip.MustParseAddr("8.8.8.8"))
	if err != nil || got.Prefix != pfx("192.168.32.105/24") {
		t.Errorf("without source: %+v, %v", got, err)
	}
	if _, err := addressOnLink(testLinks, 99, netip.Addr{}, netip.MustParseAddr("8.8.8.8")); !errors.Is(err, ErrDetect) {
		t.Errorf("unknown link: err = %v", err)
	}
}

func TestConfigCheck(t *testing.T) {
	bad := []Config{
		{NodeName: "n", IP: "10.0.0.1/33"},
		{NodeName: "n", IP: "fd00::1"},
		{NodeName: "n", AutodetectMethod: "nearest"},
		{NodeName: "n", HealthAddr: "0.0.0.0:9099"},
		{NodeName: "n", HealthAddr: "9099"},
		{NodeName: "n", VTEPMAC: "01:00:00:00:00:01"},
		{NodeName: "n", ResyncInterval: -1},
		{NodeName: "n"},
	}
	bad[len(bad)-1].VXLAN.Device = "this-name-is-too-long"
	for _, c := range bad {
		if err := c.Check(); !errors.Is(err, ErrConfig) {
			t.Errorf("Check(%+v) = %v, want ErrConfig", c, err)
		}
	}
	good := Config{NodeName: "n", IP: "192.168.3.241", HealthAddr: "127.0.0.1:9099", MetricsAddr: "127.0.0.1:9091", VTEPMAC: "66:04:84:48:AB:6A"}
	if err := good.Check(); err != nil {
		t.Errorf("Check(%+v) = %v", good, err)
	}
	c, _ := good.withDefaults()
	if c.VTEPMAC != "66:04:84:48:ab:6a" || c.SocketPath == "" || c.ResyncInterval != DefaultResyncInterval {
		t.Errorf("defaults not filled in: %+v", c)
	}
}
