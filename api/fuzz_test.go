package api

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
)

func FuzzDecodeDocuments(f *testing.F) {
	for _, seed := range []string{
		twillDocs,
		calicoManifest,
		`{"apiVersion":"twill.dev/v1","kind":"IPPool","metadata":{"name":"p"},"spec":{"cidr":"10.0.0.0/16"}}`,
		`[{"apiVersion":"twill.dev/v1","kind":"Node","metadata":{"name":"n"},"spec":{"address":"10.0.0.1/24"}}]`,
		"apiVersion: twill.dev/v1\nkind: IPPool\nmetadata: {name: foo}\nspec: {blocksize: 24}\n",
		"apiVersion: twill.dev/v1\nkind: Node\nmetadata:\n  name: b\n spec: {}\n",
		"--- {apiVersion: twill.dev/v1, kind: Node, metadata: {name: b, labels: {}}}\n---\n",
		"- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  spec: {ipip: {enabled: true}, allowedUses: [tunnel]}\n",
		"a: &a [*a, *a]\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := DecodeDocuments(data)
		docs2, err2 := DecodeDocuments(data)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) || !reflect.DeepEqual(docs, docs2) {
			t.Fatalf("decoding is not deterministic: %v / %v", err, err2)
		}
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) || de.Index < 1 || de.Err == nil || err.Error() == "" {
				t.Fatalf("error %v (%T) is not a *DecodeError with a document index", err, err)
			}
			if docs != nil {
				t.Fatalf("documents returned with an error")
			}
			return
		}
		for i, d := range docs {
			if d.Index != i+1 {
				t.Fatalf("document %d has index %d", i+1, d.Index)
			}
			var obj any
			switch d.Kind {
			case KindIPPool:
				if d.Pool == nil || d.Node != nil {
					t.Fatalf("IPPool document %d: pool %v node %v", d.Index, d.Pool, d.Node)
				}
				p := d.Pool
				if p.APIVersion != Version || p.Kind != KindIPPool || p.Spec.BlockSize == 0 || p.Spec.VXLANMode == "" ||
					p.Spec.IPIPMode == "" || p.Spec.NodeSelector == "" || len(p.Spec.AllowedUses) == 0 {
					t.Fatalf("pool not defaulted: %+v", *p)
				}
				_ = p.Validate()
				_ = CheckPoolOverlap(*p, []IPPool{seedPool()})
				_, _ = p.Prefix()
				obj = *p
			case KindNode:
				if d.Node == nil || d.Pool != nil {
					t.Fatalf("Node document %d: pool %v node %v", d.Index, d.Pool, d.Node)
				}
				if d.Node.APIVersion != Version || d.Node.Kind != KindNode {
					t.Fatalf("node not defaulted: %+v", *d.Node)
				}
				_ = d.Node.Validate()
				obj = *d.Node
			default:
				t.Fatalf("document %d has kind %q", d.Index, d.Kind)
			}
			// What was decoded encodes to a Twill document that decodes to
			// the same resource, as JSON and as YAML.
			for _, enc := range []func(any) ([]byte, error){EncodeJSON, EncodeYAML} {
				b, err := enc(obj)
				if err != nil {
					t.Fatalf("encode: %v", err)
				}
				again, err := DecodeDocuments(b)
				if err != nil {
					t.Fatalf("re-decode of\n%s\nfailed: %v", b, err)
				}
				if len(again) != 1 || again[0].Kind != d.Kind {
					t.Fatalf("re-decode of\n%s\ngave %+v", b, again)
				}
				var got any
				if again[0].Pool != nil {
					got = *again[0].Pool
				} else {
					got = *again[0].Node
				}
				if !reflect.DeepEqual(got, obj) {
					t.Fatalf("round trip through\n%s\nchanged %+v\ninto     %+v", b, obj, got)
				}
			}
		}
	})
}

// selectorVocabulary collects the label keys and values a selector mentions.
func selectorVocabulary(s Selector, keys map[string][]string) {
	add := func(k string, vs ...string) { keys[k] = append(keys[k], vs...) }
	switch s := s.(type) {
	case selHas:
		add(s.key)
	case selEq:
		add(s.key, s.val)
	case selNe:
		add(s.key, s.val)
	case selIn:
		add(s.key, s.vals...)
	case selNotIn:
		add(s.key, s.vals...)
	case selContains:
		add(s.key, s.val)
	case selStartsWith:
		add(s.key, s.val)
	case selEndsWith:
		add(s.key, s.val)
	case selNot:
		selectorVocabulary(s.x, keys)
	case selAnd:
		for _, t := range s.terms {
			selectorVocabulary(t, keys)
		}
	case selOr:
		for _, t := range s.terms {
			selectorVocabulary(t, keys)
		}
	}
}

// labelSets returns label maps built from the keys and values a selector
// mentions (each key absent, equal to a mentioned value, or near one), so
// that they exercise every branch of the selector.
func labelSets(s Selector, n int) []map[string]string {
	vocab := map[string][]string{}
	selectorVocabulary(s, vocab)
	rng := rand.New(rand.NewPCG(1, 2))
	sets := []map[string]string{{}}
	for range n {
		m := map[string]string{}
		for k, vs := range vocab {
			choices := []string{"", "x"}
			for _, v := range vs {
				choices = append(choices, v, v+"x", "x"+v)
				if len(v) > 1 {
					choices = append(choices, v[1:], v[:len(v)-1])
				}
			}
			if i := rng.IntN(len(choices) + 1); i < len(choices) {
				m[k] = choices[i]
			}
		}
		sets = append(sets, m)
	}
	return sets
}

func FuzzParseSelector(f *testing.F) {
	for _, seed := range []string{
		"", "all()", "has(a)", "!has(kubernetes.io/os)",
		"role == 'master'", `role != "edge"`, "zone in {'a', 'b'}", "zone not in {}",
		"a contains 'x' || b starts with \"y\" && c ends with 'z'",
		"!(a == 'x' || (b == 'y' && !has(c)))", "((all()))", "has == 'x'",
		`v == 'say "hi"'`, "zone ==", "a in {'x',}", "(((",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSelector(in)
		if err != nil {
			var se *SelectorError
			if !errors.As(err, &se) || se.Pos < 0 || se.Pos > len(in) || se.Expected == "" || se.Found == "" {
				t.Fatalf("ParseSelector(%q) error %v (%T) lacks a valid position", in, err, err)
			}
			return
		}
		canon := s.String()
		again, err := ParseSelector(canon)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canon, in, err)
		}
		if again.String() != canon {
			t.Fatalf("canonical form is not stable: %q -> %q", canon, again.String())
		}
		for _, labels := range labelSets(s, 32) {
			if s.Matches(labels) != again.Matches(labels) {
				t.Fatalf("%q and its canonical form %q disagree on %v", in, canon, labels)
			}
		}
	})
}
