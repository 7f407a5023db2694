// Package manifest builds Twill's install manifest: everything `kubectl
// apply -f` needs to run Twill on a cluster with the kubernetes datastore.
// The objects are built as typed Kubernetes API values (k8s.io/api) and
// printed as YAML with sigs.k8s.io/yaml, in the order they must be applied:
//
//  1. Twill's CustomResourceDefinitions (manifests/crds, embedded);
//  2. the Namespace, unless it is kube-system;
//  3. the ServiceAccount twill-node, the ClusterRole twill-node and its
//     ClusterRoleBinding (least privilege: see ClusterRules), and the Role
//     and RoleBinding twill-ipam-gc for the GC's Lease in the namespace;
//  4. the ConfigMap twill-config with the settings calico.yaml users know
//     (CALICO_IPV4POOL_*, DATASTORE_TYPE, IP_AUTODETECTION_METHOD and the
//     optional KUBERNETES_SERVICE_HOST/PORT override);
//  5. the DaemonSet twill-node: an init container that installs the CNI
//     plugin and its configuration on the host, and the agent.
//
// `twill manifest` prints Generate's output; manifests/twill.yaml is its
// output with the defaults (Default), regenerated with
// `go run ./cmd/twill manifest > manifests/twill.yaml`, and a test fails
// when the two differ.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"twill.dev/twill/agent"
	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/cni"
	"twill.dev/twill/crd"
	"twill.dev/twill/datastore/kube"
	gc "twill.dev/twill/kube"
)

// Names of the objects the manifest holds.
const (
	// Name is the name of the ServiceAccount, ClusterRole,
	// ClusterRoleBinding and DaemonSet.
	Name = "twill-node"
	// LeaseRoleName is the name of the Role and RoleBinding that let the
	// agents hold the GC's Lease in the namespace.
	LeaseRoleName = "twill-ipam-gc"
	// ConfigMapName is the ConfigMap the agent takes its environment from.
	ConfigMapName = "twill-config"
	// AgentContainer and InstallCNIContainer name the DaemonSet's
	// containers.
	AgentContainer      = "twill-node"
	InstallCNIContainer = "install-cni"
	// AppLabel is the pods' label key, with value Name, that the DaemonSet
	// selects them by (Calico's calico-node uses the same key).
	AppLabel = "k8s-app"
	// CapabilitiesAnnotation, on the DaemonSet, says why the agent needs
	// each capability it is given.
	CapabilitiesAnnotation = "twill.dev/capabilities"
)

// Defaults of Options.
const (
	DefaultImage                 = "twill.dev/twill"
	DefaultNamespace             = gc.DefaultNamespace
	DefaultPoolCIDR              = api.DefaultPoolCIDR
	DefaultBlockSize             = api.DefaultBlockSizeIPv4
	DefaultVXLANMode             = string(api.EncapCrossSubnet)
	DefaultNATOutgoing           = true
	DefaultIPAutodetectionMethod = agent.MethodFirstFound
	DefaultCNIVersion            = cni.DefaultCNIVersion
	// DefaultKubernetesServicePort is the port KUBERNETES_SERVICE_PORT gets
	// when only the host is overridden: the apiserver's usual port
	// (kubeadm's), not the kubernetes Service's 443.
	DefaultKubernetesServicePort = "6443"
)

// DefaultTag is the image tag of Default: the version of this source tree.
// `twill manifest` uses its own version (cli.Version), which is the same in
// a development build; a release sets both.
var DefaultTag = "v0.1.0-dev"

// Paths on the host and in the containers.
const (
	// HostCNIBinDir and HostCNIConfDir are the CNI directories on the host,
	// mounted into the init container under /host.
	HostCNIBinDir  = "/opt/cni/bin"
	HostCNIConfDir = "/etc/cni/net.d"
	// HealthPort is the agent's health port on 127.0.0.1 (its
	// --health-addr); the kubelet probes it in the host's network
	// namespace, which the agent shares.
	HealthPort = 9099
)

// HealthAddr is the agent's --health-addr in the manifest.
var HealthAddr = "127.0.0.1:" + strconv.Itoa(HealthPort)

// SocketDir is the host directory of the agent's CNI socket, mounted at
// the same path in the agent, so that the plugin (run by the container
// runtime on the host) finds agentapi.DefaultSocket.
var SocketDir = path.Dir(agentapi.DefaultSocket)

