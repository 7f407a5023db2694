package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"time"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/dataplane"
	"twill.dev/twill/ipam"
	"twill.dev/twill/plan"
)

// Defaults of Config.
const (
	DefaultResyncInterval = 30 * time.Second
	DefaultHealthAddr     = "127.0.0.1:9099"
	DefaultGCGrace        = time.Minute
	// DefaultPodTimeout bounds one lookup of a pod (Config.Pods) on ADD.
	DefaultPodTimeout = 5 * time.Second
	// TunnelHandlePrefix + node name is the IPAM handle of a node's VXLAN
	// tunnel address.
	TunnelHandlePrefix = "vxlan-tunnel-addr-"
	// PodGateway is the address pods route through (answered by proxy ARP
	// on the host side of their veth).
	PodGateway = "169.254.1.1"
	// DefaultMemoryLimit is the Go runtime's soft memory limit that
	// `twill node run` asks for (Config.MemoryLimit): issue 7's goal of
	// 64 MiB for the agent's resident set, less the ~25 MiB of the twill
	// binary's own code and data that the process maps, less a margin.
	// docs/benchmarks.md (scale) has the measurements.
	DefaultMemoryLimit int64 = 36 << 20
)

// Dataplane is what the agent needs from the kernel side; package
// dataplane's *Reconciler implements it, tests inject fakes.
type Dataplane interface {
	// Apply makes the kernel match the plan (a full, idempotent reconcile).
	Apply(plan.Dataplane) (dataplane.Result, error)
	// Subscribe returns a coalesced "look again" signal, closed when ctx ends.
	Subscribe(ctx context.Context) (<-chan struct{}, error)
	// Close releases the dataplane's resources.
	Close() error
}

// Config is what `twill node run` passes to the agent.
type Config struct {
	// NodeName is the node's name; default the host name.
	NodeName string
	// IP is the node address (ADDR or ADDR/LEN); empty or "autodetect"
	// means detect it with AutodetectMethod.
	IP string
	// AutodetectMethod is an IP_AUTODETECTION_METHOD value; default
	// first-found.
	AutodetectMethod string
	// NetnsPath runs the agent against another network namespace.
	NetnsPath string
	// SocketPath is the CNI socket; default agentapi.DefaultSocket.
	SocketPath string
	// VXLAN overrides the VXLAN device's settings.
	VXLAN plan.VXLANConfig
	// VTEPMAC overrides the VTEP MAC derived from the node name.
	VTEPMAC string
	// ResyncInterval is the period of full reconciles; default 30s.
	ResyncInterval time.Duration
	// HealthAddr serves /healthz and /readyz; "" disables. It must be a
	// loopback address.
	HealthAddr string
	// MetricsAddr serves Prometheus metrics at /metrics; "" disables.
	MetricsAddr string
	// GCGrace protects addresses allocated by this agent less than GCGrace
	// ago from CNI GC; 0 means DefaultGCGrace, negative disables.
	GCGrace time.Duration
	// MemoryLimit, when positive, is the soft memory limit Run gives the Go
	// runtime (runtime/debug.SetMemoryLimit) until it returns, unless the
	// process has its own (the GOMEMLIMIT environment variable is set; "off"
	// turns the limit off): near it the garbage collector runs more often
	// instead of letting the heap grow. It trades CPU for memory only when
	// the heap approaches the limit; a cluster whose agent needs more than
	// the limit (beyond issue 7's 5,000 nodes) should raise it with
	// GOMEMLIMIT, or the collector works hard (up to half the CPU) to stay
	// under it. 0 leaves the runtime alone (the CLI passes
	// DefaultMemoryLimit).
	MemoryLimit int64
	// Pods, when set, reads the pods the CNI plugin adds (Kubernetes mode):
	// an ADD that names its pod honours the pod's address and pool
	// annotations (see PodInfo) and records the pod's UID. nil (etcd mode)
	// allocates from the pools eligible for the node.
	Pods PodSource
	// PodTimeout bounds one Pods lookup; 0 means DefaultPodTimeout.
	PodTimeout time.Duration
	// IPAM, when set, is the IPAM the agent allocates with (on the same
	// store); nil means the agent makes its own. Sharing one lets a
	// background task (Background) and the agent share IPAM's per-node
	// queues and block cache.
	IPAM *ipam.IPAM
	// Background are tasks that run while the agent runs, each in its own
	// goroutine, from the moment the node is registered until Run's
	// context ends (a cluster-wide IPAM garbage collector, for instance).
	// A task gets the agent (for its Store, IPAM and NodeName) and must
	// return when ctx ends; one that returns earlier is started again
	// after a bounded backoff.
	Background []func(ctx context.Context, a *Agent)
	// Getenv reads the default pool's environment; nil means os.Getenv.
	Getenv func(string) string
	// Logger receives the agent's logs; nil means slog.Default().
	Logger *slog.Logger

	// Dataplane, when set, is used instead of a dataplane.Reconciler on
	// NetnsPath (the agent does not close it).
	Dataplane Dataplane
	// Clock, when set, replaces the wall clock.
	Clock Clock
	// DetectAddress, when set, replaces the detection of the host address.
	DetectAddress func(ctx context.Context) (HostAddress, error)
}

