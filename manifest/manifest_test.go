package manifest_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/datastore/kube"
	"twill.dev/twill/manifest"
)

// committedPath is manifests/twill.yaml, from this package's directory.
var committedPath = filepath.Join("..", "manifests", "twill.yaml")

// regenerate says how to bring manifests/twill.yaml up to date.
const regenerate = "regenerate it with: go run ./cmd/twill manifest > manifests/twill.yaml"

// TestManifestDrift: manifests/twill.yaml is exactly what the generator
// prints with the defaults.
func TestManifestDrift(t *testing.T) {
	want, err := manifest.Generate(manifest.Default())
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(committedPath)
	if err != nil {
		t.Fatalf("read the committed manifest: %v; %s", err, regenerate)
	}
	if bytes.Equal(got, want) {
		return
	}
	gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < max(len(gl), len(wl)); i++ {
		g, w := "(end of file)", "(end of file)"
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w {
			t.Fatalf("manifests/twill.yaml differs from the generator's output at line %d:\n committed: %s\n generated: %s\n%s", i+1, g, w, regenerate)
		}
	}
}

// splitDocs splits YAML documents on "---" lines, dropping comment-only
// and empty documents.
func splitDocs(b []byte) [][]byte {
	var out [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		body := false
		for _, l := range strings.Split(d, "\n") {
			if s := strings.TrimSpace(l); s != "" && !strings.HasPrefix(s, "#") {
				body = true
				break
			}
		}
		if body {
			out = append(out, []byte(d))
		}
	}
	return out
}

// decoded is the committed manifest, decoded strictly into typed objects.
type decoded struct {
	kinds       []string
	crds        []*apiextv1.CustomResourceDefinition
	sa          *corev1.ServiceAccount
	clusterRole *rbacv1.ClusterRole
	crb         *rbacv1.ClusterRoleBinding
	role        *rbacv1.Role
	rb          *rbacv1.RoleBinding
	cm          *corev1.ConfigMap
	ds          *appsv1.DaemonSet
	ns          *corev1.Namespace
}

// decodeManifest decodes every document of b into its typed object,
// refusing unknown fields.
func decodeManifest(t *testing.T, b []byte) decoded {
	t.Helper()
	var d decoded
	for i, doc := range splitDocs(b) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("document %d: %v", i+1, err)
		}
		d.kinds = append(d.kinds, tm.Kind)
		var into any
		switch tm.APIVersion + " " + tm.Kind {
		case "apiextensions.k8s.io/v1 CustomResourceDefinition":
			c := &apiextv1.CustomResourceDefinition{}
			d.crds, into = append(d.crds, c), c
		case "v1 Namespace":
			d.ns = &corev1.Namespace{}
			into = d.ns
		case "v1 ServiceAccount":
			d.sa = &corev1.ServiceAccount{}
			into = d.sa
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			d.clusterRole = &rbacv1.ClusterRole{}
			into = d.clusterRole
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			d.crb = &rbacv1.ClusterRoleBinding{}
			into = d.crb
		case "rbac.authorization.k8s.io/v1 Role":
			d.role = &rbacv1.Role{}
			into = d.role
		case "rbac.authorization.k8s.io/v1 RoleBinding":
			d.rb = &rbacv1.RoleBinding{}
			into = d.rb
		case "v1 ConfigMap":
			d.cm = &corev1.ConfigMap{}
			into = d.cm
		case "apps/v1 DaemonSet":
			d.ds = &appsv1.DaemonSet{}
			into = d.ds
		default:
			t.Fatalf("document %d: unexpected %s %s", i+1, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, into); err != nil {
			t.Fatalf("document %d (%s): %v", i+1, tm.Kind, err)
		}
	}
	return d
}

func generated(t *testing.T, o manifest.Options) decoded {
	t.Helper()
	b, err := manifest.Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	return decodeManifest(t, b)
}

// defaultDaemonSet is the DaemonSet of the default manifest.
func defaultDaemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	d := generated(t, manifest.Default())
	if d.ds == nil {
		t.Fatal("the manifest has no DaemonSet")
	}
	return d.ds
}

// findContainer returns the (init) container name of spec.
func findContainer(spec corev1.PodSpec, name string) (corev1.Container, bool) {
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if c.Name == name {
			return c, true
		}
	}
	return corev1.Container{}, false
}