// Capabilities are the agent container's capabilities (all others are
// dropped), with the reason for each. Package manifest's tests run the
// real agent with exactly these, and without each one in turn.
var Capabilities = []Capability{
	{Name: "NET_ADMIN", Why: "netlink and nftables changes: the VXLAN device, its address, neighbour and FDB entries, routes, and the NAT and VXLAN-filter tables"},
	{Name: "SYS_ADMIN", Why: "setns(2): the agent opens its netlink and nftables sockets through a handle on its own network namespace, and the kernel requires CAP_SYS_ADMIN to enter a network namespace, even the current one"},
}

// Capability is one Linux capability of the agent and why it is needed.
type Capability struct {
	Name corev1.Capability
	Why  string
}

// Options configure the manifest. Start from Default.
type Options struct {
	// Image is the image repository (REPO), or a whole reference
	// (REPO:TAG or REPO@DIGEST) when Tag is empty. The image holds the
	// twill and twill-cni binaries in one directory on PATH.
	Image string
	// Tag is the image tag appended to Image; empty when Image has one.
	Tag string
	// Namespace holds the ServiceAccount, ConfigMap, DaemonSet, the
	// Lease's Role, and the Lease (POD_NAMESPACE).
	Namespace string
	// PoolCIDR, BlockSize, VXLANMode and NATOutgoing describe the default
	// IP pool the first agent creates when no pool exists
	// (CALICO_IPV4POOL_CIDR, _BLOCK_SIZE, _VXLAN, _NAT_OUTGOING).
	PoolCIDR    string
	BlockSize   int
	VXLANMode   string
	NATOutgoing bool
	// IPAutodetectionMethod is the agent's IP_AUTODETECTION_METHOD.
	IPAutodetectionMethod string
	// CNIVersion is the cniVersion of the CNI configuration that the init
	// container writes (install-cni --cni-version).
	CNIVersion string
	// KubernetesServiceHost and KubernetesServicePort, when set, are
	// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in the ConfigMap:
	// the apiserver address the agent uses instead of the kubernetes
	// Service's, which needs kube-proxy. A host without a port gets
	// DefaultKubernetesServicePort.
	KubernetesServiceHost string
	KubernetesServicePort string
}

// Default returns the options of manifests/twill.yaml.
func Default() Options {
	return Options{
		Image:                 DefaultImage,
		Tag:                   DefaultTag,
		Namespace:             DefaultNamespace,
		PoolCIDR:              DefaultPoolCIDR,
		BlockSize:             DefaultBlockSize,
		VXLANMode:             DefaultVXLANMode,
		NATOutgoing:           DefaultNATOutgoing,
		IPAutodetectionMethod: DefaultIPAutodetectionMethod,
		CNIVersion:            DefaultCNIVersion,
	}
}

// ErrOptions is wrapped by the errors of bad Options.
var ErrOptions = errors.New("bad manifest option")

// OptionError reports one bad option.
type OptionError struct {
	// Option names the option as `twill manifest` spells its flag, e.g.
	// pool-cidr.
	Option string
	// Value is the value given.
	Value string
	// Err says what is wrong.
	Err error
}

// Error implements error.
func (e *OptionError) Error() string {
	return fmt.Sprintf("--%s %q: %v", e.Option, e.Value, e.Err)
}

// Unwrap returns ErrOptions and the cause.
func (e *OptionError) Unwrap() []error { return []error{ErrOptions, e.Err} }

// ImageRef returns the image reference: Image:Tag, or Image when Tag is
// empty and Image has a tag or digest.
func (o Options) ImageRef() (string, error) {
	bad := func(format string, a ...any) (string, error) {
		return "", &OptionError{Option: "image", Value: o.Image, Err: fmt.Errorf(format, a...)}
	}
	if o.Image == "" || strings.ContainsAny(o.Image, " \t\r\n") {
		return bad("must be an image repository such as %s, without spaces", DefaultImage)
	}
	last := o.Image[strings.LastIndex(o.Image, "/")+1:]
	tagged := strings.Contains(o.Image, "@") || strings.Contains(last, ":")
	switch {
	case tagged && o.Tag != "":
		return bad("has a tag or digest already; give the tag either there or with --tag %q, not both", o.Tag)
	case tagged:
		return o.Image, nil
	case o.Tag == "" || strings.ContainsAny(o.Tag, ":@/ \t\r\n"):
		return "", &OptionError{Option: "tag", Value: o.Tag, Err: errors.New("must be an image tag such as " + DefaultTag)}
	}
	return o.Image + ":" + o.Tag, nil
}