// ErrConfig is wrapped by configuration errors.
var ErrConfig = errors.New("invalid agent configuration")

// ifNameRE is what a Linux interface name may be.
var ifNameRE = regexp.MustCompile(`^[^/\s:]{1,15}$`)

// Check reports what is wrong with the configuration (errors wrap
// ErrConfig), without touching anything.
func (c Config) Check() error {
	_, err := c.withDefaults()
	return err
}

// withDefaults fills in defaults and checks the configuration.
func (c Config) withDefaults() (Config, error) {
	bad := func(format string, a ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return bad("no node name and the host name is unknown (%v): set --name or NODENAME", err)
		}
		c.NodeName = h
	}
	if c.SocketPath == "" {
		c.SocketPath = agentapi.DefaultSocket
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = DefaultResyncInterval
	}
	if c.ResyncInterval < 0 {
		return bad("resync interval %s is negative", c.ResyncInterval)
	}
	if c.GCGrace == 0 {
		c.GCGrace = DefaultGCGrace
	}
	if c.PodTimeout == 0 {
		c.PodTimeout = DefaultPodTimeout
	}
	if c.PodTimeout < 0 {
		return bad("pod lookup timeout %s is negative", c.PodTimeout)
	}
	if c.MemoryLimit < 0 {
		return bad("memory limit %d is negative; use 0 for none", c.MemoryLimit)
	}
	if c.Getenv == nil {
		c.Getenv = os.Getenv
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.VXLAN.Device != "" && !ifNameRE.MatchString(c.VXLAN.Device) {
		return bad("VXLAN device name %q must be 1-15 bytes without '/', ':' or spaces", c.VXLAN.Device)
	}
	if c.VXLAN.VNI < 0 || c.VXLAN.VNI >= 1<<24 {
		return bad("VXLAN VNI %d is outside 1-16777215", c.VXLAN.VNI)
	}
	if c.VXLAN.Port < 0 || c.VXLAN.Port > 65535 {
		return bad("VXLAN port %d is outside 1-65535", c.VXLAN.Port)
	}
	if c.VXLAN.MTU != 0 && (c.VXLAN.MTU < 68 || c.VXLAN.MTU > 65535) {
		return bad("VXLAN MTU %d is outside 68-65535 (0 means host MTU - 50)", c.VXLAN.MTU)
	}
	if c.VTEPMAC != "" {
		hw, err := net.ParseMAC(c.VTEPMAC)
		if err != nil || len(hw) != 6 || hw[0]&1 == 1 {
			return bad("VTEP MAC %q must be a unicast 6-byte MAC such as 66:04:84:48:ab:6a", c.VTEPMAC)
		}
		c.VTEPMAC = hw.String()
	}
	if c.HealthAddr != "" {
		if err := checkLoopback(c.HealthAddr); err != nil {
			return bad("health address: %v", err)
		}
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return bad("metrics address %q must be HOST:PORT, e.g. 127.0.0.1:9091", c.MetricsAddr)
		}
	}
	if c.IP != "" && c.IP != "autodetect" {
		a, err := netip.ParseAddr(c.IP)
		if err != nil {
			p, perr := netip.ParsePrefix(c.IP)
			if perr != nil {
				return bad("IP %q must be an IPv4 address (192.168.3.241) or one with its prefix length (192.168.3.241/24)", c.IP)
			}
			a = p.Addr()
		}
		if !a.Is4() {
			return bad("IP %s is not IPv4", c.IP)
		}
	}
	if c.IP == "" || c.IP == "autodetect" {
		if _, err := ParseAutodetectMethod(c.AutodetectMethod); err != nil {
			return bad("%v", err)
		}
	}
	return c, nil
}

// checkLoopback accepts HOST:PORT where HOST is a loopback address or
// localhost.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q must be HOST:PORT, e.g. 127.0.0.1:9099", addr)
	}
	if host == "localhost" {
		return nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.IsLoopback() {
		return fmt.Errorf("%q must listen on a loopback address such as 127.0.0.1", addr)
	}
	return nil
}
