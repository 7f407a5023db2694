package api

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const twillDocs = `# Twill resources for the reference cluster.
---
apiVersion: twill.dev/v1
kind: IPPool
metadata:
  name: default-ipv4-ippool
  labels: {tier: pods}
spec:
  cidr: 172.16.0.0/16
  vxlanMode: CrossSubnet
  natOutgoing: true
---
---
# only a comment
---
apiVersion: twill.dev/v1
kind: Node
metadata:
  name: k8s-master1
spec:
  address: 192.168.3.241/24
  interface: eth0
  mtu: 1500
  vtepMAC: "66:04:84:48:ab:6a"
  tunnelAddress: 172.16.159.128
`

func TestDecodeDocumentsYAML(t *testing.T) {
	for _, tc := range []struct{ name, input string }{
		{"LF", twillDocs},
		{"CRLF", strings.ReplaceAll(twillDocs, "\n", "\r\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := DecodeDocuments([]byte(tc.input))
			if err != nil {
				t.Fatalf("DecodeDocuments: %v", err)
			}
			if len(docs) != 2 {
				t.Fatalf("got %d documents, want 2", len(docs))
			}
			want := seedPool()
			want.Metadata.Labels = map[string]string{"tier": "pods"}
			d := docs[0]
			if d.Index != 1 || d.Kind != KindIPPool || d.Source != Version || d.Node != nil || d.Pool == nil || len(d.Warnings) != 0 {
				t.Fatalf("document 1 = %+v", d)
			}
			if !reflect.DeepEqual(*d.Pool, want) {
				t.Errorf("pool = %+v\nwant   %+v", *d.Pool, want)
			}
			d = docs[1]
			if d.Index != 2 || d.Kind != KindNode || d.Pool != nil || d.Node == nil || len(d.Warnings) != 0 {
				t.Fatalf("document 2 = %+v", d)
			}
			if !reflect.DeepEqual(*d.Node, seedNode()) {
				t.Errorf("node = %+v\nwant   %+v", *d.Node, seedNode())
			}
		})
	}
}

func TestDecodeDocumentsJSON(t *testing.T) {
	object := `{"apiVersion": "twill.dev/v1", "kind": "IPPool",
		"metadata": {"name": "p1"}, "spec": {"cidr": "10.1.0.0/16", "blockSize": 28}}`
	docs, err := DecodeDocuments([]byte(object))
	if err != nil {
		t.Fatalf("object: %v", err)
	}
	if len(docs) != 1 || docs[0].Pool == nil || docs[0].Pool.Spec.BlockSize != 28 || docs[0].Pool.Spec.VXLANMode != EncapNever {
		t.Fatalf("object decoded as %+v", docs)
	}

	array := `[
	{"apiVersion": "twill.dev/v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"address": "10.0.0.1/24"}},
	{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "c1", "uid": "x"},
	 "spec": {"cidr": "10.2.0.0/16", "vxlanMode": "always"}}
]`
	docs, err = DecodeDocuments([]byte(array))
	if err != nil {
		t.Fatalf("array: %v", err)
	}
	if len(docs) != 2 || docs[0].Index != 1 || docs[0].Node == nil || docs[0].Node.Metadata.Name != "n1" ||
		docs[1].Index != 2 || docs[1].Pool == nil || docs[1].Pool.Spec.VXLANMode != EncapAlways || docs[1].Source != CalicoVersion {
		t.Fatalf("array decoded as %+v", docs)
	}

	// A YAML list of resources is read the same way.
	docs, err = DecodeDocuments([]byte("- apiVersion: twill.dev/v1\n  kind: Node\n  metadata: {name: a}\n  spec: {address: 10.0.0.1/24}\n" +
		"- apiVersion: twill.dev/v1\n  kind: Node\n  metadata: {name: b}\n  spec: {address: 10.0.0.2/24}\n"))
	if err != nil || len(docs) != 2 || docs[1].Index != 2 || docs[1].Node.Metadata.Name != "b" {
		t.Fatalf("YAML list decoded as %+v, %v", docs, err)
	}
}

