package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// EtherType values the decoder names.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd
)

// IP protocol numbers the decoder reads.
const (
	ProtoICMP = 1
	ProtoUDP  = 17
)

// ErrShortFrame: a frame ends before a header it announces.
var ErrShortFrame = errors.New("frame too short")

// Frame is a decoded Ethernet frame, as far as the lab needs: Ethernet,
// IPv4, ICMP, UDP and VXLAN (with the encapsulated frame).
type Frame struct {
	Dst, Src  net.HardwareAddr
	EtherType uint16
	// Length is the frame's length without the FCS, as tcpdump prints it.
	Length int
	IPv4   *IPv4Header
	ICMP   *ICMPHeader
	UDP    *UDPHeader
	VXLAN  *VXLANHeader
	// Inner is the frame a VXLAN packet carries.
	Inner *Frame
}

// IPv4Header is an IPv4 header.
type IPv4Header struct {
	Src, Dst netip.Addr
	Protocol uint8
	TTL      uint8
	// TotalLength is the header's total length field.
	TotalLength int
	HeaderLen   int
}

// ICMPHeader is an ICMP header; ID and Seq are set for echo messages.
type ICMPHeader struct {
	Type, Code uint8
	ID, Seq    uint16
	// Length is the ICMP message's length (IP total length minus header).
	Length int
}

// UDPHeader is a UDP header.
type UDPHeader struct {
	SrcPort, DstPort uint16
	Length           int
}

// VXLANHeader is a VXLAN header.
type VXLANHeader struct {
	Flags uint8
	VNI   uint32
}

// DecodeFrame decodes an Ethernet frame. UDP to vxlanPort is decoded as
// VXLAN, with the inner frame. Headers it does not know are left nil; a
// frame cut short inside a header it knows is an error matching
// ErrShortFrame.
func DecodeFrame(b []byte, vxlanPort int) (*Frame, error) {
	return decodeFrame(b, vxlanPort, 0)
}

