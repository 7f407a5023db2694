package agent

import (
	"errors"
	"os"
	"runtime/debug"
	"testing"
)

// unsetEnv removes name from the environment for the test.
func unsetEnv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "") // restores the old value at the end
	if err := os.Unsetenv(name); err != nil {
		t.Fatal(err)
	}
}

func TestRunSetsMemoryLimit(t *testing.T) {
	unsetEnv(t, "GOMEMLIMIT")
	before := debug.SetMemoryLimit(-1)
	const limit = 123 << 20
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv; c.MemoryLimit = limit })
	h.start()
	if got := debug.SetMemoryLimit(-1); got != limit {
		t.Errorf("memory limit while the agent runs = %d, want %d", got, limit)
	}
	h.stop()
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("memory limit after the agent stopped = %d, want the previous %d back", got, before)
	}
}

func TestGOMEMLIMITWinsOverMemoryLimit(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "off")
	before := debug.SetMemoryLimit(-1)
	h := newHarness(t, nil, func(c *Config) { c.Getenv = seedEnv; c.MemoryLimit = 99 << 20 })
	h.start()
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("memory limit with GOMEMLIMIT set = %d, want the runtime's own %d", got, before)
	}
}

func TestNegativeMemoryLimitIsAConfigError(t *testing.T) {
	err := Config{NodeName: "n1", MemoryLimit: -1}.Check()
	if !errors.Is(err, ErrConfig) {
		t.Errorf("Check with a negative memory limit = %v, want ErrConfig", err)
	}
	if err := (Config{NodeName: "n1", MemoryLimit: DefaultMemoryLimit}).Check(); err != nil {
		t.Errorf("Check with the default memory limit = %v", err)
	}
}
