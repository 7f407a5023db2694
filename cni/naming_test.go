package cni

import (
	"strings"
	"testing"
)

// The expected names were computed with sha1sum, e.g.
// printf default.nginx | sha1sum | cut -c1-11.
func TestHostVethName(t *testing.T) {
	for _, tc := range []struct {
		ns, pod, container, ifName, want string
	}{
		{"default", "nginx", "c1", "eth0", "calic440f455693"},
		{"kube-system", "coredns-5d78c9869d-x7bq2", "c2", "eth0", "cali7adb838bd47"},
		// The container ID does not matter when the pod is known: a new
		// sandbox of the same pod keeps its name, as in Calico.
		{"default", "nginx", "another-sandbox", "eth0", "calic440f455693"},
		// No Kubernetes arguments: the container ID names it.
		{"", "", "abc123containerid", "eth0", "cali7a6346e6749"},
		{"default", "", "abc123containerid", "eth0", "cali7a6346e6749"},
		// A second interface gets its own veth.
		{"default", "nginx", "c1", "net1", "califa8993bd678"},
	} {
		got := HostVethName(tc.ns, tc.pod, tc.container, tc.ifName)
		if got != tc.want {
			t.Errorf("HostVethName(%q, %q, %q, %q) = %q, want %q", tc.ns, tc.pod, tc.container, tc.ifName, got, tc.want)
		}
		if len(got) != 15 || !strings.HasPrefix(got, VethPrefix) {
			t.Errorf("%q is not cali + 11 characters (15 bytes, the kernel's limit)", got)
		}
	}
}
