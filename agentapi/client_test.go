package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serve runs handler on a unix socket in a temporary directory.
func serve(t *testing.T, handler http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestClientRoundTrip(t *testing.T) {
	var gotPath, gotMethod string
	var gotBody AllocateRequest
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/allocate", func(w http.ResponseWriter, r *http.Request) {
		gotMethod, gotPath = r.Method, r.URL.Path
		json.NewDecoder(r.Body).Decode(&gotBody)
		json.NewEncoder(w).Encode(AllocateResponse{Handle: HandleID(gotBody.ContainerID, gotBody.IfName), Addresses: []string{"172.16.159.145/32"}, MTU: 1500})
	})
	mux.HandleFunc("GET /v1/endpoints/{handle}", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(EndpointStatus{Handle: r.PathValue("handle"), Allocated: true})
	})
	c := NewClient(serve(t, mux), 5*time.Second)
	ctx := context.Background()
	res, err := c.Allocate(ctx, AllocateRequest{ContainerID: "abc", IfName: "eth0", Pod: "web-0"})
	if err != nil {
		t.Fatal(err)
	}
	if gotMethod != http.MethodPost || gotPath != AllocatePath || gotBody.Pod != "web-0" {
		t.Errorf("server saw %s %s %+v", gotMethod, gotPath, gotBody)
	}
	if res.Handle != "abc.eth0" || res.Addresses[0] != "172.16.159.145/32" || res.MTU != 1500 {
		t.Errorf("response = %+v", res)
	}
	// A handle with a slash stays one path segment.
	st, err := c.GetEndpoint(ctx, "ns/pod.eth0")
	if err != nil || st.Handle != "ns/pod.eth0" || !st.Allocated {
		t.Errorf("GetEndpoint = %+v, %v", st, err)
	}
}

func TestClientErrors(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/allocate", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInsufficientStorage)
		json.NewEncoder(w).Encode(Error{Code: CodePoolExhausted, Message: "no free address"})
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "proxy says no", http.StatusBadGateway)
	})
	c := NewClient(serve(t, mux), 5*time.Second)
	_, err := c.Allocate(context.Background(), AllocateRequest{ContainerID: "a", IfName: "eth0"})
	var e *Error
	if !errors.As(err, &e) || e.Code != CodePoolExhausted || e.Message != "no free address" {
		t.Errorf("allocate error = %v, want *Error with code pool-exhausted", err)
	}
	_, err = c.Status(context.Background())
	if !errors.As(err, &e) || e.Code != CodeInternal || !strings.Contains(e.Message, "proxy says no") {
		t.Errorf("non-JSON error = %v, want an internal *Error carrying the body", err)
	}
	if errors.Is(err, ErrAgentUnreachable) {
		t.Errorf("an HTTP error counted as unreachable")
	}
}

func TestClientUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "missing.sock")
	c := NewClient(sock, time.Second)
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrAgentUnreachable) {
		t.Fatalf("err = %v, want ErrAgentUnreachable", err)
	}
	if !strings.Contains(err.Error(), sock) {
		t.Errorf("error %q does not name the socket", err)
	}
	if !errors.Is(err, syscall.ENOENT) {
		t.Errorf("error %v does not wrap the dial failure", err)
	}
	var e *Error
	if errors.As(err, &e) {
		t.Errorf("an unreachable agent returned an *Error")
	}
}

func TestClientTimeout(t *testing.T) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	c := NewClient(serve(t, mux), 50*time.Millisecond)
	_, err := c.Status(context.Background())
	if err == nil || errors.Is(err, ErrAgentUnreachable) {
		t.Errorf("err = %v, want a timeout that is not 'unreachable'", err)
	}
}

func TestHandleID(t *testing.T) {
	if got := HandleID("0123abcd", "eth0"); got != "0123abcd.eth0" {
		t.Errorf("HandleID = %q", got)
	}
}