// decodeErr decodes input, expects a *DecodeError and returns it.
func decodeErr(t *testing.T, input string) *DecodeError {
	t.Helper()
	docs, err := DecodeDocuments([]byte(input))
	if err == nil {
		t.Fatalf("decoded %+v, want an error", docs)
	}
	if docs != nil {
		t.Errorf("documents returned with an error: %+v", docs)
	}
	var de *DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("got %T %v, want *DecodeError", err, err)
	}
	return de
}

func TestDecodeStrictUnknownField(t *testing.T) {
	input := `apiVersion: twill.dev/v1
kind: IPPool
metadata: {name: ok}
spec: {cidr: 10.0.0.0/16}
---
apiVersion: twill.dev/v1
kind: IPPool
metadata:
  name: foo
spec:
  cidr: 10.1.0.0/16
  blocksize: 24
`
	de := decodeErr(t, input)
	if de.Index != 2 || de.Kind != KindIPPool || de.Name != "foo" {
		t.Errorf("DecodeError = %+v, want document 2 IPPool foo", de)
	}
	var ue *UnknownFieldError
	if !errors.As(de, &ue) || ue.Path != "spec.blocksize" || ue.Suggestion != "spec.blockSize" {
		t.Fatalf("got %v, want unknown field spec.blocksize suggesting spec.blockSize", de.Err)
	}
	want := `document 2 (IPPool "foo"): unknown field "spec.blocksize" (did you mean "spec.blockSize"?)`
	if de.Error() != want {
		t.Errorf("message = %q\nwant      %q", de.Error(), want)
	}

	tests := []struct {
		name, input, path string
		index             int
	}{
		{"metadata field", "apiVersion: twill.dev/v1\nkind: Node\nmetadata: {name: node1, uid: abc}\nspec: {address: 10.0.0.1/24}\n", "metadata.uid", 1},
		{"top-level field", "apiVersion: twill.dev/v1\nkind: Node\nmetadata: {name: node1}\nstatus: {}\n", "status", 1},
		{"node spec field", "apiVersion: twill.dev/v1\nkind: Node\nmetadata: {name: node1}\nspec: {addr: 10.0.0.1/24}\n", "spec.addr", 1},
		{"in a JSON array", `[{"apiVersion":"twill.dev/v1","kind":"Node","metadata":{"name":"a"}},
			{"apiVersion":"twill.dev/v1","kind":"Node","metadata":{"name":"b"},"spec":{"vtepMac":"x"}}]`, "spec.vtepMac", 2},
		{"calico-only field in a twill document", "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16, disableBGPExport: true}\n", "spec.disableBGPExport", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			de := decodeErr(t, tt.input)
			var ue *UnknownFieldError
			if !errors.As(de, &ue) || ue.Path != tt.path || de.Index != tt.index {
				t.Errorf("got %v, want unknown field %s in document %d", de, tt.path, tt.index)
			}
		})
	}
}

func TestDecodeFieldTypes(t *testing.T) {
	tests := []struct {
		name, spec, path, got, want string
	}{
		{"quoted block size", `{cidr: 10.0.0.0/16, blockSize: "26"}`, "spec.blockSize", "a string", "an integer"},
		{"fractional block size", `{cidr: 10.0.0.0/16, blockSize: 26.5}`, "spec.blockSize", "26.5", "an integer that fits in 64 bits"},
		{"string bool", `{cidr: 10.0.0.0/16, natOutgoing: "true"}`, "spec.natOutgoing", "a string", "a boolean (true or false)"},
		{"number as cidr", `{cidr: 10}`, "spec.cidr", "a number", "a string"},
		{"uses not a list", `{cidr: 10.0.0.0/16, allowedUses: Workload}`, "spec.allowedUses", "a string", "a list"},
		{"use not a string", `{cidr: 10.0.0.0/16, allowedUses: [Workload, 3]}`, "spec.allowedUses[1]", "a number", "a string"},
		{"spec not an object", `[1]`, "spec", "a list", "an object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			de := decodeErr(t, "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: "+tt.spec+"\n")
			var fe *FieldTypeError
			if !errors.As(de, &fe) || fe.Path != tt.path || fe.Got != tt.got || fe.Want != tt.want {
				t.Errorf("got %v, want %s: got %s, want %s", de, tt.path, tt.got, tt.want)
			}
		})
	}
	// A label value that YAML reads as a number must be quoted.
	de := decodeErr(t, "apiVersion: twill.dev/v1\nkind: Node\nmetadata: {name: node1, labels: {rack: 12}}\nspec: {address: 10.0.0.1/24}\n")
	var fe *FieldTypeError
	if !errors.As(de, &fe) || fe.Path != "metadata.labels.rack" || !strings.Contains(de.Error(), "quote the value") {
		t.Errorf("numeric label: %v", de)
	}
	// YAML 1.1 reads an unquoted n, no, off... as a boolean.
	de = decodeErr(t, "apiVersion: twill.dev/v1\nkind: Node\nmetadata: {name: no}\nspec: {address: 10.0.0.1/24}\n")
	if !errors.As(de, &fe) || fe.Path != "metadata.name" || fe.Got != "a boolean" || !strings.Contains(de.Error(), "quote the value") {
		t.Errorf("boolean-looking name: %v", de)
	}
}

