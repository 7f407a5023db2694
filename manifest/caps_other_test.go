//go:build !linux

package manifest_test

// capChildMain has no capability children to run off Linux.
func capChildMain() (int, bool) { return 0, false }
