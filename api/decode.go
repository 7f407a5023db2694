package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Document is one resource read by DecodeDocuments. Exactly one of Pool and
// Node is set, according to Kind.
type Document struct {
	// Index is the document's position in the input, counted from 1 and
	// skipping empty documents, as in error messages.
	Index int
	// Kind is the Twill kind of the resource: KindIPPool or KindNode.
	Kind string
	// Source is the apiVersion the document was written in: Version, or
	// CalicoVersion for a converted Calico pool.
	Source string
	Pool   *IPPool
	Node   *Node
	// Warnings lists what was accepted but is worth telling the user, such
	// as Calico-only fields that Twill ignores.
	Warnings []string
}

// DecodeError reports the document a decoding problem is in.
type DecodeError struct {
	// Index is the document's position, counted from 1 as in Document.
	Index int
	// Kind and Name identify the document when they could be read.
	Kind string
	Name string
	// Err is the problem: a *SyntaxError, *UnknownFieldError,
	// *FieldTypeError, *UnsupportedKindError or another error.
	Err error
}

// Error implements error: `document 2 (IPPool "foo"): unknown field
// "spec.blocksize"`.
func (e *DecodeError) Error() string {
	where := fmt.Sprintf("document %d", e.Index)
	switch {
	case e.Kind != "" && e.Name != "":
		where += fmt.Sprintf(" (%s %q)", e.Kind, e.Name)
	case e.Kind != "":
		where += fmt.Sprintf(" (%s)", e.Kind)
	case e.Name != "":
		where += fmt.Sprintf(" (%q)", e.Name)
	}
	return where + ": " + e.Err.Error()
}

// Unwrap returns the problem.
func (e *DecodeError) Unwrap() error { return e.Err }

// SyntaxError reports input that is not well-formed YAML or JSON.
type SyntaxError struct {
	// Format is "YAML" or "JSON".
	Format string
	Err    error
}

// Error implements error.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("invalid %s: %v", e.Format, e.Err)
}

// Unwrap returns the parser's error.
func (e *SyntaxError) Unwrap() error { return e.Err }

// UnknownFieldError reports a field that the document's kind does not have.
type UnknownFieldError struct {
	// Path is the field's path, for example spec.blocksize.
	Path string
	// Suggestion is the known field the name most likely meant, or "".
	Suggestion string
}

// Error implements error.
func (e *UnknownFieldError) Error() string {
	if e.Suggestion != "" {
		return fmt.Sprintf("unknown field %q (did you mean %q?)", e.Path, e.Suggestion)
	}
	return fmt.Sprintf("unknown field %q; remove it", e.Path)
}

// FieldTypeError reports a field whose value has the wrong type.
type FieldTypeError struct {
	Path string
	Got  string
	Want string
}

// Error implements error.
func (e *FieldTypeError) Error() string {
	msg := fmt.Sprintf("%s: got %s, want %s", e.Path, e.Got, e.Want)
	if e.Want == "a string" && (e.Got == "a number" || e.Got == "a boolean") {
		msg += " (quote the value)"
	}
	return msg
}

// UnsupportedKindError reports a document of an apiVersion or kind that
// DecodeDocuments does not read.
type UnsupportedKindError struct {
	APIVersion string
	Kind       string
}

// Error implements error.
func (e *UnsupportedKindError) Error() string {
	return fmt.Sprintf("apiVersion %q kind %q is not supported; supported are apiVersion %s with kind %s or %s, and apiVersion %s with kind %s",
		e.APIVersion, e.Kind, Version, KindIPPool, KindNode, CalicoVersion, KindIPPool)
}

// maxJSONDepth bounds the nesting of JSON input.
const maxJSONDepth = 100

// rawDoc is one document before it is typed.
type rawDoc struct {
	index int
	value any // from JSON: map[string]any, []any, string, json.Number, bool or nil
}

