package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// The pod annotations the agent honours on ADD in Kubernetes mode. Twill's
// own take precedence over Calico's, which are read so that manifests
// written for Calico keep working.
const (
	// AnnotationIPAddrs asks for specific addresses: a JSON list such as
	// ["10.0.0.5"].
	AnnotationIPAddrs = "twill.dev/ipAddrs"
	// AnnotationPools restricts the pod to some pools: a JSON list of pool
	// names or CIDRs, such as ["blue-pool"] or ["10.1.0.0/16"].
	AnnotationPools = "twill.dev/ipv4pools"
	// CalicoAnnotationIPAddrs is Calico's AnnotationIPAddrs.
	CalicoAnnotationIPAddrs = "cni.projectcalico.org/ipAddrs"
	// CalicoAnnotationPools is Calico's AnnotationPools.
	CalicoAnnotationPools = "cni.projectcalico.org/ipv4pools"
)

// PodInfo is what the agent needs to know of a pod on ADD.
type PodInfo struct {
	// UID is the pod's Kubernetes UID.
	UID string
	// IPAddrs are the addresses the pod asks for (annotation
	// twill.dev/ipAddrs or cni.projectcalico.org/ipAddrs); empty when it
	// asks for none.
	IPAddrs []string
	// Pools are the pools, by name or CIDR, the pod's address must come
	// from (annotation twill.dev/ipv4pools or
	// cni.projectcalico.org/ipv4pools); empty for any eligible pool.
	Pools []string
	// IPAddrsAnnotation and PoolsAnnotation name the annotations IPAddrs
	// and Pools were read from, for error messages; PodFromAnnotations sets
	// them.
	IPAddrsAnnotation string
	PoolsAnnotation   string
}

// PodSource looks pods up, for Config.Pods. Pod returns an error wrapping
// ErrPodNotFound when the pod does not exist, and an *AnnotationError when
// one of its annotations cannot be read.
type PodSource interface {
	Pod(ctx context.Context, namespace, name string) (PodInfo, error)
}

// ErrPodNotFound is wrapped by PodSource errors for a pod that does not
// exist.
var ErrPodNotFound = errors.New("pod not found")

// ErrBadAnnotation is wrapped by every *AnnotationError.
var ErrBadAnnotation = errors.New("invalid pod annotation")

// AnnotationError reports a pod annotation the agent cannot honour: a
// malformed value, an address that is not IPv4, a pool that does not
// exist. An ADD that meets one fails (code invalid).
type AnnotationError struct {
	// Namespace and Pod name the pod, when known.
	Namespace, Pod string
	// Annotation is the annotation's key.
	Annotation string
	// Value is the annotation's value, or the offending part of it.
	Value string
	// Err is the problem.
	Err error
}