func TestDecodeSyntaxErrors(t *testing.T) {
	input := `apiVersion: twill.dev/v1
kind: Node
metadata: {name: a}
spec: {address: 10.0.0.1/24}
---
apiVersion: twill.dev/v1
kind: Node
metadata:
  name: b
 spec: {address: 10.0.0.2/24}
`
	de := decodeErr(t, input)
	var se *SyntaxError
	if !errors.As(de, &se) || se.Format != "YAML" || de.Index != 2 {
		t.Fatalf("got %v, want a YAML syntax error in document 2", de)
	}
	// The parser's line numbers count from the start of the input: it
	// reports the mapping at line 9 ("name: b"), which is line 4 of the
	// second document on its own.
	if !strings.Contains(de.Error(), "line 9:") {
		t.Errorf("message %q does not point at line 9", de)
	}

	for name, in := range map[string]string{
		"duplicate YAML key":   "apiVersion: twill.dev/v1\nkind: Node\nkind: IPPool\n",
		"unclosed flow":        "apiVersion: twill.dev/v1\nkind: Node\nmetadata: {name: a\n",
		"tab indentation":      "apiVersion: twill.dev/v1\nmetadata:\n\tname: a\n",
		"duplicate JSON key":   `{"apiVersion": "twill.dev/v1", "kind": "Node", "kind": "Node"}`,
		"JSON nested too deep": strings.Repeat("[", 200) + strings.Repeat("]", 200),
	} {
		t.Run(name, func(t *testing.T) {
			de := decodeErr(t, in)
			if !errors.As(de, &se) || de.Index != 1 {
				t.Errorf("got %v, want a syntax error in document 1", de)
			}
		})
	}
}

func TestDecodeUnsupported(t *testing.T) {
	tests := []struct{ name, input, apiVersion, kind string }{
		{"kubernetes kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "v1", "ConfigMap"},
		{"calico node", "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: x}\n", CalicoVersion, "Node"},
		{"twill kind not read from files", "apiVersion: twill.dev/v1\nkind: IPAMBlock\ncidr: 10.0.0.0/26\n", Version, KindBlock},
		{"kind in the wrong case", "apiVersion: twill.dev/v1\nkind: ippool\n", Version, "ippool"},
		{"calico crd group", "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\n", "crd.projectcalico.org/v1", KindIPPool},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			de := decodeErr(t, tt.input)
			var ue *UnsupportedKindError
			if !errors.As(de, &ue) || ue.APIVersion != tt.apiVersion || ue.Kind != tt.kind {
				t.Fatalf("got %v, want unsupported %s %s", de, tt.apiVersion, tt.kind)
			}
			for _, s := range []string{Version, CalicoVersion, KindIPPool, KindNode} {
				if !strings.Contains(de.Error(), s) {
					t.Errorf("message %q does not list %s", de, s)
				}
			}
		})
	}
	for name, in := range map[string]string{
		"no apiVersion":      "kind: IPPool\nmetadata: {name: p}\n",
		"no kind":            "apiVersion: twill.dev/v1\nmetadata: {name: p}\n",
		"scalar document":    "just some text\n",
		"apiVersion numeric": "apiVersion: 1\nkind: IPPool\n",
	} {
		t.Run(name, func(t *testing.T) {
			de := decodeErr(t, in)
			if de.Index != 1 {
				t.Errorf("index %d, want 1", de.Index)
			}
		})
	}
}