// TestManifestObjects: the committed manifest decodes strictly, holds the
// objects in apply order, and its CRDs are the generated ones.
func TestManifestObjects(t *testing.T) {
	b, err := os.ReadFile(committedPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte(manifest.Header)) {
		t.Errorf("the manifest does not start with the generated header")
	}
	d := decodeManifest(t, b)
	want := []string{"CustomResourceDefinition", "CustomResourceDefinition", "CustomResourceDefinition", "CustomResourceDefinition", "CustomResourceDefinition",
		"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "DaemonSet"}
	if !slices.Equal(d.kinds, want) {
		t.Fatalf("kinds in order: %v, want %v", d.kinds, want)
	}
	crds, err := kube.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range crds {
		if d.crds[i].Name != c.Name || !equality.Semantic.DeepEqual(d.crds[i].Spec, c.Spec) {
			t.Errorf("CRD %d is %s, want %s from manifests/crds with the same spec", i, d.crds[i].Name, c.Name)
		}
	}
	ns := manifest.DefaultNamespace
	for _, m := range []metav1.Object{d.sa, d.role, d.rb, d.cm, d.ds} {
		if m.GetNamespace() != ns {
			t.Errorf("%s is in namespace %q, want %q", m.GetName(), m.GetNamespace(), ns)
		}
	}
	if d.sa.Name != manifest.Name || d.clusterRole.Name != manifest.Name || d.crb.Name != manifest.Name || d.ds.Name != manifest.Name {
		t.Errorf("names: ServiceAccount %s, ClusterRole %s, ClusterRoleBinding %s, DaemonSet %s; want %s", d.sa.Name, d.clusterRole.Name, d.crb.Name, d.ds.Name, manifest.Name)
	}
	sub := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: manifest.Name, Namespace: ns}
	if d.crb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: manifest.Name}) || !slices.Equal(d.crb.Subjects, []rbacv1.Subject{sub}) {
		t.Errorf("ClusterRoleBinding: %+v %+v", d.crb.RoleRef, d.crb.Subjects)
	}
	if d.rb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: d.role.Name}) || !slices.Equal(d.rb.Subjects, []rbacv1.Subject{sub}) {
		t.Errorf("RoleBinding: %+v %+v", d.rb.RoleRef, d.rb.Subjects)
	}
	if !equality.Semantic.DeepEqual(d.clusterRole.Rules, manifest.ClusterRules()) || !equality.Semantic.DeepEqual(d.role.Rules, manifest.LeaseRules()) {
		t.Errorf("rules differ from ClusterRules and LeaseRules")
	}
	wantData := map[string]string{
		"DATASTORE_TYPE":               "kubernetes",
		"CALICO_IPV4POOL_CIDR":         "192.168.0.0/16",
		"CALICO_IPV4POOL_BLOCK_SIZE":   "26",
		"CALICO_IPV4POOL_VXLAN":        "CrossSubnet",
		"CALICO_IPV4POOL_NAT_OUTGOING": "true",
		"IP_AUTODETECTION_METHOD":      "first-found",
	}
	if !equality.Semantic.DeepEqual(d.cm.Data, wantData) {
		t.Errorf("ConfigMap data %v, want %v", d.cm.Data, wantData)
	}
}

// TestManifestRBACLeastPrivilege: the rules grant no wildcard, no access
// to secrets or configmaps, no create/patch/delete of nodes, no update of
// Twill's resources (Twill patches), and the Lease only in its namespace.
func TestManifestRBACLeastPrivilege(t *testing.T) {
	for _, r := range manifest.ClusterRules() {
		for _, s := range slices.Concat(r.APIGroups, r.Resources, r.Verbs) {
			if s == "*" {
				t.Errorf("rule %v has a wildcard", r)
			}
		}
		for _, res := range r.Resources {
			switch res {
			case "secrets", "configmaps", "leases", "events", "serviceaccounts":
				t.Errorf("the ClusterRole grants %s: %v", res, r)
			case "nodes":
				for _, v := range r.Verbs {
					if v == "create" || v == "delete" || v == "patch" || v == "deletecollection" {
						t.Errorf("the ClusterRole grants %s on nodes", v)
					}
				}
			}
		}
		if slices.Contains(r.APIGroups, "twill.dev") && (slices.Contains(r.Verbs, "update") || slices.Contains(r.Verbs, "deletecollection")) {
			t.Errorf("the ClusterRole grants update or deletecollection on %v, which Twill never does", r.Resources)
		}
	}
	lr := manifest.LeaseRules()
	if len(lr) != 1 || !slices.Equal(lr[0].Resources, []string{"leases"}) || !slices.Equal(lr[0].Verbs, []string{"get", "create", "update"}) {
		t.Errorf("LeaseRules = %+v, want get, create, update on leases", lr)
	}
}

