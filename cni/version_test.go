package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// checkResultJSON checks that raw, a result the plugin printed for a
// configuration of version v, is a result of exactly that version: its
// cniVersion is v, its "ips" entries carry "version":"4" before 1.0.0 and
// no "version" from 1.0.0 on, and the library parses it as v's type. It
// returns the pod address the result gives.
func checkResultJSON(t *testing.T, v string, raw []byte) netip.Addr {
	t.Helper()
	var m struct {
		CNIVersion string           `json:"cniVersion"`
		Interfaces []map[string]any `json:"interfaces"`
		IPs        []map[string]any `json:"ips"`
		Routes     []map[string]any `json:"routes"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("result %s: %v", raw, err)
	}
	if m.CNIVersion != v {
		t.Errorf("result cniVersion %q; want the configuration's %q: %s", m.CNIVersion, v, raw)
	}
	pre100, err := version.GreaterThan("1.0.0", v)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.IPs) != 1 {
		t.Fatalf("result has %d ips; want 1: %s", len(m.IPs), raw)
	}
	ip := m.IPs[0]
	ipVersion, hasVersion := ip["version"]
	switch {
	case pre100 && ipVersion != "4":
		t.Errorf("CNI %s result: ips[0].version = %v; want \"4\": %s", v, ipVersion, raw)
	case !pre100 && hasVersion:
		t.Errorf("CNI %s result: ips[0] has a version field (%v), which 1.0.0 dropped: %s", v, ipVersion, raw)
	}
	if ip["gateway"] != gateway.String() || ip["interface"] != float64(1) {
		t.Errorf("ips[0] = %v; want gateway %s on interface 1", ip, gateway)
	}
	addr, _ := ip["address"].(string)
	p, err := netip.ParsePrefix(addr)
	if err != nil || p.Bits() != 32 || !p.Addr().Is4() {
		t.Errorf("ips[0].address %v: want an IPv4 /32 (%v)", ip["address"], err)
	}
	if len(m.Interfaces) != 2 {
		t.Errorf("interfaces %v; want the host veth then the pod interface", m.Interfaces)
	} else if sb, _ := m.Interfaces[1]["sandbox"].(string); m.Interfaces[0]["mac"] != hostMAC.String() || sb == "" {
		t.Errorf("interfaces %v; want the host veth then the pod interface", m.Interfaces)
	}
	if len(m.Routes) != 1 || m.Routes[0]["dst"] != "0.0.0.0/0" || m.Routes[0]["gw"] != gateway.String() {
		t.Errorf("routes %v; want default via %s", m.Routes, gateway)
	}

	// The library reads it as a result of version v, of v's type.
	res, err := version.NewResult(v, raw)
	if err != nil {
		t.Fatalf("parse the result as CNI %s: %v", v, err)
	}
	if res.Version() != v {
		t.Errorf("parsed result version %s; want %s", res.Version(), v)
	}
	switch res.(type) {
	case *types040.Result:
		if !pre100 {
			t.Errorf("a CNI %s result parsed as a 0.4.0-type result", v)
		}
	case *current.Result:
		if pre100 {
			t.Errorf("a CNI %s result parsed as a 1.x-type result", v)
		}
	default:
		t.Errorf("CNI %s result parsed as %T", v, res)
	}
	return p.Addr()
}

func TestSupportedVersions(t *testing.T) {
	got := VersionInfo().SupportedVersions()
	if want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}; !slices.Equal(got, want) {
		t.Errorf("VERSION lists %v; want %v", got, want)
	}
	if !slices.Equal(SupportedVersions(), got) {
		t.Errorf("SupportedVersions %v differs from VersionInfo %v", SupportedVersions(), got)
	}
	// The library's newest version is the plugin's too.
	if !slices.Contains(got, version.Current()) || !slices.Contains(got, current.ImplementedSpecVersion) {
		t.Errorf("the plugin does not support the library's version %s", version.Current())
	}
	if !slices.Contains(got, DefaultCNIVersion) {
		t.Errorf("DefaultCNIVersion %s is not supported", DefaultCNIVersion)
	}
	for _, v := range got {
		if err := CheckVersion(v); err != nil {
			t.Errorf("CheckVersion(%s): %v", v, err)
		}
	}
	for _, v := range []string{"", "0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.0", "one"} {
		err := CheckVersion(v)
		if !errors.Is(err, ErrUnsupportedVersion) || !strings.Contains(err.Error(), "1.0.0") {
			t.Errorf("CheckVersion(%q) = %v; want ErrUnsupportedVersion listing the supported versions", v, err)
		}
	}
}

// TestResultVersions converts an attachment's result to every supported
// version and checks the JSON the plugin prints.
func TestResultVersions(t *testing.T) {
	at := attachment{
		hostVeth: "cali0123456789a", ifName: "eth0", podMAC: "02:11:22:33:44:55",
		netns: "/var/run/netns/twtest", addr: netip.MustParseAddr("10.244.1.7"), mtu: 1400,
	}
	for _, v := range SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			res, err := at.resultAs(v)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := res.PrintTo(&buf); err != nil {
				t.Fatal(err)
			}
			if got := checkResultJSON(t, v, buf.Bytes()); got != at.addr {
				t.Errorf("result address %s; want %s", got, at.addr)
			}
			// Converted back (as CHECK reads a prevResult), it is the same
			// attachment.
			back, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			if len(back.IPs) != 1 || back.IPs[0].Address.String() != at.addr.String()+"/32" ||
				len(back.Interfaces) != 2 || back.Interfaces[1].Mac != at.podMAC || back.Interfaces[1].Sandbox != at.netns {
				t.Errorf("the %s result read back as 1.1.0: %v", v, back)
			}
		})
	}
	_, err := at.resultAs("9.9.9")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrIncompatibleCNIVersion {
		t.Errorf("result as 9.9.9: %v; want code %d", err, types.ErrIncompatibleCNIVersion)
	}
}

func TestVersionAllows(t *testing.T) {
	for _, tc := range []struct {
		v, cmd string
		ok     bool
	}{
		{"0.3.0", "ADD", true}, {"0.3.1", "DEL", true}, {"0.3.1", "CHECK", false},
		{"0.4.0", "CHECK", true}, {"0.4.0", "STATUS", false}, {"1.0.0", "ADD", true},
		{"1.0.0", "CHECK", true}, {"1.0.0", "STATUS", false}, {"1.0.0", "GC", false},
		{"1.1.0", "STATUS", true}, {"1.1.0", "GC", true}, {"1.1.0", "ADD", true},
		{"", "ADD", false}, {"0.2.0", "DEL", false}, {"1.2.0", "ADD", false},
	} {
		err := versionAllows(tc.v, tc.cmd)
		if tc.ok {
			if err != nil {
				t.Errorf("%s at %q: %v", tc.cmd, tc.v, err)
			}
			continue
		}
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrIncompatibleCNIVersion {
			t.Errorf("%s at %q: %v; want code %d (incompatible CNI version)", tc.cmd, tc.v, err, types.ErrIncompatibleCNIVersion)
		}
	}
}

// TestFuncsRefuseOldVersions calls the plugin's functions without skel:
// they refuse what the configuration's version lacks before they reach the
// agent (there is none here: reaching it would fail with another code).
func TestFuncsRefuseOldVersions(t *testing.T) {
	sock := t.TempDir() + "/nobody.sock"
	conf := func(v string) []byte {
		return []byte(`{"cniVersion":"` + v + `","name":"n","type":"twill","agentSocket":"` + sock + `","cni.dev/valid-attachments":[]}`)
	}
	f := Funcs()
	for _, tc := range []struct {
		name string
		fn   func(*skel.CmdArgs) error
		v    string
	}{
		{"STATUS", f.Status, "1.0.0"},
		{"GC", f.GC, "1.0.0"},
		{"GC", f.GC, "0.4.0"},
		{"CHECK", f.Check, "0.3.1"},
		{"ADD", f.Add, "0.2.0"},
		{"DEL", f.Del, "1.2.0"},
	} {
		err := tc.fn(&skel.CmdArgs{ContainerID: "twtest", IfName: "eth0", Netns: "/var/run/netns/twtest-none", StdinData: conf(tc.v)})
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrIncompatibleCNIVersion {
			t.Errorf("%s with a %s configuration: %v; want code %d", tc.name, tc.v, err, types.ErrIncompatibleCNIVersion)
		}
	}
	// The same STATUS at 1.1.0 reaches for the agent.
	err := f.Status(&skel.CmdArgs{StdinData: conf("1.1.0")})
	var te *types.Error
	if !errors.As(err, &te) || te.Code != CodePluginNotAvailable {
		t.Errorf("STATUS at 1.1.0 without an agent: %v; want code %d", err, CodePluginNotAvailable)
	}
}
