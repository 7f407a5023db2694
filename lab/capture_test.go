package lab

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// Hand-built frames: Ethernet, IPv4 (with a real checksum), ICMP echo,
// UDP and VXLAN, laid out byte by byte as on the wire.

func mac(s string) []byte {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

func ether(src, dst string, etherType uint16, payload []byte) []byte {
	b := append(append(mac(dst), mac(src)...), byte(etherType>>8), byte(etherType))
	return append(b, payload...)
}

func ipv4(src, dst string, proto byte, payload []byte) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[6:], 0x4000) // don't fragment
	h[8], h[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], testChecksum(h))
	return append(h, payload...)
}

func testChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func icmpEcho(typ byte, id, seq uint16) []byte {
	m := make([]byte, 64) // 8 bytes of header, 56 of payload, as ping sends
	m[0] = typ
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	binary.BigEndian.PutUint16(m[2:], testChecksum(m))
	return m
}

func udp(sport, dport uint16, payload []byte) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return append(h, payload...)
}

func vxlanHdr(vni uint32, inner []byte) []byte {
	h := make([]byte, 8)
	h[0] = 0x08
	binary.BigEndian.PutUint32(h[4:], vni<<8)
	return append(h, inner...)
}

// seedCaptures returns the tcpdump lines the seed recorded.
func seedCaptures(t *testing.T) map[string]map[string]string {
	t.Helper()
	b, err := BuiltinSource("seed")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Observed struct {
			Captures map[string]map[string]string `json:"captures"`
		} `json:"observed"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Observed.Captures) != 2 {
		t.Fatalf("seed captures: %v", doc.Observed.Captures)
	}
	return doc.Observed.Captures
}

const (
	master1MAC = "00:15:5d:03:0b:0a"
	master2MAC = "00:15:5d:03:0b:0b"
	node1MAC   = "00:15:5d:03:0b:12"
	vtep1MAC   = "66:04:84:48:ab:6a"
	vtepN1MAC  = "66:8c:73:5a:90:99"
)

func TestDecodeSeedSameSubnet(t *testing.T) {
	want := seedCaptures(t)["same_subnet"]["eth0"]
	frame := ether(master1MAC, master2MAC, EtherTypeIPv4, ipv4("172.16.159.145", "172.16.224.15", ProtoICMP, icmpEcho(8, 7, 1)))
	f, err := DecodeFrame(frame, 4789)
	if err != nil {
		t.Fatal(err)
	}
	if f.Length != 98 {
		t.Errorf("length %d, want 98 (as in the seed)", f.Length)
	}
	got := f.String()
	if !strings.HasPrefix(got, want) {
		t.Errorf("String()\n  %s\nwant it to start with the seed's\n  %s", got, want)
	}
	if got != want+", id 7, seq 1, length 64" {
		t.Errorf("String() = %q: want the seed's line followed by id, seq and ICMP length", got)
	}
	if lines := f.Lines(); len(lines) != 1 {
		t.Errorf("Lines() = %v, want one line", lines)
	}
	src, dst := netip.MustParseAddr("172.16.159.145"), netip.MustParseAddr("172.16.224.15")
	if p, ok := f.Classify(src, dst, 7, 1, 4096); !ok || p != PathDirect {
		t.Errorf("Classify = %s %v, want direct", p, ok)
	}
	if _, ok := f.Classify(src, dst, 8, 1, 4096); ok {
		t.Error("Classify matched another ICMP id")
	}
	if _, ok := f.Classify(dst, src, 7, 1, 4096); ok {
		t.Error("Classify matched the reverse direction")
	}
}

func TestDecodeSeedVXLAN(t *testing.T) {
	caps := seedCaptures(t)["cross_subnet"]
	inner := ether(vtep1MAC, vtepN1MAC, EtherTypeIPv4, ipv4("172.16.159.145", "172.16.36.80", ProtoICMP, icmpEcho(8, 9, 3)))
	frame := ether(master1MAC, node1MAC, EtherTypeIPv4, ipv4("192.168.3.241", "192.168.32.105", ProtoUDP, udp(56247, 4789, vxlanHdr(4096, inner))))
	f, err := DecodeFrame(frame, 4789)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.String(); got != caps["eth0"] {
		t.Errorf("outer line\n  %s\nwant the seed's\n  %s", got, caps["eth0"])
	}
	lines := f.Lines()
	if len(lines) != 2 || !strings.HasPrefix(lines[1], caps["vxlan"]) {
		t.Errorf("Lines() = %q; want the outer line and the inner one starting %q", lines, caps["vxlan"])
	}
	if f.VXLAN == nil || f.VXLAN.VNI != 4096 || f.VXLAN.Flags != 0x08 || f.UDP.DstPort != 4789 || f.Inner == nil || f.Inner.Length != 98 {
		t.Errorf("decoded %+v / %+v / %+v", f.VXLAN, f.UDP, f.Inner)
	}
	src, dst := netip.MustParseAddr("172.16.159.145"), netip.MustParseAddr("172.16.36.80")
	if p, ok := f.Classify(src, dst, 9, 3, 4096); !ok || p != PathVXLAN {
		t.Errorf("Classify = %s %v, want vxlan", p, ok)
	}
	if _, ok := f.Classify(src, dst, 9, 3, 4097); ok {
		t.Error("Classify matched another VNI")
	}
	// On another port the payload is plain UDP.
	f2, err := DecodeFrame(frame, 8472)
	if err != nil {
		t.Fatal(err)
	}
	if f2.VXLAN != nil || f2.Inner != nil || !strings.HasSuffix(f2.String(), "192.168.3.241.56247 > 192.168.32.105.4789: UDP, length 106") {
		t.Errorf("as plain UDP: %s", f2)
	}
	if _, ok := f2.Classify(src, dst, 9, 3, 4096); ok {
		t.Error("Classify matched a frame not decoded as VXLAN")
	}
}

func TestDecodeOtherFrames(t *testing.T) {
	arp := ether(master1MAC, "ff:ff:ff:ff:ff:ff", EtherTypeARP, make([]byte, 28))
	f, err := DecodeFrame(arp, 4789)
	if err != nil {
		t.Fatal(err)
	}
	if f.String() != master1MAC+" > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42" || f.IPv4 != nil {
		t.Errorf("ARP: %s", f)
	}
	reply := ether(master2MAC, master1MAC, EtherTypeIPv4, ipv4("172.16.224.15", "172.16.159.145", ProtoICMP, icmpEcho(0, 7, 1)))
	f, err = DecodeFrame(reply, 4789)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(f.String(), "172.16.224.15 > 172.16.159.145: ICMP echo reply, id 7, seq 1, length 64") {
		t.Errorf("reply: %s", f)
	}
	if _, ok := f.Classify(netip.MustParseAddr("172.16.224.15"), netip.MustParseAddr("172.16.159.145"), 7, 1, 4096); ok {
		t.Error("Classify took a reply for a request")
	}
	tcp := ether(master1MAC, master2MAC, EtherTypeIPv4, ipv4("10.0.0.1", "10.0.0.2", 6, make([]byte, 20)))
	f, err = DecodeFrame(tcp, 4789)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(f.String(), "10.0.0.1 > 10.0.0.2: ip-proto-6 20") {
		t.Errorf("tcp: %s", f)
	}
	// A later fragment carries no transport header.
	frag := ipv4("10.0.0.1", "10.0.0.2", ProtoUDP, []byte{1, 2})
	binary.BigEndian.PutUint16(frag[6:], 0x0010)
	f, err = DecodeFrame(ether(master1MAC, master2MAC, EtherTypeIPv4, frag), 4789)
	if err != nil || f.UDP != nil {
		t.Errorf("fragment: %v %+v", err, f)
	}
	if f, err := DecodeFrame(ether(master1MAC, master2MAC, 0x88cc, nil), 4789); err != nil || !strings.Contains(f.String(), "Unknown (0x88cc)") {
		t.Errorf("LLDP: %v %v", f, err)
	}
}

func TestDecodeShortFrames(t *testing.T) {
	good := ether(master1MAC, node1MAC, EtherTypeIPv4, ipv4("192.168.3.241", "192.168.32.105", ProtoUDP,
		udp(1, 4789, vxlanHdr(4096, ether(vtep1MAC, vtepN1MAC, EtherTypeIPv4, ipv4("1.1.1.1", "2.2.2.2", ProtoICMP, icmpEcho(8, 1, 1)))))))
	// Every cut inside a known header is an error, never a panic.
	cuts := []int{0, 5, 13, 14, 20, 33, 34, 40, 41, 42, 49, 50, 55, 57, 63, 64, 70, 77, 83, 84, 91}
	for _, n := range cuts {
		_, err := DecodeFrame(good[:n], 4789)
		if !errors.Is(err, ErrShortFrame) {
			t.Errorf("frame cut at %d bytes: err %v, want ErrShortFrame", n, err)
		}
	}
	if _, err := DecodeFrame(good, 4789); err != nil {
		t.Fatalf("whole frame: %v", err)
	}
	bad := append([]byte(nil), good...)
	bad[14] = 0x41 // IHL 4: shorter than the minimum header
	if _, err := DecodeFrame(bad, 4789); !errors.Is(err, ErrShortFrame) {
		t.Errorf("IHL 4: %v", err)
	}
}

func FuzzDecodeFrame(f *testing.F) {
	f.Add(ether(master1MAC, master2MAC, EtherTypeIPv4, ipv4("1.2.3.4", "5.6.7.8", ProtoICMP, icmpEcho(8, 1, 1))), 4789)
	f.Add(ether(master1MAC, node1MAC, EtherTypeIPv4, ipv4("1.2.3.4", "5.6.7.8", ProtoUDP, udp(1, 4789, vxlanHdr(1, ether(vtep1MAC, vtepN1MAC, EtherTypeIPv4, nil))))), 4789)
	f.Fuzz(func(t *testing.T, b []byte, port int) {
		fr, err := DecodeFrame(b, port)
		if err != nil {
			if fr != nil {
				t.Fatal("frame returned with an error")
			}
			return
		}
		_ = fr.Lines()
		_, _ = fr.Classify(netip.IPv4Unspecified(), netip.IPv4Unspecified(), 0, 0, 0)
	})
}

func TestReportText(t *testing.T) {
	pods := []PodState{{Name: "a-pod-1", Node: "a", Address: "10.0.0.1"}, {Name: "b-pod-1", Node: "b", Address: "10.0.1.1"}}
	r := &LabReport{
		Topology: "t",
		VTEPs:    []VTEP{{Node: "a", Device: "vxlan.calico", Present: true, Address: netip.MustParsePrefix("10.0.0.0/32"), MAC: vtep1MAC, MTU: 1450}},
		Routes:   []NodeRoutes{{Node: "a", Lines: []string{"10.0.1.0        10.0.1.0        255.255.255.0   UG    0      0        0 vxlan.calico"}}},
		Matrix:   &PingMatrix{Pods: pods, Err: [][]string{{"", ""}, {"no echo reply", ""}}},
		Paths:    []PathCheck{{From: "a", To: "b", Expected: PathVXLAN, Observed: PathVXLAN, Lines: []string{"x"}}},
	}
	var b strings.Builder
	r.WriteText(&b)
	out := b.String()
	for _, want := range []string{"66:04:84:48:ab:6a", "vxlan.calico", "1/2 pings answered", "b-pod-1 -> a-pod-1: no echo reply", "a -> b: vxlan (planned vxlan) ok", "RESULT: FAILED"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if r.OK() {
		t.Error("OK with a failed ping")
	}
	r.Matrix.Err[1][0] = ""
	if !r.OK() {
		t.Error("not OK with every ping answered and the path as planned")
	}
	r.Paths[0].Observed = PathDirect
	if r.OK() {
		t.Error("OK with a path other than planned")
	}
	r.Paths[0].Observed = PathVXLAN
	r.Hosts = []HostCheck{{Pod: "a-pod-1", Node: "a", Host: "server", NATOutgoing: true, Err: "no echo reply"}}
	if r.OK() {
		t.Error("OK with a natOutgoing pod that could not reach a host")
	}
	r.Hosts[0].NATOutgoing = false
	if !r.OK() {
		t.Error("not OK although without natOutgoing the host cannot answer")
	}
	b.Reset()
	r.WriteText(&b)
	if !strings.Contains(b.String(), "a-pod-1 (a) -> server") || !strings.Contains(b.String(), "RESULT: ok") {
		t.Errorf("host section missing:\n%s", b.String())
	}
}
