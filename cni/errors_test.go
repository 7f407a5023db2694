package cni

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"twill.dev/twill/agentapi"
)

func TestAgentErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code uint
	}{
		{&agentapi.Error{Code: agentapi.CodePoolExhausted, Message: "no room"}, CodePoolExhausted},
		{&agentapi.Error{Code: agentapi.CodeNotInPool, Message: "outside"}, CodeAddressNotInPool},
		{&agentapi.Error{Code: agentapi.CodeAddressInUse, Message: "taken"}, CodeAddressInUse},
		{&agentapi.Error{Code: agentapi.CodeUnavailable, Message: "etcd down"}, CodeTryAgainLater},
		{&agentapi.Error{Code: agentapi.CodeInvalid, Message: "bad ip"}, CodeInvalidConfig},
		{&agentapi.Error{Code: agentapi.CodeInternal, Message: "oops"}, CodeInternal},
		{&agentapi.Error{Code: "something-new", Message: "?"}, CodeInternal},
		{fmt.Errorf("wrapped: %w", &agentapi.Error{Code: agentapi.CodePoolExhausted}), CodePoolExhausted},
		{fmt.Errorf("slow: %w", context.DeadlineExceeded), CodeTryAgainLater},
		{errors.New("decode failure"), CodeInternal},
	} {
		got := agentError("allocate", tc.err)
		if got.Code != tc.code {
			t.Errorf("agentError(%v) code %d, want %d", tc.err, got.Code, tc.code)
		}
		if !strings.Contains(got.Msg, "allocate") || !strings.Contains(got.Msg, tc.err.Error()) {
			t.Errorf("message %q should say what failed and why (%v)", got.Msg, tc.err)
		}
	}
	if CodePoolExhausted != 100 || CodeAddressNotInPool != 101 || CodeAddressInUse != 102 {
		t.Errorf("plugin codes moved: %d %d %d; they are part of the plugin's interface", CodePoolExhausted, CodeAddressNotInPool, CodeAddressInUse)
	}
}

// TestUnreachableAgent uses a real client against a socket nobody serves:
// the error is "try again later" and names the socket.
func TestUnreachableAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	c := agentapi.NewClient(sock, time.Second)
	_, err := c.Allocate(context.Background(), agentapi.AllocateRequest{ContainerID: "c", IfName: "eth0"})
	if err == nil {
		t.Fatal("allocate against no agent succeeded")
	}
	got := agentError("allocate", err)
	if got.Code != CodeTryAgainLater {
		t.Errorf("code %d, want %d", got.Code, CodeTryAgainLater)
	}
	if !strings.Contains(got.Msg, sock) {
		t.Errorf("message %q does not name the socket %s", got.Msg, sock)
	}
}
