package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// maxResponseBytes bounds what the client reads from the agent.
const maxResponseBytes = 4 << 20

// Client talks to the agent over its unix socket. It is safe for
// concurrent use.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socketPath. Each
// request is bounded by timeout (0 means no bound beyond the context's).
func NewClient(socketPath string, timeout time.Duration) *Client {
	dialer := &net.Dialer{}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, "unix", socketPath)
			if err != nil {
				return nil, &unreachableError{socket: socketPath, err: err}
			}
			return c, nil
		},
		DisableCompression: true,
		MaxIdleConns:       2,
		IdleConnTimeout:    30 * time.Second,
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: tr, Timeout: timeout}}
}

// unreachableError wraps a dial failure: it matches ErrAgentUnreachable and
// the underlying error.
type unreachableError struct {
	socket string
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("%v at %s (is `twill node run` running on this node, with --socket %s?): %v", ErrAgentUnreachable, e.socket, e.socket, e.err)
}

func (e *unreachableError) Unwrap() []error { return []error{ErrAgentUnreachable, e.err} }

// Socket returns the socket path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Allocate asks the agent for a pod address.
func (c *Client) Allocate(ctx context.Context, req AllocateRequest) (AllocateResponse, error) {
	var resp AllocateResponse
	err := c.do(ctx, http.MethodPost, AllocatePath, req, &resp)
	return resp, err
}

// PutEndpoint records a plumbed pod interface under handle.
func (c *Client) PutEndpoint(ctx context.Context, handle string, ep Endpoint) (Endpoint, error) {
	var resp Endpoint
	err := c.do(ctx, http.MethodPut, endpointPath(handle), ep, &resp)
	return resp, err
}

// GetEndpoint returns the endpoint recorded under handle, if any, and
// whether IPAM still holds addresses for it.
func (c *Client) GetEndpoint(ctx context.Context, handle string) (EndpointStatus, error) {
	var resp EndpointStatus
	err := c.do(ctx, http.MethodGet, endpointPath(handle), nil, &resp)
	return resp, err
}

// DeleteEndpoint removes the endpoint record and releases the handle's
// addresses. Deleting what does not exist succeeds.
func (c *Client) DeleteEndpoint(ctx context.Context, handle string) (DeleteResponse, error) {
	var resp DeleteResponse
	err := c.do(ctx, http.MethodDelete, endpointPath(handle), nil, &resp)
	return resp, err
}

// Status returns the agent's readiness.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var resp Status
	err := c.do(ctx, http.MethodGet, StatusPath, nil, &resp)
	return resp, err
}

// GC releases this node's workload allocations whose handles are not among
// the valid attachments.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var resp GCResponse
	err := c.do(ctx, http.MethodPost, GCPath, req, &resp)
	return resp, err
}

// endpointPath is the path of one endpoint, with the handle escaped as one
// path segment.
func endpointPath(handle string) string {
	return EndpointsPath + url.PathEscape(handle)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("agentapi: encode %s %s request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	// The host is ignored: the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://twill-agent"+path, rd)
	if err != nil {
		return fmt.Errorf("agentapi: build %s %s request: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *unreachableError
		if errors.As(err, &ue) {
			return ue
		}
		return fmt.Errorf("agentapi: %s %s via %s: %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("agentapi: read %s %s response via %s: %w", method, path, c.socket, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &Error{}
		if json.Unmarshal(data, e) != nil || e.Code == "" {
			e = &Error{Code: CodeInternal, Message: fmt.Sprintf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(data))}
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("agentapi: decode %s %s response: %w", method, path, err)
	}
	return nil
}
