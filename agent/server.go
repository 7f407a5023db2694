package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
)

// Limits of the socket API.
const (
	maxRequestBytes = 1 << 20
	requestTimeout  = 30 * time.Second
	shutdownTimeout = 2 * time.Second
	// stuckApply is how long one Apply may run before /healthz fails.
	stuckApply = 2 * time.Minute
)

// servers are the agent's listeners, stopped together.
type servers struct {
	list []*http.Server
	sock string
}

func (s *servers) shutdown(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	for _, srv := range s.list {
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
	}
	if s.sock != "" {
		// The listener unlinks its socket on close; make sure.
		if err := os.Remove(s.sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("remove the socket file", "path", s.sock, "err", err)
		}
	}
}

func serve(srv *http.Server, l net.Listener, log *slog.Logger, what string) {
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(what+" server failed", "err", err)
		}
	}()
}

// startServers opens the socket, health and metrics listeners.
func (a *Agent) startServers() (*servers, error) {
	s := &servers{}
	l, err := listenSocket(a.cfg.SocketPath)
	if err != nil {
		return nil, err
	}
	s.sock = a.cfg.SocketPath
	api := &http.Server{Handler: a.apiMux(), ReadHeaderTimeout: 10 * time.Second}
	s.list = append(s.list, api)
	serve(api, l, a.log, "CNI socket")

	if a.cfg.HealthAddr != "" {
		hl, err := net.Listen("tcp", a.cfg.HealthAddr)
		if err != nil {
			s.shutdown(a.log)
			return nil, fmt.Errorf("agent: listen for health checks on %s (choose another --health-addr, or \"\" to disable): %w", a.cfg.HealthAddr, err)
		}
		h := &http.Server{Handler: a.healthMux(), ReadHeaderTimeout: 5 * time.Second}
		s.list = append(s.list, h)
		serve(h, hl, a.log, "health")
	}
	if a.cfg.MetricsAddr != "" {
		ml, err := net.Listen("tcp", a.cfg.MetricsAddr)
		if err != nil {
			s.shutdown(a.log)
			return nil, fmt.Errorf("agent: listen for metrics on %s (choose another --metrics-addr): %w", a.cfg.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
		m := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		s.list = append(s.list, m)
		serve(m, ml, a.log, "metrics")
	}
	return s, nil
}

// listenSocket listens on the unix socket at path: the parent directory is
// created (mode 0700) when missing, a stale socket file is removed (a live
// one, answered by another agent, is an error), and the socket gets mode
// 0600.
func listenSocket(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("agent: create the socket directory %s: %w", dir, err)
		}
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("agent: %s exists and is not a socket: remove it or choose another --socket", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("agent: another agent is serving %s: stop it first or choose another --socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("agent: remove the stale socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("agent: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("agent: restrict %s to mode 0600: %w", path, err)
	}
	return l, nil
}

// healthMux serves /healthz (liveness) and /readyz (readiness).
func (a *Agent) healthMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		started := a.applyStart
		a.mu.Unlock()
		if !started.IsZero() && a.clock.Now().Sub(started) > stuckApply {
			http.Error(w, fmt.Sprintf("a reconcile has been running since %s", started.Format(time.RFC3339)), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := a.readiness(); !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}

// apiFunc serves one socket API request; a returned error becomes an
// agentapi.Error.
type apiFunc func(ctx context.Context, r *http.Request) (any, error)

func (a *Agent) apiMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+agentapi.AllocatePath, a.instrument("allocate", a.allocate))
	mux.Handle("PUT "+agentapi.EndpointsPath+"{handle}", a.instrument("put-endpoint", a.putEndpoint))
	mux.Handle("GET "+agentapi.EndpointsPath+"{handle}", a.instrument("get-endpoint", a.getEndpoint))
	mux.Handle("DELETE "+agentapi.EndpointsPath+"{handle}", a.instrument("delete-endpoint", a.deleteEndpoint))
	mux.Handle("GET "+agentapi.StatusPath, a.instrument("status", a.status))
	mux.Handle("POST "+agentapi.GCPath, a.instrument("gc", a.gc))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, &agentapi.Error{Code: agentapi.CodeInvalid,
			Message: fmt.Sprintf("no such endpoint %s %s: see package agentapi for the API", r.Method, r.URL.Path)})
	})
	return mux
}

