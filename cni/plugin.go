// Package cni is Twill's CNI plugin, installed as /opt/cni/bin/twill (the
// binary is cmd/twill-cni, which only calls Main), and its installer.
//
// The plugin is a thin client of the node agent: it asks the agent for the
// pod's address over the agent's unix socket (package agentapi), in the
// same request as the endpoint's record, which the agent writes while the
// plugin plumbs the pod's veth; the agent owns the pod's /32 route from
// then on. The plugin never talks to the datastore itself, so it starts
// fast and links neither etcd nor the CLI (nor net/http: agentapi's client
// speaks HTTP/1.1 on the socket itself).
//
// What ADD sets up, as Calico does:
//
//   - host side: a veth named cali + 11 hex characters (HostVethName), MAC
//     ee:ee:ee:ee:ee:ee, proxy_arp=1, neigh proxy_delay=0, forwarding=1, and
//     the route "<pod IP>/32 dev cali… scope link proto 80";
//   - pod side: CNI_IFNAME with the pod's /32, the routes
//     "169.254.1.1 dev eth0 scope link" and "default via 169.254.1.1 dev eth0".
//
// DEL is idempotent, CHECK verifies all of the above against the kernel, the
// agent and the prevResult, STATUS asks the agent whether it is ready and a
// pool has room, and GC asks the agent to release the node's addresses of
// attachments that are no longer valid. Errors carry the codes listed with
// CodePoolExhausted and friends.
//
// The plugin speaks CNI 0.3.0 to 1.1.0 (SupportedVersions) and answers
// every request in the cniVersion of the configuration it is given, so
// that a runtime whose CNI library predates 1.1.0 (containerd 1.6 takes
// 1.0.0 at most) can read its results. CHECK needs a configuration of
// 0.4.0 or later, STATUS and GC one of 1.1.0 or later; older ones get the
// specification's "incompatible CNI version" error (code 1).
package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"twill.dev/twill/agentapi"
)

// About is printed when the plugin runs without CNI_COMMAND.
const About = "Twill CNI plugin: pod networking through the Twill node agent (twill node run)"

// Timeouts of the plugin's work.
const (
	// requestTimeout bounds one request to the agent.
	requestTimeout = 30 * time.Second
	// opTimeout bounds one command as a whole.
	opTimeout = 2 * time.Minute
	// releaseTimeout bounds the release of an address after a failed ADD.
	releaseTimeout = 15 * time.Second
)

// Main runs the plugin: it reads the CNI_* environment variables and the
// network configuration on stdin, runs the command, prints its result or
// its error as JSON on stdout and exits.
func Main() {
	skel.PluginMainFuncs(Funcs(), VersionInfo(), About)
}

// Funcs returns the plugin's command functions, for skel.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    guard(cmdAdd),
		Del:    guard(cmdDel),
		Check:  guard(cmdCheck),
		GC:     guard(cmdGC),
		Status: guard(cmdStatus),
	}
}

// guard turns a panic into a CNI error, so that the runtime always gets an
// answer it can read.
func guard(f func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = types.NewError(CodeInternal, fmt.Sprintf("twill plugin bug: %v", r), string(debug.Stack()))
			}
		}()
		return f(args)
	}
}

// invocation is what every command shares.
type invocation struct {
	args     *skel.CmdArgs
	conf     *NetConf
	k8s      K8sArgs
	log      *slog.Logger
	client   *agentapi.Client
	handle   string
	hostVeth string
}

// begin parses the configuration and CNI_ARGS and prepares the agent
// client; the returned function closes the log.
func begin(args *skel.CmdArgs, cmd string) (*invocation, func(), error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	if err := versionAllows(conf.CNIVersion, cmd); err != nil {
		return nil, nil, err
	}
	k8s, err := ParseArgs(args.Args)
	if err != nil {
		return nil, nil, err
	}
	log, closeLog := conf.Logger(os.Stderr)
	inv := &invocation{
		args:   args,
		conf:   conf,
		k8s:    k8s,
		client: agentapi.NewClient(conf.AgentSocket, requestTimeout),
	}
	if args.ContainerID != "" {
		inv.handle = agentapi.HandleID(args.ContainerID, args.IfName)
		inv.hostVeth = HostVethName(string(k8s.K8S_POD_NAMESPACE), string(k8s.K8S_POD_NAME), args.ContainerID, args.IfName)
		log = log.With("cmd", cmd, "handle", inv.handle, "namespace", string(k8s.K8S_POD_NAMESPACE), "pod", string(k8s.K8S_POD_NAME))
		if id := string(k8s.K8S_POD_INFRA_CONTAINER_ID); id != "" && id != args.ContainerID {
			log = log.With("infraContainer", id)
		}
	} else {
		log = log.With("cmd", cmd)
	}
	inv.log = log
	return inv, closeLog, nil
}

