package cni

import (
	"crypto/sha1"
	"encoding/hex"
)

// VethPrefix starts every host-side veth name.
const VethPrefix = "cali"

// DefaultIfName is the usual pod interface (CNI_IFNAME).
const DefaultIfName = "eth0"

// HostVethName is the host side of a pod's veth: "cali" and the first 11
// hex characters of sha1("<namespace>.<pod>"), as Calico names it. Without
// a namespace and pod name (a runtime that is not Kubernetes), the hash is
// of the container ID. An interface other than eth0 (a second network) adds
// "." and its name to the hashed text, so that it gets its own veth.
func HostVethName(namespace, pod, containerID, ifName string) string {
	seed := containerID
	if namespace != "" && pod != "" {
		seed = namespace + "." + pod
	}
	if ifName != "" && ifName != DefaultIfName {
		seed += "." + ifName
	}
	sum := sha1.Sum([]byte(seed))
	return VethPrefix + hex.EncodeToString(sum[:])[:11]
}

// aliasPrefix + handle is the alias (IFLA_IFALIAS) of a host-side veth: it
// tells DEL which attachment the veth belongs to, so that DEL of an old
// sandbox never deletes the veth of a newer sandbox of the same pod.
const aliasPrefix = "twill:"

// vethAlias is the alias a host-side veth of handle carries.
func vethAlias(handle string) string { return aliasPrefix + handle }
