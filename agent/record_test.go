package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"twill.dev/twill/agentapi"
	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
	"twill.dev/twill/ipam"
	"twill.dev/twill/plan"
)

// TestAllocateRecordsEndpoint: an allocation that carries its endpoint
// records it in the same request, with the allocated address and the
// request's pod identity, and DEL removes both as for a PUT endpoint.
func TestAllocateRecordsEndpoint(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	ctx := context.Background()
	h.dp.drain()

	req := agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", Namespace: "default", Pod: "web-0",
		Record: &agentapi.Endpoint{HostIface: "cali64d6bf8fbc2", MAC: "0a:58:0a:f4:01:05", Netns: "/var/run/netns/pod",
			Addresses: []string{"10.9.9.9/32"}}} // ignored: the allocation's address is recorded
	res, err := h.client.Allocate(ctx, req)
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	if !res.Recording || len(res.Addresses) != 1 {
		t.Fatalf("allocate = %+v; want one address, recording", res)
	}
	addr := res.Addresses[0]
	stored, err := h.client.Sync(ctx, "c1.eth0")
	if err != nil || stored.Handle != "c1.eth0" || stored.HostIface != "cali64d6bf8fbc2" || !slices.Equal(stored.Addresses, res.Addresses) {
		t.Fatalf("sync = %+v, %v; want the endpoint with %v", stored, err, res.Addresses)
	}
	rec, err := datastore.GetObject[api.WorkloadEndpoint](ctx, h.store, datastore.KindWorkload, "c1.eth0")
	if err != nil {
		t.Fatalf("read the record: %v", err)
	}
	want := api.WorkloadEndpointSpec{Node: "k8s-master1", Namespace: "default", Pod: "web-0", ContainerID: "c1", IfName: "eth0",
		Handle: "c1.eth0", HostIface: "cali64d6bf8fbc2", Addresses: []string{addr}, MAC: "0a:58:0a:f4:01:05", Netns: "/var/run/netns/pod"}
	if got := rec.Value.Spec; !slices.Equal(got.Addresses, want.Addresses) || got.Node != want.Node || got.Namespace != want.Namespace ||
		got.Pod != want.Pod || got.ContainerID != want.ContainerID || got.IfName != want.IfName || got.Handle != want.Handle ||
		got.HostIface != want.HostIface || got.MAC != want.MAC || got.Netns != want.Netns {
		t.Errorf("recorded %+v, want %+v", got, want)
	}
	h.dp.waitApply(t, "with the pod's route", func(dp plan.Dataplane) bool { return hasRoute(dp, addr, plan.KindWorkload) })

	// A retried ADD gets the same address and records again.
	again, err := h.client.Allocate(ctx, req)
	if err != nil || !again.Recording || !slices.Equal(again.Addresses, res.Addresses) {
		t.Errorf("a repeated allocate = %+v, %v; want the same address, recording", again, err)
	}
	if _, err := h.client.Sync(ctx, "c1.eth0"); err != nil {
		t.Errorf("sync after the repeated allocate: %v", err)
	}
	st, err := h.client.GetEndpoint(ctx, "c1.eth0")
	if err != nil || st.Endpoint == nil || st.Endpoint.HostIface != "cali64d6bf8fbc2" || !st.Allocated {
		t.Errorf("get = %+v, %v; want the endpoint and its allocation", st, err)
	}
	del, err := h.client.DeleteEndpoint(ctx, "c1.eth0")
	if err != nil || !del.EndpointDeleted || !slices.Equal(del.Released, res.Addresses) {
		t.Errorf("delete = %+v, %v; want the endpoint deleted and %v released", del, err, res.Addresses)
	}
	h.dp.waitApply(t, "without the pod's route", func(dp plan.Dataplane) bool { return !hasRoute(dp, addr, plan.KindWorkload) })
}

// TestAllocateRecordInvalid: a record the agent would refuse is refused
// before anything is allocated.
func TestAllocateRecordInvalid(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	ctx := context.Background()
	for name, rec := range map[string]*agentapi.Endpoint{
		"no host interface":       {},
		"host interface too long": {HostIface: "cali0123456789abcdef"},
		"bad MAC":                 {HostIface: "cali1", MAC: "not-a-mac"},
		"other handle":            {HostIface: "cali1", Handle: "other.eth0"},
	} {
		_, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", Record: rec})
		if apiCode(err) != agentapi.CodeInvalid {
			t.Errorf("%s: err = %v, want code invalid", name, err)
		}
	}
	if held, err := ipam.New(h.store).HandleAddrs(ctx, "c1.eth0"); err != nil || len(held) != 0 {
		t.Errorf("after refused requests the handle holds %v (%v); want nothing", held, err)
	}
}

