package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/internal/nettest"
	"twill.dev/twill/ipam"
	"twill.dev/twill/plan"
)

func apiCode(err error) string {
	var e *agentapi.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return fmt.Sprintf("not an agentapi.Error: %v", err)
}

func TestAllocateAndEndpointLifecycle(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	ctx := context.Background()
	tunnel := getNode(t, h.store, "k8s-master1").Value.Spec.TunnelAddress
	block := nodeBlocks(t, h.store, "k8s-master1")[0].CIDR

	req := agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", Namespace: "default", Pod: "web-0"}
	res, err := h.client.Allocate(ctx, req)
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	if res.Handle != "c1.eth0" || len(res.Addresses) != 1 || res.MTU != 1500 || res.TunnelMTU != 1450 || res.Gateway != "169.254.1.1" {
		t.Fatalf("allocate = %+v, want handle c1.eth0, one address, MTU 1500, tunnel MTU 1450, gateway 169.254.1.1", res)
	}
	addr := netip.MustParsePrefix(res.Addresses[0])
	if addr.Bits() != 32 || !netip.MustParsePrefix(block).Contains(addr.Addr()) || addr.Addr().String() == tunnel {
		t.Errorf("address %s: want a /32 from the node's block %s other than the tunnel address %s", addr, block, tunnel)
	}
	again, err := h.client.Allocate(ctx, req)
	if err != nil || !slices.Equal(again.Addresses, res.Addresses) {
		t.Errorf("a repeated allocate = %+v, %v; want the same address again", again, err)
	}

	st, err := h.client.GetEndpoint(ctx, "c1.eth0")
	if err != nil || st.Endpoint != nil || !st.Allocated || !slices.Equal(st.Addresses, res.Addresses) {
		t.Errorf("get before put = %+v, %v; want no endpoint, allocated", st, err)
	}

	h.dp.drain()
	ep := agentapi.Endpoint{ContainerID: "c1", IfName: "eth0", Namespace: "default", Pod: "web-0",
		HostIface: "cali64d6bf8fbc2", Addresses: res.Addresses, MAC: "ee:ee:ee:ee:ee:ee", Netns: "/var/run/netns/pod"}
	stored, err := h.client.PutEndpoint(ctx, "c1.eth0", ep)
	if err != nil {
		t.Fatalf("put endpoint: %v", err)
	}
	if stored.Handle != "c1.eth0" || stored.HostIface != ep.HostIface {
		t.Errorf("put returned %+v", stored)
	}
	rec, err := datastore.GetObject[api.WorkloadEndpoint](ctx, h.store, datastore.KindWorkload, "c1.eth0")
	if err != nil || rec.Value.Spec.Node != "k8s-master1" || rec.Value.Spec.HostIface != "cali64d6bf8fbc2" || rec.Value.Kind != api.KindWorkloadEndpoint {
		t.Errorf("stored endpoint = %+v, %v", rec.Value, err)
	}
	h.dp.waitApply(t, "with the pod's route", func(dp plan.Dataplane) bool {
		for _, r := range dp.Routes {
			if r.Dst == addr && r.Kind == plan.KindWorkload && r.Device == "cali64d6bf8fbc2" {
				return true
			}
		}
		return false
	})
	st, err = h.client.GetEndpoint(ctx, "c1.eth0")
	if err != nil || st.Endpoint == nil || st.Endpoint.HostIface != "cali64d6bf8fbc2" || !st.Allocated {
		t.Errorf("get after put = %+v, %v", st, err)
	}

	del, err := h.client.DeleteEndpoint(ctx, "c1.eth0")
	if err != nil || !del.EndpointDeleted || !slices.Equal(del.Released, res.Addresses) {
		t.Errorf("delete = %+v, %v; want the endpoint deleted and %v released", del, err, res.Addresses)
	}
	h.dp.waitApply(t, "without the pod's route", func(dp plan.Dataplane) bool { return !hasRoute(dp, addr.String(), plan.KindWorkload) })
	del, err = h.client.DeleteEndpoint(ctx, "c1.eth0")
	if err != nil || del.EndpointDeleted || len(del.Released) != 0 {
		t.Errorf("a second delete = %+v, %v; want success with nothing deleted", del, err)
	}
	st, err = h.client.GetEndpoint(ctx, "c1.eth0")
	if err != nil || st.Endpoint != nil || st.Allocated {
		t.Errorf("get after delete = %+v, %v; want nothing", st, err)
	}
	if got := counterValue(t, h.agent, "twill_cni_requests_total", map[string]string{"op": "allocate", "result": "ok"}); got != 2 {
		t.Errorf("twill_cni_requests_total{op=allocate,result=ok} = %v, want 2", got)
	}
	if got := counterValue(t, h.agent, "twill_cni_request_duration_seconds", map[string]string{"op": "delete-endpoint"}); got != 2 {
		t.Errorf("twill_cni_request_duration_seconds{op=delete-endpoint} count = %v, want 2", got)
	}
}