// normalizeMode spells an encapsulation mode as Calico's manifests do:
// Never, CrossSubnet or Always, given in any case.
func normalizeMode(s string) (string, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "never":
		return string(api.EncapNever), true
	case "crosssubnet":
		return string(api.EncapCrossSubnet), true
	case "always":
		return string(api.EncapAlways), true
	}
	return "", false
}

// ConfigData returns the ConfigMap's data for o, after checking every
// value the way the agent will: the pool settings with api.PoolFromEnv,
// the autodetection method with agent.ParseAutodetectMethod.
func (o Options) ConfigData() (map[string]string, error) {
	mode, ok := normalizeMode(o.VXLANMode)
	if !ok {
		return nil, &OptionError{Option: "vxlan-mode", Value: o.VXLANMode, Err: errors.New("must be Never, CrossSubnet or Always")}
	}
	data := map[string]string{
		"DATASTORE_TYPE":               "kubernetes",
		"CALICO_IPV4POOL_CIDR":         strings.TrimSpace(o.PoolCIDR),
		"CALICO_IPV4POOL_BLOCK_SIZE":   strconv.Itoa(o.BlockSize),
		"CALICO_IPV4POOL_VXLAN":        mode,
		"CALICO_IPV4POOL_NAT_OUTGOING": strconv.FormatBool(o.NATOutgoing),
		"IP_AUTODETECTION_METHOD":      strings.TrimSpace(o.IPAutodetectionMethod),
	}
	flags := map[string]struct{ flag, value string }{
		"CALICO_IPV4POOL_CIDR":       {"pool-cidr", o.PoolCIDR},
		"CALICO_IPV4POOL_BLOCK_SIZE": {"block-size", strconv.Itoa(o.BlockSize)},
	}
	if _, err := api.PoolFromEnv(func(k string) string { return data[k] }); err != nil {
		var errs []error
		for _, e := range unjoin(err) {
			var ee *api.EnvError
			if errors.As(e, &ee) {
				if f, ok := flags[ee.Variable]; ok {
					errs = append(errs, &OptionError{Option: f.flag, Value: f.value, Err: errors.New(ee.Rule)})
					continue
				}
			}
			errs = append(errs, fmt.Errorf("%w: default pool: %w", ErrOptions, e))
		}
		return nil, errors.Join(errs...)
	}
	if data["IP_AUTODETECTION_METHOD"] == "" {
		return nil, &OptionError{Option: "ip-autodetection-method", Value: o.IPAutodetectionMethod, Err: errors.New("must be a method, e.g. " + agent.MethodFirstFound)}
	}
	if _, err := agent.ParseAutodetectMethod(data["IP_AUTODETECTION_METHOD"]); err != nil {
		return nil, &OptionError{Option: "ip-autodetection-method", Value: o.IPAutodetectionMethod, Err: err}
	}
	host, port := strings.TrimSpace(o.KubernetesServiceHost), strings.TrimSpace(o.KubernetesServicePort)
	if port != "" && host == "" {
		return nil, &OptionError{Option: "kubernetes-service-port", Value: port, Err: errors.New("needs --kubernetes-service-host too")}
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && len(validation.IsDNS1123Subdomain(host)) > 0 {
			return nil, &OptionError{Option: "kubernetes-service-host", Value: host, Err: errors.New("must be an IP address or a DNS name of the apiserver")}
		}
		if port == "" {
			port = DefaultKubernetesServicePort
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, &OptionError{Option: "kubernetes-service-port", Value: port, Err: errors.New("must be a port number between 1 and 65535")}
		}
		data["KUBERNETES_SERVICE_HOST"] = host
		data["KUBERNETES_SERVICE_PORT"] = port
	}
	return data, nil
}

// unjoin splits an errors.Join result into its errors.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Check reports every bad option, joined.
func (o Options) Check() error {
	var errs []error
	if _, err := o.ImageRef(); err != nil {
		errs = append(errs, err)
	}
	if msgs := validation.IsDNS1123Label(o.Namespace); len(msgs) > 0 {
		errs = append(errs, &OptionError{Option: "namespace", Value: o.Namespace, Err: errors.New(strings.Join(msgs, "; "))})
	}
	if _, err := o.ConfigData(); err != nil {
		errs = append(errs, err)
	}
	if err := cni.CheckVersion(o.CNIVersion); err != nil {
		errs = append(errs, &OptionError{Option: "cni-version", Value: o.CNIVersion, Err: err})
	}
	return errors.Join(errs...)
}

// Object is one object of the manifest.
type Object interface {
	runtime.Object
	metav1.Object
}