// TestManifestDaemonSet checks the DaemonSet's scheduling, containers,
// security and update strategy.
func TestManifestDaemonSet(t *testing.T) {
	ds := defaultDaemonSet(t)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != manifest.Name {
		t.Errorf("hostNetwork %v, priorityClassName %q, serviceAccountName %q", spec.HostNetwork, spec.PriorityClassName, spec.ServiceAccountName)
	}
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels[manifest.AppLabel] != manifest.Name || ds.Spec.Template.Labels[manifest.AppLabel] != manifest.Name {
		t.Errorf("selector %v does not match the pod labels %v", ds.Spec.Selector, ds.Spec.Template.Labels)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil || us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("update strategy %+v, want RollingUpdate with maxUnavailable 1", us)
	}
	// Every node, control plane included, whatever its taints.
	for _, taint := range []corev1.Taint{
		{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule},
		{Key: "node.kubernetes.io/not-ready", Effect: corev1.TaintEffectNoExecute},
		{Key: "node.kubernetes.io/unreachable", Effect: corev1.TaintEffectNoExecute},
		{Key: "node.kubernetes.io/network-unavailable", Effect: corev1.TaintEffectNoSchedule},
		{Key: "example.com/any", Value: "x", Effect: corev1.TaintEffectNoSchedule},
	} {
		if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool { return tol.ToleratesTaint(klog.Background(), &taint, false) }) {
			t.Errorf("no toleration for the taint %s:%s", taint.Key, taint.Effect)
		}
	}

	volumes := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			t.Errorf("volume %s is not a hostPath", v.Name)
			continue
		}
		volumes[v.Name] = v.HostPath.Path
	}
	mounts := func(c corev1.Container) map[string]string {
		m := map[string]string{}
		for _, vm := range c.VolumeMounts {
			m[vm.MountPath] = volumes[vm.Name]
		}
		return m
	}

	init, ok := findContainer(spec, manifest.InstallCNIContainer)
	if !ok || len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != manifest.InstallCNIContainer {
		t.Fatalf("init containers %v, want %s", spec.InitContainers, manifest.InstallCNIContainer)
	}
	wantInit := []string{"twill", "install-cni", "--cni-bin-dir", "/host/opt/cni/bin", "--cni-conf-dir", "/host/etc/cni/net.d",
		"--cni-version", "1.0.0", "--agent-socket", agentapi.DefaultSocket}
	if !slices.Equal(init.Command, wantInit) {
		t.Errorf("install-cni command %q, want %q", init.Command, wantInit)
	}
	if m := mounts(init); m["/host/opt/cni/bin"] != "/opt/cni/bin" || m["/host/etc/cni/net.d"] != "/etc/cni/net.d" {
		t.Errorf("install-cni mounts %v", m)
	}

	c, ok := findContainer(spec, manifest.AgentContainer)
	if !ok || len(spec.Containers) != 1 {
		t.Fatalf("containers %v, want only %s", spec.Containers, manifest.AgentContainer)
	}
	if want := []string{"twill", "node", "run", "--health-addr", "127.0.0.1:9099"}; !slices.Equal(c.Command, want) {
		t.Errorf("agent command %q, want %q", c.Command, want)
	}
	if m := mounts(c); m[manifest.SocketDir] != manifest.SocketDir || !strings.HasPrefix(agentapi.DefaultSocket, manifest.SocketDir+"/") {
		t.Errorf("agent mounts %v: the socket directory %s must be the host's", m, manifest.SocketDir)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["NODENAME"] != "spec.nodeName" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("agent env from fields %v, want NODENAME from spec.nodeName and POD_NAMESPACE from metadata.namespace", env)
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != manifest.ConfigMapName {
		t.Errorf("agent envFrom %+v, want the ConfigMap %s", c.EnvFrom, manifest.ConfigMapName)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Host != "127.0.0.1" || g.Port.IntValue() != manifest.HealthPort {
			t.Errorf("%s probe %s:%s%s, want 127.0.0.1:%d%s", p.name, g.Host, g.Port.String(), g.Path, manifest.HealthPort, p.path)
		}
	}

	for _, ctr := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		sc := ctr.SecurityContext
		if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
			t.Errorf("container %s: security context %+v, want privileged false and user 0", ctr.Name, sc)
		}
		if ctr.Lifecycle != nil {
			t.Errorf("container %s has lifecycle hooks %+v: nothing may remove the CNI configuration on stop", ctr.Name, ctr.Lifecycle)
		}
	}
	if got := c.SecurityContext.Capabilities.Add; len(got) != len(manifest.Capabilities) {
		t.Errorf("agent capabilities %v, want one per manifest.Capabilities", got)
	}
	if why := ds.Annotations[manifest.CapabilitiesAnnotation]; !strings.Contains(why, "NET_ADMIN:") || !strings.Contains(why, "SYS_ADMIN:") {
		t.Errorf("annotation %s = %q does not explain each capability", manifest.CapabilitiesAnnotation, why)
	}
}

