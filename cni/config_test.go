package cni

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"twill.dev/twill/agentapi"
)

// codeOf returns the CNI error code of err, failing the test when err is
// not a *types.Error.
func codeOf(t *testing.T, err error) uint {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a *types.Error", err, err)
	}
	return te.Code
}

func TestParseConfigDefaults(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"twill","type":"twill"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.AgentSocket != agentapi.DefaultSocket {
		t.Errorf("agentSocket = %q, want the default %q", conf.AgentSocket, agentapi.DefaultSocket)
	}
	if conf.MTU != 0 {
		t.Errorf("mtu = %d, want 0 (ask the agent)", conf.MTU)
	}
	if conf.level != slog.LevelInfo {
		t.Errorf("log level = %v, want info", conf.level)
	}
	if a, err := conf.requestedIP(); err != nil || a.IsValid() {
		t.Errorf("requested address = %v, %v; want none", a, err)
	}
}

func TestParseConfigValues(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"n","type":"twill",
		"agentSocket":"/run/tw/a.sock","mtu":1450,"logLevel":"DEBUG","logFile":"/tmp/x.log",
		"runtimeConfig":{"ips":["10.244.1.7/24"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.AgentSocket != "/run/tw/a.sock" || conf.MTU != 1450 || conf.level != slog.LevelDebug || conf.LogFile != "/tmp/x.log" {
		t.Errorf("parsed %+v", conf)
	}
	a, err := conf.requestedIP()
	if err != nil || a != netip.MustParseAddr("10.244.1.7") {
		t.Errorf("requested address = %v, %v; want 10.244.1.7", a, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		code       uint
		mentions   string
	}{
		{"not JSON", `{"name":`, CodeDecode, "decode"},
		{"wrong type", `{"name":"n","mtu":"big"}`, CodeDecode, "mtu"},
		{"no name", `{"cniVersion":"1.1.0","type":"twill"}`, CodeInvalidConfig, `"name"`},
		{"bad version", `{"cniVersion":"one","name":"n"}`, CodeInvalidConfig, "cniVersion"},
		{"mtu low", `{"name":"n","mtu":10}`, CodeInvalidConfig, "mtu 10"},
		{"mtu high", `{"name":"n","mtu":70000}`, CodeInvalidConfig, "mtu 70000"},
		{"mtu negative", `{"name":"n","mtu":-1}`, CodeInvalidConfig, "mtu -1"},
		{"log level", `{"name":"n","logLevel":"loud"}`, CodeInvalidConfig, "logLevel"},
		{"relative socket", `{"name":"n","agentSocket":"agent.sock"}`, CodeInvalidConfig, "agentSocket"},
		{"relative log file", `{"name":"n","logFile":"cni.log"}`, CodeInvalidConfig, "logFile"},
		{"ips garbage", `{"name":"n","runtimeConfig":{"ips":["ten"]}}`, CodeInvalidConfig, "ten"},
		{"ips IPv6", `{"name":"n","runtimeConfig":{"ips":["fd00::1/128"]}}`, CodeInvalidConfig, "IPv4"},
		{"ips two", `{"name":"n","runtimeConfig":{"ips":["10.0.0.1","10.0.0.2"]}}`, CodeInvalidConfig, "one"},
		{"attachment without ifname", `{"name":"n","cni.dev/valid-attachments":[{"containerID":"c"}]}`, CodeInvalidConfig, "ifname"},
		{"prevResult garbage", `{"cniVersion":"1.1.0","name":"n","prevResult":{"ips":"x"}}`, CodeDecode, "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.conf))
			if err == nil {
				t.Fatal("parsed; want an error")
			}
			if c := codeOf(t, err); c != tc.code {
				t.Errorf("code %d, want %d (%v)", c, tc.code, err)
			}
			if !strings.Contains(err.Error(), tc.mentions) {
				t.Errorf("error %q does not mention %q", err, tc.mentions)
			}
		})
	}
}

func TestParseConfigPrevResult(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","prevResult":{"cniVersion":"1.1.0",
		"interfaces":[{"name":"cali0"},{"name":"eth0","sandbox":"/var/run/netns/x"}],
		"ips":[{"interface":1,"address":"10.244.0.5/32","gateway":"169.254.1.1"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.PrevResult == nil {
		t.Fatal("prevResult not parsed")
	}
}

func TestParseArgs(t *testing.T) {
	a, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1;IP=10.244.0.9")
	if err != nil {
		t.Fatal(err)
	}
	if a.K8S_POD_NAMESPACE != "default" || a.K8S_POD_NAME != "nginx" || a.K8S_POD_INFRA_CONTAINER_ID != "abc" || a.K8S_POD_UID != "u1" || a.IP != "10.244.0.9" {
		t.Errorf("parsed %+v", a)
	}
	// Unknown keys are ignored even without IgnoreUnknown.
	if _, err := ParseArgs("K8S_POD_NAME=x;SOMETHING_ELSE=y"); err != nil {
		t.Errorf("unknown key: %v", err)
	}
	if a, err := ParseArgs(""); err != nil || a.K8S_POD_NAME != "" {
		t.Errorf("empty CNI_ARGS: %+v, %v", a, err)
	}
	for _, bad := range []string{"K8S_POD_NAME", "IP=10.0.0.300", "IP=fd00::1", "A=b=c"} {
		_, err := ParseArgs(bad)
		if err == nil {
			t.Errorf("CNI_ARGS %q parsed; want an error", bad)
			continue
		}
		if c := codeOf(t, err); c != CodeInvalidEnvironment {
			t.Errorf("CNI_ARGS %q: code %d, want %d", bad, c, CodeInvalidEnvironment)
		}
	}
}

func TestRequested(t *testing.T) {
	mk := func(ips ...string) *NetConf {
		return &NetConf{RuntimeConfig: RuntimeConfig{IPs: ips}}
	}
	a, err := requested(mk("10.0.0.5/32"), K8sArgs{})
	if err != nil || a != netip.MustParseAddr("10.0.0.5") {
		t.Errorf("from runtimeConfig: %v, %v", a, err)
	}
	a, err = requested(mk(), K8sArgs{IP: "10.0.0.6"})
	if err != nil || a != netip.MustParseAddr("10.0.0.6") {
		t.Errorf("from CNI_ARGS: %v, %v", a, err)
	}
	a, err = requested(mk("10.0.0.7"), K8sArgs{IP: "10.0.0.7"})
	if err != nil || a != netip.MustParseAddr("10.0.0.7") {
		t.Errorf("both agreeing: %v, %v", a, err)
	}
	if _, err := requested(mk("10.0.0.7"), K8sArgs{IP: "10.0.0.8"}); err == nil || codeOf(t, err) != CodeInvalidConfig {
		t.Errorf("both disagreeing: %v, want code %d", err, CodeInvalidConfig)
	}
	if a, err := requested(mk(), K8sArgs{}); err != nil || a.IsValid() {
		t.Errorf("none: %v, %v", a, err)
	}
}

func TestLoggerFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "cni.log")
	conf, err := ParseConfig([]byte(`{"name":"n","logLevel":"warn","logFile":"` + path + `"}`))
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	log, closeLog := conf.Logger(&stderr)
	log.Info("hidden")
	log.Warn("shown", "k", "v")
	closeLog()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "shown") || strings.Contains(string(b), "hidden") {
		t.Errorf("log file holds %q; want the warning only", b)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr got %q; want nothing", stderr.String())
	}
}

// TestMissingEnvironment runs the plugin's entry point as the runtime
// would, without CNI_CONTAINERID.
func TestMissingEnvironment(t *testing.T) {
	for _, k := range []string{"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"} {
		t.Setenv(k, "")
	}
	t.Setenv("CNI_COMMAND", "ADD")
	t.Setenv("CNI_NETNS", "/var/run/netns/none")
	t.Setenv("CNI_IFNAME", "eth0")
	t.Setenv("CNI_PATH", "/opt/cni/bin")
	e := skel.PluginMainFuncsWithError(Funcs(), version.All, About)
	if e == nil {
		t.Fatal("ADD without CNI_CONTAINERID succeeded")
	}
	if e.Code != CodeInvalidEnvironment || !strings.Contains(e.Msg, "CNI_CONTAINERID") {
		t.Errorf("got code %d %q; want code %d naming CNI_CONTAINERID", e.Code, e.Msg, CodeInvalidEnvironment)
	}
}

func TestGCAttachments(t *testing.T) {
	got, err := gcAttachments([]byte(`{"name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	if err != nil || len(got) != 1 || got[0] != (agentapi.Attachment{ContainerID: "a", IfName: "eth0"}) {
		t.Errorf("got %+v, %v", got, err)
	}
	// The first version's spelling is read too.
	got, err = gcAttachments([]byte(`{"name":"n","cni.dev/attachments":[{"containerID":"b","ifname":"net1"}]}`))
	if err != nil || len(got) != 1 || got[0].ContainerID != "b" {
		t.Errorf("old key: got %+v, %v", got, err)
	}
	// null means no attachment is valid.
	got, err = gcAttachments([]byte(`{"name":"n","cni.dev/valid-attachments":null}`))
	if err != nil || got == nil || len(got) != 0 {
		t.Errorf("null: got %#v, %v; want an empty list", got, err)
	}
	// No key at all is refused: it would release everything.
	if _, err := gcAttachments([]byte(`{"name":"n"}`)); err == nil || codeOf(t, err) != CodeInvalidConfig {
		t.Errorf("no key: %v; want code %d", err, CodeInvalidConfig)
	}
}