func (a *Agent) instrument(op string, f apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		r.Body = http.MaxBytesReader(w, r.Body, maxRequestBytes)
		out, err := f(ctx, r)
		result := "ok"
		if err != nil {
			e := toAPIError(err)
			result = e.Code
			writeJSON(w, httpStatus(e.Code), e)
			lvl := slog.LevelWarn
			if e.Code == agentapi.CodeInternal {
				lvl = slog.LevelError
			}
			a.log.Log(ctx, lvl, "CNI request failed", "op", op, "path", r.URL.Path, "code", e.Code, "err", err)
		} else {
			writeJSON(w, http.StatusOK, out)
			a.log.Debug("CNI request", "op", op, "path", r.URL.Path, "duration", time.Since(start))
		}
		a.m.cniRequests.WithLabelValues(op, result).Inc()
		a.m.cniTime.WithLabelValues(op).Observe(time.Since(start).Seconds())
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// invalid returns a CodeInvalid error.
func invalid(format string, a ...any) error {
	return &agentapi.Error{Code: agentapi.CodeInvalid, Message: fmt.Sprintf(format, a...)}
}

// toAPIError maps an error to its agentapi code.
func toAPIError(err error) *agentapi.Error {
	var e *agentapi.Error
	if errors.As(err, &e) {
		return e
	}
	code := agentapi.CodeInternal
	switch {
	case errors.Is(err, ipam.ErrPoolExhausted):
		code = agentapi.CodePoolExhausted
	case errors.Is(err, ipam.ErrNotInPool):
		code = agentapi.CodeNotInPool
	case errors.Is(err, ipam.ErrAddressInUse):
		code = agentapi.CodeAddressInUse
	case errors.Is(err, ipam.ErrInvalidRequest):
		code = agentapi.CodeInvalid
	case errors.Is(err, datastore.ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, datastore.ErrConflict):
		code = agentapi.CodeUnavailable
	}
	return &agentapi.Error{Code: code, Message: err.Error()}
}

func httpStatus(code string) int {
	switch code {
	case agentapi.CodeInvalid:
		return http.StatusBadRequest
	case agentapi.CodeAddressInUse:
		return http.StatusConflict
	case agentapi.CodeNotInPool:
		return http.StatusUnprocessableEntity
	case agentapi.CodePoolExhausted:
		return http.StatusInsufficientStorage
	case agentapi.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func decode(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return invalid("request body is not the expected JSON: %v", err)
	}
	return nil
}

// begin marks handle as in use by a request until the returned func runs.
func (a *Agent) begin(handle string) func() {
	a.mu.Lock()
	a.inflight[handle]++
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		if a.inflight[handle]--; a.inflight[handle] <= 0 {
			delete(a.inflight, handle)
		}
		a.mu.Unlock()
	}
}

// touch records that handle was just allocated or recorded, and forgets
// handles older than the GC grace.
func (a *Agent) touch(handle string) {
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recent[handle] = now
	for h, t := range a.recent {
		if now.Sub(t) > a.cfg.GCGrace {
			delete(a.recent, h)
		}
	}
}

// protected reports whether GC must spare handle: a request for it is
// running, or this agent allocated or recorded it within the grace period.
func (a *Agent) protected(handle string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inflight[handle] > 0 {
		return true
	}
	t, ok := a.recent[handle]
	return ok && a.cfg.GCGrace > 0 && a.clock.Now().Sub(t) <= a.cfg.GCGrace
}

// requireRegistered fails with CodeUnavailable until the node is registered.
func (a *Agent) requireRegistered() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.registered {
		return &agentapi.Error{Code: agentapi.CodeUnavailable, Message: "the agent has not registered node " + a.cfg.NodeName + " yet: " + a.notReady}
	}
	return nil
}

func hostPrefixes(addrs []netip.Addr) []string {
	out := make([]string, 0, len(addrs))
	for _, ad := range addrs {
		out = append(out, netip.PrefixFrom(ad, ad.BitLen()).String())
	}
	return out
}