func decodeFrame(b []byte, vxlanPort, depth int) (*Frame, error) {
	if len(b) < 14 {
		return nil, fmt.Errorf("%w: %d bytes, an Ethernet header needs 14", ErrShortFrame, len(b))
	}
	f := &Frame{
		Dst: net.HardwareAddr(append([]byte(nil), b[0:6]...)), Src: net.HardwareAddr(append([]byte(nil), b[6:12]...)),
		EtherType: binary.BigEndian.Uint16(b[12:14]), Length: len(b),
	}
	if f.EtherType != EtherTypeIPv4 {
		return f, nil
	}
	p := b[14:]
	if len(p) < 20 || p[0]>>4 != 4 {
		return nil, fmt.Errorf("%w: IPv4 header", ErrShortFrame)
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl {
		return nil, fmt.Errorf("%w: IPv4 header of %d bytes", ErrShortFrame, ihl)
	}
	ip := &IPv4Header{
		Src: netip.AddrFrom4([4]byte(p[12:16])), Dst: netip.AddrFrom4([4]byte(p[16:20])),
		Protocol: p[9], TTL: p[8], TotalLength: int(binary.BigEndian.Uint16(p[2:4])), HeaderLen: ihl,
	}
	f.IPv4 = ip
	// Fragments other than the first carry no transport header.
	if binary.BigEndian.Uint16(p[6:8])&0x1fff != 0 {
		return f, nil
	}
	l4 := p[ihl:]
	switch ip.Protocol {
	case ProtoICMP:
		if len(l4) < 8 {
			return nil, fmt.Errorf("%w: ICMP header", ErrShortFrame)
		}
		f.ICMP = &ICMPHeader{Type: l4[0], Code: l4[1], Length: ip.TotalLength - ihl}
		if f.ICMP.Type == 0 || f.ICMP.Type == 8 {
			f.ICMP.ID, f.ICMP.Seq = binary.BigEndian.Uint16(l4[4:6]), binary.BigEndian.Uint16(l4[6:8])
		}
	case ProtoUDP:
		if len(l4) < 8 {
			return nil, fmt.Errorf("%w: UDP header", ErrShortFrame)
		}
		f.UDP = &UDPHeader{SrcPort: binary.BigEndian.Uint16(l4[0:2]), DstPort: binary.BigEndian.Uint16(l4[2:4]), Length: int(binary.BigEndian.Uint16(l4[4:6]))}
		if int(f.UDP.DstPort) == vxlanPort && depth == 0 {
			v := l4[8:]
			if len(v) < 8 {
				return nil, fmt.Errorf("%w: VXLAN header", ErrShortFrame)
			}
			f.VXLAN = &VXLANHeader{Flags: v[0], VNI: binary.BigEndian.Uint32(v[4:8]) >> 8}
			inner, err := decodeFrame(v[8:], vxlanPort, depth+1)
			if err != nil {
				return nil, fmt.Errorf("VXLAN payload: %w", err)
			}
			f.Inner = inner
		}
	}
	return f, nil
}

func etherTypeName(t uint16) string {
	switch t {
	case EtherTypeIPv4:
		return "IPv4 (0x0800)"
	case EtherTypeARP:
		return "ARP (0x0806)"
	case EtherTypeIPv6:
		return "IPv6 (0x86dd)"
	}
	return fmt.Sprintf("Unknown (0x%04x)", t)
}

func icmpName(t uint8) string {
	switch t {
	case 0:
		return "echo reply"
	case 3:
		return "destination unreachable"
	case 8:
		return "echo request"
	case 11:
		return "time exceeded"
	}
	return fmt.Sprintf("type %d", t)
}

// String renders the frame as one line of `tcpdump -nne`, e.g.
// "00:15:5d:03:0b:0a > 00:15:5d:03:0b:12, ethertype IPv4 (0x0800), length
// 148: 192.168.3.241.56247 > 192.168.32.105.4789: VXLAN, flags [I] (0x08),
// vni 4096". The inner frame of a VXLAN packet is not included: see Lines.
func (f *Frame) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s > %s, ethertype %s, length %d", f.Src, f.Dst, etherTypeName(f.EtherType), f.Length)
	ip := f.IPv4
	if ip == nil {
		return b.String()
	}
	b.WriteString(": ")
	switch {
	case f.ICMP != nil:
		fmt.Fprintf(&b, "%s > %s: ICMP %s", ip.Src, ip.Dst, icmpName(f.ICMP.Type))
		if f.ICMP.Type == 0 || f.ICMP.Type == 8 {
			fmt.Fprintf(&b, ", id %d, seq %d", f.ICMP.ID, f.ICMP.Seq)
		}
		fmt.Fprintf(&b, ", length %d", f.ICMP.Length)
	case f.VXLAN != nil:
		flags := ""
		if f.VXLAN.Flags&0x08 != 0 {
			flags = "I"
		}
		fmt.Fprintf(&b, "%s.%d > %s.%d: VXLAN, flags [%s] (0x%02x), vni %d", ip.Src, f.UDP.SrcPort, ip.Dst, f.UDP.DstPort, flags, f.VXLAN.Flags, f.VXLAN.VNI)
	case f.UDP != nil:
		fmt.Fprintf(&b, "%s.%d > %s.%d: UDP, length %d", ip.Src, f.UDP.SrcPort, ip.Dst, f.UDP.DstPort, max(f.UDP.Length-8, 0))
	default:
		fmt.Fprintf(&b, "%s > %s: ip-proto-%d %d", ip.Src, ip.Dst, ip.Protocol, max(ip.TotalLength-ip.HeaderLen, 0))
	}
	return b.String()
}

// Lines renders the frame as tcpdump -nne does: one line, plus one for the
// frame a VXLAN packet carries.
func (f *Frame) Lines() []string {
	lines := []string{f.String()}
	if f.Inner != nil {
		lines = append(lines, f.Inner.Lines()...)
	}
	return lines
}

// Path is how a packet crossed the wire between two nodes.
type Path string

// Paths between nodes.
const (
	PathDirect  Path = "direct"
	PathVXLAN   Path = "vxlan"
	PathUnknown Path = "unknown"
)

// echoIs reports whether f is the echo request src→dst with id and seq.
func (f *Frame) echoIs(src, dst netip.Addr, id, seq uint16) bool {
	return f != nil && f.IPv4 != nil && f.ICMP != nil && f.ICMP.Type == 8 &&
		f.IPv4.Src == src && f.IPv4.Dst == dst && f.ICMP.ID == id && f.ICMP.Seq == seq
}

// Classify reports whether the frame carries the echo request src→dst
// (id, seq), and how: plainly (PathDirect) or inside VXLAN with vni
// (PathVXLAN).
func (f *Frame) Classify(src, dst netip.Addr, id, seq uint16, vni uint32) (Path, bool) {
	switch {
	case f.echoIs(src, dst, id, seq):
		return PathDirect, true
	case f.VXLAN != nil && f.VXLAN.VNI == vni && f.Inner.echoIs(src, dst, id, seq):
		return PathVXLAN, true
	}
	return PathUnknown, false
}
