package agentapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
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

// TestClientChunkedResponse: the agent's server sends bodies over 2 KB in
// chunked coding; the client must reassemble them.
func TestClientChunkedResponse(t *testing.T) {
	var released []string
	for i := range 500 {
		released = append(released, HandleID(strings.Repeat("c", 40)+string(rune('a'+i%26)), "eth0"))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		var req GCRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.ValidAttachments) != 1 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(GCResponse{Released: released})
	})
	sock := serve(t, mux)
	// Check that the server really chunks a body of this size.
	raw := func() string {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		body := `{"validAttachments":[{"containerID":"a","ifName":"b"}]}`
		c.Write([]byte("POST /v1/gc HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body))
		b, _ := io.ReadAll(c)
		return string(b)
	}()
	if !strings.Contains(strings.ToLower(raw), "transfer-encoding: chunked") {
		t.Fatalf("the test server did not chunk the response; the test proves nothing:\n%.300s", raw)
	}
	c := NewClient(sock, 5*time.Second)
	resp, err := c.GC(context.Background(), GCRequest{ValidAttachments: []Attachment{{ContainerID: "a", IfName: "b"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Released) != len(released) || resp.Released[499] != released[499] {
		t.Errorf("got %d handles (last %q), want %d (last %q))", len(resp.Released), resp.Released[len(resp.Released)-1], len(released), released[499])
	}
}

// rawServer answers every connection on a unix socket with reply, after
// reading the request's headers.
func rawServer(t *testing.T, reply string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "raw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				c.Write([]byte(reply))
			}()
		}
	}()
	return sock
}

func TestClientResponseFraming(t *testing.T) {
	for _, tc := range []struct {
		name, reply string
		wantNode    string
		wantErr     bool
	}{
		{"close-delimited", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ready\":true,\"node\":\"n1\"}", "n1", false},
		{"continue first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 26\r\n\r\n{\"ready\":true,\"node\":\"n2\"}", "n2", false},
		{"chunk extensions and trailers", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\n{\"nod\r\n10\r\ne\":\"n3\",\"ready\":\r\n5\r\ntrue}\r\n0\r\nX-Trailer: 1\r\n\r\n", "n3", false},
		{"not HTTP", "SSH-2.0-OpenSSH\r\n\r\n", "", true},
		{"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ready\":", "", true},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewClient(rawServer(t, tc.reply), 5*time.Second)
			st, err := c.Status(context.Background())
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Status = %+v, want an error", st)
				}
				if errors.Is(err, ErrAgentUnreachable) {
					t.Errorf("a bad response counted as unreachable: %v", err)
				}
				return
			}
			if err != nil || !st.Ready || st.Node != tc.wantNode {
				t.Errorf("Status = %+v, %v; want ready on %s", st, err, tc.wantNode)
			}
		})
	}
}

func TestClientCancel(t *testing.T) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	c := NewClient(serve(t, mux), 0)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err := c.Status(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}
