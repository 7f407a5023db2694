package lab

import (
	"errors"
	"reflect"
	"testing"
)

func FuzzParseTopology(f *testing.F) {
	for _, name := range Builtin() {
		b, err := BuiltinSource(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		baseYAML,
		"",
		"subnets: [\n",
		"a: &a [*a, *a]\n",
		"nodes: [{name: a, address: 10.0.0.1/24, pods: 3}]\n",
		"nodes: [{name: a, pods: [1, 2]}]\n",
		"{\"subnets\": [{\"name\": \"x\", \"cidr\": \"10.0.0.0/24\", \"router\": \"10.0.0.1\"}]}",
		"observed: {x: [1, 2, {y: z}]}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		topo, err := Parse("fuzz", data)
		topo2, err2 := Parse("fuzz", data)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) || !reflect.DeepEqual(topo, topo2) {
			t.Fatalf("parsing is not deterministic: %v / %v", err, err2)
		}
		if err != nil {
			var te *Error
			if !errors.As(err, &te) || len(te.Problems) == 0 || err.Error() == "" {
				t.Fatalf("error %v (%T) is not an *Error with problems", err, err)
			}
			if topo != nil {
				t.Fatal("a topology returned with an error")
			}
			return
		}
		// A topology that parses lays out, and its names are unique.
		l, err := topo.Layout("")
		if err != nil {
			t.Fatalf("valid topology does not lay out: %v", err)
		}
		seen := map[string]bool{l.Router: true}
		for _, m := range l.Members {
			if seen[m.Netns] {
				t.Fatalf("namespace %s twice", m.Netns)
			}
			seen[m.Netns] = true
			if !l.Subnets[m.Subnet].CIDR.Contains(m.Address.Addr()) {
				t.Fatalf("%s's address %s is outside its subnet", m.Name, m.Address)
			}
		}
		for _, p := range l.Pods {
			if seen[p.Netns] {
				t.Fatalf("namespace %s twice", p.Netns)
			}
			seen[p.Netns] = true
		}
	})
}
