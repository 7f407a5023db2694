package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxResponseBytes bounds what the client reads from the agent.
const maxResponseBytes = 4 << 20

// maxHeaderBytes bounds the status line and headers of a response.
const maxHeaderBytes = 64 << 10

// Client talks to the agent over its unix socket. It is safe for
// concurrent use.
//
// It speaks the subset of HTTP/1.1 the agent's server needs — one request
// per connection ("Connection: close"), a JSON body with Content-Length, and
// a response framed by Content-Length, chunked transfer coding or the end
// of the connection — directly on a net.Conn, without net/http: the CNI
// plugin runs once per pod, and net/http (with crypto/tls and HTTP/2)
// would make up much of its start-up cost.
type Client struct {
	socket  string
	timeout time.Duration
	dialer  net.Dialer
}

// NewClient returns a client for the agent listening on socketPath. Each
// request is bounded by timeout (0 means no bound beyond the context's).
func NewClient(socketPath string, timeout time.Duration) *Client {
	return &Client{socket: socketPath, timeout: timeout}
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
	err := c.do(ctx, "POST", AllocatePath, req, &resp)
	return resp, err
}

// PutEndpoint records a plumbed pod interface under handle.
func (c *Client) PutEndpoint(ctx context.Context, handle string, ep Endpoint) (Endpoint, error) {
	var resp Endpoint
	err := c.do(ctx, "PUT", endpointPath(handle), ep, &resp)
	return resp, err
}

// GetEndpoint returns the endpoint recorded under handle, if any, and
// whether IPAM still holds addresses for it.
func (c *Client) GetEndpoint(ctx context.Context, handle string) (EndpointStatus, error) {
	var resp EndpointStatus
	err := c.do(ctx, "GET", endpointPath(handle), nil, &resp)
	return resp, err
}

// DeleteEndpoint removes the endpoint record and releases the handle's
// addresses. Deleting what does not exist succeeds.
func (c *Client) DeleteEndpoint(ctx context.Context, handle string) (DeleteResponse, error) {
	var resp DeleteResponse
	err := c.do(ctx, "DELETE", endpointPath(handle), nil, &resp)
	return resp, err
}

// Status returns the agent's readiness.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var resp Status
	err := c.do(ctx, "GET", StatusPath, nil, &resp)
	return resp, err
}

// GC releases this node's workload allocations whose handles are not among
// the valid attachments.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var resp GCResponse
	err := c.do(ctx, "POST", GCPath, req, &resp)
	return resp, err
}

// Sync waits until the endpoint of handle, which the agent records after
// answering an Allocate with a Record (AllocateResponse.Recording), is
// recorded, and returns it as stored; it fails with the error that kept it
// from being recorded.
func (c *Client) Sync(ctx context.Context, handle string) (Endpoint, error) {
	var resp Endpoint
	err := c.do(ctx, "POST", SyncPath, SyncRequest{Handle: handle}, &resp)
	return resp, err
}

// endpointPath is the path of one endpoint, with the handle escaped as one
// path segment.
func endpointPath(handle string) string {
	return EndpointsPath + url.PathEscape(handle)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var payload []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("agentapi: encode %s %s request: %w", method, path, err)
		}
		payload = b
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	status, data, err := c.roundTrip(ctx, method, path, payload)
	if err != nil {
		var ue *unreachableError
		if errors.As(err, &ue) {
			return ue
		}
		if cerr := ctx.Err(); cerr != nil {
			// The context ended (timed out or cancelled): say so, with
			// what it interrupted.
			return fmt.Errorf("agentapi: %s %s via %s: %w (%v)", method, path, c.socket, cerr, err)
		}
		return fmt.Errorf("agentapi: %s %s via %s: %w", method, path, c.socket, err)
	}
	if status < 200 || status > 299 {
		e := &Error{}
		if json.Unmarshal(data, e) != nil || e.Code == "" {
			e = &Error{Code: CodeInternal, Message: fmt.Sprintf("%s %s: HTTP %d: %s", method, path, status, bytes.TrimSpace(data))}
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

// roundTrip sends one request on a new connection and returns the response's
// status code and body.
func (c *Client) roundTrip(ctx context.Context, method, path string, payload []byte) (int, []byte, error) {
	conn, err := c.dialer.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return 0, nil, &unreachableError{socket: c.socket, err: err}
	}
	defer conn.Close()
	// The end of the context (its deadline included) unblocks the reads
	// and writes below; the caller then finds ctx.Err() set.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var req bytes.Buffer
	req.Grow(160 + len(payload))
	req.WriteString(method)
	req.WriteByte(' ')
	req.WriteString(path)
	req.WriteString(" HTTP/1.1\r\nHost: twill-agent\r\nUser-Agent: twill-agentapi\r\nConnection: close\r\n")
	if payload != nil {
		req.WriteString("Content-Type: application/json\r\nContent-Length: ")
		req.WriteString(strconv.Itoa(len(payload)))
		req.WriteString("\r\n")
	}
	req.WriteString("\r\n")
	req.Write(payload)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return 0, nil, fmt.Errorf("send the request: %w", err)
	}
	return readResponse(bufio.NewReaderSize(conn, 4096))
}