func (a *Agent) allocate(ctx context.Context, r *http.Request) (any, error) {
	var req agentapi.AllocateRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	handle := req.Handle
	if handle == "" {
		if req.ContainerID == "" || req.IfName == "" {
			return nil, invalid("set handle, or containerID and ifName (the handle is then containerID.ifName)")
		}
		handle = agentapi.HandleID(req.ContainerID, req.IfName)
	}
	if handle == a.tunnelHandle() {
		return nil, invalid("handle %q is the node's tunnel address handle", handle)
	}
	var want netip.Addr
	if req.IP != "" {
		ip, err := netip.ParseAddr(req.IP)
		if err != nil {
			if p, perr := netip.ParsePrefix(req.IP); perr == nil {
				ip = p.Addr()
			} else {
				return nil, invalid("ip %q is not an address such as 172.16.159.145", req.IP)
			}
		}
		if !ip.Is4() {
			return nil, invalid("ip %s is not IPv4", ip)
		}
		want = ip
	}
	if err := a.requireRegistered(); err != nil {
		return nil, err
	}
	defer a.begin(handle)()

	held, err := a.ipam.HandleAddrs(ctx, handle)
	if err != nil {
		return nil, err
	}
	if len(held) > 0 {
		if want.IsValid() && !slices.Contains(held, want) {
			return nil, invalid("handle %q already holds %v, not the requested %s: delete the endpoint first (DEL), then add again", handle, held, want)
		}
	} else {
		attrs := map[string]string{api.AttrNode: a.cfg.NodeName}
		for k, v := range map[string]string{api.AttrNamespace: req.Namespace, api.AttrPod: req.Pod, api.AttrContainer: req.ContainerID, api.AttrIfName: req.IfName} {
			if v != "" {
				attrs[k] = v
			}
		}
		held, err = a.ipam.Allocate(ctx, ipam.AllocateRequest{
			Handle: handle, Node: a.cfg.NodeName, Use: api.UseWorkload, Attrs: attrs, Count: 1, IP: want,
		})
		if err != nil {
			return nil, err
		}
		a.log.Info("allocated pod address", "handle", handle, "addresses", held, "namespace", req.Namespace, "pod", req.Pod)
	}
	a.touch(handle)
	a.mu.Lock()
	mtu, tmtu := a.host.MTU, a.tunnelMTU
	a.mu.Unlock()
	if mtu <= 0 {
		mtu = 1500
	}
	return agentapi.AllocateResponse{Handle: handle, Addresses: hostPrefixes(held), MTU: mtu, TunnelMTU: tmtu, Gateway: PodGateway}, nil
}

// endpointFrom turns a stored endpoint into its API form.
func endpointFrom(w api.WorkloadEndpoint) *agentapi.Endpoint {
	s := w.Spec
	return &agentapi.Endpoint{Handle: s.Handle, ContainerID: s.ContainerID, IfName: s.IfName, Namespace: s.Namespace,
		Pod: s.Pod, HostIface: s.HostIface, Addresses: slices.Clone(s.Addresses), MAC: s.MAC, Netns: s.Netns}
}

