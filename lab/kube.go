package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/datastore/open"
)

// Objects of Kubernetes that the lab creates on the kubernetes datastore,
// standing in for what kubelets and a controller manager would create: a
// v1.Node per lab node, a v1.Pod per lab pod, the default ServiceAccount.

// ErrNotKubernetes: the lab does not run the kubernetes datastore.
var ErrNotKubernetes = errors.New("the lab does not run the kubernetes datastore")

// LabPodImage is the container image of the lab's v1.Pod objects. No
// kubelet runs, so it is never pulled; the lab's pods are network
// namespaces with nothing in them.
const LabPodImage = "twill.invalid/lab-pod:none"

// kubeRequestTimeout bounds each request of the lab's Kubernetes client.
const kubeRequestTimeout = 10 * time.Second

// kubeClientFor returns a client of the apiserver the kubeconfig file names.
func kubeClientFor(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := open.RESTConfig(open.Config{Type: open.TypeKubernetes, Kubeconfig: kubeconfig})
	if err != nil {
		return nil, err
	}
	rc.Timeout = kubeRequestTimeout
	rc.QPS, rc.Burst = -1, 0
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", kubeconfig, err)
	}
	return c, nil
}

// KubeClient returns a client of the kube-apiserver of the lab recorded in
// opts.StateDir, authenticated as an administrator; an error matching
// ErrNotKubernetes when the lab runs etcd, or has not started its
// apiserver yet.
func KubeClient(opts Options) (kubernetes.Interface, error) {
	opts = opts.withDefaults()
	st, err := LoadState(opts.StateDir)
	if err != nil {
		return nil, err
	}
	if st.DatastoreType() != open.TypeKubernetes || st.Kubeconfig == "" {
		return nil, fmt.Errorf("%w (it runs %s)", ErrNotKubernetes, st.DatastoreDescription())
	}
	return kubeClientFor(st.Kubeconfig)
}

// ensureKubeBasics creates what a control plane's controllers would: the
// namespaces default and kube-system (the garbage collector's Lease lives
// in kube-system) and default's ServiceAccount, which the apiserver's
// admission requires of every pod. Objects that exist already are fine.
func ensureKubeBasics(ctx context.Context, c kubernetes.Interface) error {
	for _, ns := range []string{PodNamespace, metav1.NamespaceSystem} {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
	}
	_, err := c.CoreV1().ServiceAccounts(PodNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service account %s/default: %w", PodNamespace, err)
	}
	return nil
}

// CreateNodeObject registers the v1.Node name, as its kubelet would: with
// the labels kubernetes.io/hostname, kubernetes.io/os and
// kubernetes.io/arch and, when address is valid, the status addresses
// InternalIP and Hostname (no conditions: no kubelet reports on it). The
// agent adds Twill's annotations when it registers. A Node that exists
// already is fine.
func CreateNodeObject(ctx context.Context, c kubernetes.Interface, name string, address netip.Addr) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		corev1.LabelHostname:   name,
		corev1.LabelOSStable:   "linux",
		corev1.LabelArchStable: runtime.GOARCH,
	}}}
	out, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	if !address.IsValid() {
		return nil
	}
	out.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: address.String()}, {Type: corev1.NodeHostName, Address: name}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, out, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set the addresses of node %s: %w", name, err)
	}
	return nil
}

// DeleteNodeObject deletes the v1.Node name; one already gone is fine.
func DeleteNodeObject(ctx context.Context, c kubernetes.Interface, name string) error {
	if err := c.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	return nil
}

// CreatePodObject creates the v1.Pod of p before its CNI ADD, as the
// kubelet's pod would exist: namespace p.Namespace, name p.Name,
// spec.nodeName p.Node, one container of LabPodImage, no service account
// token. It sets p.PodUID to the new pod's UID, which the ADD passes as
// K8S_POD_UID, so that the IPAM garbage collector sees the address's pod
// as live.
func CreatePodObject(ctx context.Context, c kubernetes.Interface, p *PodSpec) error {
	no := false
	zero := int64(0)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
		Spec: corev1.PodSpec{
			NodeName:                      p.Node,
			AutomountServiceAccountToken:  &no,
			TerminationGracePeriodSeconds: &zero,
			Containers:                    []corev1.Container{{Name: "pod", Image: LabPodImage}},
		},
	}
	out, err := c.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	p.PodUID = string(out.UID)
	return nil
}

// DeletePodObject deletes the v1.Pod namespace/name at once (no kubelet
// would confirm a graceful deletion); one already gone is fine.
func DeletePodObject(ctx context.Context, c kubernetes.Interface, namespace, name string) error {
	zero := int64(0)
	err := c.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}
