// Command twill-cni is Twill's CNI plugin, installed as /opt/cni/bin/twill
// by `twill install-cni`. It is a separate, small binary so that ADD starts
// fast: it links the CNI libraries, netlink and the agent's socket client,
// never etcd or the CLI. See package cni.
package main

import "twill.dev/twill/cni"

func main() {
	cni.Main()
}
