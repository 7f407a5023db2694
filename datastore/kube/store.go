// Package kube implements datastore.Store on the Kubernetes API: Twill's
// kinds are cluster-scoped custom resources of group twill.dev (see package
// crd and manifests/crds), except KindNode, which is the cluster's v1.Node
// objects with Twill's fields in annotations.
//
// The revision is the object's metadata.resourceVersion, and a list's
// revision is the list's resourceVersion. A conditional write is an update
// (or a JSON patch) that carries the expected resourceVersion; a Delete with
// an expectation carries it as a precondition. Watches ask for bookmarks,
// and a watch from a resourceVersion the apiserver no longer has (410 Gone)
// ends with datastore.ErrCompacted.
//
// A stored value is an api document. IPPool and WorkloadEndpoint documents
// keep their spec as the resource's spec; Block, Handle and IPAMConfig
// documents, which have no metadata, keep their fields (less apiVersion and
// kind) as the spec. Reads rebuild the document: apiVersion twill.dev/v1,
// the api kind, metadata.name (the logical name) and metadata.labels (the
// object's labels, which are also KV.Labels). Logical names that are not
// valid object names are hashed (see ObjectName).
package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"twill.dev/twill/crd"
	"twill.dev/twill/datastore"
)

// Defaults for Config.
const (
	// DefaultRequestTimeout bounds each request to the apiserver.
	DefaultRequestTimeout = 10 * time.Second
	// writeAttempts bounds the read-modify-write loops (unconditional
	// updates of Nodes, Node creation) that retry on a conflict.
	writeAttempts = 5
	// listAttempts bounds ListPages restarts after an expired continue
	// token.
	listAttempts = 5
)

// pageSize is the number of objects per ListPages page (a variable for
// tests).
var pageSize int64 = 500

// Config configures New.
type Config struct {
	// Kubeconfig is the path of the kubeconfig file (or a list of them,
	// separated as in KUBECONFIG, merged). Empty means the KUBECONFIG
	// environment variable, and without it the in-cluster configuration
	// (service account token) of a pod.
	Kubeconfig string
	// REST, when set, is used instead of loading a kubeconfig.
	REST *rest.Config
	// RequestTimeout bounds each request, and the reachability check in
	// New (default 10s).
	RequestTimeout time.Duration
}

// Store is a datastore.Store (and datastore.Pager) on the Kubernetes API.
type Store struct {
	dyn     dynamic.Interface
	core    kubernetes.Interface
	http    *http.Client
	host    string
	source  string // where the configuration came from, for error messages
	timeout time.Duration

	// ctx ends when the store is closed; watches end with it.
	ctx    context.Context
	cancel context.CancelFunc
}

var (
	_ datastore.Store = (*Store)(nil)
	_ datastore.Pager = (*Store)(nil)
)

// New connects to the apiserver and checks, within cfg.RequestTimeout,
// that it answers and serves Twill's custom resources. Its errors name the
// apiserver and what to check: an unreachable apiserver wraps
// datastore.ErrUnavailable; missing custom resource definitions say to run
// kubectl apply -f manifests/crds.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	rc, source, err := loadConfig(cfg)
	if err != nil {
		return nil, err
	}
	rc = rest.CopyConfig(rc)
	if rc.QPS == 0 {
		// Twill's writes are few and small; the apiserver's priority and
		// fairness, not a client-side limiter, should pace them.
		rc.QPS = -1
	}
	if rc.UserAgent == "" {
		rc.UserAgent = "twill"
	}
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s (%s): %w", rc.Host, source, err)
	}
	dyn, err := dynamic.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s (%s): %w", rc.Host, source, err)
	}
	core, err := kubernetes.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s (%s): %w", rc.Host, source, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Store{dyn: dyn, core: core, http: hc, host: rc.Host, source: source, timeout: cfg.RequestTimeout, ctx: sctx, cancel: cancel}
	if err := s.check(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// loadConfig returns the client configuration and says where it came from.
func loadConfig(cfg Config) (*rest.Config, string, error) {
	if cfg.REST != nil {
		return cfg.REST, "the given client configuration", nil
	}
	path, from := cfg.Kubeconfig, "kubeconfig "+cfg.Kubeconfig
	if path == "" {
		path, from = os.Getenv("KUBECONFIG"), "KUBECONFIG="+os.Getenv("KUBECONFIG")
	}
	if path != "" {
		// One file must exist; a list (as KUBECONFIG may hold) is merged.
		rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
		if strings.ContainsRune(path, filepath.ListSeparator) {
			rules = &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(path)}
		}
		rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		if err != nil {
			return nil, "", fmt.Errorf("load %s: %w", from, err)
		}
		return rc, from, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, "", fmt.Errorf("no Kubernetes configuration: give a kubeconfig (--kubeconfig or KUBECONFIG), or run in a pod with a service account (in-cluster: %w)", err)
	}
	return rc, "the in-cluster service account", nil
}