// TestManifestOptions: the options reach the objects.
func TestManifestOptions(t *testing.T) {
	o := manifest.Default()
	o.Image, o.Tag = "registry.example/net/twill", "v9.8.7"
	o.Namespace = "twill-system"
	o.PoolCIDR, o.BlockSize, o.VXLANMode, o.NATOutgoing = "10.244.0.0/16", 24, "always", false
	o.CNIVersion = "1.1.0"
	o.IPAutodetectionMethod = "interface=eth.*"
	o.KubernetesServiceHost = "10.0.0.10"
	d := generated(t, o)
	if d.ns == nil || d.ns.Name != "twill-system" || d.kinds[5] != "Namespace" {
		t.Fatalf("kinds %v: want the Namespace twill-system right after the CRDs", d.kinds)
	}
	for _, m := range []metav1.Object{d.sa, d.role, d.rb, d.cm, d.ds} {
		if m.GetNamespace() != "twill-system" {
			t.Errorf("%s is in namespace %q", m.GetName(), m.GetNamespace())
		}
	}
	if d.crb.Subjects[0].Namespace != "twill-system" || d.rb.Subjects[0].Namespace != "twill-system" {
		t.Errorf("binding subjects %v %v", d.crb.Subjects, d.rb.Subjects)
	}
	want := map[string]string{
		"DATASTORE_TYPE": "kubernetes", "CALICO_IPV4POOL_CIDR": "10.244.0.0/16", "CALICO_IPV4POOL_BLOCK_SIZE": "24",
		"CALICO_IPV4POOL_VXLAN": "Always", "CALICO_IPV4POOL_NAT_OUTGOING": "false", "IP_AUTODETECTION_METHOD": "interface=eth.*",
		"KUBERNETES_SERVICE_HOST": "10.0.0.10", "KUBERNETES_SERVICE_PORT": manifest.DefaultKubernetesServicePort,
	}
	if !equality.Semantic.DeepEqual(d.cm.Data, want) {
		t.Errorf("ConfigMap data %v, want %v", d.cm.Data, want)
	}
	spec := d.ds.Spec.Template.Spec
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if c.Image != "registry.example/net/twill:v9.8.7" {
			t.Errorf("container %s image %q", c.Name, c.Image)
		}
	}
	if init := spec.InitContainers[0].Command; !slices.Contains(init, "1.1.0") {
		t.Errorf("install-cni command %q lacks --cni-version 1.1.0", init)
	}

	// A reference with a digest (or tag) is used as is, without --tag.
	o = manifest.Default()
	o.Image, o.Tag = "registry.example/twill@sha256:"+strings.Repeat("ab", 32), ""
	o.KubernetesServiceHost, o.KubernetesServicePort = "api.example.com", "443"
	d = generated(t, o)
	if got := d.ds.Spec.Template.Spec.Containers[0].Image; got != o.Image {
		t.Errorf("image %q, want %q", got, o.Image)
	}
	if d.cm.Data["KUBERNETES_SERVICE_HOST"] != "api.example.com" || d.cm.Data["KUBERNETES_SERVICE_PORT"] != "443" {
		t.Errorf("service override %v", d.cm.Data)
	}
}