func (a *Agent) putEndpoint(ctx context.Context, r *http.Request) (any, error) {
	handle := r.PathValue("handle")
	var ep agentapi.Endpoint
	if err := decode(r, &ep); err != nil {
		return nil, err
	}
	if handle == "" {
		return nil, invalid("the path must name the handle: PUT /v1/endpoints/{containerID.ifName}")
	}
	if ep.Handle != "" && ep.Handle != handle {
		return nil, invalid("body handle %q differs from the path's %q", ep.Handle, handle)
	}
	if !ifNameRE.MatchString(ep.HostIface) {
		return nil, invalid("hostIface %q must be the host side of the veth, 1-15 bytes without '/', ':' or spaces", ep.HostIface)
	}
	if len(ep.Addresses) == 0 {
		return nil, invalid("addresses is empty: give the pod's addresses, e.g. [\"172.16.159.145/32\"]")
	}
	var addrs []netip.Addr
	for _, s := range ep.Addresses {
		ad, err := netip.ParseAddr(s)
		if err != nil {
			p, perr := netip.ParsePrefix(s)
			if perr != nil || p.Bits() != p.Addr().BitLen() {
				return nil, invalid("address %q must be a host address such as 172.16.159.145/32", s)
			}
			ad = p.Addr()
		}
		addrs = append(addrs, ad)
	}
	if ep.MAC != "" {
		if hw, err := net.ParseMAC(ep.MAC); err != nil || len(hw) != 6 {
			return nil, invalid("mac %q is not a 6-byte MAC such as ee:ee:ee:ee:ee:ee", ep.MAC)
		}
	}
	if err := a.requireRegistered(); err != nil {
		return nil, err
	}
	defer a.begin(handle)()
	held, err := a.ipam.HandleAddrs(ctx, handle)
	if err != nil {
		return nil, err
	}
	for _, ad := range addrs {
		if !slices.Contains(held, ad) {
			return nil, invalid("address %s is not allocated to handle %q (it holds %v): allocate it first (POST %s)", ad, handle, held, agentapi.AllocatePath)
		}
	}
	w := api.WorkloadEndpoint{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
		Metadata: api.ObjectMeta{Name: handle},
		Spec: api.WorkloadEndpointSpec{
			Node: a.cfg.NodeName, Namespace: ep.Namespace, Pod: ep.Pod, ContainerID: ep.ContainerID, IfName: ep.IfName,
			Handle: handle, HostIface: ep.HostIface, Addresses: hostPrefixes(addrs), MAC: ep.MAC, Netns: ep.Netns,
		},
	}
	b, err := datastore.Encode(w)
	if err != nil {
		return nil, err
	}
	key := datastore.WorkloadKey(a.cfg.NodeName, handle)
	rev, err := a.store.Txn(ctx, datastore.Put(key, b, datastore.AnyRevision))
	if err != nil {
		return nil, fmt.Errorf("record endpoint %s: %w", handle, err)
	}
	a.touch(handle)
	a.planMu.Lock() // see Agent.planMu: no stale Apply may follow this
	a.mu.Lock()
	a.cache.apply(datastore.Event{Type: datastore.EventPut, KV: datastore.KV{Key: key, Value: b, Revision: rev}}, rev)
	a.mu.Unlock()
	a.planMu.Unlock()
	a.markDirty(reasonLocal)
	a.log.Info("recorded pod endpoint", "handle", handle, "iface", ep.HostIface, "addresses", w.Spec.Addresses)
	return endpointFrom(w), nil
}

func (a *Agent) getEndpoint(ctx context.Context, r *http.Request) (any, error) {
	handle := r.PathValue("handle")
	st := agentapi.EndpointStatus{Handle: handle}
	o, err := datastore.GetObject[api.WorkloadEndpoint](ctx, a.store, datastore.WorkloadKey(a.cfg.NodeName, handle))
	switch {
	case err == nil:
		st.Endpoint = endpointFrom(o.Value)
	case !errors.Is(err, datastore.ErrNotFound):
		return nil, fmt.Errorf("read endpoint %s: %w", handle, err)
	}
	held, err := a.ipam.HandleAddrs(ctx, handle)
	if err != nil {
		return nil, err
	}
	st.Allocated = len(held) > 0
	if st.Allocated {
		st.Addresses = hostPrefixes(held)
	}
	return st, nil
}

// deleteRecord deletes the endpoint record of handle, if any, and reports
// whether one was deleted.
func (a *Agent) deleteRecord(ctx context.Context, handle string) (bool, error) {
	key := datastore.WorkloadKey(a.cfg.NodeName, handle)
	for attempt := 1; attempt <= casAttempts; attempt++ {
		kv, err := a.store.Get(ctx, key)
		if errors.Is(err, datastore.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read endpoint %s: %w", handle, err)
		}
		rev, err := a.store.Txn(ctx, datastore.Delete(key, kv.Revision))
		if errors.Is(err, datastore.ErrConflict) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("delete endpoint %s: %w", handle, err)
		}
		a.mu.Lock()
		a.cache.apply(datastore.Event{Type: datastore.EventDelete, KV: datastore.KV{Key: key, Revision: rev}}, rev)
		a.mu.Unlock()
		a.markDirty(reasonLocal)
		return true, nil
	}
	return false, fmt.Errorf("delete endpoint %s: still conflicting after %d attempts: %w", handle, casAttempts, datastore.ErrConflict)
}