// check asks the apiserver for the twill.dev/v1 resources.
func (s *Store) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	raw, err := s.core.Discovery().RESTClient().Get().AbsPath("/apis", crd.Group, crd.Version).Do(ctx).Raw()
	if err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("kubernetes apiserver at %s (%s) does not serve %s/%s resources: install Twill's CRDs with kubectl apply -f manifests/crds: %w",
				s.host, s.source, crd.Group, crd.Version, err)
		}
		return s.connErr(err)
	}
	var list metav1.APIResourceList
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("kubernetes apiserver at %s: decode the %s/%s resource list: %w", s.host, crd.Group, crd.Version, err)
	}
	var missing []string
	for _, r := range crd.Resources {
		if !slices.ContainsFunc(list.APIResources, func(a metav1.APIResource) bool { return a.Name == r }) {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kubernetes apiserver at %s (%s) lacks the CRDs for %s.%s: install them with kubectl apply -f manifests/crds",
			s.host, s.source, strings.Join(missing, ", "), crd.Group)
	}
	return nil
}

// connErr describes a failure to talk to the apiserver in New, with what to
// check.
func (s *Store) connErr(err error) error {
	switch {
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("kubernetes apiserver at %s refused the credentials of %s: check its client certificate or token: %w", s.host, s.source, err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("kubernetes apiserver at %s: the user of %s may not read %s resources: check its credentials (client certificate or token) and RBAC: %w", s.host, s.source, crd.Group, err)
	case isTLSError(err):
		return fmt.Errorf("kubernetes apiserver at %s: TLS failed: check the certificate authority and certificates in %s: %w", s.host, s.source, err)
	}
	return fmt.Errorf("kubernetes apiserver at %s is unreachable: check that it is running, that %s points at it with valid certificates, and that Twill's CRDs are installed (kubectl apply -f manifests/crds): %w: %w",
		s.host, s.source, datastore.ErrUnavailable, err)
}

// isTLSError reports whether err is a failed certificate check.
func isTLSError(err error) bool {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var ve *tls.CertificateVerificationError
	return errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) || errors.As(err, &ve)
}

// Close ends the store's watches and closes idle connections.
func (s *Store) Close() error {
	s.cancel()
	s.http.CloseIdleConnections()
	return nil
}

// opCtx bounds one request by the store's timeout and its lifetime.
func (s *Store) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// mapErr turns an apiserver error into the datastore's errors.
func (s *Store) mapErr(ctx context.Context, op string, kind datastore.Kind, name string, err error) error {
	what := fmt.Sprintf("kubernetes %s %s %q", op, kind, name)
	if name == "" {
		what = fmt.Sprintf("kubernetes %s %s", op, kind)
	}
	switch {
	case errors.Is(ctx.Err(), context.Canceled) && s.ctx.Err() == nil:
		return fmt.Errorf("%s: %w", what, ctx.Err())
	case s.ctx.Err() != nil:
		return fmt.Errorf("%s: the store is closed: %w", what, datastore.ErrUnavailable)
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%s: %w", what, datastore.ErrNotFound)
	case apierrors.IsAlreadyExists(err):
		return fmt.Errorf("%s: %w (%w)", what, datastore.ErrExists, datastore.ErrConflict)
	case apierrors.IsConflict(err):
		return fmt.Errorf("%s: %w: %s", what, datastore.ErrConflict, apiMessage(err))
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err), apierrors.IsRequestEntityTooLargeError(err):
		return fmt.Errorf("%s: %w: %s", what, datastore.ErrInvalid, apiMessage(err))
	case apierrors.IsGone(err), apierrors.IsResourceExpired(err):
		return fmt.Errorf("%s: %w: %s", what, datastore.ErrCompacted, apiMessage(err))
	case apierrors.IsUnauthorized(err), apierrors.IsForbidden(err):
		return fmt.Errorf("%s at %s (%s): %w", what, s.host, s.source, err)
	case isUnavailable(ctx, err):
		return fmt.Errorf("%s: no answer from the apiserver at %s in time; check that it is running (%w: %w)", what, s.host, datastore.ErrUnavailable, err)
	}
	return fmt.Errorf("%s at %s: %w", what, s.host, err)
}