// calicoManifest is what `calicoctl get ippool -o yaml` prints for pools
// like the reference cluster's, plus a second pool using Calico-only fields.
const calicoManifest = `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  creationTimestamp: "2022-03-10T08:41:27Z"
  name: default-ipv4-ippool
  resourceVersion: "1136"
  uid: 5bbd0a73-1b55-4d8e-9f27-8a1f3bb0d8a4
spec:
  allowedUses:
  - Workload
  - Tunnel
  blockSize: 26
  cidr: 172.16.0.0/16
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: CrossSubnet
  assignmentMode: Automatic
  disableBGPExport: false
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack-b
  labels:
    rack: b
  annotations:
    projectcalico.org/metadata: '{"creationTimestamp":null}'
  generation: 3
  managedFields: []
spec:
  cidr: fd00:10::/48
  vxlanMode: always
  ipipMode: NEVER
  disabled: true
  nodeSelector: rack == "b"
  allowedUses: [workload]
  disableBGPExport: true
  assignmentMode: Manual
  disableIPFragmentation: true
`

func TestDecodeCalicoPools(t *testing.T) {
	docs, err := DecodeDocuments([]byte(calicoManifest))
	if err != nil {
		t.Fatalf("DecodeDocuments: %v", err)
	}
	if len(docs) != 2 {
		t.Fatalf("got %d documents, want 2", len(docs))
	}
	d := docs[0]
	if d.Kind != KindIPPool || d.Source != CalicoVersion || d.Pool == nil {
		t.Fatalf("document 1 = %+v", d)
	}
	if !reflect.DeepEqual(*d.Pool, seedPool()) {
		t.Errorf("pool = %+v\nwant   %+v", *d.Pool, seedPool())
	}
	if len(d.Warnings) != 0 {
		t.Errorf("Calico-only fields at their defaults warn: %v", d.Warnings)
	}
	if err := d.Pool.Validate(); err != nil {
		t.Errorf("converted seed pool invalid: %v", err)
	}

	d = docs[1]
	want := IPPool{
		Metadata: ObjectMeta{Name: "rack-b", Labels: map[string]string{"rack": "b"}},
		Spec: IPPoolSpec{
			CIDR: "fd00:10::/48", VXLANMode: EncapAlways, IPIPMode: EncapNever, Disabled: true,
			NodeSelector: `rack == "b"`, AllowedUses: []IPPoolUse{UseWorkload},
		},
	}
	want.Default()
	if !reflect.DeepEqual(*d.Pool, want) {
		t.Errorf("pool = %+v\nwant   %+v", *d.Pool, want)
	}
	if d.Pool.Spec.BlockSize != DefaultBlockSizeIPv6 {
		t.Errorf("IPv6 block size %d", d.Pool.Spec.BlockSize)
	}
	wantWarn := []string{"spec.assignmentMode", "spec.disableBGPExport", "spec.disableIPFragmentation"}
	if len(d.Warnings) != len(wantWarn) {
		t.Fatalf("warnings %q, want one for each of %v", d.Warnings, wantWarn)
	}
	for i, w := range wantWarn {
		if !strings.HasPrefix(d.Warnings[i], w+":") {
			t.Errorf("warning %d = %q, want one about %s", i, d.Warnings[i], w)
		}
	}
	if err := d.Pool.Validate(); err != nil {
		t.Errorf("converted pool invalid: %v", err)
	}
}

