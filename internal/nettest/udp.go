//go:build linux

package nettest

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// ListenUDP opens a UDP socket bound to laddr (e.g. "172.16.5.10:0")
// inside the namespace at path, and closes it when the test ends.
func ListenUDP(t testing.TB, path, laddr string) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := InNetns(path, func() error {
		a, err := net.ResolveUDPAddr("udp4", laddr)
		if err != nil {
			return err
		}
		conn, err = net.ListenUDP("udp4", a)
		return err
	})
	if err != nil {
		t.Fatalf("nettest: UDP socket on %s in %s: %v", laddr, path, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// UDPServer is a UDP socket in a test namespace that records where each
// datagram came from and, if asked, echoes it back.
type UDPServer struct {
	Conn *net.UDPConn
	seen chan datagram
}

type datagram struct {
	payload string
	from    netip.AddrPort
}

// NewUDPServer listens on laddr inside the namespace at path until the
// test ends; with echo it sends every datagram back to its source (which
// fails, or goes nowhere, without a way back: what firewall tests look
// at).
func NewUDPServer(t testing.TB, path, laddr string, echo bool) *UDPServer {
	t.Helper()
	s := &UDPServer{Conn: ListenUDP(t, path, laddr), seen: make(chan datagram, 1024)}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := s.Conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed by the test's cleanup
			}
			select {
			case s.seen <- datagram{string(buf[:n]), from}:
			default:
			}
			if echo {
				_, _ = s.Conn.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	return s
}

// Await waits up to d for the datagram with payload, skipping others, and
// returns where it came from.
func (s *UDPServer) Await(payload string, d time.Duration) (netip.AddrPort, bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		select {
		case g := <-s.seen:
			if g.payload == payload {
				return g.from, true
			}
		case <-deadline.C:
			return netip.AddrPort{}, false
		}
	}
}