func TestAllocateErrors(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	ctx := context.Background()
	tunnel := getNode(t, h.store, "k8s-master1").Value.Spec.TunnelAddress

	res, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", IP: "172.16.200.7"})
	if err != nil || !slices.Equal(res.Addresses, []string{"172.16.200.7/32"}) {
		t.Errorf("requested address: %+v, %v", res, err)
	}
	cases := []struct {
		name string
		req  agentapi.AllocateRequest
		code string
	}{
		{"outside the pools", agentapi.AllocateRequest{ContainerID: "c2", IfName: "eth0", IP: "10.1.2.3"}, agentapi.CodeNotInPool},
		{"the tunnel address", agentapi.AllocateRequest{ContainerID: "c3", IfName: "eth0", IP: tunnel}, agentapi.CodeAddressInUse},
		{"another handle's address", agentapi.AllocateRequest{ContainerID: "c4", IfName: "eth0", IP: "172.16.200.7"}, agentapi.CodeAddressInUse},
		{"a different address for a handle that holds one", agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", IP: "172.16.200.8"}, agentapi.CodeInvalid},
		{"no handle", agentapi.AllocateRequest{IfName: "eth0"}, agentapi.CodeInvalid},
		{"a malformed address", agentapi.AllocateRequest{ContainerID: "c5", IfName: "eth0", IP: "172.16.x.1"}, agentapi.CodeInvalid},
		{"the tunnel handle", agentapi.AllocateRequest{Handle: "vxlan-tunnel-addr-k8s-master1"}, agentapi.CodeInvalid},
	}
	for _, tc := range cases {
		_, err := h.client.Allocate(ctx, tc.req)
		if got := apiCode(err); got != tc.code {
			t.Errorf("%s: code %s, want %s", tc.name, got, tc.code)
		}
	}
	h.store.Fail(1, fmt.Errorf("injected: %w", datastore.ErrUnavailable))
	if _, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c6", IfName: "eth0"}); apiCode(err) != agentapi.CodeUnavailable {
		t.Errorf("datastore down: code %s, want unavailable", apiCode(err))
	}
}

func TestPoolExhaustionAndStatus(t *testing.T) {
	store := datastore.NewFake()
	// Four addresses: one for the tunnel, three for pods.
	p := api.IPPool{Metadata: api.ObjectMeta{Name: "tiny"}, Spec: api.IPPoolSpec{CIDR: "10.9.0.0/30", BlockSize: 30, VXLANMode: api.EncapAlways}}
	p.Default()
	put(t, store, datastore.KindIPPool, "tiny", p)
	h := newHarness(t, store, nil)
	h.start()
	ctx := context.Background()
	st, err := h.client.Status(ctx)
	if err != nil || !st.Ready || !st.PoolHasRoom || st.Node != "k8s-master1" || st.Reason != "" {
		t.Fatalf("status = %+v, %v; want ready with room", st, err)
	}
	var got []string
	var lastErr error
	for i := range 5 {
		res, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"})
		if err != nil {
			lastErr = err
			break
		}
		got = append(got, res.Addresses...)
	}
	if len(got) != 3 || apiCode(lastErr) != agentapi.CodePoolExhausted {
		t.Errorf("allocated %v then %v; want three addresses, then pool-exhausted", got, lastErr)
	}
	nettest.Eventually(t, 5*time.Second, time.Millisecond, "status says the pool is full after exhaustion", func() (bool, string) {
		st, err := h.client.Status(ctx)
		return err == nil && !st.PoolHasRoom, fmt.Sprintf("status %+v, %v", st, err)
	})
}