// ClusterRules are the ClusterRole's rules: what the agent does with
// cluster-scoped and all-namespace resources, and nothing more.
//
//   - Twill's custom resources, per resource, with only the verbs the agent
//     and its GC use. Updates are JSON patches (patch, never update).
//     ipamblocks: claimed (create), allocated and released (patch),
//     reclaimed (delete); ipamhandles: the handle index, never watched;
//     workloadendpoints: written on ADD, deleted on DEL and by the GC;
//     ippools: read, and the default pool created when none exists;
//     ipamconfigs: only read.
//   - nodes: the agent annotates its Node (get, update) and caches every
//     Twill node (list, watch); the GC lists Nodes and watches deletions.
//     Nodes are never created, patched or deleted.
//   - pods: the CNI ADD reads its pod (get); the GC lists all pods (list).
func ClusterRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{crd.Group}, Resources: []string{crd.ResourceIPAMBlock, crd.ResourceWorkloadEndpoint},
			Verbs: []string{"get", "list", "watch", "create", "patch", "delete"}},
		{APIGroups: []string{crd.Group}, Resources: []string{crd.ResourceIPAMHandle},
			Verbs: []string{"get", "list", "create", "patch", "delete"}},
		{APIGroups: []string{crd.Group}, Resources: []string{crd.ResourceIPPool},
			Verbs: []string{"get", "list", "watch", "create"}},
		{APIGroups: []string{crd.Group}, Resources: []string{crd.ResourceIPAMConfig},
			Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"},
			Verbs: []string{"get", "list", "watch", "update"}},
		{APIGroups: []string{""}, Resources: []string{"pods"},
			Verbs: []string{"get", "list"}},
	}
}

// LeaseRules are the Role's rules in the namespace: the GC's leader
// election reads, creates and renews (updates) the Lease twill-ipam-gc,
// and releases it with an update when the agent stops. The agent emits
// no Events.
func LeaseRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			Verbs: []string{"get", "create", "update"}},
	}
}

// Objects returns the manifest's objects in apply order, after checking o.
func Objects(o Options) ([]Object, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	image, _ := o.ImageRef()
	data, _ := o.ConfigData()
	crds, err := kube.CRDs()
	if err != nil {
		return nil, err
	}
	var out []Object
	for _, c := range crds {
		c.TypeMeta = metav1.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"}
		out = append(out, c)
	}
	labels := func() map[string]string { return map[string]string{"app.kubernetes.io/name": "twill"} }
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: labels()}
	}
	if o.Namespace != DefaultNamespace {
		out = append(out, &corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: o.Namespace, Labels: labels()},
		})
	}
	subjects := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: Name, Namespace: o.Namespace}}
	out = append(out,
		&corev1.ServiceAccount{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta: meta(Name),
		},
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: metav1.ObjectMeta{Name: Name, Labels: labels()},
			Rules:      ClusterRules(),
		},
		&rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: Name, Labels: labels()},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: Name},
			Subjects:   subjects,
		},
		&rbacv1.Role{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
			ObjectMeta: meta(LeaseRoleName),
			Rules:      LeaseRules(),
		},
		&rbacv1.RoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
			ObjectMeta: meta(LeaseRoleName),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: LeaseRoleName},
			Subjects:   subjects,
		},
		&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: meta(ConfigMapName),
			Data:       data,
		},
		daemonSet(o, image, meta(Name)),
	)
	return out, nil
}