func TestDecodeCalicoErrors(t *testing.T) {
	head := "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p, uid: u}\n"
	de := decodeErr(t, head+"spec: {cidr: 10.0.0.0/16, blocksize: 24}\n")
	var ue *UnknownFieldError
	if !errors.As(de, &ue) || ue.Path != "spec.blocksize" || ue.Suggestion != "spec.blockSize" || de.Name != "p" {
		t.Errorf("typo in Calico spec: %v", de)
	}
	de = decodeErr(t, head+"status: {}\n")
	if !errors.As(de, &ue) || ue.Path != "status" {
		t.Errorf("unknown top-level field: %v", de)
	}
	var fe *FieldTypeError
	de = decodeErr(t, head+"spec: {cidr: 10.0.0.0/16, blockSize: big}\n")
	if !errors.As(de, &fe) || fe.Path != "spec.blockSize" {
		t.Errorf("bad Calico block size: %v", de)
	}
	de = decodeErr(t, "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p, labels: {a: [1]}}\n")
	if !errors.As(de, &fe) || fe.Path != "metadata.labels.a" {
		t.Errorf("bad Calico label: %v", de)
	}

	// Calico's IPIP pools convert, and validation then says what to do.
	docs, err := DecodeDocuments([]byte(head + "spec: {cidr: 10.0.0.0/16, ipipMode: always}\n"))
	if err != nil {
		t.Fatalf("IPIP pool: %v", err)
	}
	err = docs[0].Pool.Validate()
	var ve *ValidationError
	if !errors.As(err, &ve) || !ve.Has("spec.ipipMode", ReasonUnsupported) {
		t.Errorf("IPIP pool validates: %v", err)
	}
	// Unknown mode values are kept for Validate to report.
	docs, err = DecodeDocuments([]byte(head + "spec: {cidr: 10.0.0.0/16, vxlanMode: sometimes}\n"))
	if err != nil || docs[0].Pool.Spec.VXLANMode != "sometimes" {
		t.Fatalf("unknown mode: %+v, %v", docs, err)
	}
}

func TestDecodeNodeHostPrefixWarning(t *testing.T) {
	docs, err := DecodeDocuments([]byte("apiVersion: twill.dev/v1\nkind: Node\nmetadata: {name: node1}\nspec: {address: 192.168.3.241/32}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs[0].Warnings) != 1 || !strings.Contains(docs[0].Warnings[0], "192.168.3.241/24") {
		t.Errorf("warnings = %q, want one suggesting a subnet prefix", docs[0].Warnings)
	}
}

func TestDecodeEmptyAndSeparators(t *testing.T) {
	for _, in := range []string{"", "\n\n", "---\n---\n", "# nothing\n", "--- # c\n\n"} {
		docs, err := DecodeDocuments([]byte(in))
		if err != nil || len(docs) != 0 {
			t.Errorf("DecodeDocuments(%q) = %+v, %v; want no documents", in, docs, err)
		}
	}
	// A separator may carry a comment or start the next document.
	in := "--- # first\napiVersion: twill.dev/v1\nkind: Node\nmetadata: {name: a}\n" +
		"--- {apiVersion: twill.dev/v1, kind: Node, metadata: {name: b}}\n"
	docs, err := DecodeDocuments([]byte(in))
	if err != nil || len(docs) != 2 || docs[0].Node.Metadata.Name != "a" || docs[1].Node.Metadata.Name != "b" {
		t.Errorf("separators: %+v, %v", docs, err)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	pool := seedPool()
	// Values YAML would read as something else unless quoted.
	pool.Metadata.Labels = map[string]string{"a": "b", "on": "yes", "n": "1", "e": "", "null": "~",
		"colon": "a: b", "dash": "- x", "hash": "#c", "multi": "line1\nline2", "0x1A": "1e3"}
	pool.Metadata.ResourceVersion = "42"
	node := seedNode()
	y, err := EncodeYAMLDocuments(pool, node)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := DecodeDocuments(y)
	if err != nil {
		t.Fatalf("decode of encoded YAML:\n%s\n%v", y, err)
	}
	if len(docs) != 2 || !reflect.DeepEqual(*docs[0].Pool, pool) || !reflect.DeepEqual(*docs[1].Node, node) {
		t.Errorf("YAML round trip:\n%s\ngave %+v", y, docs)
	}
	j, err := EncodeJSON([]any{pool, node})
	if err != nil {
		t.Fatal(err)
	}
	docs, err = DecodeDocuments(j)
	if err != nil || len(docs) != 2 || !reflect.DeepEqual(*docs[0].Pool, pool) || !reflect.DeepEqual(*docs[1].Node, node) {
		t.Errorf("JSON round trip:\n%s\ngave %+v, %v", j, docs, err)
	}
}
