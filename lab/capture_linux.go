package lab

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// capture is an AF_PACKET socket bound to one interface of one namespace.
// The socket is opened on a thread inside the namespace; it stays bound to
// that namespace's interface whatever thread reads it.
type capture struct {
	fd     int
	netns  string
	ifname string
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openCapture starts capturing every frame sent or received on ifname in
// the named namespace.
func openCapture(nsName, ifname string) (*capture, error) {
	c := &capture{fd: -1, netns: nsName, ifname: ifname}
	err := inNetns(NetnsPath(nsName), func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("find %s: %w", ifname, err)
		}
		// Protocol 0 receives nothing until bind names the interface, so
		// no frame of another interface slips in.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", ifname, err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: %w", ifname, nsName, err)
	}
	return c, nil
}

// errCaptureTimeout: no frame arrived before the deadline.
var errCaptureTimeout = errors.New("no frame before the deadline")

// next returns the next frame and whether the host sent it (rather than
// received it), waiting until deadline.
func (c *capture) next(buf []byte, deadline time.Time) ([]byte, bool, error) {
	for range 10000 {
		remain := time.Until(deadline)
		if remain <= 0 {
			return nil, false, errCaptureTimeout
		}
		tv := unix.NsecToTimeval(max(remain, time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, false, fmt.Errorf("capture: set timeout: %w", err)
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("capture on %s in %s: %w", c.ifname, c.netns, err)
		}
		out := false
		if ll, ok := from.(*unix.SockaddrLinklayer); ok {
			out = ll.Pkttype == unix.PACKET_OUTGOING
		}
		return buf[:n], out, nil
	}
	return nil, false, errCaptureTimeout
}

func (c *capture) close() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}
