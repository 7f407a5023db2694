package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"twill.dev/twill/agent"
)

// DefaultPodTimeout bounds one PodSource.Pod call.
const DefaultPodTimeout = 5 * time.Second

// PodSource implements agent.PodSource with one GET of the pod from the
// Kubernetes API per call; it keeps no cache and starts no informer.
type PodSource struct {
	client kubernetes.Interface
	// Timeout bounds each GET (DefaultPodTimeout when zero or negative).
	Timeout time.Duration
}

var _ agent.PodSource = (*PodSource)(nil)

// NewPodSource returns a PodSource that reads pods through client.
func NewPodSource(client kubernetes.Interface) *PodSource {
	return &PodSource{client: client, Timeout: DefaultPodTimeout}
}

// Pod reads the pod namespace/name and returns its UID and what its
// annotations ask for, read by agent.PodFromAnnotations: addresses from
// twill.dev/ipAddrs, else cni.projectcalico.org/ipAddrs; pools from
// twill.dev/ipv4pools, else cni.projectcalico.org/ipv4pools. A pod that
// does not exist is an error wrapping agent.ErrPodNotFound; an annotation
// that is not a JSON list of strings is an *agent.AnnotationError naming
// the annotation and the pod.
func (p *PodSource) Pod(ctx context.Context, namespace, name string) (agent.PodInfo, error) {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultPodTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pod, err := p.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return agent.PodInfo{}, fmt.Errorf("kube: pod %s/%s: %w", namespace, name, agent.ErrPodNotFound)
	}
	if err != nil {
		return agent.PodInfo{}, fmt.Errorf("kube: get pod %s/%s: %w", namespace, name, err)
	}
	info, err := agent.PodFromAnnotations(string(pod.UID), pod.Annotations)
	var ae *agent.AnnotationError
	if errors.As(err, &ae) && ae.Pod == "" {
		ae.Namespace, ae.Pod = namespace, name
	}
	if err != nil {
		return agent.PodInfo{}, err
	}
	return info, nil
}
