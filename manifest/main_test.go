package manifest_test

import (
	"os"
	"testing"
)

// TestMain runs the test binary as a capability child (see
// caps_linux_test.go) when the parent test asked for one, else the tests.
func TestMain(m *testing.M) {
	if code, ok := capChildMain(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}