// release gives the handle's addresses back after a failed ADD.
func (inv *invocation) release() {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if _, err := inv.client.DeleteEndpoint(ctx, inv.handle); err != nil {
		inv.log.Error("release the address after a failed ADD (the next DEL or GC releases it)", "err", err)
	}
}

// attachment is what ADD set up, in the form of a CNI result.
type attachment struct {
	hostVeth string
	ifName   string
	podMAC   string
	netns    string
	addr     netip.Addr
	mtu      int
}

// result builds the CNI result of an attachment, in the library's current
// version; resultAs converts it.
func (a attachment) result() *current.Result {
	idx := 1
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: a.hostVeth, Mac: hostMAC.String(), Mtu: a.mtu},
			{Name: a.ifName, Mac: a.podMAC, Mtu: a.mtu, Sandbox: a.netns},
		},
		IPs: []*current.IPConfig{{
			Interface: &idx,
			Address:   net.IPNet{IP: net.IP(a.addr.AsSlice()), Mask: net.CIDRMask(32, 32)},
			Gateway:   net.IP(gateway.AsSlice()),
		}},
		Routes: []*types.Route{{
			Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			GW:  net.IP(gateway.AsSlice()),
		}},
	}
}

// resultAs returns the attachment's result in CNI version v (the
// configuration's), which the runtime requires.
func (a attachment) resultAs(v string) (types.Result, error) {
	res, err := a.result().GetAsVersion(v)
	if err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("convert the result to CNI %s: %v", v, err), "")
	}
	if res.Version() != v {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("the result converted to CNI %s says version %s", v, res.Version()), "")
	}
	return res, nil
}

// hostAddr returns the single IPv4 address of an allocation.
func hostAddr(addrs []string) (netip.Addr, error) {
	var out []netip.Addr
	for _, s := range addrs {
		a, err := parseAddr(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("the agent answered an unusable address: %w", err)
		}
		out = append(out, a)
	}
	if len(out) != 1 {
		return netip.Addr{}, fmt.Errorf("the agent answered %d addresses %v; the plugin needs exactly one IPv4 address", len(out), addrs)
	}
	return out[0], nil
}

func cmdStatus(args *skel.CmdArgs) error {
	inv, done, err := begin(args, "STATUS")
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	st, err := inv.client.Status(ctx)
	if err != nil {
		return types.NewError(CodePluginNotAvailable, fmt.Sprintf("twill plugin not available: ask the agent for its status: %v", err), "")
	}
	if !st.Ready {
		why := st.Reason
		if why == "" {
			why = "no reason given"
		}
		return types.NewError(CodePluginNotAvailable, fmt.Sprintf("twill plugin not available: the agent on node %s is not ready: %s", st.Node, why), "")
	}
	if !st.PoolHasRoom {
		return types.NewError(CodePluginNotAvailable, fmt.Sprintf("twill plugin not available: no IP pool usable by node %s has a free address", st.Node), "add an IP pool or free addresses")
	}
	return nil
}

// validAttachmentsKeys are where GC finds the valid attachments: the
// specification's key, and the misspelling of its first version.
var validAttachmentsKeys = []string{"cni.dev/valid-attachments", "cni.dev/attachments"}

func cmdGC(args *skel.CmdArgs) error {
	inv, done, err := begin(args, "GC")
	if err != nil {
		return err
	}
	defer done()
	valid, err := gcAttachments(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := inv.client.GC(ctx, agentapi.GCRequest{ValidAttachments: valid})
	if err != nil {
		return agentError("garbage-collect pod addresses", err)
	}
	inv.log.Info("GC done", "valid", len(valid), "released", resp.Released, "endpointsDeleted", resp.EndpointsDeleted, "deferred", resp.Deferred)
	return nil
}

// gcAttachments reads the valid attachments of a GC configuration. A
// configuration without the key is refused: GC would otherwise release
// every pod's address.
func gcAttachments(data []byte) ([]agentapi.Attachment, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, types.NewError(CodeDecode, fmt.Sprintf("decode the GC configuration: %v", err), "")
	}
	for _, key := range validAttachmentsKeys {
		msg, ok := raw[key]
		if !ok {
			continue
		}
		var list []types.GCAttachment
		if err := json.Unmarshal(msg, &list); err != nil {
			return nil, types.NewError(CodeDecode, fmt.Sprintf("decode %s: %v", key, err), "")
		}
		out := make([]agentapi.Attachment, 0, len(list))
		for _, a := range list {
			if a.ContainerID == "" || a.IfName == "" {
				return nil, types.NewError(CodeInvalidConfig, fmt.Sprintf("%s: every entry needs containerID and ifname; got %+v", key, a), "")
			}
			out = append(out, agentapi.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
		}
		return out, nil
	}
	return nil, types.NewError(CodeInvalidConfig, fmt.Sprintf("GC needs %s (an empty list when no attachment is valid); refusing to release every pod's address", strings.Join(validAttachmentsKeys, " or ")), "")
}