// DecodeDocuments reads IPPool and Node resources from YAML or JSON.
//
// YAML input may hold several documents separated by lines that are exactly
// "---"; empty documents are skipped. JSON input is one object or an array of
// objects. Documents of apiVersion twill.dev/v1 (kinds IPPool and Node) are
// decoded strictly: an unknown field, a duplicate field or a value of the
// wrong type is an error. Documents of apiVersion projectcalico.org/v3, kind
// IPPool, are converted to Twill pools: Calico's spec fields are taken as
// they are (modes and uses in any case), Calico-only fields are ignored with
// a warning, and metadata other than name and labels is ignored.
//
// Decoding applies Default but not Validate: callers validate. On error no
// documents are returned and the error is a *DecodeError naming the document.
func DecodeDocuments(data []byte) ([]Document, error) {
	var docs []Document
	err := splitDocuments(data, func(r rawDoc) error {
		d, err := decodeDocument(r)
		if err != nil {
			return err
		}
		docs = append(docs, d)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if docs == nil {
		docs = []Document{}
	}
	return docs, nil
}

// splitDocuments turns the input into untyped documents, numbered from 1,
// and hands each to fn as soon as it is parsed; it stops at the first error.
func splitDocuments(data []byte, fn func(rawDoc) error) error {
	next := 1
	add := func(v any) error {
		items := []any{v}
		if list, ok := v.([]any); ok {
			items = list
		}
		for _, item := range items {
			if err := fn(rawDoc{index: next, value: item}); err != nil {
				return err
			}
			next++
		}
		return nil
	}

	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') && json.Valid(trimmed) {
		v, err := decodeJSON(trimmed)
		if err != nil {
			return &DecodeError{Index: 1, Err: &SyntaxError{Format: "JSON", Err: err}}
		}
		return add(v)
	}

	for _, c := range splitYAML(data) {
		if blankYAML(c.text) {
			continue
		}
		j, err := yaml.YAMLToJSONStrict([]byte(c.text))
		if err != nil {
			// Parse again after c.line-1 empty lines so that the parser's
			// line numbers count from the start of the whole input.
			_, err = yaml.YAMLToJSONStrict([]byte(strings.Repeat("\n", c.line-1) + c.text))
			if err == nil {
				err = errors.New("the document does not parse")
			}
			return &DecodeError{Index: next, Err: &SyntaxError{Format: "YAML", Err: err}}
		}
		v, err := decodeJSON(j)
		if err != nil {
			return &DecodeError{Index: next, Err: &SyntaxError{Format: "YAML", Err: err}}
		}
		if v == nil {
			continue
		}
		if err := add(v); err != nil {
			return err
		}
	}
	return nil
}

type yamlChunk struct {
	text string
	line int // line number of the chunk's first line, from 1
}

// splitYAML splits a YAML stream on document separator lines: "---", alone
// or followed by spaces or a comment. Content after "--- " on the separator
// line starts the next document.
func splitYAML(data []byte) []yamlChunk {
	var chunks []yamlChunk
	var cur strings.Builder
	start := 1
	lines := strings.SplitAfter(string(data), "\n")
	for i, line := range lines {
		body := strings.TrimRight(line, "\r\n")
		if rest, ok := strings.CutPrefix(body, "---"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			chunks = append(chunks, yamlChunk{text: cur.String(), line: start})
			cur.Reset()
			start = i + 1
			rest = strings.TrimSpace(rest)
			if rest != "" && !strings.HasPrefix(rest, "#") {
				cur.WriteString(rest + "\n")
			} else {
				cur.WriteString("\n")
			}
			continue
		}
		cur.WriteString(line)
	}
	return append(chunks, yamlChunk{text: cur.String(), line: start})
}

// blankYAML reports whether a chunk holds only blank lines and comments.
func blankYAML(s string) bool {
	for line := range strings.Lines(s) {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

// decodeJSON decodes one JSON value into maps, slices and json.Number,
// refusing duplicate keys and trailing data.
func decodeJSON(data []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	v, err := decodeJSONValue(d, 0)
	if err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the top-level value")
	}
	return v, nil
}

func decodeJSONValue(d *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, fmt.Errorf("nested more than %d levels deep", maxJSONDepth)
	}
	tok, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			m := map[string]any{}
			for d.More() {
				kt, err := d.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("object key %v is not a string", kt)
				}
				if _, dup := m[k]; dup {
					return nil, fmt.Errorf("field %q is given twice; keep one", k)
				}
				v, err := decodeJSONValue(d, depth+1)
				if err != nil {
					return nil, err
				}
				m[k] = v
			}
			if _, err := d.Token(); err != nil { // '}'
				return nil, err
			}
			return m, nil
		case '[':
			l := []any{}
			for d.More() {
				v, err := decodeJSONValue(d, depth+1)
				if err != nil {
					return nil, err
				}
				l = append(l, v)
			}
			if _, err := d.Token(); err != nil { // ']'
				return nil, err
			}
			return l, nil
		}
		return nil, fmt.Errorf("unexpected %v", t)
	default:
		return tok, nil
	}
}