// Error implements error: `pod default/web-0: annotation
// twill.dev/ipv4pools: ["nope"]: pool "nope" does not exist`.
func (e *AnnotationError) Error() string {
	var b strings.Builder
	if e.Pod != "" {
		fmt.Fprintf(&b, "pod %s/%s: ", e.Namespace, e.Pod)
	}
	fmt.Fprintf(&b, "annotation %s", e.Annotation)
	if e.Value != "" {
		fmt.Fprintf(&b, ": %s", e.Value)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

// Unwrap returns ErrBadAnnotation and the problem.
func (e *AnnotationError) Unwrap() []error { return []error{ErrBadAnnotation, e.Err} }

// PodFromAnnotations builds the PodInfo of a pod from its UID and
// annotations, for PodSource implementations: the address and pool lists
// are read from Twill's annotations, else from Calico's. A value that is
// not a JSON list of strings is an *AnnotationError.
func PodFromAnnotations(uid string, annotations map[string]string) (PodInfo, error) {
	info := PodInfo{UID: uid}
	var err error
	if info.IPAddrs, info.IPAddrsAnnotation, err = stringList(annotations, AnnotationIPAddrs, CalicoAnnotationIPAddrs); err != nil {
		return PodInfo{}, err
	}
	if info.Pools, info.PoolsAnnotation, err = stringList(annotations, AnnotationPools, CalicoAnnotationPools); err != nil {
		return PodInfo{}, err
	}
	return info, nil
}

// stringList reads the first of keys that is set as a JSON list of
// strings, and returns it with the key it was read from.
func stringList(annotations map[string]string, keys ...string) ([]string, string, error) {
	for _, k := range keys {
		v, ok := annotations[k]
		if !ok {
			continue
		}
		var list []string
		if err := json.Unmarshal([]byte(v), &list); err != nil {
			return nil, k, &AnnotationError{Annotation: k, Value: v, Err: fmt.Errorf("want a JSON list of strings such as [\"a\", \"b\"]: %w", err)}
		}
		return list, k, nil
	}
	return nil, "", nil
}

// podRequest is what a pod's annotations ask of an allocation.
type podRequest struct {
	uid string
	// ips are specific addresses; pools restricts the pools (names).
	ips   []netip.Addr
	pools []string
	// from names the annotation ips or pools come from.
	from string
}

// podRequest reads the pod of an ADD from Config.Pods, when both are set,
// and returns what its annotations ask for. A pod that does not exist asks
// for nothing (a warning is logged); an annotation that cannot be honoured
// fails with an *AnnotationError (code invalid); a lookup that fails
// otherwise is code unavailable, since allocating without the pod's
// annotations could hand out the wrong address.
func (a *Agent) podRequest(ctx context.Context, req agentapi.AllocateRequest) (podRequest, error) {
	pr := podRequest{uid: req.PodUID}
	if a.cfg.Pods == nil || req.Namespace == "" || req.Pod == "" {
		return pr, nil
	}
	pctx, cancel := context.WithTimeout(ctx, a.cfg.PodTimeout)
	info, err := a.cfg.Pods.Pod(pctx, req.Namespace, req.Pod)
	cancel()
	var ae *AnnotationError
	switch {
	case errors.Is(err, ErrPodNotFound):
		a.log.Warn("the pod of an ADD does not exist; allocating without its annotations", "namespace", req.Namespace, "pod", req.Pod, "err", err)
		return pr, nil
	case errors.As(err, &ae):
		if ae.Pod == "" {
			ae.Namespace, ae.Pod = req.Namespace, req.Pod
		}
		return pr, &agentapi.Error{Code: agentapi.CodeInvalid, Message: ae.Error()}
	case err != nil:
		return pr, &agentapi.Error{Code: agentapi.CodeUnavailable, Message: fmt.Sprintf("read pod %s/%s for its address annotations: %v", req.Namespace, req.Pod, err)}
	}
	if req.PodUID != "" && info.UID != "" && info.UID != req.PodUID {
		return pr, invalid("pod %s/%s is now UID %s, not the UID %s this ADD is for: the pod was replaced", req.Namespace, req.Pod, info.UID, req.PodUID)
	}
	if pr.uid == "" {
		pr.uid = info.UID
	}
	bad := func(key, value string, format string, args ...any) error {
		e := &AnnotationError{Namespace: req.Namespace, Pod: req.Pod, Annotation: key, Value: value, Err: fmt.Errorf(format, args...)}
		return &agentapi.Error{Code: agentapi.CodeInvalid, Message: e.Error()}
	}
	if len(info.IPAddrs) > 0 {
		key := cmp.Or(info.IPAddrsAnnotation, AnnotationIPAddrs)
		pr.from = key
		for _, s := range info.IPAddrs {
			ip, err := parseHostAddr(s)
			if err != nil {
				return pr, bad(key, s, "%v", err)
			}
			if !ip.Is4() {
				return pr, bad(key, s, "not an IPv4 address: Twill allocates IPv4 only")
			}
			if slices.Contains(pr.ips, ip) {
				return pr, bad(key, s, "the address is listed twice")
			}
			pr.ips = append(pr.ips, ip)
		}
		return pr, nil
	}
	if len(info.Pools) == 0 {
		return pr, nil
	}
	key := cmp.Or(info.PoolsAnnotation, AnnotationPools)
	pr.from = key
	objs, _, err := datastore.ListObjects[api.IPPool](ctx, a.store, datastore.KindIPPool, datastore.ListOptions{})
	if err != nil {
		return pr, fmt.Errorf("list IP pools for annotation %s: %w", key, err)
	}
	for _, s := range info.Pools {
		name, ok := matchPool(objs, s)
		if !ok {
			return pr, bad(key, s, "no IP pool has this name or CIDR")
		}
		if !slices.Contains(pr.pools, name) {
			pr.pools = append(pr.pools, name)
		}
	}
	return pr, nil
}

// matchPool finds the pool named s, or else the one whose CIDR is s.
func matchPool(pools []datastore.Object[api.IPPool], s string) (string, bool) {
	for _, o := range pools {
		if o.Name == s || o.Value.Metadata.Name == s {
			return o.Name, true
		}
	}
	want, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return "", false
	}
	for _, o := range pools {
		if p, err := netip.ParsePrefix(o.Value.Spec.CIDR); err == nil && p.Masked() == want.Masked() && p.Bits() == want.Bits() {
			return o.Name, true
		}
	}
	return "", false
}

// parseHostAddr reads an address, bare or as a host prefix (/32).
func parseHostAddr(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if ip, err := netip.ParseAddr(s); err == nil {
		return ip.Unmap(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Bits() != p.Addr().BitLen() {
		return netip.Addr{}, fmt.Errorf("%q is not an address such as 10.0.0.5", s)
	}
	return p.Addr().Unmap(), nil
}