// apiMessage is the apiserver's message for err.
func apiMessage(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Message != "" {
		return st.Status().Message
	}
	return err.Error()
}

// isUnavailable reports whether err means the apiserver could not be
// reached or did not answer in time.
func isUnavailable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch {
	case apierrors.IsTimeout(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err),
		apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err), apierrors.IsUnexpectedServerError(err):
		return true
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		return false
	}
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// resourceFor returns the custom resource of a kind other than KindNode.
func resourceFor(kind datastore.Kind) (resource, error) {
	r, ok := resources[kind]
	if !ok {
		return resource{}, fmt.Errorf("kubernetes: unknown kind %q: %w", kind, datastore.ErrInvalid)
	}
	return r, nil
}

// checkName refuses an empty name.
func checkName(kind datastore.Kind, name string) error {
	if name == "" {
		return fmt.Errorf("kubernetes %s: empty name: %w", kind, datastore.ErrInvalid)
	}
	return nil
}

// Get implements datastore.Store.
func (s *Store) Get(ctx context.Context, kind datastore.Kind, name string) (datastore.KV, error) {
	if err := checkName(kind, name); err != nil {
		return datastore.KV{}, err
	}
	if kind == datastore.KindNode {
		return s.getNode(ctx, name)
	}
	r, err := resourceFor(kind)
	if err != nil {
		return datastore.KV{}, err
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	u, err := s.dyn.Resource(r.gvr).Get(octx, ObjectName(name), metav1.GetOptions{})
	if err != nil {
		return datastore.KV{}, s.mapErr(octx, "get", kind, name, err)
	}
	kv, err := r.fromObject(kind, u)
	if err != nil {
		return datastore.KV{}, err
	}
	if kv.Name != name {
		// A hashed object name shared by another logical name.
		return datastore.KV{}, fmt.Errorf("kubernetes get %s %q: %w", kind, name, datastore.ErrNotFound)
	}
	return kv, nil
}

// List implements datastore.Store.
func (s *Store) List(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions) ([]datastore.KV, string, error) {
	var out []datastore.KV
	rev, err := s.list(ctx, kind, opts, 0, func(kvs []datastore.KV, _ bool) error {
		out = append(out, kvs...)
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	sortKVs(out)
	return out, rev, nil
}

// ListPages implements datastore.Pager: pages of up to 500 objects, read at
// one resourceVersion. Each page is sorted by name, and pages follow each
// other in Kubernetes object-name order, which is name order except for
// objects stored under hashed names. An expired continue token (the
// apiserver compacted the list's resourceVersion) restarts the list.
func (s *Store) ListPages(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions, page func(kvs []datastore.KV, restart bool) error) (string, error) {
	return s.list(ctx, kind, opts, pageSize, page)
}

// list lists kind in pages of limit objects (0: one page of everything).
func (s *Store) list(ctx context.Context, kind datastore.Kind, opts datastore.ListOptions, limit int64, page func([]datastore.KV, bool) error) (string, error) {
	sel := labels.SelectorFromSet(opts.Labels).String()
	restart := false
	var lastErr error
	for attempt := 0; attempt < listAttempts; attempt++ {
		rev, cont := "", ""
		for {
			kvs, listRev, next, err := s.listPage(ctx, kind, metav1.ListOptions{LabelSelector: sel, Limit: limit, Continue: cont})
			if err != nil {
				if cont != "" && errors.Is(err, datastore.ErrCompacted) {
					restart, lastErr = true, err
					break
				}
				return "", err
			}
			if rev == "" {
				rev = listRev
			}
			sortKVs(kvs)
			if err := page(kvs, restart); err != nil {
				return "", err
			}
			restart = false
			if next == "" {
				return rev, nil
			}
			cont = next
		}
	}
	return "", fmt.Errorf("kubernetes list %s: the list expired %d times while paging: %w", kind, listAttempts, lastErr)
}

// listPage reads one page of kind.
func (s *Store) listPage(ctx context.Context, kind datastore.Kind, lo metav1.ListOptions) ([]datastore.KV, string, string, error) {
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	if kind == datastore.KindNode {
		nl, err := s.core.CoreV1().Nodes().List(octx, lo)
		if err != nil {
			return nil, "", "", s.mapErr(octx, "list", kind, "", err)
		}
		kvs := make([]datastore.KV, 0, len(nl.Items))
		for i := range nl.Items {
			if !isTwillNode(&nl.Items[i]) {
				continue
			}
			kv, err := nodeKV(&nl.Items[i])
			if err != nil {
				return nil, "", "", err
			}
			kvs = append(kvs, kv)
		}
		return kvs, nl.ResourceVersion, nl.Continue, nil
	}
	r, err := resourceFor(kind)
	if err != nil {
		return nil, "", "", err
	}
	ul, err := s.dyn.Resource(r.gvr).List(octx, lo)
	if err != nil {
		return nil, "", "", s.mapErr(octx, "list", kind, "", err)
	}
	kvs := make([]datastore.KV, 0, len(ul.Items))
	for i := range ul.Items {
		kv, err := r.fromObject(kind, &ul.Items[i])
		if err != nil {
			return nil, "", "", err
		}
		kvs = append(kvs, kv)
	}
	return kvs, ul.GetResourceVersion(), ul.GetContinue(), nil
}

// Create implements datastore.Store.
func (s *Store) Create(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	if err := checkName(kv.Kind, kv.Name); err != nil {
		return datastore.KV{}, err
	}
	if kv.Kind == datastore.KindNode {
		return s.createNode(ctx, kv)
	}
	r, err := resourceFor(kv.Kind)
	if err != nil {
		return datastore.KV{}, err
	}
	obj, err := r.toObject(kv)
	if err != nil {
		return datastore.KV{}, err
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	u, err := s.dyn.Resource(r.gvr).Create(octx, obj, metav1.CreateOptions{})
	if err != nil {
		return datastore.KV{}, s.mapErr(octx, "create", kv.Kind, kv.Name, err)
	}
	return r.fromObject(kv.Kind, u)
}

// jsonPatchOp is one RFC 6902 operation.
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// Update implements datastore.Store with a JSON patch that replaces the
// spec and the labels; with kv.Revision the patch also sets
// metadata.resourceVersion, which makes the apiserver apply it only at that
// revision.
func (s *Store) Update(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	if err := checkName(kv.Kind, kv.Name); err != nil {
		return datastore.KV{}, err
	}
	if kv.Kind == datastore.KindNode {
		return s.updateNode(ctx, kv)
	}
	r, err := resourceFor(kv.Kind)
	if err != nil {
		return datastore.KV{}, err
	}
	obj, err := r.toObject(kv)
	if err != nil {
		return datastore.KV{}, err
	}
	lbls := obj.GetLabels()
	if lbls == nil {
		lbls = map[string]string{}
	}
	ops := []jsonPatchOp{
		{Op: "add", Path: "/spec", Value: obj.Object["spec"]},
		{Op: "add", Path: "/metadata/labels", Value: lbls},
	}
	if kv.Revision != "" {
		ops = append(ops, jsonPatchOp{Op: "add", Path: "/metadata/resourceVersion", Value: kv.Revision})
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return datastore.KV{}, fmt.Errorf("kubernetes update %s %q: encode patch: %w", kv.Kind, kv.Name, err)
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	u, err := s.dyn.Resource(r.gvr).Patch(octx, ObjectName(kv.Name), types.JSONPatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return datastore.KV{}, s.mapErr(octx, "update", kv.Kind, kv.Name, err)
	}
	return r.fromObject(kv.Kind, u)
}

// Delete implements datastore.Store; expect becomes a resourceVersion
// precondition.
func (s *Store) Delete(ctx context.Context, kind datastore.Kind, name, expect string) error {
	if err := checkName(kind, name); err != nil {
		return err
	}
	if kind == datastore.KindNode {
		return s.deleteNode(ctx, name, expect)
	}
	r, err := resourceFor(kind)
	if err != nil {
		return err
	}
	var opts metav1.DeleteOptions
	if expect != "" {
		opts.Preconditions = &metav1.Preconditions{ResourceVersion: &expect}
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	if err := s.dyn.Resource(r.gvr).Delete(octx, ObjectName(name), opts); err != nil {
		return s.mapErr(octx, "delete", kind, name, err)
	}
	return nil
}

// getNode reads a v1.Node that carries a Twill node.
func (s *Store) getNode(ctx context.Context, name string) (datastore.KV, error) {
	n, err := s.readNode(ctx, "get", name)
	if err != nil {
		return datastore.KV{}, err
	}
	if !isTwillNode(n) {
		return datastore.KV{}, fmt.Errorf("kubernetes get node %q: the Node has no %s annotation: %w", name, AnnotationIPv4Address, datastore.ErrNotFound)
	}
	return nodeKV(n)
}

// readNode reads the v1.Node name.
func (s *Store) readNode(ctx context.Context, op, name string) (*corev1.Node, error) {
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	n, err := s.core.CoreV1().Nodes().Get(octx, ObjectName(name), metav1.GetOptions{})
	if err != nil {
		return nil, s.mapErr(octx, op, datastore.KindNode, name, err)
	}
	return n, nil
}

// writeNode updates the v1.Node, conditional on its resourceVersion.
func (s *Store) writeNode(ctx context.Context, op string, n *corev1.Node) (datastore.KV, error) {
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	out, err := s.core.CoreV1().Nodes().Update(octx, n, metav1.UpdateOptions{})
	if err != nil {
		return datastore.KV{}, s.mapErr(octx, op, datastore.KindNode, n.Name, err)
	}
	return nodeKV(out)
}

// createNode annotates an existing v1.Node that has no Twill annotations
// yet; the Node itself is registered by its kubelet (or the lab).
func (s *Store) createNode(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	ann, docLabels, err := nodeAnnotations(kv)
	if err != nil {
		return datastore.KV{}, err
	}
	var lastErr error
	for attempt := 0; attempt < writeAttempts; attempt++ {
		n, err := s.readNode(ctx, "create", kv.Name)
		if errors.Is(err, datastore.ErrNotFound) {
			return datastore.KV{}, fmt.Errorf("kubernetes create node %q: node %s is not registered with Kubernetes (its kubelet registers it): %w", kv.Name, kv.Name, datastore.ErrNotFound)
		}
		if err != nil {
			return datastore.KV{}, err
		}
		if isTwillNode(n) {
			return datastore.KV{}, fmt.Errorf("kubernetes create node %q: %w (%w)", kv.Name, datastore.ErrExists, datastore.ErrConflict)
		}
		setNodeAnnotations(n, ann, mergeLabels(docLabels, kv.Labels))
		out, err := s.writeNode(ctx, "create", n)
		if errors.Is(err, datastore.ErrConflict) {
			lastErr = err
			continue
		}
		return out, err
	}
	return datastore.KV{}, lastErr
}

// updateNode replaces the Twill annotations of a v1.Node that has them.
func (s *Store) updateNode(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	ann, docLabels, err := nodeAnnotations(kv)
	if err != nil {
		return datastore.KV{}, err
	}
	var lastErr error
	for attempt := 0; attempt < writeAttempts; attempt++ {
		n, err := s.readNode(ctx, "update", kv.Name)
		if err != nil {
			return datastore.KV{}, err
		}
		if !isTwillNode(n) {
			return datastore.KV{}, fmt.Errorf("kubernetes update node %q: the Node has no %s annotation: %w", kv.Name, AnnotationIPv4Address, datastore.ErrNotFound)
		}
		if kv.Revision != "" && n.ResourceVersion != kv.Revision {
			return datastore.KV{}, fmt.Errorf("kubernetes update node %q: at revision %s, not %s: %w", kv.Name, n.ResourceVersion, kv.Revision, datastore.ErrConflict)
		}
		setNodeAnnotations(n, ann, mergeLabels(docLabels, kv.Labels))
		out, err := s.writeNode(ctx, "update", n)
		if errors.Is(err, datastore.ErrConflict) && kv.Revision == "" {
			lastErr = err
			continue
		}
		return out, err
	}
	return datastore.KV{}, lastErr
}

// deleteNode deletes a v1.Node that carries a Twill node.
func (s *Store) deleteNode(ctx context.Context, name, expect string) error {
	n, err := s.readNode(ctx, "delete", name)
	if err != nil {
		return err
	}
	if !isTwillNode(n) {
		return fmt.Errorf("kubernetes delete node %q: the Node has no %s annotation: %w", name, AnnotationIPv4Address, datastore.ErrNotFound)
	}
	pre := &metav1.Preconditions{UID: &n.UID}
	if expect != "" {
		pre.ResourceVersion = &expect
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	if err := s.core.CoreV1().Nodes().Delete(octx, n.Name, metav1.DeleteOptions{Preconditions: pre}); err != nil {
		return s.mapErr(octx, "delete", datastore.KindNode, name, err)
	}
	return nil
}

// mergeLabels returns a's labels overlaid with b's.
func mergeLabels(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
