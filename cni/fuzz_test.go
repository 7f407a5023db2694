package cni

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParseConfig feeds the network configuration parser arbitrary bytes:
// it must never panic, must answer either a configuration or a CNI error
// with the decode or invalid-config code, and what it accepts must be
// usable (an MTU in range, an absolute socket, one IPv4 address at most).
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"twill","type":"twill"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"twill","agentSocket":"/run/a.sock","mtu":1450,"logLevel":"debug","logFile":"/tmp/l"}`,
		`{"name":"n","runtimeConfig":{"ips":["10.0.0.1/32"]}}`,
		`{"name":"n","cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}]}`,
		`{"cniVersion":"1.1.0","name":"n","prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.1/32"}]}}`,
		`{"name":"n","mtu":-5}`,
		`{"name":`,
		`[]`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := ParseConfig(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %v is not a *types.Error", err)
			}
			if te.Code != CodeDecode && te.Code != CodeInvalidConfig {
				t.Fatalf("code %d; want %d or %d", te.Code, CodeDecode, CodeInvalidConfig)
			}
			if te.Msg == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if conf.Name == "" {
			t.Fatal("accepted a configuration without a name")
		}
		if conf.MTU != 0 && (conf.MTU < MinMTU || conf.MTU > MaxMTU) {
			t.Fatalf("accepted mtu %d", conf.MTU)
		}
		if conf.AgentSocket == "" || conf.AgentSocket[0] != '/' {
			t.Fatalf("accepted agentSocket %q", conf.AgentSocket)
		}
		a, err := conf.requestedIP()
		if err != nil {
			t.Fatalf("accepted ips %q that requestedIP refuses: %v", conf.RuntimeConfig.IPs, err)
		}
		if a.IsValid() && !a.Is4() {
			t.Fatalf("accepted a non-IPv4 request %s", a)
		}
	})
}
