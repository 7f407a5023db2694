package lab

import (
	"net/netip"
	"testing"
)

func TestChecksumOfEchoRequest(t *testing.T) {
	m := echoRequest(0x1234, 7)
	if len(m) != 8+PingPayload {
		t.Fatalf("request is %d bytes, want %d", len(m), 8+PingPayload)
	}
	if checksum(m) != 0 {
		t.Error("the checksum over a request with its checksum field is not zero")
	}
	if m[0] != 8 || m[4] != 0x12 || m[5] != 0x34 || m[7] != 7 {
		t.Errorf("header % x", m[:8])
	}
}

func TestMatchReply(t *testing.T) {
	dst := netip.MustParseAddr("172.16.36.80")
	reply := ipv4("172.16.36.80", "172.16.159.145", ProtoICMP, icmpEcho(0, 5, 2))
	if matchReply(reply, dst, 5, 2) != replyEcho {
		t.Error("our reply not recognised")
	}
	if matchReply(reply, dst, 5, 3) != replyOther || matchReply(reply, dst, 6, 2) != replyOther {
		t.Error("a reply with another id or seq was taken")
	}
	if matchReply(reply, netip.MustParseAddr("172.16.36.81"), 5, 2) != replyOther {
		t.Error("a reply from another address was taken")
	}
	// Destination unreachable quoting our request.
	orig := ipv4("172.16.159.145", "172.16.36.80", ProtoICMP, icmpEcho(8, 5, 2))[:28]
	unreach := append([]byte{3, 1, 0, 0, 0, 0, 0, 0}, orig...)
	if got := matchReply(ipv4("192.168.3.130", "172.16.159.145", ProtoICMP, unreach), dst, 5, 2); got != replyError {
		t.Errorf("unreachable: %v, want replyError", got)
	}
	for n := range 48 {
		_ = matchReply(reply[:n], dst, 5, 2) // never panics on short input
	}
}