func (a *Agent) deleteEndpoint(ctx context.Context, r *http.Request) (any, error) {
	handle := r.PathValue("handle")
	if handle == a.tunnelHandle() {
		return nil, invalid("handle %q is the node's tunnel address handle", handle)
	}
	defer a.begin(handle)()
	// The route goes before the address is freed for reuse.
	deleted, err := a.deleteRecord(ctx, handle)
	if err != nil {
		return nil, err
	}
	released, err := a.ipam.ReleaseHandle(ctx, handle)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	delete(a.recent, handle)
	a.mu.Unlock()
	if deleted || len(released) > 0 {
		a.log.Info("deleted pod endpoint", "handle", handle, "released", released)
	}
	return agentapi.DeleteResponse{Handle: handle, Released: hostPrefixes(released), EndpointDeleted: deleted}, nil
}

func (a *Agent) status(ctx context.Context, r *http.Request) (any, error) {
	ready, why := a.readiness()
	a.mu.Lock()
	room := poolHasRoom(a.cache)
	a.mu.Unlock()
	return agentapi.Status{Ready: ready, Reason: why, PoolHasRoom: room, Node: a.cfg.NodeName}, nil
}

func (a *Agent) gc(ctx context.Context, r *http.Request) (any, error) {
	var req agentapi.GCRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	valid := map[string]bool{}
	for _, at := range req.ValidAttachments {
		if at.ContainerID == "" || at.IfName == "" {
			return nil, invalid("every valid attachment needs containerID and ifName; got %+v", at)
		}
		valid[agentapi.HandleID(at.ContainerID, at.IfName)] = true
	}
	if err := a.requireRegistered(); err != nil {
		return nil, err
	}
	allocs, err := a.ipam.Allocations(ctx, a.cfg.NodeName)
	if err != nil {
		return nil, err
	}
	tunnel := a.tunnelHandle()
	stale := map[string]bool{}
	for _, al := range allocs {
		if al.Use != api.UseWorkload || al.Handle == tunnel || al.Attrs[api.AttrNode] != a.cfg.NodeName || valid[al.Handle] {
			continue
		}
		stale[al.Handle] = true
	}
	records, _, err := a.store.List(ctx, datastore.WorkloadPrefix(a.cfg.NodeName))
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	orphans := map[string]bool{}
	for _, kv := range records {
		o, err := datastore.Decode[api.WorkloadEndpoint](kv)
		h := datastore.UnescapeSegment(kv.Key[len(datastore.WorkloadPrefix(a.cfg.NodeName)):])
		if err == nil && o.Value.Spec.Handle != "" {
			h = o.Value.Spec.Handle
		}
		if !valid[h] && h != tunnel {
			orphans[h] = true
		}
	}
	resp := agentapi.GCResponse{Released: []string{}}
	var errs []error
	for _, h := range sortedKeys(stale, orphans) {
		// Re-check just before acting: a request may have started since.
		if a.protected(h) {
			resp.Deferred = append(resp.Deferred, h)
			continue
		}
		done := a.begin(h)
		deleted, err := a.deleteRecord(ctx, h)
		if err == nil && stale[h] {
			var released []netip.Addr
			released, err = a.ipam.ReleaseHandle(ctx, h)
			if err == nil {
				resp.Released = append(resp.Released, h)
				a.log.Info("GC released a stale pod address", "handle", h, "addresses", released)
			}
		}
		done()
		if deleted {
			resp.EndpointsDeleted = append(resp.EndpointsDeleted, h)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return resp, nil
}

// sortedKeys returns the union of the sets' keys, sorted.
func sortedKeys(sets ...map[string]bool) []string {
	var out []string
	for _, s := range sets {
		for k := range s {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