// failingRecords is a store whose endpoint writes fail while fail is set;
// with applied, they apply before they report the failure (an ambiguous
// write).
type failingRecords struct {
	datastore.Store
	applied bool
	fail    atomic.Bool
}

// write runs an endpoint write, or fails it as the test asked.
func (s *failingRecords) write(ctx context.Context, kv datastore.KV, f func(context.Context, datastore.KV) (datastore.KV, error)) (datastore.KV, error) {
	if s.fail.Load() && kv.Kind == datastore.KindWorkload {
		if s.applied {
			datastore.Put(ctx, s.Store, kv)
		}
		return datastore.KV{}, fmt.Errorf("injected: %w", datastore.ErrUnavailable)
	}
	return f(ctx, kv)
}

func (s *failingRecords) Create(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	return s.write(ctx, kv, s.Store.Create)
}

func (s *failingRecords) Update(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	return s.write(ctx, kv, s.Store.Update)
}

// TestAllocateRecordFailureLeavesNothing: when the endpoint cannot be
// recorded, Sync reports the failure and the agent has undone the
// allocation, record included.
func TestAllocateRecordFailureLeavesNothing(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprintf("applied=%v", applied), func(t *testing.T) { testRecordFailure(t, applied) })
	}
}

func testRecordFailure(t *testing.T, applied bool) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	store := &failingRecords{Store: h.store, applied: applied}
	h.run(store)
	h.waitReady()
	ctx := context.Background()
	store.fail.Store(true)
	h.dp.drain()
	res, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", Record: &agentapi.Endpoint{HostIface: "cali1"}})
	if err != nil || !res.Recording {
		t.Fatalf("allocate = %+v, %v; want an address, recording", res, err)
	}
	if _, err := h.client.Sync(ctx, "c1.eth0"); apiCode(err) != agentapi.CodeUnavailable {
		t.Fatalf("sync = %v, want code unavailable", err)
	}
	// The endpoint staged in the cache is gone again: a reconcile from
	// now on plans no route for the pod.
	h.dp.drain()
	h.dp.signals <- struct{}{}
	if dp := h.dp.waitApply(t, "after a kernel signal", func(plan.Dataplane) bool { return true }); hasRoute(dp, res.Addresses[0], plan.KindWorkload) {
		t.Errorf("the plan still routes %s after its record failed", res.Addresses[0])
	}
	if held, err := ipam.New(h.store).HandleAddrs(ctx, "c1.eth0"); err != nil || len(held) != 0 {
		t.Errorf("the failed request left %v allocated (%v); want nothing", held, err)
	}
	if _, err := h.store.Get(ctx, datastore.KindWorkload, "c1.eth0"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("the failed request left an endpoint record (%v)", err)
	}
	if !strings.Contains(h.logs.String(), "released a fresh allocation") {
		t.Errorf("the undo was not logged:\n%s", h.logs)
	}
	// The outcome is reported once; then there is simply no endpoint.
	if _, err := h.client.Sync(ctx, "c1.eth0"); apiCode(err) != agentapi.CodeUnavailable {
		t.Errorf("a second sync = %v, want code unavailable", err)
	}

	// A retry that finds the address held keeps it on failure: an
	// earlier, successful request handed it out.
	store.fail.Store(false)
	res, err = h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
	if err != nil || res.Recording {
		t.Fatalf("allocate without a record = %+v, %v", res, err)
	}
	store.fail.Store(true)
	if _, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", Record: &agentapi.Endpoint{HostIface: "cali1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Sync(ctx, "c1.eth0"); err == nil {
		t.Fatal("sync of a failing record succeeded")
	}
	if held, err := ipam.New(h.store).HandleAddrs(ctx, "c1.eth0"); err != nil || len(held) != 1 || held[0].String()+"/32" != res.Addresses[0] {
		t.Errorf("the handle holds %v (%v); want %v still", held, err, res.Addresses)
	}
}