func TestPutEndpointValidation(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	ctx := context.Background()
	res, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	good := agentapi.Endpoint{ContainerID: "c1", IfName: "eth0", HostIface: "cali64d6bf8fbc2", Addresses: res.Addresses}
	cases := map[string]func(*agentapi.Endpoint){
		"no host interface":       func(e *agentapi.Endpoint) { e.HostIface = "" },
		"host interface too long": func(e *agentapi.Endpoint) { e.HostIface = "cali64d6bf8fbc2xx" },
		"no address":              func(e *agentapi.Endpoint) { e.Addresses = nil },
		"not a host address":      func(e *agentapi.Endpoint) { e.Addresses = []string{"172.16.0.0/26"} },
		"address not allocated":   func(e *agentapi.Endpoint) { e.Addresses = []string{"172.16.250.250/32"} },
		"bad MAC":                 func(e *agentapi.Endpoint) { e.MAC = "ee:ee" },
		"handle mismatch":         func(e *agentapi.Endpoint) { e.Handle = "other.eth0" },
	}
	for name, mutate := range cases {
		ep := good
		mutate(&ep)
		if _, err := h.client.PutEndpoint(ctx, "c1.eth0", ep); apiCode(err) != agentapi.CodeInvalid {
			t.Errorf("%s: code %s, want invalid", name, apiCode(err))
		}
	}
	// A bare address is taken as /32.
	ep := good
	ep.Addresses = []string{strings.TrimSuffix(res.Addresses[0], "/32")}
	stored, err := h.client.PutEndpoint(ctx, "c1.eth0", ep)
	if err != nil || !slices.Equal(stored.Addresses, res.Addresses) {
		t.Errorf("put with a bare address = %+v, %v", stored, err)
	}
	// Handles with '/' survive the path.
	if _, err := h.client.Allocate(ctx, agentapi.AllocateRequest{Handle: "ns/pod.eth0"}); err != nil {
		t.Fatal(err)
	}
	if st, err := h.client.GetEndpoint(ctx, "ns/pod.eth0"); err != nil || !st.Allocated || st.Handle != "ns/pod.eth0" {
		t.Errorf("get of a handle with a slash = %+v, %v", st, err)
	}
}

func TestGC(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	ctx := context.Background()
	for _, c := range []string{"c1", "c2", "c3"} {
		if _, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: c, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	held, _ := h.agent.ipam.HandleAddrs(ctx, "c2.eth0")
	if _, err := h.client.PutEndpoint(ctx, "c2.eth0", agentapi.Endpoint{ContainerID: "c2", IfName: "eth0", HostIface: "cali2", Addresses: hostPrefixes(held)}); err != nil {
		t.Fatal(err)
	}
	// Another node's pod and an endpoint record without an allocation.
	if _, err := h.agent.ipam.Allocate(ctx, ipam.AllocateRequest{Handle: "o1.eth0", Node: "k8s-master2", Use: api.UseWorkload}); err != nil {
		t.Fatal(err)
	}
	put(t, h.store, datastore.KindWorkload, "c4.eth0", api.WorkloadEndpoint{Spec: api.WorkloadEndpointSpec{Node: "k8s-master1", Handle: "c4.eth0", HostIface: "cali4", Addresses: []string{"172.16.1.1/32"}}})

	valid := agentapi.GCRequest{ValidAttachments: []agentapi.Attachment{{ContainerID: "c1", IfName: "eth0"}}}
	res, err := h.client.GC(ctx, valid)
	if err != nil {
		t.Fatal(err)
	}
	// Just allocated: within the grace period nothing this agent handed out
	// is released; the record it never wrote goes.
	if len(res.Released) != 0 || !slices.Equal(res.Deferred, []string{"c2.eth0", "c3.eth0"}) || !slices.Equal(res.EndpointsDeleted, []string{"c4.eth0"}) {
		t.Errorf("GC within the grace = %+v; want c2, c3 deferred and c4's record deleted", res)
	}

	h.clock.Advance(2 * DefaultGCGrace)
	res, err = h.client.GC(ctx, valid)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Released, []string{"c2.eth0", "c3.eth0"}) || !slices.Equal(res.EndpointsDeleted, []string{"c2.eth0"}) || len(res.Deferred) != 0 {
		t.Errorf("GC after the grace = %+v; want c2, c3 released and c2's record deleted", res)
	}
	for handle, want := range map[string]bool{"c1.eth0": true, "c2.eth0": false, "c3.eth0": false, "o1.eth0": true, "vxlan-tunnel-addr-k8s-master1": true} {
		got, err := h.agent.ipam.HandleAddrs(ctx, handle)
		if err != nil {
			t.Fatal(err)
		}
		if (len(got) > 0) != want {
			t.Errorf("after GC, %s holds %v; want held=%v", handle, got, want)
		}
	}
	if _, err := h.store.Get(ctx, datastore.KindWorkload, "c2.eth0"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("c2's endpoint record survived GC: %v", err)
	}
	if _, err := h.client.GC(ctx, agentapi.GCRequest{ValidAttachments: []agentapi.Attachment{{ContainerID: "c1"}}}); apiCode(err) != agentapi.CodeInvalid {
		t.Errorf("GC with an incomplete attachment: code %s, want invalid", apiCode(err))
	}
}

