package agent

import (
	"encoding/json"
	"errors"
	"fmt"

	"twill.dev/twill/api"
	"twill.dev/twill/datastore"
)

// errBlockDoc is wrapped by the errors of a block document whose fields do
// not have the types of api.Block.
var errBlockDoc = errors.New("not a valid IPAM block")

// blockDoc is a stored api.Block as the cache reads it: the same fields
// with the same types, so that a document api.Block rejects is rejected
// here too, but the allocations' handles, uses and attributes are only
// checked, not kept, apart from the node attribute. Decoding a block with
// 20 allocations into api.Block builds 20 attribute maps that the cache
// would drop at once; this way a block costs a few small strings.
type blockDoc struct {
	api.TypeMeta `json:",inline"`
	CIDR         string     `json:"cidr"`
	Affinity     string     `json:"affinity,omitempty"`
	Pinned       bool       `json:"pinned,omitempty"`
	Allocations  []allocDoc `json:"allocations,omitempty"`
}

// allocDoc is one api.Allocation of a blockDoc.
type allocDoc struct {
	Ordinal int         `json:"ordinal"`
	Handle  stringCheck `json:"handle"`
	Use     stringCheck `json:"use,omitempty"`
	Attrs   attrsNode   `json:"attrs,omitempty"`
}

// stringCheck accepts what encoding/json would decode into a string (a
// string or null) and keeps nothing.
type stringCheck struct{}

// UnmarshalJSON implements json.Unmarshaler.
func (*stringCheck) UnmarshalJSON(b []byte) error {
	b = skipSpace(b)
	if len(b) > 0 && (b[0] == '"' || b[0] == 'n') {
		return nil
	}
	return fmt.Errorf("%w: %s where a string belongs", errBlockDoc, jsonKind(b))
}

// attrsNode is an allocation's attributes (a JSON object of strings, as
// api.Allocation.Attrs) reduced to the value of api.AttrNode. It follows
// encoding/json's map semantics: null clears the map, a key given twice
// keeps its last value, a null value stands for "".
type attrsNode string

// UnmarshalJSON implements json.Unmarshaler. b is one syntactically valid
// JSON value (encoding/json checks that first), but every step is bounds
// checked anyway.
func (a *attrsNode) UnmarshalJSON(b []byte) error {
	b = skipSpace(b)
	if len(b) == 0 {
		return fmt.Errorf("%w: empty attrs", errBlockDoc)
	}
	if b[0] == 'n' {
		*a = ""
		return nil
	}
	if b[0] != '{' {
		return fmt.Errorf("%w: attrs is %s, want an object of strings", errBlockDoc, jsonKind(b))
	}
	b = b[1:]
	for {
		b = skipSpace(b)
		if len(b) > 0 && b[0] == ',' {
			b = skipSpace(b[1:])
		}
		if len(b) == 0 {
			return fmt.Errorf("%w: attrs is cut short", errBlockDoc)
		}
		if b[0] == '}' {
			return nil
		}
		key, rest, ok := cutString(b)
		if !ok {
			return fmt.Errorf("%w: attrs has a malformed key", errBlockDoc)
		}
		b = skipSpace(rest)
		if len(b) == 0 || b[0] != ':' {
			return fmt.Errorf("%w: attrs has a key without value", errBlockDoc)
		}
		b = skipSpace(b[1:])
		if len(b) == 0 {
			return fmt.Errorf("%w: attrs is cut short", errBlockDoc)
		}
		var val []byte
		switch b[0] {
		case '"':
			val, rest, ok = cutString(b)
			if !ok {
				return fmt.Errorf("%w: attrs has a malformed value", errBlockDoc)
			}
		case 'n':
			if len(b) < 4 {
				return fmt.Errorf("%w: attrs is cut short", errBlockDoc)
			}
			rest = b[4:]
		default:
			return fmt.Errorf("%w: attribute %s is %s, want a string", errBlockDoc, key, jsonKind(b))
		}
		b = rest
		isNode, err := keyIs(key, api.AttrNode)
		if err != nil {
			return err
		}
		if !isNode {
			continue
		}
		if val == nil {
			*a = ""
			continue
		}
		var s string
		if err := json.Unmarshal(val, &s); err != nil {
			return fmt.Errorf("%w: attribute %s: %w", errBlockDoc, api.AttrNode, err)
		}
		*a = attrsNode(s)
	}
}

// keyIs reports whether the JSON string token key (with its quotes) is
// name, unescaping it only when it holds an escape.
func keyIs(key []byte, name string) (bool, error) {
	raw := key[1 : len(key)-1]
	for _, c := range raw {
		if c == '\\' {
			var s string
			if err := json.Unmarshal(key, &s); err != nil {
				return false, fmt.Errorf("%w: attrs key: %w", errBlockDoc, err)
			}
			return s == name, nil
		}
	}
	return string(raw) == name, nil
}

// cutString splits b, which starts with a JSON string, after that string;
// tok is the string with its quotes.
func cutString(b []byte) (tok, rest []byte, ok bool) {
	if len(b) == 0 || b[0] != '"' {
		return nil, b, false
	}
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return b[:i+1], b[i+1:], true
		}
	}
	return nil, b, false
}

func skipSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}

// jsonKind names the kind of the JSON value b starts with, for errors.
func jsonKind(b []byte) string {
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// decodeBlock decodes a stored block into the cache's summary of it. The
// borrowed allocations, rare, are decoded again in full as api.Block, so
// they are exactly what the planner would have read.
func decodeBlock(kv datastore.KV) (cachedBlock, error) {
	var d blockDoc
	if err := json.Unmarshal(kv.Value, &d); err != nil {
		return cachedBlock{}, fmt.Errorf("decode %s %q: %w", kv.Kind, kv.Name, err)
	}
	cb := cachedBlock{cidr: d.CIDR, affinity: d.Affinity, pinned: d.Pinned, used: len(d.Allocations)}
	if p, err := (api.Block{CIDR: d.CIDR}).Prefix(); err == nil {
		cb.prefix = p
	}
	n := 0
	for _, al := range d.Allocations {
		if al.Attrs != "" && string(al.Attrs) != d.Affinity {
			n++
		}
	}
	if n == 0 {
		return cb, nil
	}
	var full api.Block
	if err := json.Unmarshal(kv.Value, &full); err != nil {
		return cachedBlock{}, fmt.Errorf("decode %s %q: %w", kv.Kind, kv.Name, err)
	}
	cb.borrowed = make([]api.Allocation, 0, n)
	for _, al := range full.Allocations {
		if node := al.Attrs[api.AttrNode]; node != "" && node != full.Affinity {
			cb.borrowed = append(cb.borrowed, api.Allocation{Ordinal: al.Ordinal, Handle: al.Handle, Use: al.Use,
				Attrs: map[string]string{api.AttrNode: node}})
		}
	}
	return cb, nil
}
