package cni

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/types"

	"twill.dev/twill/agentapi"
)

// Error codes the plugin reports (the "code" of the CNI error JSON). Codes
// below 100 are the CNI specification's; 100 and up are Twill's.
const (
	// CodeInvalidEnvironment: a CNI_* variable is missing or unusable.
	CodeInvalidEnvironment = types.ErrInvalidEnvironmentVariables // 4
	// CodeDecode: the network configuration is not valid JSON.
	CodeDecode = types.ErrDecodingFailure // 6
	// CodeInvalidConfig: a value in the network configuration is unusable.
	CodeInvalidConfig = types.ErrInvalidNetworkConfig // 7
	// CodeInvalidNetNS: CNI_NETNS cannot be opened.
	CodeInvalidNetNS = types.ErrInvalidNetNS // 8
	// CodeTryAgainLater: the agent or its datastore cannot be reached.
	CodeTryAgainLater = types.ErrTryAgainLater // 11
	// CodePluginNotAvailable: STATUS found the agent not ready, or no pool
	// with room.
	CodePluginNotAvailable = types.ErrPluginNotAvailable // 50
	// CodeInternal: anything else.
	CodeInternal = types.ErrInternal // 999

	// CodePoolExhausted: no pool usable by the node has a free address.
	CodePoolExhausted uint = 100
	// CodeAddressNotInPool: the requested address is outside every pool.
	CodeAddressNotInPool uint = 101
	// CodeAddressInUse: the requested address belongs to another pod.
	CodeAddressInUse uint = 102
	// CodeCheckFailed: CHECK found the attachment differing from what ADD
	// set up; the message names every difference.
	CodeCheckFailed uint = 103
)

// agentError turns an agent client error into a CNI error with the code
// that matches it. what says what the plugin was doing.
func agentError(what string, err error) *types.Error {
	msg := fmt.Sprintf("%s: %v", what, err)
	var ae *agentapi.Error
	switch {
	case errors.As(err, &ae):
		switch ae.Code {
		case agentapi.CodePoolExhausted:
			return types.NewError(CodePoolExhausted, msg, "add an IP pool or free addresses (twill ipam)")
		case agentapi.CodeNotInPool:
			return types.NewError(CodeAddressNotInPool, msg, "request an address inside an enabled IP pool")
		case agentapi.CodeAddressInUse:
			return types.NewError(CodeAddressInUse, msg, "request a free address, or delete the pod holding it")
		case agentapi.CodeUnavailable:
			return types.NewError(CodeTryAgainLater, msg, "the agent or its datastore is not ready; retry")
		case agentapi.CodeInvalid:
			return types.NewError(CodeInvalidConfig, msg, "")
		}
		return types.NewError(CodeInternal, msg, "")
	case errors.Is(err, agentapi.ErrAgentUnreachable):
		return types.NewError(CodeTryAgainLater, msg, "start the node agent (twill node run) or fix agentSocket")
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return types.NewError(CodeTryAgainLater, msg, "the agent did not answer in time; retry")
	}
	return types.NewError(CodeInternal, msg, "")
}

// isTimeout reports whether err is a network timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// internal wraps err as a CNI error with CodeInternal, unless it already
// is a CNI error.
func internal(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(CodeInternal, err.Error(), "")
}
