package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"twill.dev/twill/datastore/open"
	"twill.dev/twill/plan"
)

// pingWorkers bounds the pings in flight while the matrix is measured.
const pingWorkers = 8

// Report gathers the report of the lab recorded in opts.StateDir: each
// node's VTEP and pod-network routes read from its kernel, a ping from
// every pod to every other pod, and for each ordered node pair the path one
// ping took, seen by a capture on the sender's eth0 and compared with the
// planner's choice.
func Report(ctx context.Context, opts Options) (*LabReport, error) {
	opts = opts.withDefaults()
	if err := needRoot(); err != nil {
		return nil, err
	}
	st, err := LoadState(opts.StateDir)
	if err != nil {
		return nil, err
	}
	l, err := st.Layout()
	if err != nil {
		return nil, err
	}
	r := &LabReport{Topology: st.Topology}

	var sn *snapshot
	cfg, hasStore := st.StoreConfig()
	if hasStore {
		cfg.Etcd.DialTimeout, cfg.KubeTimeout = 3*time.Second, 3*time.Second
		s, err := open.Open(ctx, cfg)
		if err != nil {
			r.Notes = append(r.Notes, fmt.Sprintf("the datastore does not answer (%v): planned paths are unknown", err))
		} else {
			sn, err = readSnapshot(ctx, s)
			s.Close()
			if err != nil {
				r.Notes = append(r.Notes, fmt.Sprintf("read the datastore: %v: planned paths are unknown", err))
			}
		}
	} else {
		r.Notes = append(r.Notes, "no datastore (stage network): no VTEPs, pod routes or pods to check")
	}

	hostIfaces := map[string]bool{}
	for _, p := range st.Pods {
		if p.HostIface != "" {
			hostIfaces[p.HostIface] = true
		}
	}
	for _, m := range l.Nodes() {
		if hasStore {
			v, err := kernelVTEP(m.Netns, m.Name, l.VXLAN.Device)
			if err != nil {
				r.Notes = append(r.Notes, fmt.Sprintf("%s: read the VTEP: %v", m.Name, err))
			}
			r.VTEPs = append(r.VTEPs, v)
		}
		nr := NodeRoutes{Node: m.Name}
		rs, err := podNetworkRoutes(m.Netns, hostIfaces)
		if err != nil {
			nr.Err = err.Error()
		} else {
			nr.Lines = plan.RouteN(rs)
		}
		r.Routes = append(r.Routes, nr)
	}

	pods := slices.Clone(st.Pods)
	if len(pods) < len(l.Pods) {
		r.Notes = append(r.Notes, fmt.Sprintf("%d of %d pods are plumbed; the matrix and paths cover those only", len(pods), len(l.Pods)))
	}
	if len(pods) >= 2 {
		r.Matrix = pingMatrix(ctx, pods, opts.PingTimeout)
		r.Paths = checkPaths(ctx, l, pods, sn, opts.PingTimeout)
	}
	r.Hosts = checkHosts(ctx, l, pods, opts.PingTimeout)
	return r, nil
}

// podNetworkRoutes returns the namespace's routes of protocol
// plan.RouteProtocol plus the /32 routes to local pods (host interfaces
// cali* or those recorded for the lab's pods).
func podNetworkRoutes(nsName string, hostIfaces map[string]bool) ([]plan.Route, error) {
	return mainRoutes(nsName, func(r netlink.Route, pr plan.Route) bool {
		podRoute := pr.Dst.Bits() == 32 && (strings.HasPrefix(pr.Device, "cali") || hostIfaces[pr.Device])
		return int(r.Protocol) == plan.RouteProtocol || podRoute
	})
}

// pingOnceOrTwice pings and retries once: the first packet of a new path
// may wait for ARP.
func pingOnceOrTwice(nsName string, dst netip.Addr, timeout time.Duration) error {
	id := nextPingID()
	var err error
	for seq := uint16(1); seq <= 2; seq++ {
		if _, err = ping(nsName, dst, id, seq, timeout); err == nil {
			return nil
		}
	}
	return err
}

// pingMatrix has every pod ping every other pod, pingWorkers at a time.
func pingMatrix(ctx context.Context, pods []PodState, timeout time.Duration) *PingMatrix {
	m := &PingMatrix{Pods: pods, Err: make([][]string, len(pods))}
	for i := range m.Err {
		m.Err[i] = make([]string, len(pods))
	}
	type job struct{ i, j int }
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range pingWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for jb := range jobs {
				src, dst := pods[jb.i], pods[jb.j]
				a, err := netip.ParseAddr(dst.Address)
				if err == nil {
					err = pingOnceOrTwice(src.Netns, a, timeout)
				}
				if err != nil {
					m.Err[jb.i][jb.j] = err.Error()
				}
			}
		}()
	}
	for i := range pods {
		for j := range pods {
			if i == j {
				continue
			}
			if ctx.Err() != nil {
				m.Err[i][j] = ctx.Err().Error()
				continue
			}
			jobs <- job{i, j}
		}
	}
	close(jobs)
	wg.Wait()
	return m
}