// errMalformed reports a response that is not HTTP/1.x as the agent speaks
// it.
var errMalformed = errors.New("malformed HTTP response from the agent")

// readResponse reads one HTTP/1.x response: the status line, the headers and
// the body, framed by Content-Length, chunked coding or the end of the
// connection. Informational (1xx) responses are skipped.
func readResponse(r *bufio.Reader) (int, []byte, error) {
	for {
		budget := maxHeaderBytes
		line, err := readLine(r, &budget)
		if err != nil {
			return 0, nil, fmt.Errorf("read the response: %w", err)
		}
		// "HTTP/1.1 200 OK"
		proto, rest, _ := strings.Cut(line, " ")
		code, _, _ := strings.Cut(rest, " ")
		status, err := strconv.Atoi(code)
		if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || len(code) != 3 {
			return 0, nil, fmt.Errorf("%w: status line %q", errMalformed, line)
		}
		length, chunked := int64(-1), false
		for {
			h, err := readLine(r, &budget)
			if err != nil {
				return 0, nil, fmt.Errorf("read the response headers: %w", err)
			}
			if h == "" {
				break
			}
			name, value, ok := strings.Cut(h, ":")
			if !ok {
				return 0, nil, fmt.Errorf("%w: header line %q", errMalformed, h)
			}
			value = strings.TrimSpace(value)
			switch {
			case strings.EqualFold(name, "Content-Length"):
				n, err := strconv.ParseInt(value, 10, 64)
				if err != nil || n < 0 {
					return 0, nil, fmt.Errorf("%w: Content-Length %q", errMalformed, value)
				}
				length = n
			case strings.EqualFold(name, "Transfer-Encoding"):
				chunked = strings.EqualFold(value, "chunked")
				if !chunked {
					return 0, nil, fmt.Errorf("%w: Transfer-Encoding %q", errMalformed, value)
				}
			}
		}
		if status >= 100 && status < 200 {
			continue
		}
		var body []byte
		switch {
		case status == 204 || status == 304:
		case chunked:
			body, err = readChunked(r)
		case length >= 0:
			if length > maxResponseBytes {
				return 0, nil, fmt.Errorf("the agent's response is %d bytes, over the %d-byte limit", length, maxResponseBytes)
			}
			body = make([]byte, length)
			_, err = io.ReadFull(r, body)
		default:
			body, err = io.ReadAll(io.LimitReader(r, maxResponseBytes))
		}
		if err != nil {
			return 0, nil, fmt.Errorf("read the response body: %w", err)
		}
		return status, body, nil
	}
}

// readLine reads one CRLF- (or LF-) terminated line, charging its length to
// *budget.
func readLine(r *bufio.Reader, budget *int) (string, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		*budget -= len(frag)
		if *budget < 0 {
			return "", fmt.Errorf("%w: headers over %d bytes", errMalformed, maxHeaderBytes)
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return string(line), nil
}

// readChunked reads a body in chunked transfer coding, and its trailers.
func readChunked(r *bufio.Reader) ([]byte, error) {
	var body []byte
	budget := maxHeaderBytes
	for {
		line, err := readLine(r, &budget)
		if err != nil {
			return nil, err
		}
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: chunk size %q", errMalformed, line)
		}
		if n == 0 {
			break
		}
		if int64(len(body))+n > maxResponseBytes {
			return nil, fmt.Errorf("the agent's response is over the %d-byte limit", maxResponseBytes)
		}
		start := len(body)
		body = append(body, make([]byte, n)...)
		if _, err := io.ReadFull(r, body[start:]); err != nil {
			return nil, err
		}
		if end, err := readLine(r, &budget); err != nil || end != "" {
			return nil, fmt.Errorf("%w: chunk not followed by CRLF", errMalformed)
		}
	}
	for { // trailers
		line, err := readLine(r, &budget)
		if err != nil {
			return nil, err
		}
		if line == "" {
			return body, nil
		}
	}
}
