package agent

import (
	"cmp"
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
	"strconv"
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
	mux.Handle("POST "+agentapi.SyncPath, a.instrument("sync", a.syncRecord))
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
		} else if fu, ok := out.(followUp); ok {
			// The answer goes out whole (with its length) before the
			// rest of the work, which the client no longer waits for:
			// it may close the connection, which ends r.Context().
			writeJSONNow(w, http.StatusOK, fu.answer)
			fctx, fcancel := context.WithTimeout(context.WithoutCancel(r.Context()), requestTimeout)
			fu.then(fctx)
			fcancel()
			a.log.Debug("CNI request", "op", op, "path", r.URL.Path, "duration", time.Since(start))
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

// followUp is what an apiFunc returns when its work goes on after the
// answer: answer is sent first, then then runs, within the request (so
// that a graceful shutdown waits for it, and the request's metrics count
// it) but with a context of its own.
type followUp struct {
	answer any
	then   func(ctx context.Context)
}

// writeJSONNow writes v with its Content-Length and flushes it, so that the
// client has the whole answer while the handler goes on.
func writeJSONNow(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(&agentapi.Error{Code: agentapi.CodeInternal, Message: "encode the answer: " + err.Error()})
		status = http.StatusInternalServerError
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
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
	rec := req.Record
	if rec != nil {
		if rec.Handle != "" && rec.Handle != handle {
			return nil, invalid("record.handle %q differs from the request's handle %q", rec.Handle, handle)
		}
		if err := checkEndpoint(rec); err != nil {
			return nil, err
		}
	}
	if err := a.requireRegistered(); err != nil {
		return nil, err
	}
	pod, err := a.podRequest(ctx, req)
	if err != nil {
		return nil, err
	}
	wants := pod.ips
	switch {
	case len(wants) > 0 && want.IsValid() && (len(wants) != 1 || wants[0] != want):
		return nil, invalid("the ADD asks for %s but the pod's annotation %s for %v: ask for the address in one place", want, pod.from, wants)
	case len(wants) == 0 && want.IsValid():
		wants = []netip.Addr{want}
	}
	done := a.begin(handle)
	// An earlier request for the handle may still be recording its
	// endpoint: let it finish first (its outcome is this one's to redo).
	if _, err := a.awaitRecord(ctx, handle); err != nil && ctx.Err() != nil {
		done()
		return nil, err
	}

	held, err := a.ipam.HandleAddrs(ctx, handle)
	if err != nil {
		done()
		return nil, err
	}
	fresh := len(held) == 0
	if len(held) > 0 {
		if len(wants) > 0 && !sameAddrs(held, wants) {
			done()
			return nil, invalid("handle %q already holds %v, not the requested %v: delete the endpoint first (DEL), then add again", handle, held, wants)
		}
	} else {
		attrs := map[string]string{api.AttrNode: a.cfg.NodeName}
		for k, v := range map[string]string{api.AttrNamespace: req.Namespace, api.AttrPod: req.Pod, api.AttrPodUID: pod.uid,
			api.AttrContainer: req.ContainerID, api.AttrIfName: req.IfName} {
			if v != "" {
				attrs[k] = v
			}
		}
		held, err = a.allocateFor(ctx, ipam.AllocateRequest{
			Handle: handle, Node: a.cfg.NodeName, Use: api.UseWorkload, Attrs: attrs, Count: 1, Pools: pod.pools,
		}, wants)
		if err != nil {
			done()
			return nil, err
		}
		a.log.Info("allocated pod address", "handle", handle, "addresses", held, "namespace", req.Namespace, "pod", req.Pod)
	}
	a.touch(handle)
	resp := agentapi.AllocateResponse{Handle: handle, Addresses: hostPrefixes(held), Gateway: PodGateway}
	a.mu.Lock()
	resp.MTU, resp.TunnelMTU = a.host.MTU, a.tunnelMTU
	a.mu.Unlock()
	if resp.MTU <= 0 {
		resp.MTU = 1500
	}
	if rec == nil {
		done()
		return resp, nil
	}
	// The endpoint goes into the cache now, so that the reconciles the
	// plugin's plumbing sets off plan with it, and into the datastore
	// after the answer, while the plugin plumbs the veth; the plugin's Sync
	// waits for it before the pod's route is added. The handle stays in
	// use (GC spares it) until then.
	ep := *rec
	ep.ContainerID = cmp.Or(ep.ContainerID, req.ContainerID)
	ep.IfName = cmp.Or(ep.IfName, req.IfName)
	ep.Namespace = cmp.Or(ep.Namespace, req.Namespace)
	ep.Pod = cmp.Or(ep.Pod, req.Pod)
	ep.PodUID = cmp.Or(ep.PodUID, pod.uid)
	w := a.endpointObject(handle, ep, held)
	kv, err := a.endpointKV(w)
	if err != nil {
		done()
		return nil, err
	}
	op := a.startRecord(handle)
	st := a.stage(w)
	resp.Recording = true
	return followUp{answer: resp, then: func(ctx context.Context) {
		defer done()
		err := a.commit(ctx, st, kv)
		if err != nil && fresh {
			// A failed request leaves nothing behind: neither the address
			// it allocated nor a record that may have been written before
			// the error.
			a.undoAllocate(ctx, handle, err)
		}
		a.finishRecord(handle, op, err)
	}}, nil
}

// staged is an endpoint put into the cache before its record is written.
type staged struct {
	w api.WorkloadEndpoint
	// own marks the cache entry as the agent's, ahead of the watch.
	own *ownWrite
	// prev is what the cache held for the handle before (if hadPrev), and
	// prevOwn the own write it was marked with, if any.
	prev    api.WorkloadEndpoint
	hadPrev bool
	prevOwn *ownWrite
	// settled is set when no Apply was running: every Apply from then on
	// plans with the endpoint.
	settled bool
}

// stage puts w into the cache ahead of its record, marked as an own write
// being made, so that neither the watch nor a list takes it out again. It
// does not ask for a reconcile: the plugin's plumbing is about to set one
// off (kernel events), and commit asks for one. An Apply that planned
// without it may still be running; then st.settled is false and commit
// waits for that Apply.
func (a *Agent) stage(w api.WorkloadEndpoint) *staged {
	st := &staged{w: w, own: &ownWrite{staged: true}}
	k := objKey{datastore.KindWorkload, w.Spec.Handle}
	st.settled = a.planMu.TryLock()
	a.mu.Lock()
	st.prev, st.hadPrev = a.cache.workloads[k.name]
	st.prevOwn = a.cache.own[k]
	a.cache.workloads[k.name] = w
	a.cache.own[k] = st.own
	a.mu.Unlock()
	if st.settled {
		a.planMu.Unlock()
	}
	return st
}

// endpointKV is the stored object of w: named by its handle and labelled
// with the node.
func (a *Agent) endpointKV(w api.WorkloadEndpoint) (datastore.KV, error) {
	kv, err := datastore.NewKV(datastore.KindWorkload, w.Spec.Handle, w)
	if err != nil {
		return datastore.KV{}, err
	}
	kv.Labels = map[string]string{datastore.LabelNode: a.cfg.NodeName}
	return kv, nil
}

// writeEndpoint writes kv, an endpoint record, whether or not one exists,
// and returns it as stored.
func (a *Agent) writeEndpoint(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	stored, err := datastore.Put(ctx, a.store, kv)
	if err != nil {
		return datastore.KV{}, fmt.Errorf("record endpoint %s: %w", kv.Name, err)
	}
	if stored.Kind == "" {
		stored.Kind, stored.Name = kv.Kind, kv.Name
	}
	if stored.Value == nil {
		stored.Value = kv.Value
	}
	if stored.Labels == nil {
		stored.Labels = kv.Labels
	}
	return stored, nil
}

// commit writes the record of a staged endpoint (kv is st.w as stored) and
// returns once no Apply that planned without it still runs. When the write
// fails, the cache gets back what it held, unless another request has
// staged or written the handle since.
func (a *Agent) commit(ctx context.Context, st *staged, kv datastore.KV) error {
	handle := st.w.Spec.Handle
	k := objKey{datastore.KindWorkload, handle}
	stored, err := a.writeEndpoint(ctx, kv)
	if err != nil {
		a.mu.Lock()
		if a.cache.own[k] == st.own {
			if st.hadPrev {
				a.cache.workloads[handle] = st.prev
			} else {
				delete(a.cache.workloads, handle)
			}
			if st.prevOwn != nil {
				a.cache.own[k] = st.prevOwn
			} else {
				delete(a.cache.own, k)
			}
		}
		a.mu.Unlock()
		a.markDirty(reasonLocal)
		return err
	}
	a.touch(handle)
	if !st.settled {
		a.planMu.Lock() // see Agent.planMu: outlast the Apply that planned without it
	}
	a.mu.Lock()
	if cur := a.cache.own[k]; cur == st.own || cur == nil || !cur.staged {
		a.cache.putOwn(stored, a.clock.Now())
	}
	a.mu.Unlock()
	if !st.settled {
		a.planMu.Unlock()
	}
	a.markDirty(reasonLocal)
	a.log.Info("recorded pod endpoint", "handle", handle, "iface", st.w.Spec.HostIface, "addresses", st.w.Spec.Addresses)
	return nil
}

// recordOp is the endpoint record an allocate request writes after its
// answer.
type recordOp struct {
	done chan struct{}
	// err is the outcome, set before done is closed.
	err error
	// ended is when it failed (failed records are kept for Sync).
	ended time.Time
}

// failedRecordTTL is how long the outcome of a failed record is kept for a
// Sync that does not come.
const failedRecordTTL = 10 * time.Minute

// startRecord registers a record of handle about to be written.
func (a *Agent) startRecord(handle string) *recordOp {
	op := &recordOp{done: make(chan struct{})}
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.records == nil {
		a.records = map[string]*recordOp{}
	}
	for h, o := range a.records {
		if !o.ended.IsZero() && now.Sub(o.ended) > failedRecordTTL {
			delete(a.records, h)
		}
	}
	a.records[handle] = op
	return op
}

// finishRecord ends op with err. A successful record is forgotten at once
// (the cache has it); a failed one is kept for the Sync that reports it.
func (a *Agent) finishRecord(handle string, op *recordOp, err error) {
	a.mu.Lock()
	op.err = err
	if err == nil {
		if a.records[handle] == op {
			delete(a.records, handle)
		}
	} else {
		op.ended = a.clock.Now()
	}
	a.mu.Unlock()
	close(op.done)
}

// awaitRecord waits until no allocate request is recording the endpoint of
// handle. It returns the outcome of the last such record, if one was
// pending or failed (and forgets it), or the context's error.
func (a *Agent) awaitRecord(ctx context.Context, handle string) (found bool, err error) {
	a.mu.Lock()
	op := a.records[handle]
	a.mu.Unlock()
	if op == nil {
		return false, nil
	}
	select {
	case <-op.done:
	case <-ctx.Done():
		return true, fmt.Errorf("wait for the endpoint record of %s: %w", handle, ctx.Err())
	}
	a.mu.Lock()
	if a.records[handle] == op {
		delete(a.records, handle)
	}
	a.mu.Unlock()
	return true, op.err
}

// syncRecord answers once the endpoint of the handle, recorded by an
// allocate request after its answer, is recorded: with the endpoint as
// stored, or with the error that kept it from being recorded.
func (a *Agent) syncRecord(ctx context.Context, r *http.Request) (any, error) {
	var req agentapi.SyncRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Handle == "" {
		return nil, invalid("handle is empty: give the handle (containerID.ifName) whose endpoint to wait for")
	}
	if _, err := a.awaitRecord(ctx, req.Handle); err != nil {
		return nil, err
	}
	a.mu.Lock()
	w, ok := a.cache.workloads[req.Handle]
	a.mu.Unlock()
	if !ok {
		return nil, &agentapi.Error{Code: agentapi.CodeUnavailable, Message: fmt.Sprintf(
			"no endpoint is recorded for %s (deleted since, or the agent restarted while recording it): retry the ADD", req.Handle)}
	}
	return endpointFrom(w), nil
}

// undoAllocate deletes the endpoint record of handle, if the failed write
// made one after all, and releases the handle's addresses, as DEL would,
// after recording the endpoint of a fresh allocation failed with cause. It
// runs even when the request's context is done.
func (a *Agent) undoAllocate(ctx context.Context, handle string, cause error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	defer cancel()
	_, err := a.deleteRecord(rctx, handle)
	var released []netip.Addr
	if err == nil {
		released, err = a.ipam.ReleaseHandle(rctx, handle)
	}
	if err != nil {
		a.log.Error("undo a fresh allocation whose endpoint could not be recorded (DEL or GC cleans it up)", "handle", handle, "cause", cause, "err", err)
		return
	}
	a.mu.Lock()
	delete(a.recent, handle)
	a.mu.Unlock()
	a.log.Warn("released a fresh allocation: its endpoint could not be recorded", "handle", handle, "released", released, "cause", cause)
}

// checkEndpoint validates the parts of an endpoint the caller chose: its
// host interface and MAC.
func checkEndpoint(ep *agentapi.Endpoint) error {
	if !ifNameRE.MatchString(ep.HostIface) {
		return invalid("hostIface %q must be the host side of the veth, 1-15 bytes without '/', ':' or spaces", ep.HostIface)
	}
	if ep.MAC != "" {
		if hw, err := net.ParseMAC(ep.MAC); err != nil || len(hw) != 6 {
			return invalid("mac %q is not a 6-byte MAC such as ee:ee:ee:ee:ee:ee", ep.MAC)
		}
	}
	return nil
}

// recordEndpoint writes the endpoint record of handle with addrs (which
// IPAM holds for it) and adds it to the cache, so that the next plan has it.
// It holds planMu while the cache changes: once it returns, no Apply that
// planned without the endpoint still runs (see Agent.planMu).
func (a *Agent) recordEndpoint(ctx context.Context, handle string, ep agentapi.Endpoint, addrs []netip.Addr) error {
	w := a.endpointObject(handle, ep, addrs)
	kv, err := a.endpointKV(w)
	if err != nil {
		return err
	}
	stored, err := a.writeEndpoint(ctx, kv)
	if err != nil {
		return err
	}
	a.touch(handle)
	a.planMu.Lock() // see Agent.planMu: no stale Apply may follow this
	a.mu.Lock()
	if cur := a.cache.own[objKey{datastore.KindWorkload, handle}]; cur == nil || !cur.staged {
		a.cache.putOwn(stored, a.clock.Now())
	}
	a.mu.Unlock()
	a.planMu.Unlock()
	a.markDirty(reasonLocal)
	a.log.Info("recorded pod endpoint", "handle", handle, "iface", ep.HostIface, "addresses", w.Spec.Addresses)
	return nil
}

// endpointObject is the record of ep under handle, with addrs.
func (a *Agent) endpointObject(handle string, ep agentapi.Endpoint, addrs []netip.Addr) api.WorkloadEndpoint {
	return api.WorkloadEndpoint{
		TypeMeta: api.TypeMeta{APIVersion: api.Version, Kind: api.KindWorkloadEndpoint},
		Metadata: api.ObjectMeta{Name: handle, Labels: map[string]string{datastore.LabelNode: a.cfg.NodeName}},
		Spec: api.WorkloadEndpointSpec{
			Node: a.cfg.NodeName, Namespace: ep.Namespace, Pod: ep.Pod, PodUID: ep.PodUID, ContainerID: ep.ContainerID, IfName: ep.IfName,
			Handle: handle, HostIface: ep.HostIface, Addresses: hostPrefixes(addrs), MAC: ep.MAC, Netns: ep.Netns,
		},
	}
}

// endpointFrom turns a stored endpoint into its API form.
func endpointFrom(w api.WorkloadEndpoint) *agentapi.Endpoint {
	s := w.Spec
	return &agentapi.Endpoint{Handle: s.Handle, ContainerID: s.ContainerID, IfName: s.IfName, Namespace: s.Namespace,
		Pod: s.Pod, PodUID: s.PodUID, HostIface: s.HostIface, Addresses: slices.Clone(s.Addresses), MAC: s.MAC, Netns: s.Netns}
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
	if err := checkEndpoint(&ep); err != nil {
		return nil, err
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
	if err := a.recordEndpoint(ctx, handle, ep, addrs); err != nil {
		return nil, err
	}
	ep.Handle, ep.Addresses = handle, hostPrefixes(addrs)
	return &ep, nil
}

func (a *Agent) getEndpoint(ctx context.Context, r *http.Request) (any, error) {
	handle := r.PathValue("handle")
	st := agentapi.EndpointStatus{Handle: handle}
	o, err := datastore.GetObject[api.WorkloadEndpoint](ctx, a.store, datastore.KindWorkload, handle)
	switch {
	case err == nil && a.cache.mine(o.Labels):
		st.Endpoint = endpointFrom(o.Value)
	case err == nil:
		// Another node's record under the same handle: not this agent's.
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

// deleteRecord deletes the endpoint record of handle, if this node has
// one, and reports whether one was deleted. The delete is a
// compare-and-swap against the record read, so that a record written again
// meanwhile is read again.
func (a *Agent) deleteRecord(ctx context.Context, handle string) (bool, error) {
	for attempt := 1; attempt <= casAttempts; attempt++ {
		kv, err := a.store.Get(ctx, datastore.KindWorkload, handle)
		if errors.Is(err, datastore.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read endpoint %s: %w", handle, err)
		}
		if !a.cache.mine(kv.Labels) {
			return false, nil
		}
		err = a.store.Delete(ctx, datastore.KindWorkload, handle, kv.Revision)
		if errors.Is(err, datastore.ErrConflict) {
			continue
		}
		if errors.Is(err, datastore.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("delete endpoint %s: %w", handle, err)
		}
		a.mu.Lock()
		if cur := a.cache.own[objKey{datastore.KindWorkload, handle}]; cur == nil || !cur.staged {
			a.cache.removeOwn(datastore.KindWorkload, handle, kv.Revision, a.clock.Now())
		}
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
	// A record still being written would outlive the delete.
	if _, err := a.awaitRecord(ctx, handle); err != nil && ctx.Err() != nil {
		return nil, err
	}
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
	records, _, err := a.store.List(ctx, datastore.KindWorkload, a.listOptions(datastore.KindWorkload))
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	orphans := map[string]bool{}
	for _, kv := range records {
		if h := kv.Name; !valid[h] && h != tunnel && a.cache.mine(kv.Labels) {
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

// allocateFor allocates for req: exactly the addresses wants when there
// are any (one IPAM request each; when one fails, those already allocated
// are released again), else req.Count addresses from req.Pools.
func (a *Agent) allocateFor(ctx context.Context, req ipam.AllocateRequest, wants []netip.Addr) ([]netip.Addr, error) {
	if len(wants) == 0 {
		return a.ipam.Allocate(ctx, req)
	}
	var held []netip.Addr
	for _, ip := range wants {
		r := req
		r.IP, r.Count, r.Pools = ip, 1, nil
		got, err := a.ipam.Allocate(ctx, r)
		if err != nil {
			if len(held) > 0 {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
				if _, rerr := a.ipam.ReleaseHandle(rctx, req.Handle); rerr != nil {
					a.log.Error("release the addresses of a partly failed allocation (DEL or GC cleans them up)", "handle", req.Handle, "addresses", held, "err", rerr)
				}
				cancel()
			}
			return nil, err
		}
		held = append(held, got...)
	}
	return held, nil
}

// sameAddrs reports whether a and b hold the same addresses, in any order.
func sameAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}
