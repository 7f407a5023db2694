//go:build !linux

package cni

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// errLinuxOnly answers ADD, DEL and CHECK off Linux.
var errLinuxOnly = types.NewError(CodeInternal, "the twill CNI plugin plumbs pods on Linux only", "")

func cmdAdd(*skel.CmdArgs) error   { return errLinuxOnly }
func cmdDel(*skel.CmdArgs) error   { return errLinuxOnly }
func cmdCheck(*skel.CmdArgs) error { return errLinuxOnly }