// describe names the JSON type of v for error messages.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func decodeDocument(r rawDoc) (Document, error) {
	obj, ok := r.value.(map[string]any)
	if !ok {
		return Document{}, &DecodeError{Index: r.index, Err: fmt.Errorf(
			"a document must be an object with apiVersion, kind, metadata and spec; found %s", describe(r.value))}
	}
	fail := func(kind, name string, err error) (Document, error) {
		return Document{}, &DecodeError{Index: r.index, Kind: kind, Name: name, Err: err}
	}
	var name string
	if md, ok := obj["metadata"].(map[string]any); ok {
		name, _ = md["name"].(string)
	}
	apiVersion, err := typeMetaField(obj, "apiVersion")
	if err != nil {
		return fail("", name, err)
	}
	kind, err := typeMetaField(obj, "kind")
	if err != nil {
		return fail("", name, err)
	}

	doc := Document{Index: r.index, Kind: kind, Source: apiVersion}
	switch {
	case apiVersion == Version && kind == KindIPPool:
		var p IPPool
		if err := decodeStrict(obj, &p); err != nil {
			return fail(kind, name, err)
		}
		if len(p.Metadata.Labels) == 0 {
			p.Metadata.Labels = nil
		}
		p.Default()
		doc.Pool = &p
	case apiVersion == Version && kind == KindNode:
		var n Node
		if err := decodeStrict(obj, &n); err != nil {
			return fail(kind, name, err)
		}
		if len(n.Metadata.Labels) == 0 {
			n.Metadata.Labels = nil
		}
		n.Default()
		if pfx, err := n.Prefix(); err == nil && pfx.IsSingleIP() {
			doc.Warnings = append(doc.Warnings, fmt.Sprintf(
				"spec.address %s has prefix length /%d: every peer will count as another subnet and all pod traffic will be encapsulated; use the prefix length of the node's subnet, for example %s/24",
				n.Spec.Address, pfx.Bits(), pfx.Addr()))
		}
		doc.Node = &n
	case apiVersion == CalicoVersion && kind == KindIPPool:
		p, warnings, err := convertCalicoPool(obj)
		if err != nil {
			return fail(kind, name, err)
		}
		doc.Pool = &p
		doc.Warnings = warnings
	default:
		return fail(kind, name, &UnsupportedKindError{APIVersion: apiVersion, Kind: kind})
	}
	return doc, nil
}

func typeMetaField(obj map[string]any, f string) (string, error) {
	v, ok := obj[f]
	if !ok || v == nil {
		return "", fmt.Errorf("%s is missing; supported are apiVersion %s (kinds %s, %s) and %s (kind %s)",
			f, Version, KindIPPool, KindNode, CalicoVersion, KindIPPool)
	}
	s, ok := v.(string)
	if !ok {
		return "", &FieldTypeError{Path: f, Got: describe(v), Want: "a string"}
	}
	return s, nil
}

