package agent

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"twill.dev/twill/api"
	"twill.dev/twill/bench"
	"twill.dev/twill/datastore"
	"twill.dev/twill/plan"
)

// blockDocs are stored block documents, valid and not, that decodeBlock
// must read exactly as encoding/json reads them into api.Block.
var blockDocs = []string{
	`{"cidr":"10.0.0.0/26","affinity":"a"}`,
	`{"apiVersion":"twill.dev/v1","kind":"IPAMBlock","cidr":"10.0.0.0/26","affinity":"a","pinned":true,"allocations":[` +
		`{"ordinal":0,"handle":"h0","use":"Tunnel","attrs":{"node":"a"}},` +
		`{"ordinal":1,"handle":"h1","use":"Workload","attrs":{"node":"b","namespace":"default","pod":"p"}},` +
		`{"ordinal":2,"handle":"h2","attrs":{"pod":"q"}},` +
		`{"ordinal":99,"handle":"h99","attrs":{"node":"c"}}]}`,
	`{"cidr":"10.0.0.64/26","allocations":[{"ordinal":3,"handle":"x","attrs":{"node":"b"}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":null}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"handle":null,"use":null,"attrs":null}]}`,
	` { "cidr" : "10.0.0.0/26" , "affinity" : "a" , "allocations" : [ { "ordinal" : 1 , "attrs" : { "pod" : "p" , "node" : "b" } } ] } `,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"node":"b","node":"a"}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"node":"b","node":null}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"no\u0064e":"b"}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"node":"b\"\\\u00e9"}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"Node":"b"}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"node":"b"},"attrs":{"pod":"p"}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"node":"b"},"attrs":null}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{}}],"extra":{"x":[1,2]}}`,
	`{"cidr":"not a cidr","affinity":"a","allocations":[{"ordinal":1,"attrs":{"node":"b"}}]}`,
	// Not api.Block documents: each must be rejected.
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"node":"b","pod":7}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"pod":{"x":"y"}}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"pod":["x"]}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":{"pod":true}}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":["node","b"]}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"attrs":"b"}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"handle":5}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":1,"use":false}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":[{"ordinal":"1"}]}`,
	`{"cidr":"10.0.0.0/26","affinity":"a","allocations":{"ordinal":1}}`,
	`{"cidr":7}`,
	`{"cidr":"10.0.0.0/26","pinned":"yes"}`,
	`{"kind":1,"cidr":"10.0.0.0/26"}`,
	`{"cidr":"10.0.0.0/26","allocations":[{"ordinal":1,"attrs":{"node":"b"}}`,
	`[]`,
	`null`,
	``,
}

// wantBlock is what the cache should keep of doc, computed from the full
// api.Block: an error exactly when api.Block rejects doc.
func wantBlock(doc []byte) (cachedBlock, error) {
	var b api.Block
	if err := json.Unmarshal(doc, &b); err != nil {
		return cachedBlock{}, err
	}
	cb := cachedBlock{cidr: b.CIDR, affinity: b.Affinity, pinned: b.Pinned, used: len(b.Allocations)}
	if p, err := b.Prefix(); err == nil {
		cb.prefix = p
	}
	for _, a := range b.Allocations {
		if n := a.Attrs[api.AttrNode]; n != "" && n != b.Affinity {
			cb.borrowed = append(cb.borrowed, api.Allocation{Ordinal: a.Ordinal, Handle: a.Handle, Use: a.Use,
				Attrs: map[string]string{api.AttrNode: n}})
		}
	}
	return cb, nil
}

func checkDecodeBlock(t *testing.T, doc []byte) {
	t.Helper()
	want, werr := wantBlock(doc)
	got, err := decodeBlock(datastore.KV{Kind: datastore.KindBlock, Name: datastore.BlockName("10.0.0.0/26"), Value: doc})
	switch {
	case werr != nil && err == nil:
		t.Errorf("decodeBlock(%s) = %+v, want an error as api.Block gives (%v)", doc, got, werr)
	case werr == nil && err != nil:
		t.Errorf("decodeBlock(%s): %v; api.Block reads it", doc, err)
	case werr == nil && !reflect.DeepEqual(got, want):
		t.Errorf("decodeBlock(%s) = %+v, want %+v", doc, got, want)
	}
}

