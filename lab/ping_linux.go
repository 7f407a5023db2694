package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoReply: a ping got no echo reply in time.
var ErrNoReply = errors.New("no echo reply")

// ErrUnreachable: a ping was answered with an ICMP error.
var ErrUnreachable = errors.New("destination unreachable")

// PingPayload is the ICMP payload size, as ping's default: the request is
// 84 bytes of IP, 98 with its Ethernet header.
const PingPayload = 56

// pingIDs hands out ICMP identifiers, so that concurrent pings in one
// namespace tell their replies apart.
var pingIDs atomic.Uint32

func init() { pingIDs.Store(uint32(os.Getpid()) << 4) }

func nextPingID() uint16 { return uint16(pingIDs.Add(1)) }

// checksum is the Internet checksum of b.
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// echoRequest builds an ICMP echo request with a PingPayload-byte payload.
func echoRequest(id, seq uint16) []byte {
	m := make([]byte, 8+PingPayload)
	m[0] = 8 // echo request
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	binary.BigEndian.PutUint64(m[8:], uint64(time.Now().UnixNano()))
	for i := 16; i < len(m); i++ {
		m[i] = byte(i)
	}
	binary.BigEndian.PutUint16(m[2:], checksum(m))
	return m
}

// pingResult is one ping's outcome.
type pingResult struct {
	RTT time.Duration
	Err error
}

// ping sends one echo request from inside the named namespace to dst and
// waits up to timeout for the reply. The raw socket is opened on a thread
// inside the namespace and stays bound to it.
func ping(nsName string, dst netip.Addr, id, seq uint16, timeout time.Duration) (time.Duration, error) {
	fd := -1
	err := inNetns(NetnsPath(nsName), func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ping from %s: raw socket: %w", nsName, err)
	}
	defer unix.Close(fd)
	start := time.Now()
	if err := unix.Sendto(fd, echoRequest(id, seq), 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return 0, fmt.Errorf("ping %s from %s: %w", dst, nsName, err)
	}
	deadline := start.Add(timeout)
	buf := make([]byte, 2048)
	for range 10000 {
		remain := time.Until(deadline)
		if remain <= 0 {
			break
		}
		tv := unix.NsecToTimeval(max(remain, time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return 0, fmt.Errorf("ping: set timeout: %w", err)
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("ping %s from %s: %w", dst, nsName, err)
		}
		switch matchReply(buf[:n], dst, id, seq) {
		case replyEcho:
			return time.Since(start), nil
		case replyError:
			return 0, fmt.Errorf("ping %s from %s: %w", dst, nsName, ErrUnreachable)
		}
	}
	return 0, fmt.Errorf("ping %s from %s: %w within %s", dst, nsName, ErrNoReply, timeout)
}

type replyKind int

const (
	replyOther replyKind = iota
	replyEcho
	replyError
)

// matchReply classifies a packet read from a raw ICMP socket (IP header
// included): our echo reply, an ICMP error about our request, or other.
func matchReply(p []byte, dst netip.Addr, id, seq uint16) replyKind {
	if len(p) < 20 || p[0]>>4 != 4 {
		return replyOther
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl+8 {
		return replyOther
	}
	src := netip.AddrFrom4([4]byte(p[12:16]))
	icmp := p[ihl:]
	switch icmp[0] {
	case 0: // echo reply
		if src == dst && binary.BigEndian.Uint16(icmp[4:]) == id && binary.BigEndian.Uint16(icmp[6:]) == seq {
			return replyEcho
		}
	case 3, 11: // unreachable, time exceeded: the original header follows
		orig := icmp[8:]
		if len(orig) < 20 {
			return replyOther
		}
		oihl := int(orig[0]&0x0f) * 4
		if oihl < 20 || len(orig) < oihl+8 || orig[9] != 1 {
			return replyOther
		}
		odst := netip.AddrFrom4([4]byte(orig[16:20]))
		oicmp := orig[oihl:]
		if odst == dst && oicmp[0] == 8 && binary.BigEndian.Uint16(oicmp[4:]) == id && binary.BigEndian.Uint16(oicmp[6:]) == seq {
			return replyError
		}
	}
	return replyOther
}
