// Package seedtest reads the reference cluster, plan/testdata/seed-cluster.yaml,
// for tests: its pool, VXLAN settings, nodes with their pods, and what was
// observed on the real cluster (VTEPs, `route -n` tables, packet captures).
package seedtest

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// File is the seed's path from the module root.
const File = "plan/testdata/seed-cluster.yaml"

// Cluster is the part of the seed file tests use.
type Cluster struct {
	Pools    []Pool   `json:"pools"`
	VXLAN    VXLAN    `json:"vxlan"`
	Nodes    []Node   `json:"nodes"`
	Observed Observed `json:"observed"`
}

// Pool is one IP pool of the seed.
type Pool struct {
	Name        string   `json:"name"`
	CIDR        string   `json:"cidr"`
	BlockSize   int      `json:"blockSize"`
	IPIPMode    string   `json:"ipipMode"`
	VXLANMode   string   `json:"vxlanMode"`
	NATOutgoing bool     `json:"natOutgoing"`
	Selector    string   `json:"nodeSelector"`
	AllowedUses []string `json:"allowedUses"`
}

// VXLAN is the seed's VXLAN device settings.
type VXLAN struct {
	Device string `json:"device"`
	VNI    int    `json:"vni"`
	Port   int    `json:"port"`
	MTU    int    `json:"mtu"`
}

// Node is one seed node with its block and its pods' addresses.
type Node struct {
	Name    string   `json:"name"`
	Address string   `json:"address"`
	Block   string   `json:"block"`
	Pods    []string `json:"pods"`
}

// Observed is what the seed saw on the real cluster.
type Observed struct {
	VTEPs map[string]VTEP `json:"vteps"`
	// RouteN is each node's `route -n` output.
	RouteN map[string]string `json:"route_n"`
	// Captures are tcpdump -nne lines of one ping, by path kind
	// (same_subnet, cross_subnet).
	Captures map[string]Capture `json:"captures"`
}

// VTEP is a node's observed VXLAN device.
type VTEP struct {
	Address string `json:"address"`
	MAC     string `json:"mac"`
	MTU     int    `json:"mtu"`
}

// Capture is the line one ping left on each interface it crossed.
type Capture struct {
	PodIface string `json:"pod_iface"`
	VXLAN    string `json:"vxlan"`
	ETH0     string `json:"eth0"`
}

// Path returns the seed file's path, found by walking up from the working
// directory (a package directory under go test) to the module root.
func Path() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, File), nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory: run from inside the module to find %s", File)
		}
		dir = parent
	}
}

// Load reads the seed and fails the test unless it holds what the tests
// rely on: 4 nodes, 1 pool, 4 `route -n` tables and 2 captures.
func Load(t testing.TB) *Cluster {
	t.Helper()
	p, err := Path()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var s Cluster
	if err := yaml.Unmarshal(b, &s); err != nil {
		t.Fatalf("parse %s: %v", p, err)
	}
	if len(s.Nodes) != 4 || len(s.Pools) != 1 || len(s.Observed.RouteN) != 4 || len(s.Observed.Captures) != 2 {
		t.Fatalf("%s parsed to %d nodes, %d pools, %d route tables, %d captures; want 4, 1, 4, 2",
			p, len(s.Nodes), len(s.Pools), len(s.Observed.RouteN), len(s.Observed.Captures))
	}
	return &s
}

// PodName names a seed node's i-th pod (from 0), as the seed's tests do.
func PodName(node string, i int) string { return fmt.Sprintf("%s-pod-%d", node, i) }

// CaliName is the host-side veth name of pod default/<pod>, derived as the
// reference derives it.
func CaliName(pod string) string {
	sum := sha1.Sum([]byte("default." + pod))
	return "cali" + hex.EncodeToString(sum[:])[:11]
}