// TestManifestBadOptions: each bad option is refused with an OptionError
// that names it.
func TestManifestBadOptions(t *testing.T) {
	for _, tc := range []struct {
		option string
		change func(*manifest.Options)
	}{
		{"image", func(o *manifest.Options) { o.Image = "" }},
		{"image", func(o *manifest.Options) { o.Image = "reg/twill:v1" }}, // and --tag
		{"tag", func(o *manifest.Options) { o.Tag = "" }},
		{"tag", func(o *manifest.Options) { o.Tag = "a/b" }},
		{"namespace", func(o *manifest.Options) { o.Namespace = "Kube_System" }},
		{"pool-cidr", func(o *manifest.Options) { o.PoolCIDR = "10.0.0.0/33" }},
		{"pool-cidr", func(o *manifest.Options) { o.PoolCIDR = "fd00::/48" }},
		{"block-size", func(o *manifest.Options) { o.BlockSize = 33 }},
		{"vxlan-mode", func(o *manifest.Options) { o.VXLANMode = "sometimes" }},
		{"cni-version", func(o *manifest.Options) { o.CNIVersion = "9.9.9" }},
		{"ip-autodetection-method", func(o *manifest.Options) { o.IPAutodetectionMethod = "nearest" }},
		{"kubernetes-service-port", func(o *manifest.Options) { o.KubernetesServicePort = "6443" }},
		{"kubernetes-service-port", func(o *manifest.Options) { o.KubernetesServiceHost, o.KubernetesServicePort = "10.0.0.1", "70000" }},
		{"kubernetes-service-host", func(o *manifest.Options) { o.KubernetesServiceHost = "not a host" }},
	} {
		o := manifest.Default()
		tc.change(&o)
		_, err := manifest.Generate(o)
		var oe *manifest.OptionError
		if !errors.Is(err, manifest.ErrOptions) || !errors.As(err, &oe) || oe.Option != tc.option {
			t.Errorf("%+v: error %v, want an OptionError for --%s", o, err, tc.option)
			continue
		}
		if !strings.Contains(err.Error(), "--"+tc.option) {
			t.Errorf("error %q does not name --%s", err, tc.option)
		}
	}
}

// TestManifestRBACDocs: the RBAC section of docs/kubernetes.md shows the
// manifest's rules.
func TestManifestRBACDocs(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "docs", "kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## RBAC\n")
	if !ok {
		t.Fatal("docs/kubernetes.md has no RBAC section")
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	if ok {
		block, _, ok = strings.Cut(block, "```")
	}
	if !ok {
		t.Fatal("the RBAC section of docs/kubernetes.md has no yaml block")
	}
	var cr *rbacv1.ClusterRole
	var role *rbacv1.Role
	for _, doc := range splitDocs([]byte(block)) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		switch tm.Kind {
		case "ClusterRole":
			cr = &rbacv1.ClusterRole{}
			err = yaml.UnmarshalStrict(doc, cr)
		case "Role":
			role = &rbacv1.Role{}
			err = yaml.UnmarshalStrict(doc, role)
		}
		if err != nil {
			t.Fatalf("docs %s: %v", tm.Kind, err)
		}
	}
	if cr == nil || !equality.Semantic.DeepEqual(cr.Rules, manifest.ClusterRules()) {
		t.Errorf("the docs' ClusterRole does not have manifest.ClusterRules(); copy them from manifests/twill.yaml")
	}
	if role == nil || !equality.Semantic.DeepEqual(role.Rules, manifest.LeaseRules()) {
		t.Errorf("the docs' Role does not have manifest.LeaseRules(); copy them from manifests/twill.yaml")
	}
	if t.Failed() {
		t.Logf("the docs' RBAC block:\n%s", block)
	}
}
