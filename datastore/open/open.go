// Package open connects to the datastore a Twill process is configured
// for: etcd (package datastore/etcd) or the Kubernetes API server (package
// datastore/kube). Every entry point (the CLI, `twill node run`, the lab
// and the bench) opens its store here, so that they all choose the
// datastore by the same flags and environment variables.
package open

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/etcd"
	"twill.dev/twill/datastore/kube"
)

// Datastore types, the values of Config.Type.
const (
	// TypeEtcd keeps Twill's state in etcd v3.
	TypeEtcd = "etcd"
	// TypeKubernetes keeps it in the Kubernetes API server, as custom
	// resources (and annotations on v1.Node).
	TypeKubernetes = "kubernetes"
)

// Types lists the valid datastore types.
var Types = []string{TypeEtcd, TypeKubernetes}

// Environment variables read by ConfigFromEnv.
const (
	// EnvType selects the datastore: etcd or kubernetes.
	EnvType = "TWILL_DATASTORE_TYPE"
	// EnvCalicoType is Calico's variable for the same choice; Calico's
	// spelling etcdv3 means etcd. EnvType wins when both are set.
	EnvCalicoType = "DATASTORE_TYPE"
	// EnvKubeconfig is the kubeconfig file; empty inside a pod means the
	// pod's service account.
	EnvKubeconfig = "KUBECONFIG"
	// EnvInCluster is set by the kubelet in every pod; when no type is
	// given, its presence selects the Kubernetes datastore.
	EnvInCluster = "KUBERNETES_SERVICE_HOST"
)

// DefaultKubeTimeout is the Kubernetes request timeout used when
// Config.KubeTimeout is 0.
const DefaultKubeTimeout = kube.DefaultRequestTimeout

// ErrUnknownType is wrapped by the error Open returns for a Config.Type
// that is not one of Types.
var ErrUnknownType = errors.New("unknown datastore type")

// Config says which datastore to open and how to reach it.
type Config struct {
	// Type is TypeEtcd or TypeKubernetes.
	Type string
	// Kubeconfig is the kubeconfig file of the Kubernetes datastore; empty
	// means the in-cluster configuration (the pod's service account).
	Kubeconfig string
	// Etcd says how to reach etcd.
	Etcd etcd.Config
	// KubeTimeout bounds each request to the Kubernetes API server, and
	// the reachability check in Open; 0 means DefaultKubeTimeout.
	KubeTimeout time.Duration
}

// ParseType returns the canonical datastore type for s: "etcd" (or
// Calico's "etcdv3") or "kubernetes", in any case and without surrounding
// space. Anything else is an error wrapping ErrUnknownType that lists the
// valid values.
func ParseType(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case TypeEtcd, "etcdv3":
		return TypeEtcd, nil
	case TypeKubernetes:
		return TypeKubernetes, nil
	}
	return "", fmt.Errorf("%w %q: use %s", ErrUnknownType, s, strings.Join(Types, " or "))
}

// TypeFromEnv returns the datastore type the environment selects and
// whether it names one explicitly: EnvType, else EnvCalicoType (values as
// given, checked by ParseType later); else, implicitly, etcd when
// etcd.EnvEndpoints is set (the etcd client settings were given on
// purpose), kubernetes when EnvInCluster is set (inside a pod), and etcd
// otherwise.
func TypeFromEnv(getenv func(string) string) (typ string, explicit bool) {
	for _, name := range []string{EnvType, EnvCalicoType} {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			if t, err := ParseType(v); err == nil {
				return t, true
			}
			return v, true
		}
	}
	switch {
	case strings.TrimSpace(getenv(etcd.EnvEndpoints)) != "":
		return TypeEtcd, false
	case strings.TrimSpace(getenv(EnvInCluster)) != "":
		return TypeKubernetes, false
	}
	return TypeEtcd, false
}

// ConfigFromEnv reads the datastore configuration from the environment
// through getenv (usually os.Getenv): the type as TypeFromEnv chooses it,
// the kubeconfig from EnvKubeconfig and the etcd settings as
// etcd.ConfigFromEnv reads them.
func ConfigFromEnv(getenv func(string) string) Config {
	typ, _ := TypeFromEnv(getenv)
	return Config{
		Type:       typ,
		Kubeconfig: strings.TrimSpace(getenv(EnvKubeconfig)),
		Etcd:       etcd.ConfigFromEnv(getenv),
	}
}

// Open connects to the datastore cfg selects. An unknown type fails
// without connecting anywhere; a datastore that does not answer fails with
// an error wrapping datastore.ErrUnavailable.
func Open(ctx context.Context, cfg Config) (datastore.Store, error) {
	typ, err := ParseType(cfg.Type)
	if err != nil {
		return nil, err
	}
	switch typ {
	case TypeKubernetes:
		kc := kube.Config{Kubeconfig: cfg.Kubeconfig, RequestTimeout: cfg.KubeTimeout}
		if strings.ContainsRune(cfg.Kubeconfig, filepath.ListSeparator) {
			// A list of files, as KUBECONFIG may hold: merged here.
			if kc.REST, err = RESTConfig(cfg); err != nil {
				return nil, err
			}
		}
		s, err := kube.New(ctx, kc)
		if err != nil {
			return nil, err
		}
		return s, nil
	default:
		s, err := etcd.New(ctx, cfg.Etcd)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}

// RESTConfig loads the Kubernetes client configuration cfg selects, as
// the kubernetes datastore does: the kubeconfig file cfg.Kubeconfig (or a
// list of them, separated as in KUBECONFIG, merged), else the files of the
// KUBECONFIG variable, else the in-cluster configuration of a pod. `twill
// node run` uses it for the clients of its Kubernetes controllers.
func RESTConfig(cfg Config) (*rest.Config, error) {
	path, from := cfg.Kubeconfig, "kubeconfig "+cfg.Kubeconfig
	if path == "" {
		path, from = os.Getenv(EnvKubeconfig), EnvKubeconfig+"="+os.Getenv(EnvKubeconfig)
	}
	if path == "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no Kubernetes configuration: give a kubeconfig (--kubeconfig or KUBECONFIG), or run in a pod with a service account (in-cluster: %w)", err)
		}
		return rc, nil
	}
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(path)}
	if !strings.ContainsRune(path, filepath.ListSeparator) {
		rules = &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", from, err)
	}
	return rc, nil
}

// Describe says where cfg points, for messages: "etcd at URL[,URL]" or
// "kubernetes (kubeconfig PATH)" / "kubernetes (in-cluster)".
func (cfg Config) Describe() string {
	typ, err := ParseType(cfg.Type)
	if err != nil {
		return fmt.Sprintf("datastore %q", cfg.Type)
	}
	if typ == TypeKubernetes {
		if cfg.Kubeconfig == "" {
			return "kubernetes (in-cluster)"
		}
		return "kubernetes (kubeconfig " + cfg.Kubeconfig + ")"
	}
	eps := cfg.Etcd.Endpoints
	if len(eps) == 0 {
		eps = []string{etcd.DefaultEndpoint}
	}
	return "etcd at " + strings.Join(eps, ",")
}