// TestAllocateAnswersBeforeRecording: the answer does not wait for the
// record, which waits for a running reconcile that planned without the
// pod; Sync and DEL wait for the record, so that the route is never added
// under that reconcile and no record outlives its DEL.
func TestAllocateAnswersBeforeRecording(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	h.start()
	ctx := context.Background()

	h.agent.planMu.Lock() // as a running reconcile holds it
	locked := true
	unlock := func() {
		if locked {
			locked = false
			h.agent.planMu.Unlock()
		}
	}
	defer unlock()
	res, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", Record: &agentapi.Endpoint{HostIface: "cali1"}})
	if err != nil || !res.Recording {
		t.Fatalf("allocate during a reconcile = %+v, %v; want an answer, recording", res, err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = h.client.Sync(short, "c1.eth0")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("sync during the reconcile = %v; want it to wait (and time out)", err)
	}
	deleted := make(chan error, 1)
	go func() {
		del, err := h.client.DeleteEndpoint(ctx, "c1.eth0")
		if err == nil && (!del.EndpointDeleted || len(del.Released) != 1) {
			err = fmt.Errorf("delete = %+v; want the record deleted and one address released", del)
		}
		deleted <- err
	}()
	unlock()
	if err := <-deleted; err != nil {
		t.Error(err)
	}
	if _, err := h.store.Get(ctx, datastore.KindWorkload, "c1.eth0"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("a record outlived its DEL (%v)", err)
	}
	if _, err := h.client.Sync(ctx, "c1.eth0"); apiCode(err) != agentapi.CodeUnavailable {
		t.Errorf("sync after DEL = %v, want code unavailable", err)
	}
	if _, err := h.client.Sync(ctx, ""); apiCode(err) != agentapi.CodeInvalid {
		t.Errorf("sync without a handle = %v, want code invalid", err)
	}
}

// gatedRecords is a store whose endpoint writes wait until gate closes.
type gatedRecords struct {
	datastore.Store
	gate chan struct{}
}

// wait holds an endpoint write until the gate opens.
func (s *gatedRecords) wait(ctx context.Context, kv datastore.KV) error {
	if kv.Kind != datastore.KindWorkload {
		return nil
	}
	select {
	case <-s.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *gatedRecords) Create(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	if err := s.wait(ctx, kv); err != nil {
		return datastore.KV{}, err
	}
	return s.Store.Create(ctx, kv)
}

func (s *gatedRecords) Update(ctx context.Context, kv datastore.KV) (datastore.KV, error) {
	if err := s.wait(ctx, kv); err != nil {
		return datastore.KV{}, err
	}
	return s.Store.Update(ctx, kv)
}

// TestAllocatePlansBeforeRecording: the reconciles that the plugin's
// plumbing sets off (by kernel events) already plan the pod's route while
// its record is still being written.
func TestAllocatePlansBeforeRecording(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv })
	store := &gatedRecords{Store: h.store, gate: make(chan struct{})}
	h.run(store)
	h.waitReady()
	ctx := context.Background()
	opened := false
	defer func() {
		if !opened {
			close(store.gate)
		}
	}()
	h.dp.drain()
	res, err := h.client.Allocate(ctx, agentapi.AllocateRequest{ContainerID: "c1", IfName: "eth0", Record: &agentapi.Endpoint{HostIface: "cali1"}})
	if err != nil || !res.Recording {
		t.Fatalf("allocate = %+v, %v; want an address, recording", res, err)
	}
	h.dp.signals <- struct{}{} // as the veth's creation would
	h.dp.waitApply(t, "with the pod's route", func(dp plan.Dataplane) bool { return hasRoute(dp, res.Addresses[0], plan.KindWorkload) })
	if _, err := h.store.Get(ctx, datastore.KindWorkload, "c1.eth0"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("the record exists before its write was let through (%v)", err)
	}
	close(store.gate)
	opened = true
	if ep, err := h.client.Sync(ctx, "c1.eth0"); err != nil || ep.HostIface != "cali1" {
		t.Fatalf("sync = %+v, %v", ep, err)
	}
	if _, err := h.store.Get(ctx, datastore.KindWorkload, "c1.eth0"); err != nil {
		t.Errorf("no record after sync: %v", err)
	}
}
