// Package nettest builds throw-away network namespaces for privileged
// tests: named namespaces (prefix "tw"), veth pairs, bridges, addresses and
// routes, all created through netlink handles opened in the target
// namespace, and all removed by t.Cleanup whether the test passes or not.
// Nothing is ever added to the caller's own namespace.
//
// RequireRoot and Eventually build on every platform; the rest is Linux
// only.
package nettest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// RequireRoot skips the test unless it runs as root with network
// namespaces available and each of tools (commands such as "ip" or
// "bridge") on PATH; under CI=true it fails instead of skipping.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces"
	} else if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		why = "network namespaces are not available: " + err.Error()
	} else {
		for _, tool := range tools {
			if _, err := exec.LookPath(tool); err != nil {
				why = fmt.Sprintf("needs the %s command (iproute2) on PATH: %v", tool, err)
				break
			}
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI=true requires this test to run", why)
	}
	t.Skip(why)
}

// Eventually polls cond every interval until it returns true or timeout
// passes, then fails the test with what cond last reported.
func Eventually(t testing.TB, timeout, interval time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s: %s", what, timeout, last)
		}
		time.Sleep(interval)
	}
}