// plannedPath is the path the planner chose on node from to addr: the
// kind of the longest route that holds it.
func plannedPath(sn *snapshot, l *Layout, from string, addr netip.Addr) Path {
	if sn == nil {
		return PathUnknown
	}
	dp := plan.Plan(sn.input(from, l.VXLAN))
	best := -1
	path := PathUnknown
	for _, r := range dp.Routes {
		if r.Dst.Contains(addr) && r.Dst.Bits() > best {
			best = r.Dst.Bits()
			switch r.Kind {
			case plan.KindDirect, plan.KindBorrowDirect:
				path = PathDirect
			case plan.KindVXLAN, plan.KindBorrowVXLAN:
				path = PathVXLAN
			default:
				path = PathUnknown
			}
		}
	}
	return path
}

// checkPaths pings from the first pod of each node to the first pod of
// every other node and captures the request on the sender's eth0.
func checkPaths(ctx context.Context, l *Layout, pods []PodState, sn *snapshot, timeout time.Duration) []PathCheck {
	first := map[string]PodState{}
	for _, p := range pods {
		if _, ok := first[p.Node]; !ok {
			first[p.Node] = p
		}
	}
	var out []PathCheck
	for _, a := range l.Nodes() {
		for _, b := range l.Nodes() {
			sp, ok1 := first[a.Name]
			dp, ok2 := first[b.Name]
			if a.Name == b.Name || !ok1 || !ok2 || ctx.Err() != nil {
				continue
			}
			pc := PathCheck{From: a.Name, To: b.Name, SrcPod: sp.Name, DstPod: dp.Name, Observed: PathUnknown}
			pc.Src, _ = netip.ParseAddr(sp.Address)
			pc.Dst, _ = netip.ParseAddr(dp.Address)
			pc.Expected = plannedPath(sn, l, a.Name, pc.Dst)
			if err := capturePath(&pc, a.Netns, sp.Netns, uint32(l.VXLAN.VNI), l.VXLAN.Port, timeout); err != nil {
				pc.Err = err.Error()
			}
			out = append(out, pc)
		}
	}
	return out
}

// capturePath pings pc.Dst from the pod namespace and fills in how the
// request left the node: the first outgoing frame on eth0 that carries it.
func capturePath(pc *PathCheck, nodeNetns, podNetns string, vni uint32, port int, timeout time.Duration) error {
	c, err := openCapture(nodeNetns, "eth0")
	if err != nil {
		return err
	}
	defer c.close()
	id := nextPingID()
	const seq = 1
	pingErr := make(chan error, 1)
	go func() {
		_, err := ping(podNetns, pc.Dst, id, seq, timeout)
		pingErr <- err
	}()
	buf := make([]byte, 1<<16)
	deadline := time.Now().Add(timeout + 500*time.Millisecond)
	var capErr error
	for range 100000 {
		b, out, err := c.next(buf, deadline)
		if err != nil {
			if !errors.Is(err, errCaptureTimeout) {
				capErr = err
			}
			break
		}
		if !out {
			continue
		}
		f, err := DecodeFrame(b, port)
		if err != nil {
			continue
		}
		if path, ok := f.Classify(pc.Src, pc.Dst, id, seq, vni); ok {
			pc.Observed = path
			pc.Lines = f.Lines()
			break
		}
	}
	perr := <-pingErr
	switch {
	case capErr != nil:
		return capErr
	case pc.Observed == PathUnknown && perr != nil:
		return fmt.Errorf("no echo request seen on eth0 of the sender, and %w", perr)
	case pc.Observed == PathUnknown:
		return errors.New("the ping was answered, but no echo request was seen on eth0 of the sender")
	case perr != nil:
		return fmt.Errorf("the request left as %s but got no reply: %w", pc.Observed, perr)
	}
	return nil
}

// checkHosts pings every plain host from the first pod of each node.
func checkHosts(ctx context.Context, l *Layout, pods []PodState, timeout time.Duration) []HostCheck {
	var out []HostCheck
	seen := map[string]bool{}
	for _, p := range pods {
		if seen[p.Node] {
			continue
		}
		seen[p.Node] = true
		addr, err := netip.ParseAddr(p.Address)
		if err != nil {
			continue
		}
		nat := false
		for _, pool := range l.Pools {
			if pfx, err := pool.Prefix(); err == nil && pfx.Contains(addr) {
				nat = pool.Spec.NATOutgoing
			}
		}
		for _, m := range l.Members {
			if m.Role != RoleHost || ctx.Err() != nil {
				continue
			}
			h := HostCheck{Pod: p.Name, Node: p.Node, Host: m.Name, Addr: m.Address.Addr(), NATOutgoing: nat}
			if err := pingOnceOrTwice(p.Netns, h.Addr, timeout); err != nil {
				h.Err = err.Error()
			}
			out = append(out, h)
		}
	}
	return out
}
