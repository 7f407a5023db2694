package cni

import (
	"testing"

	"twill.dev/twill/internal/depcheck"
)

// TestPluginSkipsNetHTTP keeps net/http (and with it crypto/tls, x509 and
// HTTP/2) out of the plugin: the plugin runs once per pod, and initialising
// and paging in those packages made up a measurable part of every ADD.
// agentapi's client speaks HTTP/1.1 on the agent's socket itself.
func TestPluginSkipsNetHTTP(t *testing.T) {
	deps := depcheck.Deps(t, "twill.dev/twill/cmd/twill-cni")
	for _, d := range depcheck.WithPrefix(deps, "net/http", "crypto/tls", "crypto/x509", "vendor/golang.org/x/net/http2") {
		t.Errorf("the plugin links %s", d)
	}
}
