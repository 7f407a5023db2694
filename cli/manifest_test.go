package cli_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/manifest"
)

// manifestObjects decodes the DaemonSet and ConfigMap of a manifest.
func manifestObjects(t *testing.T, out string) (*appsv1.DaemonSet, *corev1.ConfigMap, []string) {
	t.Helper()
	var ds *appsv1.DaemonSet
	var cm *corev1.ConfigMap
	var kinds []string
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(out, -1)[1:] {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, tm.Kind)
		switch tm.Kind {
		case "DaemonSet":
			ds = &appsv1.DaemonSet{}
			if err := yaml.UnmarshalStrict([]byte(doc), ds); err != nil {
				t.Fatal(err)
			}
		case "ConfigMap":
			cm = &corev1.ConfigMap{}
			if err := yaml.UnmarshalStrict([]byte(doc), cm); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ds == nil || cm == nil {
		t.Fatalf("the manifest lacks the DaemonSet or the ConfigMap: kinds %v", kinds)
	}
	return ds, cm, kinds
}

// TestManifestDefaultIsCommitted: `twill manifest` without flags prints
// manifests/twill.yaml, byte for byte (so this binary's version is the
// committed manifest's tag).
func TestManifestDefaultIsCommitted(t *testing.T) {
	r := mustSucceed(t, twill(t, "", "", "manifest"))
	want, err := os.ReadFile(filepath.Join("..", "manifests", "twill.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if r.stdout != string(want) {
		t.Fatalf("`twill manifest` differs from manifests/twill.yaml: regenerate it with go run ./cmd/twill manifest > manifests/twill.yaml (and keep manifest.DefaultTag equal to cli.Version)")
	}
}

// TestManifestFlags: every flag reaches the manifest.
func TestManifestFlags(t *testing.T) {
	r := mustSucceed(t, twill(t, "", "", "manifest", "--image", "registry.example/twill", "--tag", "v2.0.0", "--namespace", "twill-system",
		"--pool-cidr", "10.244.0.0/16", "--block-size", "24", "--vxlan-mode", "always", "--nat-outgoing=false",
		"--ip-autodetection-method", "can-reach=10.0.0.1", "--cni-version", "1.1.0",
		"--kubernetes-service-host", "192.168.3.10", "--kubernetes-service-port", "6444"))
	ds, cm, kinds := manifestObjects(t, r.stdout)
	if !slices.Contains(kinds, "Namespace") || ds.Namespace != "twill-system" || cm.Namespace != "twill-system" {
		t.Errorf("namespace: kinds %v, DaemonSet in %q, ConfigMap in %q", kinds, ds.Namespace, cm.Namespace)
	}
	want := map[string]string{
		"DATASTORE_TYPE": "kubernetes", "CALICO_IPV4POOL_CIDR": "10.244.0.0/16", "CALICO_IPV4POOL_BLOCK_SIZE": "24",
		"CALICO_IPV4POOL_VXLAN": "Always", "CALICO_IPV4POOL_NAT_OUTGOING": "false", "IP_AUTODETECTION_METHOD": "can-reach=10.0.0.1",
		"KUBERNETES_SERVICE_HOST": "192.168.3.10", "KUBERNETES_SERVICE_PORT": "6444",
	}
	for k, v := range want {
		if cm.Data[k] != v {
			t.Errorf("ConfigMap %s = %q, want %q", k, cm.Data[k], v)
		}
	}
	if len(cm.Data) != len(want) {
		t.Errorf("ConfigMap data %v, want %v", cm.Data, want)
	}
	spec := ds.Spec.Template.Spec
	if img := spec.Containers[0].Image; img != "registry.example/twill:v2.0.0" || spec.InitContainers[0].Image != img {
		t.Errorf("images %q, %q", img, spec.InitContainers[0].Image)
	}
	if !slices.Contains(spec.InitContainers[0].Command, "1.1.0") {
		t.Errorf("install-cni command %q lacks the CNI version", spec.InitContainers[0].Command)
	}

	// A reference with a tag needs no --tag.
	r = mustSucceed(t, twill(t, "", "", "manifest", "--image", "registry.example/twill:v3"))
	if ds, _, _ := manifestObjects(t, r.stdout); ds.Spec.Template.Spec.Containers[0].Image != "registry.example/twill:v3" {
		t.Errorf("image %q, want registry.example/twill:v3", ds.Spec.Template.Spec.Containers[0].Image)
	}
}

// TestManifestBadFlags: a bad value exits 2 and names its flag.
func TestManifestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--pool-cidr", "10.0.0.0/40"}, "--pool-cidr"},
		{[]string{"--block-size", "8"}, "--block-size"},
		{[]string{"--vxlan-mode", "sometimes"}, "--vxlan-mode"},
		{[]string{"--cni-version", "0.9.9"}, "--cni-version"},
		{[]string{"--namespace", "Bad_NS"}, "--namespace"},
		{[]string{"--ip-autodetection-method", "nearest"}, "--ip-autodetection-method"},
		{[]string{"--kubernetes-service-port", "6443"}, "--kubernetes-service-port"},
		{[]string{"--image", "reg/twill:v1", "--tag", "v2"}, "--image"},
		{[]string{"--tag", ""}, "--tag"},
		{[]string{"extra"}, "extra"},
	} {
		r := twill(t, "", "", append([]string{"manifest"}, tc.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.flag) || r.stdout != "" {
			t.Errorf("twill manifest %v: exit %d, stderr %q, %d bytes out; want exit 2 naming %s and no output", tc.args, r.code, r.stderr, len(r.stdout), tc.flag)
		}
	}
}

// TestManifestCommandsRun: the DaemonSet's commands are accepted by the
// real binary: the init container's install-cni, with /host standing for a
// scratch directory, installs the plugin and configuration; the agent's
// flags parse.
func TestManifestCommandsRun(t *testing.T) {
	ds, _, _ := manifestObjects(t, mustSucceed(t, twill(t, "", "", "manifest")).stdout)
	spec := ds.Spec.Template.Spec
	root := t.TempDir()
	var args []string
	for _, a := range spec.InitContainers[0].Command[1:] {
		if strings.HasPrefix(a, "/host/") {
			a = filepath.Join(root, a)
		}
		args = append(args, a)
	}
	// Any file stands in for twill-cni, which is not built here.
	mustSucceed(t, twill(t, "", "", append(args, "--plugin-binary", twillBin)...))
	b, err := os.ReadFile(filepath.Join(root, "host", manifest.HostCNIConfDir, "10-twill.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"cniVersion": "1.0.0"`) || !strings.Contains(string(b), `"type": "twill"`) {
		t.Errorf("conflist:\n%s", b)
	}
	if _, err := os.Stat(filepath.Join(root, "host", manifest.HostCNIBinDir, "twill")); err != nil {
		t.Error(err)
	}
	agent := spec.Containers[0].Command
	r := mustSucceed(t, twill(t, "", "", append(slices.Clone(agent[1:]), "--help")...))
	if !strings.Contains(r.stdout, "--health-addr") {
		t.Errorf("`%s --help` printed:\n%s", strings.Join(agent, " "), r.stdout)
	}
}