// daemonSet builds the DaemonSet twill-node.
func daemonSet(o Options, image string, meta metav1.ObjectMeta) *appsv1.DaemonSet {
	podLabels := map[string]string{AppLabel: Name, "app.kubernetes.io/name": "twill"}
	var why []string
	var caps []corev1.Capability
	for _, c := range Capabilities {
		caps = append(caps, c.Name)
		why = append(why, string(c.Name)+": "+c.Why)
	}
	meta.Annotations = map[string]string{CapabilitiesAnnotation: strings.Join(why, ". ") + "."}
	root := int64(0)
	hostPath := func(name, p string) corev1.Volume {
		t := corev1.HostPathDirectoryOrCreate
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: p, Type: &t}}}
	}
	probe := func(p string, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Host: "127.0.0.1", Port: intstr.FromInt32(HealthPort), Path: p, Scheme: corev1.URISchemeHTTP}},
			InitialDelaySeconds: 10, PeriodSeconds: 10, TimeoutSeconds: 5, FailureThreshold: failures,
		}
	}
	maxUnavailable := intstr.FromInt32(1)
	return &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: meta,
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{AppLabel: Name}},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{
				Type:          appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: &maxUnavailable},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					ServiceAccountName: Name,
					HostNetwork:        true,
					PriorityClassName:  "system-node-critical",
					NodeSelector:       map[string]string{corev1.LabelOSStable: "linux"},
					// As Calico's calico-node: run on every node, whatever
					// its taints (control-plane nodes included), and stay
					// through NoExecute taints such as not-ready.
					Tolerations: []corev1.Toleration{
						{Effect: corev1.TaintEffectNoSchedule, Operator: corev1.TolerationOpExists},
						{Key: "CriticalAddonsOnly", Operator: corev1.TolerationOpExists},
						{Effect: corev1.TaintEffectNoExecute, Operator: corev1.TolerationOpExists},
					},
					InitContainers: []corev1.Container{{
						Name:  InstallCNIContainer,
						Image: image,
						// Rewrites the plugin and its configuration on every
						// start, each atomically (temporary file, rename), so
						// an upgrade replaces them in place; nothing removes
						// them when the pod stops.
						Command: []string{"twill", "install-cni",
							"--cni-bin-dir", "/host" + HostCNIBinDir,
							"--cni-conf-dir", "/host" + HostCNIConfDir,
							"--cni-version", o.CNIVersion,
							"--agent-socket", agentapi.DefaultSocket,
						},
						ImagePullPolicy: corev1.PullIfNotPresent,
						SecurityContext: &corev1.SecurityContext{
							RunAsUser:                &root,
							Privileged:               new(false),
							AllowPrivilegeEscalation: new(false),
							ReadOnlyRootFilesystem:   new(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "cni-bin-dir", MountPath: "/host" + HostCNIBinDir},
							{Name: "cni-net-dir", MountPath: "/host" + HostCNIConfDir},
						},
					}},
					Containers: []corev1.Container{{
						Name:            AgentContainer,
						Image:           image,
						Command:         []string{"twill", "node", "run", "--health-addr", HealthAddr},
						ImagePullPolicy: corev1.PullIfNotPresent,
						EnvFrom: []corev1.EnvFromSource{{
							ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: ConfigMapName}},
						}},
						Env: []corev1.EnvVar{
							{Name: "NODENAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "spec.nodeName"}}},
							{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}},
						},
						SecurityContext: &corev1.SecurityContext{
							RunAsUser:              &root,
							Privileged:             new(false),
							ReadOnlyRootFilesystem: new(true),
							Capabilities:           &corev1.Capabilities{Add: caps, Drop: []corev1.Capability{"ALL"}},
						},
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("100m"),
							corev1.ResourceMemory: resource.MustParse("64Mi"),
						}},
						LivenessProbe:  probe("/healthz", 6),
						ReadinessProbe: probe("/readyz", 3),
						VolumeMounts: []corev1.VolumeMount{
							{Name: "var-run-twill", MountPath: SocketDir},
						},
					}},
					Volumes: []corev1.Volume{
						hostPath("cni-bin-dir", HostCNIBinDir),
						hostPath("cni-net-dir", HostCNIConfDir),
						hostPath("var-run-twill", SocketDir),
					},
				},
			},
		},
	}
}

// Header starts the generated YAML.
const Header = `# Twill: pod networking for Kubernetes, with the kubernetes datastore.
# Generated by ` + "`twill manifest`" + `; do not edit. The defaults are committed as
# manifests/twill.yaml: regenerate it with
#   go run ./cmd/twill manifest > manifests/twill.yaml
# Install: kubectl apply -f manifests/twill.yaml (see docs/kubernetes.md).
`

// Generate returns the manifest for o as YAML documents, Header first.
func Generate(o Options) ([]byte, error) {
	objs, err := Objects(o)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(Header)
	for _, obj := range objs {
		doc, err := encode(obj)
		if err != nil {
			return nil, err
		}
		b.WriteString("---\n")
		b.Write(doc)
	}
	return b.Bytes(), nil
}

// encode marshals obj to YAML without the fields a manifest leaves out:
// status and null creation timestamps.
func encode(obj Object) ([]byte, error) {
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
	}
	delete(m, "status")
	prune(m)
	y, err := yaml.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
	}
	return y, nil
}

// prune removes null creationTimestamp fields and the empty maps left
// behind, at any depth.
func prune(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, c := range t {
			if k == "creationTimestamp" && c == nil {
				delete(t, k)
				continue
			}
			prune(c)
			if cm, ok := c.(map[string]any); ok && len(cm) == 0 && (k == "metadata" || k == "resources") {
				delete(t, k)
			}
		}
	case []any:
		for _, c := range t {
			prune(c)
		}
	}
}