func TestNotReadyUntilRegistered(t *testing.T) {
	var up atomic.Bool
	h := newHarness(t, nil, func(c *Config) {
		c.Getenv = seedEnv
		c.DetectAddress = func(context.Context) (HostAddress, error) {
			if !up.Load() {
				return HostAddress{}, fmt.Errorf("%w: eth0 has no address yet", ErrDetect)
			}
			return HostAddress{Prefix: netip.MustParsePrefix("192.168.3.241/24"), Interface: "eth0", MTU: 1500}, nil
		}
	})
	a := h.run(h.store)

	var st agentapi.Status
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st, err = h.client.Status(context.Background()); err == nil && strings.Contains(st.Reason, "no address yet") {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if st.Ready || !strings.Contains(st.Reason, "eth0 has no address yet") {
		t.Fatalf("status while detection fails = %+v, %v", st, err)
	}
	if _, err := h.client.Allocate(context.Background(), agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0"}); apiCode(err) != agentapi.CodeUnavailable {
		t.Errorf("allocate before registration: code %s, want unavailable", apiCode(err))
	}
	rec := httptest.NewRecorder()
	a.healthMux().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "no address yet") {
		t.Errorf("/readyz before registration = %d %q", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	a.healthMux().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200 while alive", rec.Code)
	}

	up.Store(true)
	for range 100 {
		h.clock.Advance(startupMax)
		if ok, _ := a.readiness(); ok {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	h.waitReady()
	rec = httptest.NewRecorder()
	a.healthMux().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/readyz when ready = %d %q", rec.Code, rec.Body)
	}
}

func TestSocketFile(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	sock := h.cfg.SocketPath
	// A stale socket from a previous run: nobody listens on it.
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	h.start()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v, mode %v; want a socket with mode 0600", sock, err, fi.Mode())
	}
	// A second agent on the same socket refuses to start.
	h2cfg := h.cfg
	h2cfg.Dataplane = newFakeDP()
	if err := Run(context.Background(), h.store, h2cfg); err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Errorf("a second agent on a live socket: %v, want an error", err)
	}
	h.stop()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still exists after shutdown: %v", err)
	}
	_, err = h.client.Status(context.Background())
	if !errors.Is(err, agentapi.ErrAgentUnreachable) || !strings.Contains(err.Error(), sock) {
		t.Errorf("status with no agent: %v; want ErrAgentUnreachable naming %s", err, sock)
	}
}

func TestSocketDirectoryCreatedPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "twill")
	l, err := listenSocket(filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	file := filepath.Join(t.TempDir(), "regular")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenSocket(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listening over a regular file: %v, want a refusal", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the regular file was removed: %v", err)
	}
}

func TestUnknownPath(t *testing.T) {
	h := newHarness(t, nil, nil)
	a, err := New(h.store, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v2/nothing", nil))
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), `"code":"invalid"`) {
		t.Errorf("unknown path = %d %s", rec.Code, rec.Body)
	}
}