// decodeStrict checks obj against out's type (exact field names, value
// types) and then decodes it into out.
func decodeStrict(obj map[string]any, out any) error {
	if err := checkValue(obj, reflect.TypeOf(out).Elem(), ""); err != nil {
		return err
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("re-encode document: %w", err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(out); err != nil {
		return fmt.Errorf("decode document: %w", err)
	}
	return nil
}

// jsonFields maps the JSON field names of struct type t to their types,
// flattening embedded structs as encoding/json does.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			for k, v := range jsonFields(f.Type) {
				fields[k] = v
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

// suggest returns the known name that equals name but for case, or "".
func suggest(name string, known []string) string {
	for _, k := range known {
		if strings.EqualFold(k, name) {
			return k
		}
	}
	return ""
}

// checkValue checks that the untyped value v fits type t, strictly.
func checkValue(v any, t reflect.Type, path string) error {
	if v == nil {
		return nil // null leaves the zero value
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return &FieldTypeError{Path: path, Got: describe(v), Want: "an object"}
		}
		fields := jsonFields(t)
		known := slices.Sorted(maps.Keys(fields))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			ft, ok := fields[k]
			if !ok {
				e := &UnknownFieldError{Path: joinPath(path, k)}
				if s := suggest(k, known); s != "" {
					e.Suggestion = joinPath(path, s)
				}
				return e
			}
			if err := checkValue(m[k], ft, joinPath(path, k)); err != nil {
				return err
			}
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			return &FieldTypeError{Path: path, Got: describe(v), Want: "a string"}
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return &FieldTypeError{Path: path, Got: describe(v), Want: "a boolean (true or false)"}
		}
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, ok := v.(json.Number)
		if !ok {
			return &FieldTypeError{Path: path, Got: describe(v), Want: "an integer"}
		}
		if _, err := strconv.ParseInt(n.String(), 10, t.Bits()); err != nil {
			return &FieldTypeError{Path: path, Got: n.String(), Want: fmt.Sprintf("an integer that fits in %d bits", t.Bits())}
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			return &FieldTypeError{Path: path, Got: describe(v), Want: "a list"}
		}
		for i, e := range l {
			if err := checkValue(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return &FieldTypeError{Path: path, Got: describe(v), Want: "an object"}
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if err := checkValue(m[k], t.Elem(), joinPath(path, k)); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s: fields of Go type %s cannot be decoded", path, t)
	}
	return nil
}

// calicoIgnored lists the Calico IPPool spec fields Twill does not use, with
// Calico's default for each: a field set to its default needs no warning.
var calicoIgnored = map[string]any{
	"disableBGPExport":       false,
	"assignmentMode":         "Automatic",
	"namespaceSelector":      "",
	"disableIPFragmentation": false,
	"ipip":                   nil, // deprecated APIv1 field
	"nat-outgoing":           false,
}

// calicoSpecFields are the Calico spec fields Twill takes as they are, with
// the Go type their value must fit.
var calicoSpecFields = jsonFields(reflect.TypeOf(IPPoolSpec{}))

// convertCalicoPool converts a projectcalico.org/v3 IPPool to a Twill pool.
func convertCalicoPool(obj map[string]any) (IPPool, []string, error) {
	var p IPPool
	var warnings []string
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		switch k {
		case "apiVersion", "kind", "metadata", "spec":
		default:
			return IPPool{}, nil, &UnknownFieldError{Path: k, Suggestion: suggest(k, []string{"apiVersion", "kind", "metadata", "spec"})}
		}
	}

	switch md := obj["metadata"].(type) {
	case nil:
	case map[string]any:
		// Only name and labels carry over; uid, resourceVersion,
		// creationTimestamp, annotations and the rest belong to the
		// Calico datastore the document came from.
		if err := checkValue(md["name"], reflect.TypeOf(""), "metadata.name"); err != nil {
			return IPPool{}, nil, err
		}
		if err := checkValue(md["labels"], reflect.TypeOf(map[string]string{}), "metadata.labels"); err != nil {
			return IPPool{}, nil, err
		}
		p.Metadata.Name, _ = md["name"].(string)
		if labels, ok := md["labels"].(map[string]any); ok && len(labels) > 0 {
			p.Metadata.Labels = make(map[string]string, len(labels))
			for k, v := range labels {
				p.Metadata.Labels[k], _ = v.(string)
			}
		}
	default:
		return IPPool{}, nil, &FieldTypeError{Path: "metadata", Got: describe(md), Want: "an object"}
	}

	spec := map[string]any{}
	switch s := obj["spec"].(type) {
	case nil:
	case map[string]any:
		spec = s
	default:
		return IPPool{}, nil, &FieldTypeError{Path: "spec", Got: describe(s), Want: "an object"}
	}
	known := slices.Sorted(maps.Keys(calicoSpecFields))
	for k := range calicoIgnored {
		known = append(known, k)
	}
	take := map[string]any{}
	for _, k := range slices.Sorted(maps.Keys(spec)) {
		v := spec[k]
		path := "spec." + k
		if def, ok := calicoIgnored[k]; ok {
			if v != nil && !reflect.DeepEqual(v, def) {
				warnings = append(warnings, fmt.Sprintf("%s: %s is a Calico-only field; Twill ignores it", path, compactJSON(v)))
			}
			continue
		}
		ft, ok := calicoSpecFields[k]
		if !ok {
			e := &UnknownFieldError{Path: path}
			if s := suggest(k, known); s != "" {
				e.Suggestion = "spec." + s
			}
			return IPPool{}, nil, e
		}
		if err := checkValue(v, ft, path); err != nil {
			return IPPool{}, nil, err
		}
		take[k] = v
	}
	b, err := json.Marshal(take)
	if err != nil {
		return IPPool{}, nil, fmt.Errorf("re-encode spec: %w", err)
	}
	if err := json.Unmarshal(b, &p.Spec); err != nil {
		return IPPool{}, nil, fmt.Errorf("decode spec: %w", err)
	}
	// Calico writes modes and uses as Never, Always, CrossSubnet, Workload
	// and Tunnel; accept any case. Unknown values stay for Validate.
	for _, m := range []*EncapMode{&p.Spec.VXLANMode, &p.Spec.IPIPMode} {
		for _, ok := range encapModes {
			if strings.EqualFold(string(*m), string(ok)) {
				*m = ok
			}
		}
	}
	for i, u := range p.Spec.AllowedUses {
		for _, ok := range []IPPoolUse{UseWorkload, UseTunnel} {
			if strings.EqualFold(string(u), string(ok)) {
				p.Spec.AllowedUses[i] = ok
			}
		}
	}
	p.Default()
	return p, warnings, nil
}

func compactJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// EncodeYAML renders v (a resource or any JSON-encodable value) as YAML with
// the resources' JSON field names.
func EncodeYAML(v any) ([]byte, error) {
	b, err := yaml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T as YAML: %w", v, err)
	}
	return b, nil
}

// EncodeYAMLDocuments renders several values as one multi-document YAML
// stream, separated by "---" lines; DecodeDocuments reads it back.
func EncodeYAMLDocuments(vs ...any) ([]byte, error) {
	var buf bytes.Buffer
	for i, v := range vs {
		if i > 0 {
			buf.WriteString("---\n")
		}
		b, err := EncodeYAML(v)
		if err != nil {
			return nil, err
		}
		buf.Write(b)
	}
	return buf.Bytes(), nil
}

// EncodeJSON renders v as indented JSON followed by a newline.
func EncodeJSON(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %T as JSON: %w", v, err)
	}
	return append(b, '\n'), nil
}