func TestDecodeBlockReadsAsAPIBlock(t *testing.T) {
	for i, doc := range blockDocs {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkDecodeBlock(t, []byte(doc)) })
	}
	// The documents IPAM writes.
	for _, b := range bench.ScaleCluster("local", 3, 5).Blocks {
		doc, err := datastore.Encode(b)
		if err != nil {
			t.Fatal(err)
		}
		checkDecodeBlock(t, doc)
	}
}

func FuzzDecodeBlock(f *testing.F) {
	for _, doc := range blockDocs {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, doc []byte) { checkDecodeBlock(t, doc) })
}

// TestPlanFromCompactBlocks checks that the cache's block summaries plan
// exactly what the full blocks plan: the local block, remote blocks,
// addresses borrowed by peers, by the local node, by unknown nodes and
// outside their block, and an unclaimed block.
func TestPlanFromCompactBlocks(t *testing.T) {
	cl := bench.ScaleCluster("local", 6, 3)
	borrow := func(b *api.Block, ord int, node string) {
		b.Allocations = append(b.Allocations, api.Allocation{Ordinal: ord, Handle: fmt.Sprintf("b%d.eth0", ord), Use: api.UseWorkload,
			Attrs: map[string]string{api.AttrNode: node, api.AttrPod: "p"}})
	}
	borrow(&cl.Blocks[1], 40, "node-00002")  // a direct peer's address in another's block
	borrow(&cl.Blocks[2], 41, "node-00003")  // over VXLAN
	borrow(&cl.Blocks[3], 42, "local")       // the local node's, routed by its workload
	borrow(&cl.Blocks[4], 43, "node-09999")  // an unknown node
	borrow(&cl.Blocks[5], 200, "node-00001") // outside the block
	unclaimed := api.Block{CIDR: bench.ScaleBlock(20).String()}
	borrow(&unclaimed, 5, "node-00004")
	borrow(&unclaimed, 6, "node-00005")
	cl.Blocks = append(cl.Blocks, unclaimed)

	c := newCache("local", nil)
	fillCache(c, clusterKVs(t, cl))
	vx := plan.VXLANConfig{}
	got := plan.Plan(planInput(c, vx))
	full := cl.Input(vx)
	full.Pools[0].Default()
	want := plan.Plan(full)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("plan from the cache differs from the plan of the full blocks:\n got %+v\nwant %+v", got, want)
	}
	kinds := map[plan.RouteKind]int{}
	for _, r := range got.Routes {
		kinds[r.Kind]++
	}
	if kinds[plan.KindBorrowDirect] != 2 || kinds[plan.KindBorrowVXLAN] != 2 {
		t.Errorf("borrowed routes: %d direct, %d VXLAN; want 2 and 2 (routes %v)", kinds[plan.KindBorrowDirect], kinds[plan.KindBorrowVXLAN], got.Routes)
	}
	if len(got.Status) == 0 {
		t.Errorf("no status notes for the unknown borrower and the ordinal outside its block")
	}
	// The cache keeps only the borrowed allocations.
	if n := len(c.blocks[datastore.BlockName(cl.Blocks[1].CIDR)].borrowed); n != 1 {
		t.Errorf("block 1 keeps %d allocations, want only its borrowed one", n)
	}
	if b := c.blocks[datastore.BlockName(cl.Blocks[1].CIDR)]; b.used != len(cl.Blocks[1].Allocations) {
		t.Errorf("block 1 counts %d used addresses, want %d", b.used, len(cl.Blocks[1].Allocations))
	}
}

// clusterKVs is a bench cluster as the datastore holds it: its pool, nodes,
// blocks and workload endpoints.
func clusterKVs(t testing.TB, cl *bench.Cluster) []datastore.KV {
	t.Helper()
	kvs := []datastore.KV{objKV(t, datastore.KindIPPool, cl.Pool.Metadata.Name, cl.Pool)}
	for _, n := range cl.Nodes {
		kvs = append(kvs, objKV(t, datastore.KindNode, n.Metadata.Name, n))
	}
	for _, b := range cl.Blocks {
		kvs = append(kvs, objKV(t, datastore.KindBlock, datastore.BlockName(b.CIDR), b))
	}
	for _, w := range cl.Workloads {
		kvs = append(kvs, objKV(t, datastore.KindWorkload, w.Spec.Handle, w))
	}
	return kvs
}
